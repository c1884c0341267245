#!/usr/bin/env bash
# Before/after on this machine: the same whole commands on an older revision (a git worktree) and on the
# working tree, in turn, with the same virtualenv and data.
#   scripts/ab-bench.sh REV [DATA]     e.g. scripts/ab-bench.sh 96c29c2 ../shared/data/pcam-sample
set -euo pipefail
rev=${1:?give the older revision to compare with}
here=$(cd "$(dirname "$0")/.." && pwd)
data=$(cd "${2:-$here/../shared/data/pcam-sample}" && pwd)
py=$here/.venv/bin/python
work=$(mktemp -d)
trap 'git -C "$here" worktree remove --force "$work/old" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git -C "$here" worktree add -q "$work/old" "$rev"
lscpu | grep -E "^Model name" || true
for side in old new; do
  dir=$work/old; [ "$side" = new ] && dir=$here
  cd "$dir"
  export PCAM_CACHE_DIR=$work/cache-$side PCAM_RUNS_DIR=$work/runs-$side
  "$py" -m pcam_core pack --data "$data" >/dev/null 2>&1
  echo "== $side ($(git rev-parse --short HEAD)): train base_cnn, 3 epochs, --val-frac 0.25"
  /usr/bin/time -f "wall %e s" "$py" -m pcam_core train --data "$data" --model base_cnn --epochs 3 \
    --val-frac 0.25 --seed 0 --out "$PCAM_RUNS_DIR/b" 2>&1 | grep -E "^epoch|^wall"
  echo "== $side: predict base_cnn TTA 1 over the train split"
  /usr/bin/time -f "wall %e s" "$py" -m pcam_core predict --checkpoint "$PCAM_RUNS_DIR/b" --data "$data" \
    --split train --out "$work/p-$side.csv" 2>&1 | grep -E "^wall"
  echo "== $side: bench infer"
  "$py" -m pcam_core bench --data "$data" --only infer 2>/dev/null | grep "^| infer"
done
