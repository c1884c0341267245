"""Training: `fit(cfg)` runs one training run and yields events the CLI prints and the app renders.

Batches come from the PatchStore as uint8 and are augmented whole on the training device (random
dihedral transform + colour jitter, `transforms.augment_batch`). The uint8 training set stays resident
on the device when it fits. Every step re-seeds its random sources from (seed, step, rank), and the
learning rate is a pure function of the step, so a run resumed from last.pt repeats exactly what the
uninterrupted run would have done. Under `torchrun` each rank trains on its shard through
DistributedDataParallel and rank 0 alone writes the run folder.

Events are dicts with a "type": start, step, epoch, checkpoint, finished, stopped or failed.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pcam_core.data.readers import PatchStore, open_dataset
from pcam_core.data.splits import default_groups, relabelled, split_train_val
from pcam_core.data.transforms import augment_batch, to_model_input
from pcam_core.geometry import PATCH
from pcam_core.inference.infer import predict
from pcam_core.inference.metrics import loss_and_auc
from pcam_core.models import calibrate
from pcam_core.models.calibrate import Setting
from pcam_core.models.distributed import Distributed
from pcam_core.models.registry import Classifier, head_module, read_checkpoint
from pcam_core.runs.config import TrainConfig
from pcam_core.runs.folder import RunFolder, new_run_dir
from pcam_core.training.ema import ModelEMA
from pcam_core.training.schedule import scheduled_lr

log = logging.getLogger(__name__)

RESIDENT_CPU_BYTES = 4 << 30  # keep the uint8 training set in RAM up to 4 GiB (220k patches: 6 GiB, streamed)
RESIDENT_GPU_SHARE = 0.5  # ... and on a GPU while it takes under half the free memory
RESUME_KEYS = ("step", "steps_per_epoch", "best_auc", "bad_epochs", "optimizer", "train_state_dict")


class _Patches:
    """The uint8 training patches: resident on the device when they fit, else read per batch."""

    def __init__(self, store: PatchStore, indices: np.ndarray, device: torch.device):
        self.store, self.indices, self.device = store, indices, device
        nbytes = len(indices) * PATCH * PATCH * 3
        budget = (torch.cuda.mem_get_info(device)[0] * RESIDENT_GPU_SHARE if device.type == "cuda"
                  else RESIDENT_CPU_BYTES)
        self.resident = None
        if nbytes <= budget:
            self.resident = torch.empty((len(indices), PATCH, PATCH, 3), dtype=torch.uint8, device=device)
            for start in range(0, len(indices), 4096):
                chunk = torch.from_numpy(store.batch(indices[start:start + 4096]))
                self.resident[start:start + len(chunk)] = chunk.to(device)
        log.info("training set: %d patches, %s", len(indices),
                 "resident" if self.resident is not None else "streamed")

    def batch(self, positions: np.ndarray, on_device: torch.Tensor) -> torch.Tensor:
        """(B, 96, 96, 3) uint8 on the device for positions into the training indices (also given as a
        tensor on the device, so a resident set is gathered without a host-to-device copy per step)."""
        if self.resident is not None:
            return self.resident[on_device]
        x = torch.from_numpy(self.store.batch(self.indices[positions]))
        return x.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else x


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: backbone and head, each split into decayed weights and undecayed biases/norms."""
    head = {id(p) for p in head_module(model).parameters()}
    groups = {}
    for p in model.parameters():
        groups.setdefault(("head" if id(p) in head else "backbone", p.ndim > 1), []).append(p)
    return [{"params": ps, "part": part, "weight_decay": weight_decay if decay else 0.0}
            for (part, decay), ps in sorted(groups.items())]


