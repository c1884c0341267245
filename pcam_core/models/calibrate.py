"""The fastest way to run a model on this machine, measured instead of guessed.

Which precision, memory format and batch size run a network fastest depends on the CPU and on the
network: on an AMX Xeon bf16 autocast makes base_cnn 2.5x faster and efficientnet_lite0 1.4x slower; on
an AVX512-BF16 EPYC bf16 wins for base_cnn training but loses for lite0 inference; an AVX2-only CPU has no
bf16 instructions at all (BENCHMARKS.md). So the first time a model is trained or run for inference on a
CPU, a few timed steps of each candidate decide, and the timings are kept in `calibration.json` (beside
the dataset caches) per CPU model, thread count, torch version, model, input size and task; later runs
read them.

Candidates: fp32 and, where the CPU has bf16 instructions (AVX512-BF16, AMX, Arm BF16), bf16 autocast;
channels_last or the default layout; for inference also the batch size. torch.compile is timed too when
`compile` is asked to be chosen ("auto"): it pays off only when the run is long enough to repay the
compile time, which is measured and weighed against the run's length (`Timings.best`). An explicit
precision, layout, batch size or compile flag fixes that part, and only the rest is chosen. On CUDA
nothing is timed: bf16 autocast, channels_last, batch 2048 (BENCHMARKS.md, GPU section).
"""

from __future__ import annotations

import itertools
import json
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from pcam_core.atomic import file_lock, write_text
from pcam_core.data.pack import cache_root
from pcam_core.hardware import cpu_model
from pcam_core.runs.config import TrainConfig

log = logging.getLogger(__name__)

TASKS = ("train", "infer")
INFER_BATCHES = (32, 64, 128)
ROUNDS, STEPS = 3, 1  # interleaved rounds of a step each (after a warm-up step); the median counts
# A job shorter than this (patches x epochs, or x views) uses the cached timings or, before any, the plain
# setting: timing the candidates takes 5-20 s, worth it once per machine for a job of a minute or more.
WORTH_TIMING = {"train": 5_000, "infer": 20_000}
# torch.compile takes about a minute on 2 cores (base_cnn, cold): tried only for a job of 2 eager minutes
COMPILE_WORTH_TRYING = 120.0
_ANNOUNCED: set[tuple[str, Setting]] = set()
VERSION = 1


@dataclass(frozen=True)
class Setting:
    """How a model runs: autocast precision, memory format, torch.compile, patches per step."""

    precision: str  # "fp32" or "bf16"
    channels_last: bool
    compile: bool
    batch_size: int

    def describe(self) -> str:
        return (f"{self.precision}, {'channels_last' if self.channels_last else 'NCHW'}, "
                f"{'compiled' if self.compile else 'eager'}, batch {self.batch_size}")

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype (None: plain float32)."""
        return torch.bfloat16 if self.precision == "bf16" else None


@dataclass
class Timings:
    """Seconds per patch of each candidate (by `Setting.describe`), and compile's one-off cost in seconds."""

    per_patch: dict[str, float]
    compile_seconds: float | None = None

    def best(self, candidates: list[Setting], patches: int | None = None) -> Setting:
        """The candidate with the least time for `patches` patches (compile time included; without a count
        a compiled candidate never wins)."""
        def cost(s: Setting) -> float:
            run = self.per_patch[s.describe()] * (patches or 1)
            if s.compile:
                known = patches and self.compile_seconds is not None
                return run + self.compile_seconds if known else float("inf")
            return run
        return min(candidates, key=cost)


