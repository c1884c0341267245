"""`bench --only contention`: a training job sharing the machine with another busy process.

A efficientnet_lite0 training step (batch 64, fp32, channels_last, torch's default thread count: one per
core) runs in a child process, timed alone and then with one core taken by a busy loop at normal
priority: once as background jobs used to start (the app's environment, the app's priority, OpenMP's
default of spinning while it waits) and once as `jobs` starts them now (`jobs.job_environment()`:
OMP_WAIT_POLICY=PASSIVE, and `jobs.JOB_NICENESS`). The fair result is the job slowing by no more than the
share of the machine it lost (2x with one of two cores taken).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

STEPS = 12
_CHILD = """
import json, sys, time
from pcam_core.models.calibrate import Setting, _step
step = _step("efficientnet_lite0", 96, "train", Setting("fp32", True, False, 64))
step(); step()
times = []
for _ in range({steps}):
    start = time.perf_counter(); step(); times.append(time.perf_counter() - start)
print(json.dumps(times))
"""


def step_seconds(env: dict[str, str], niceness: int = 0) -> float:
    """Median seconds of a lite0 training step in a child process with `env` at `niceness`."""
    command = [sys.executable, "-c", _CHILD.format(steps=STEPS)]
    preexec = (lambda: os.nice(niceness)) if niceness else None
    done = subprocess.run(command, env=env, capture_output=True, text=True, preexec_fn=preexec,
                          cwd=Path(__file__).resolve().parents[2])
    if done.returncode:
        raise RuntimeError(f"the timed step failed: {done.stderr.strip().splitlines()[-1:]}")
    return statistics.median(json.loads(done.stdout.strip().splitlines()[-1]))


def bench_contention(data_dir: Path, device: str) -> list[dict]:
    from pcam_core.runs.jobs import JOB_NICENESS, job_environment

    before = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    rows = [{"what": "efficientnet_lite0 training step, batch 64, machine to itself", "unit": "s",
             "value": step_seconds(before)}]
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        cases = (("as jobs started before: inherited environment, OpenMP default wait, nice 0", before, 0),
                 (f"as `jobs` starts them now: OMP_WAIT_POLICY=PASSIVE, nice {JOB_NICENESS}",
                  job_environment(), JOB_NICENESS),
                 ("OMP_WAIT_POLICY=PASSIVE at nice 0", {**before, "OMP_WAIT_POLICY": "PASSIVE"}, 0))
        for what, env, niceness in cases:
            rows.append({"what": f"... with one core taken by a busy process, {what}", "unit": "s",
                         "value": step_seconds(env, niceness)})
    finally:
        busy.kill()
        busy.wait()
    alone = rows[0]["value"]
    for row in rows[1:]:
        row["what"] += f" ({row['value'] / alone:.1f}x the step alone)"
    return rows