def _resolve_resume(cfg: TrainConfig) -> tuple[TrainConfig, dict | None]:
    """For --resume: the run's saved config (device and threads from the new one) and its last.pt."""
    if not cfg.resume:
        return cfg, None
    run_dir = Path(cfg.resume)
    saved = TrainConfig.load(run_dir / "config.json")
    if not (run_dir / "last.pt").is_file():
        raise FileNotFoundError(f"{run_dir} has no last.pt to resume from; start a new run instead")
    state = read_checkpoint(run_dir / "last.pt")
    missing = [k for k in RESUME_KEYS if k not in state]
    if missing:
        raise ValueError(f"{run_dir / 'last.pt'} holds no training state to resume from (missing {missing}); "
                         f"start a new run instead")
    if state.get("finished"):
        raise ValueError(f"run {run_dir} already finished ({saved.epochs} epochs); start a new run to train "
                         f"more")
    saved.out, saved.resume, saved.device, saved.threads = str(run_dir), str(run_dir), cfg.device, cfg.threads
    return saved, state


def fit(cfg: TrainConfig, stop: threading.Event | None = None) -> Iterator[dict]:
    """Trains as `cfg` says, writing the run folder; yields events as it goes.

    Args:
        cfg: the run (with `resume` set, the saved run continues exactly).
        stop: when set (e.g. by a SIGTERM handler), the run writes a resumable last.pt and ends "stopped".

    Yields:
        {"type": "start", ...}, then per step {"type": "step", "epoch", "step", "steps_per_epoch",
        "loss", "lr", "img_per_s"}, per epoch {"type": "epoch", "epoch", "metrics"} and
        {"type": "checkpoint", "path"},
        and finally "finished", "stopped" or "failed" (after which the error is raised).
    """
    cfg.validate()
    cfg, state = _resolve_resume(cfg)
    cfg = default_groups(cfg)  # PCam's slide groups when its meta files are there: recorded with the run
    ctx = Distributed(cfg.device)
    folder = RunFolder(Path(ctx.same(str(new_run_dir(cfg)))), write=ctx.main)
    stop = stop or threading.Event()
    try:
        run = _setup(cfg, state, ctx, folder)
        yield {"type": "start", "run_dir": str(folder.path), "n_train": len(run.train_idx),
               "n_val": len(run.val_idx), "steps_per_epoch": run.steps_per_epoch, "epochs": cfg.epochs,
               "device": str(ctx.device), "world_size": ctx.world, "resumed_at_step": run.step,
               "precision": run.cfg.precision, "setting": run.setting.describe()}
        for epoch in range(run.step // run.steps_per_epoch, cfg.epochs):
            started = time.perf_counter()
            train_loss = yield from train_one_epoch(run, epoch, stop)
            if train_loss is None:  # stopped mid-epoch: last.pt lets it continue from this step
                yield _stopped(run, folder, epoch, folder.checkpoint("last.pt", run.checkpoint(epoch, {})))
                return
            if run.ema is not None:
                run.eval_classifier.module.load_state_dict(run.ema.state)
            scores = evaluate(run.eval_classifier, run.store, run.val_idx, cfg.val_tta, cfg.precision, ctx)
            metrics = {"epoch": epoch + 1, "train_loss": train_loss, **scores, "lr": run.lr,
                       "seconds": time.perf_counter() - started}
            yield from _end_epoch(run, folder, epoch, metrics)
            if run.done:
                return
            if ctx.any(stop.is_set()):  # asked to stop as the epoch ended: its last.pt starts the next one
                yield _stopped(run, folder, epoch + 1, folder.path / "last.pt")
                return
    except torch.cuda.OutOfMemoryError as e:
        message = (f"GPU out of memory at batch size {cfg.batch_size}; try --batch-size "
                   f"{max(1, cfg.batch_size // 2)}")
        yield _failed(folder, message)
        raise ValueError(message) from e
    except Exception as e:
        yield _failed(folder, str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise
    finally:
        ctx.close()


def _stopped(run: _Run, folder: RunFolder, epoch: int, path: Path) -> dict:
    folder.status(state="stopped", epoch=epoch, step=run.step, message=f"stopped at step {run.step}")
    return {"type": "stopped", "path": str(path), "step": run.step, "run_dir": str(folder.path)}


def _failed(folder: RunFolder, message: str) -> dict:
    """Marks the run failed (when the disk still lets status.json be written) and returns the event."""
    try:
        folder.status(state="failed", message=message)
    except OSError as e:  # e.g. the disk that failed the checkpoint is full: say so in the log instead
        log.warning("could not record the failure in %s: %s", folder.path, e)
    return {"type": "failed", "message": message}


@dataclass
class _Run:
    """What a training run holds between steps: data, model, optimiser, schedule position, best score."""

    cfg: TrainConfig
    ctx: Distributed
    folder: RunFolder
    store: PatchStore
    train_idx: np.ndarray
    val_idx: np.ndarray
    classifier: Classifier  # the trained network, with its name, args, normalisation and crop
    eval_classifier: Classifier  # what validation and checkpoints use: the EMA weights when kept
    optimizer: torch.optim.Optimizer
    ema: ModelEMA | None
    patches: _Patches
    labels: torch.Tensor  # (n_train,) float on the device
    setting: Setting  # precision, memory format, compile and batch the steps run with
    batch: int
    steps_per_epoch: int
    step: int = 0
    best_auc: float = -1.0
    bad_epochs: int = 0
    lr: float = 0.0
    done: bool = False
    loss_sum: float = 0.0  # training loss summed over this epoch's steps so far (kept across a resume)
    loss_steps: int = 0
    wrapped: nn.Module | None = None  # the module stepped: DDP/compile-wrapped for the current freeze state
    head_only: bool | None = None

    def checkpoint(self, epoch: int, metrics: dict, finished: bool = False) -> dict:
        """A checkpoint: the weights to use (EMA ones when kept) plus what an exact resume needs."""
        model = self.classifier.module
        return self.classifier.to_checkpoint(
            state_dict=self.ema.state if self.ema else model.state_dict(), epoch=epoch, metrics=metrics,
            steps_per_epoch=self.steps_per_epoch, world_size=self.ctx.world, step=self.step,
            best_auc=self.best_auc, bad_epochs=self.bad_epochs, finished=finished, loss_sum=self.loss_sum,
            loss_steps=self.loss_steps,
            train_state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
            optimizer=self.optimizer.state_dict())


def _setup(cfg: TrainConfig, state: dict | None, ctx: Distributed, folder: RunFolder) -> _Run:
    """Opens the data, draws the split, builds the model and optimiser, and restores a resumed run."""
    device = ctx.device
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    folder.start(cfg, completed_epochs=state["epoch"] if state else None)
    store = open_dataset(cfg.data)
    if cfg.labels:  # this run's labels: the store is this run's own object
        store.labels, changed = relabelled(store, cfg.labels)
        log.info("%s changes %d label(s)", cfg.labels, changed)
    train_idx, val_idx = split_train_val(store, cfg)
    folder.save_val_ids(store.ids[val_idx])
    batch = min(cfg.batch_size, len(train_idx) // ctx.world)
    steps_per_epoch = len(train_idx) // (batch * ctx.world) if batch else 0
    if steps_per_epoch < 1:
        raise ValueError(f"only {len(train_idx)} training patches for {ctx.world} processes; add data")

    # calibrated once per machine and model (rank 0 times, every rank takes its choice); recorded in the
    # run's config, so a resumed run steps exactly as it started
    patches = steps_per_epoch * batch * ctx.world * cfg.epochs
    setting = ctx.same(calibrate.training_setting(cfg, device, patches) if ctx.main else None)
    cfg = replace(cfg, precision=setting.precision, channels_last=setting.channels_last,
                  compile=setting.compile)
    if state is None:
        folder.save_config(cfg)
    torch.manual_seed(cfg.seed)
    classifier = Classifier.new(cfg.model, cfg.crop, pretrained=cfg.pretrained and state is None)
    classifier.config = cfg.to_dict()
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = classifier.module.to(device, memory_format=memory_format)
    # fused: one kernel for the whole update on CUDA instead of several per parameter tensor
    groups = _param_groups(model, cfg.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, fused=device.type == "cuda")
    # cudnn.benchmark stays off: on an H100 its search added 20 s to the first step and 3 s to the first
    # validation batch, to gain 3-6% per step afterwards (BENCHMARKS.md, GPU) - a loss for runs this short
    ema = ModelEMA(model, cfg.ema_decay) if cfg.ema_decay else None
    run = _Run(cfg, ctx, folder, store, train_idx, val_idx, classifier, classifier, optimizer, ema,
               _Patches(store, train_idx, device),
               torch.from_numpy(store.labels[train_idx].astype(np.float32)).to(device),
               replace(setting, batch_size=batch), batch, steps_per_epoch)
    if ema is not None:
        run.eval_classifier = Classifier(copy.deepcopy(model), classifier.name, classifier.args,
                                         classifier.normalization, classifier.crop, classifier.config)
    if state is not None:
        if state["steps_per_epoch"] != steps_per_epoch:
            raise ValueError(f"cannot resume exactly: the run had {state['steps_per_epoch']} steps per "
                             f"epoch, this setup gives {steps_per_epoch} (same data and processes needed)")
        model.load_state_dict(state["train_state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.state = {k: v.to(device) for k, v in state["state_dict"].items()}
        run.step, run.best_auc, run.bad_epochs = state["step"], state["best_auc"], state["bad_epochs"]
        run.loss_sum, run.loss_steps = state.get("loss_sum", 0.0), state.get("loss_steps", 0)
    return run


def _freeze(run: _Run, head_only: bool) -> nn.Module:
    """Freezes (or unfreezes) the backbone and returns the module to step: DDP- and compile-wrapped as
    asked. DDP only syncs the parameters that need grads when it is built, so it is rebuilt here."""
    model = run.classifier.module
    head = {id(p) for p in head_module(model).parameters()}
    for p in model.parameters():
        if id(p) not in head:
            p.requires_grad_(not head_only)
    wrapped = model
    if run.ctx.world > 1:
        device = run.ctx.device
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(wrapped) if run.cfg.compile else wrapped


def train_one_epoch(run: _Run, epoch: int, stop: threading.Event) -> Generator[dict, None, float | None]:
    """Trains `epoch` from the run's current step to its end; yields a "step" event per step.

    Returns:
        the epoch's mean training loss, or None when `stop` was set (the run then stops at this step).
    """
    cfg, ctx, model, device = run.cfg, run.ctx, run.classifier.module, run.ctx.device
    head_only = cfg.finetune == "head" or (cfg.finetune == "head_then_full" and epoch < cfg.head_epochs)
    if run.head_only != head_only:
        run.wrapped, run.head_only = _freeze(run, head_only), head_only
    order = np.random.default_rng([cfg.seed, epoch]).permutation(len(run.train_idx))
    # every step's batch positions, sorted (memmap reads in file order), and one copy on the device
    order = order[:run.steps_per_epoch * ctx.world * run.batch].reshape(run.steps_per_epoch, ctx.world, -1)
    order = np.sort(order, axis=-1)
    order_on_device = torch.from_numpy(order).to(device)
    model.train()
    if head_only:
        head_norms = {id(m) for m in head_module(model).modules()}
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in head_norms:
                m.eval()  # a frozen backbone keeps its BatchNorm statistics, as Keras' trainable=False does
    generator = torch.Generator(device=device)
    started, losses, seen = time.perf_counter(), [], 0
    for s in range(run.step - epoch * run.steps_per_epoch, run.steps_per_epoch):
        losses.append(_train_step(run, order[s, ctx.rank], order_on_device[s, ctx.rank], generator))
        # Reading a loss waits for its step to finish. On a GPU, read the one before: by now it is done,
        # and the device keeps one step queued instead of idling while Python prepares the next.
        shown = losses[-2 if device.type == "cuda" and len(losses) > 1 else -1].item()
        seen += run.batch * ctx.world
        where = dict(epoch=epoch, step=run.step, steps_per_epoch=run.steps_per_epoch, loss=shown, lr=run.lr)
        run.folder.progress(**where)
        yield {"type": "step", **where, "img_per_s": seen / (time.perf_counter() - started)}
        if s + 1 < run.steps_per_epoch and ctx.any(stop.is_set()):  # at the last step: validate first
            run.loss_sum += torch.stack(losses).double().sum().item()  # so the resumed epoch's mean is whole
            run.loss_steps += len(losses)
            return None
    total = run.loss_sum + (torch.stack(losses).double().sum().item() if losses else 0.0)
    count = run.loss_steps + len(losses)
    run.loss_sum, run.loss_steps = 0.0, 0
    return total / count if count else float("nan")


def _train_step(run: _Run, positions: np.ndarray, positions_on_device: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
    """One optimiser step on the training patches at `positions`; returns the loss, not yet read."""
    cfg, ctx, device = run.cfg, run.ctx, run.ctx.device
    run.lr = scheduled_lr(cfg, run.step, run.steps_per_epoch)
    for g in run.optimizer.param_groups:
        g["lr"] = run.lr
    seed = (cfg.seed * 1_000_003 + run.step) * 64 + ctx.rank
    torch.manual_seed(seed)  # dropout
    generator.manual_seed(seed)  # augmentation
    x = run.patches.batch(positions, positions_on_device)  # (B, 96, 96, 3) uint8
    normalization = run.classifier.normalization
    if cfg.augment:
        inputs = augment_batch(x, normalization, cfg.crop, cfg.jitter, generator)
    else:
        inputs = to_model_input(x, normalization, cfg.crop)
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    inputs = inputs.contiguous(memory_format=layout)
    amp = run.setting.dtype
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        logits = run.wrapped(inputs).float().reshape(-1)
    loss = F.binary_cross_entropy_with_logits(logits, run.labels[positions_on_device])
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.optimizer.step()
    if run.ema is not None:
        run.ema.update(run.classifier.module, run.step)
    run.step += 1
    return loss.detach()


def evaluate(classifier: Classifier, store: PatchStore, indices: np.ndarray, tta: int = 1,
             precision: str = "auto", ctx: Distributed | None = None) -> dict:
    """val_loss and val_auc of `classifier` on patches `indices` (under torchrun each rank predicts a shard).

    Returns:
        dict with val_loss (binary cross-entropy) and val_auc (NaN with a single class).
    """
    if ctx is None:  # one process: no process group is created for it
        device = next(classifier.module.parameters()).device
        prob = predict([classifier], store, indices, tta=tta, device=device, precision=precision)["prob"]
        return loss_and_auc(store.labels[indices], prob)
    shard = ctx.shard(indices)
    prob = (predict([classifier], store, shard, tta=tta, device=ctx.device, precision=precision)["prob"]
            if len(shard) else np.empty(0, np.float32))
    return loss_and_auc(store.labels[indices], ctx.unshard(ctx.gather(prob)))


def _end_epoch(run: _Run, folder: RunFolder, epoch: int, metrics: dict) -> Iterator[dict]:
    """Early stopping, best/last checkpoints and the epoch's events; sets `run.done` on the last epoch."""
    cfg = run.cfg
    improved = metrics["val_auc"] > run.best_auc
    run.best_auc, run.bad_epochs = (metrics["val_auc"], 0) if improved else (run.best_auc, run.bad_epochs + 1)
    early = cfg.patience > 0 and run.bad_epochs >= cfg.patience
    run.done = early or epoch + 1 == cfg.epochs
    folder.epoch_end(metrics, run.best_auc)
    yield {"type": "epoch", "epoch": epoch + 1, "metrics": metrics, "best_auc": run.best_auc}
    ckpt = run.checkpoint(epoch + 1, metrics, finished=run.done)
    if improved:
        best = {k: v for k, v in ckpt.items() if k not in ("optimizer", "train_state_dict")}
        yield {"type": "checkpoint", "path": str(folder.checkpoint("best.pt", best)), "best": True}
    yield {"type": "checkpoint", "path": str(folder.checkpoint("last.pt", ckpt)), "best": False}
    if run.done:
        message = f"trained {epoch + 1} epoch{'s' if epoch else ''}"
        if early and epoch + 1 < cfg.epochs:
            message = f"early stop after {epoch + 1} epochs: no AUC gain for {cfg.patience} epochs"
        folder.status(state="finished", epoch=epoch + 1, step=run.step, message=message)
        yield {"type": "finished", "run_dir": str(folder.path), "best_auc": run.best_auc, "message": message}