def bf16_instructions() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX on x86, BF16 on Arm)."""
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def calibration_file() -> Path:
    """calibration.json in the folder every cache lives under (`pack.cache_root`)."""
    return cache_root() / "calibration.json"


def machine_key(model: str, crop: int, task: str, batch_size: int | None = None) -> str:
    """What a calibration holds for: CPU model and bf16 support, threads, torch, model, crop, task."""
    parts = [cpu_model()[0], f"bf16={bf16_instructions()}", f"threads={torch.get_num_threads()}",
             f"torch={torch.__version__}", f"v{VERSION}", model, f"crop={crop}", task]
    if batch_size is not None:
        parts.append(f"batch={batch_size}")
    return " | ".join(parts)


def candidates(task: str, batch_size: int | None, precision: str = "auto",
               channels_last: bool | None = None) -> list[Setting]:
    """The settings worth timing on this CPU, with the fixed parts fixed.

    Args:
        task: "train" (the batch size stays the run's: it changes what is learnt) or "infer".
        batch_size: patches per step; None for inference lets the batch size be chosen.
        precision, channels_last: "auto" / None to choose; anything else fixes it.

    Returns:
        eager settings: `choose` times compiling apart, for the fastest of them.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    precisions = ["fp32", "bf16"] if bf16_instructions() else ["fp32"]
    precisions = precisions if precision == "auto" else [precision]
    layouts = [True, False] if channels_last is None else [channels_last]
    if batch_size is None:
        batches = list(INFER_BATCHES) if task == "infer" else [64]
    else:
        batches = [batch_size]
    return [Setting(p, cl, False, b) for p, cl, b in itertools.product(precisions, layouts, batches)]


def choose(model: str, crop: int, task: str, device: torch.device, batch_size: int | None = None,
           precision: str = "auto", channels_last: bool | None = None, compile: bool | None = False,
           patches: int | None = None) -> Setting:
    """The fastest setting for `model` at `crop` px on `device`, timing the candidates the first time.

    Eager candidates are timed first; with `compile=None`, the fastest of them is then timed compiled too
    when the job is long enough for compiling to pay (COMPILE_WORTH_TRYING), and wins when its faster steps
    repay its compile time over `patches`.

    Args:
        patches: how many patches the job will process (epochs x patches, or views x patches): weighs
            compile time against its gain, and a short job does not wait for a first calibration.
    """
    if device.type == "cuda":
        layout = True if channels_last is None else channels_last
        return Setting("fp32" if precision == "fp32" else "bf16", layout, bool(compile), batch_size or 2048)
    options = candidates(task, batch_size, precision, channels_last)
    key = machine_key(model, crop, task, batch_size if task == "train" else None)
    timings = _cached(key)
    open_choice = len(options) > 1 or (compile is None and patches is not None)
    if open_choice and (timings is None or any(s.describe() not in timings.per_patch for s in options)):
        if patches is not None and patches < WORTH_TIMING[task]:
            log.debug("%s: too short a job to time settings for; the plain one (a longer job times them)",
                      model)
            return replace(_untimed(options), compile=bool(compile))
        timings = _measure(key, model, crop, task, options, timings)
    chosen = timings.best(options, patches) if open_choice else options[0]
    if compile or (open_choice and compile is None and patches is not None
                   and timings.per_patch[chosen.describe()] * patches > COMPILE_WORTH_TRYING):
        compiled = replace(chosen, compile=True)
        if compile:
            return compiled
        if compiled.describe() not in timings.per_patch:
            timings = _measure(key, model, crop, task, [compiled], timings)
        chosen = timings.best([chosen, compiled], patches)
    if (key, chosen) not in _ANNOUNCED:  # once per process: validation predicts every epoch
        _ANNOUNCED.add((key, chosen))
        log.info("%s %s at %d px runs %s (%s)", model, "training" if task == "train" else "inference", crop,
                 chosen.describe(), "timed on this CPU" if open_choice else "as asked")
    return chosen


def training_setting(cfg: TrainConfig, device: torch.device, patches: int) -> Setting:
    """How a training run steps: precision, memory format and torch.compile as `cfg` fixes them, the rest
    as `choose` finds fastest (`patches`: what the run trains on, which decides whether compiling pays).

    A run long enough to be timed also times inference for its model, once per machine: its validation
    and the app's pages predict a few patches at a time, too few to time settings themselves.
    """
    setting = choose(cfg.model, cfg.crop, "train", device, batch_size=cfg.batch_size,
                     precision=cfg.precision, channels_last=cfg.channels_last, compile=cfg.compile,
                     patches=patches)
    if patches >= WORTH_TIMING["train"]:
        choose(cfg.model, cfg.crop, "infer", device)
    return setting


def _untimed(options: list[Setting]) -> Setting:
    """The plain choice among `options`: fp32, channels_last, eager, batch 64 where each is open."""
    return min(options, key=lambda s: (s.precision != "fp32", not s.channels_last, s.compile,
                                       abs(s.batch_size - 64)))


def _cached(key: str) -> Timings | None:
    try:
        entry = json.loads(calibration_file().read_text()).get(key)
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("per_patch"), dict):
        return None
    return Timings(entry["per_patch"], entry.get("compile_seconds"))


