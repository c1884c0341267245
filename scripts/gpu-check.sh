#!/usr/bin/env bash
# One prepared pass over the GPU targets in BENCHMARKS.md, for a machine with a CUDA GPU:
# a full-size Kaggle training epoch, the 57,458-patch test set with TTA 8, `bench` (train, infer, cam),
# a 100,000-cell slide map.
#
#   scripts/gpu-check.sh OUT_DIR [SCALE]
#
# It makes its own data under $TMPDIR (a demo set, tiled by symlinks to the Kaggle size), so nothing but
# the repository needs to travel. SCALE (default 1) shrinks every size for a dry run on a CPU. Each step
# has its own time limit and logs to OUT_DIR/steps.log; a failed step does not stop the ones after it.
set -uo pipefail
out=${1:?usage: scripts/gpu-check.sh OUT_DIR [SCALE]}
scale=${2:-1}
mkdir -p "$out"
tmp=${TMPDIR:-/tmp}/pcam-gpu-check
rm -rf "$tmp" && mkdir -p "$tmp"
export PYTHONUNBUFFERED=1 PCAM_CACHE_DIR=$tmp/cache
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
log=$out/steps.log
n() { echo $(( $1 / scale )); }

step() {  # step NAME LIMIT_S COMMAND...
    local name=$1 limit=$2 t0 rc
    shift 2
    echo "== $name: $*" >>"$log"
    t0=$(date +%s%N)
    timeout "$limit" "$@" >>"$log" 2>&1
    rc=$?
    printf '%-28s rc=%-3s %8.1f s\n' "$name" "$rc" "$(( ($(date +%s%N) - t0) / 1000000 ))e-3" \
        | tee -a "$out/summary.txt"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$out/summary.txt" 2>&1
$py -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" >>"$out/summary.txt"

step demo 120 $py -m pcam_core demo --out "$tmp/demo" --n-train "$(n 2000)" --n-test "$(n 200)"
step tile 120 $py -c "from pcam_core.bench_baselines import tile_kaggle as t; t('$tmp/demo', '$tmp/kaggle', $(n 220025), $(n 57458))"
step pack-277k 120 $py -m pcam_core pack --data "$tmp/kaggle"
# the Kaggle epoch: 95% of 220,025 patches resident on the GPU, bf16, batch 512
step train-lite0-2ep 240 $py -m pcam_core train --data "$tmp/kaggle" --model efficientnet_lite0 --epochs 2 \
    --batch-size 512 --val-frac 0.05 --device "$device" --out "$tmp/runs/lite0"
cp "$tmp/runs/lite0/metrics.csv" "$out/lite0-metrics.csv" 2>/dev/null
step submit-lite0-tta8 120 $py -m pcam_core submit --checkpoint "$tmp/runs/lite0" --data "$tmp/kaggle" --tta 8 \
    --device "$device" --out "$tmp/submission.csv"
step train-b0-1ep 180 $py -m pcam_core train --data "$tmp/kaggle" --model efficientnet_b0 --epochs 1 \
    --batch-size 512 --val-frac 0.05 --device "$device" --out "$tmp/runs/b0"
cp "$tmp/runs/b0/metrics.csv" "$out/b0-metrics.csv" 2>/dev/null
step bench-train-infer 300 $py -m pcam_core bench --data "$tmp/kaggle" --device "$device" --only train infer
step bench-cam 180 $py -m pcam_core bench --data "$tmp/demo" --device "$device" --only cam
step cam-cli 60 $py -m pcam_core cam --checkpoint "$tmp/runs/lite0" --data "$tmp/demo" --device "$device" \
    --ids $(head -n 9 "$tmp/demo/train_labels.csv" | tail -n 8 | cut -d, -f1) --out "$tmp/cams"
ls "$tmp/cams" >>"$log" 2>&1
# slides: 100,000 tissue cells at stride 96 (30,720 x 30,720 px at PCam's scale), end to end, with as many
# reading processes as it takes to keep the GPU busy
side=$(( 30720 / scale ))
step slide-make 240 $py -m pcam_core demo-slide --tissue-only --width "$side" --height "$side" --out "$tmp/big.tif"
for w in 4 8 12; do
    step "slide-100k-s96-w$w" 120 $py -m pcam_core slide --checkpoint "$tmp/runs/lite0" --slide "$tmp/big.tif" \
        --stride 96 --workers "$w" --device "$device" --out "$tmp/maps-w$w"
done
step bench-slides 300 $py -m pcam_core bench --data "$tmp/demo" --device "$device" --only slides
# issue 13: 5-fold crossval of lite0 on the 220k tiled set (one epoch per fold), its wall time and flags
step crossval-lite0-5f 420 $py -m pcam_core crossval --data "$tmp/kaggle" --folds 5 --model efficientnet_lite0 \
    --pretrained --epochs 1 --batch-size 512 --device "$device" --out "$tmp/cv-lite0"
# issue 12: embeddings and the map of the 220,025 tiled training patches with the lite0 run (the duplicate
# search runs on the CPU, and on a tiled set, which repeats each patch ~100 times, it would only count copies)
step embed-lite0-220k 300 $py -m pcam_core embed --data "$tmp/kaggle" --checkpoint "$tmp/runs/lite0" \
    --device "$device" --out "$tmp/map.parquet"
# issue 10: the host CPU as a second CPU kind (16 cores): what calibration chooses and the whole commands'
# times there, on the demo set tiled to 60,960 patches (the Keras peer needs TensorFlow, absent there)
step tile-61k 120 $py -c "from pcam_core.bench_baselines import tile_kaggle as t; t('$tmp/demo', '$tmp/t61k', $(n 60960), 0)"
step cpu-train-base-3ep 300 $py -m pcam_core train --data "$tmp/demo" --model base_cnn --epochs 3 --val-frac 0.25 \
    --device cpu --out "$tmp/runs/cpu-base"
step cpu-predict-base-61k 240 $py -m pcam_core predict --checkpoint "$tmp/runs/cpu-base" --data "$tmp/t61k" \
    --split train --device cpu --out "$tmp/cpu-preds.csv"
step cpu-contention 300 $py -m pcam_core bench --only contention
cp "${PCAM_CACHE_DIR:-$HOME/.cache/pcam-review}/calibration.json" "$out/" 2>/dev/null || true
cat "$out/summary.txt"