def _measure(key: str, model: str, crop: int, task: str, options: list[Setting],
             known: Timings | None) -> Timings:
    """Times the candidates missing from `known`, interleaved, and saves the result."""
    timings = known or Timings({})
    todo = [s for s in options if s.describe() not in timings.per_patch]
    log.info("timing %d setting(s) of %s for %s on this CPU, once per machine: %s", len(todo), model,
             "training" if task == "train" else "inference", ", ".join(s.describe() for s in todo))
    started = time.perf_counter()
    steps, compile_costs = {}, []
    for s in todo:
        step = _step(model, crop, task, s)
        try:
            first = _timed(step)
        except Exception as e:  # torch.compile needs a C++ compiler, which not every machine has
            if not s.compile:
                raise
            log.warning("torch.compile is not available here (%s); running eager", str(e).splitlines()[0])
            timings.per_patch[s.describe()] = float("inf")
            continue
        if s.compile:  # its first step compiled: the compile time is what it took beyond a second step
            compile_costs.append(max(first - _timed(step), 0.0))
        steps[s] = step
    rounds = {s: [] for s in todo}
    for _ in range(ROUNDS):
        for s, step in steps.items():
            rounds[s].append(sum(_timed(step) for _ in range(STEPS)) / (STEPS * s.batch_size))
    for s, values in rounds.items():
        timings.per_patch[s.describe()] = sorted(values)[len(values) // 2]
    if compile_costs:
        timings.compile_seconds = max(compile_costs)
    log.info("calibration of %s took %.1f s", key, time.perf_counter() - started)
    _save(key, timings)
    return timings


def _timed(step: Callable[[], None]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def _step(model: str, crop: int, task: str, s: Setting) -> Callable[[], None]:
    """One training step (forward, backward, AdamW) or one inference batch of a fresh `model` under `s`."""
    from pcam_core.models.registry import Classifier

    layout = torch.channels_last if s.channels_last else torch.contiguous_format
    torch.manual_seed(0)
    net = Classifier.new(model, crop).module.to(memory_format=layout)
    x = torch.randn(s.batch_size, 3, crop, crop).contiguous(memory_format=layout)
    autocast = dict(device_type="cpu", dtype=torch.bfloat16, enabled=s.dtype is not None)
    run = torch.compile(net) if s.compile else net
    if task == "infer":
        net.eval()

        def step():
            with torch.inference_mode(), torch.autocast(**autocast):
                run(x)
        return step
    net.train()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    y = torch.rand(s.batch_size)

    def step():
        with torch.autocast(**autocast):
            logits = run(x).float().reshape(-1)
        loss = F.binary_cross_entropy_with_logits(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def _save(key: str, timings: Timings) -> None:
    path = calibration_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_suffix(".lock")):
        try:
            table = json.loads(path.read_text())
        except (OSError, ValueError):
            table = {}
        table[key] = {**asdict(timings), "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_text(path, json.dumps(table, indent=1, sort_keys=True) + "\n")
