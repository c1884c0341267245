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
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pcam_core.config import TrainConfig
from pcam_core.data import PatchStore, open_dataset
from pcam_core.distributed import Distributed
from pcam_core.models import (
    create_model,
    head_module,
    model_args_for,
    normalization_for,
    read_checkpoint,
)
from pcam_core.runs import RunFolder
from pcam_core.transforms import augment_batch, to_model_input
from pcam_core.validation import evaluate, scores, split_train_val

log = logging.getLogger(__name__)

RESIDENT_CPU_BYTES = 4 << 30  # keep the uint8 training set in RAM up to 4 GiB (220k patches: 6 GiB, streamed)
RESIDENT_GPU_SHARE = 0.5  # ... and on a GPU while it takes under half the free memory


def training_precision(precision: str, device: torch.device, model: nn.Module) -> torch.dtype | None:
    """The autocast dtype for training (None: plain float32).

    "auto" is bf16 on CUDA, and on CPUs with AMX tiles for networks without depthwise convolutions:
    measured on this machine's Xeon, a bf16 training step is 2.5x faster for base_cnn but 1.4x slower
    for efficientnet_lite0, whose depthwise convolutions oneDNN runs poorly in bf16 (BENCHMARKS.md).
    """
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16
        depthwise = any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in model.modules())
        return torch.bfloat16 if torch.cpu._is_amx_tile_supported() and not depthwise else None
    return torch.bfloat16 if precision == "bf16" else None


def lr_factor(step: int, total: int, schedule: str, warmup_frac: float) -> float:
    """Learning-rate multiplier at `step` of `total`: one-cycle (linear warm-up, cosine down) or cosine."""
    warm = int(total * warmup_frac) if schedule == "onecycle" else 0
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def scheduled_lr(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate at `step`: one schedule over the run, or one per phase under head_then_full."""
    start, end, scale = 0, cfg.epochs, 1.0
    if cfg.finetune == "head_then_full":
        head = step < cfg.head_epochs * steps_per_epoch
        start, end = (0, cfg.head_epochs) if head else (cfg.head_epochs, cfg.epochs)
        scale = 1.0 if head else cfg.unfreeze_lr_factor
    return cfg.lr * scale * lr_factor(step - start * steps_per_epoch, (end - start) * steps_per_epoch,
                                      cfg.schedule, cfg.warmup_frac)


class _Patches:
    """The uint8 training patches: resident on the device when they fit, else read per batch."""

    def __init__(self, store: PatchStore, indices: np.ndarray, device: torch.device):
        self.store, self.indices, self.device = store, indices, device
        nbytes = len(indices) * 96 * 96 * 3
        budget = (torch.cuda.mem_get_info(device)[0] * RESIDENT_GPU_SHARE if device.type == "cuda"
                  else RESIDENT_CPU_BYTES)
        self.resident = None
        if nbytes <= budget:
            self.resident = torch.empty((len(indices), 96, 96, 3), dtype=torch.uint8, device=device)
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


def _param_groups(model: nn.Module) -> list[dict]:
    """AdamW groups: backbone and head, each split into decayed weights and undecayed biases/norms."""
    head = {id(p) for p in head_module(model).parameters()}
    groups = {}
    for p in model.parameters():
        key = ("head" if id(p) in head else "backbone", p.ndim > 1)
        groups.setdefault(key, []).append(p)
    return [{"params": ps, "part": part, "weight_decay_on": decay}
            for (part, decay), ps in sorted(groups.items())]


class _EMA:
    """Exponential moving average of all float weights and buffers; warms up as timm's ModelEmaV2 does."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                self.state[k].lerp_(v, 1 - decay)
            else:
                self.state[k].copy_(v)


def _resolve_resume(cfg: TrainConfig) -> tuple[TrainConfig, dict | None]:
    """For --resume: the run's saved config (device and threads from the new one) and its last.pt."""
    if not cfg.resume:
        return cfg, None
    run_dir = Path(cfg.resume)
    saved = TrainConfig.load(run_dir / "config.json")
    if not (run_dir / "last.pt").is_file():
        raise FileNotFoundError(f"{run_dir} has no last.pt to resume from; start a new run instead")
    state = read_checkpoint(run_dir / "last.pt")
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
    ctx = Distributed(cfg.device)
    run = RunFolder(Path(ctx.same(str(cfg.run_dir()))), write=ctx.main)
    try:
        yield from _fit(cfg, state, ctx, run, stop or threading.Event())
    except torch.cuda.OutOfMemoryError as e:
        message = (f"GPU out of memory at batch size {cfg.batch_size}; try --batch-size "
                   f"{max(1, cfg.batch_size // 2)}")
        run.status(state="failed", message=message)
        yield {"type": "failed", "message": message}
        raise ValueError(message) from e
    except Exception as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        run.status(state="failed", message=message)
        yield {"type": "failed", "message": message}
        raise
    finally:
        ctx.close()


def _fit(cfg: TrainConfig, state: dict | None, ctx: Distributed, run: RunFolder,
         stop: threading.Event) -> Iterator[dict]:
    device = ctx.device
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run.start(cfg, completed_epochs=state["epoch"] if state else None)
    store = open_dataset(cfg.data)
    train_idx, val_idx = split_train_val(store, cfg)
    run.save_val_ids(store.ids[val_idx])
    batch = min(cfg.batch_size, len(train_idx) // ctx.world)
    steps_per_epoch = len(train_idx) // (batch * ctx.world)
    if steps_per_epoch < 1:
        raise ValueError(f"only {len(train_idx)} training patches for {ctx.world} processes; add data")

    torch.manual_seed(cfg.seed)
    model_args = model_args_for(cfg.model, cfg.crop)
    model = create_model(cfg.model, pretrained=cfg.pretrained and state is None, **model_args)
    normalization = normalization_for(model)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    # fused: one kernel for the whole update on CUDA instead of several per parameter tensor
    optimizer = torch.optim.AdamW(_param_groups(model), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  fused=device.type == "cuda")
    # cudnn.benchmark stays off: on an H100 its search added 20 s to the first step and 3 s to the first
    # validation batch, to gain 3-6% per step afterwards (BENCHMARKS.md, GPU) - a loss for runs this short
    for g in optimizer.param_groups:
        g["weight_decay"] = cfg.weight_decay if g["weight_decay_on"] else 0.0
    ema = _EMA(model, cfg.ema_decay) if cfg.ema_decay else None
    start_step, best_auc, bad_epochs = 0, -1.0, 0
    if state is not None:
        if state["steps_per_epoch"] != steps_per_epoch:
            raise ValueError(f"cannot resume exactly: the run had {state['steps_per_epoch']} steps per "
                             f"epoch, this setup gives {steps_per_epoch} (same data and processes needed)")
        model.load_state_dict(state["train_state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.state = {k: v.to(device) for k, v in state["state_dict"].items()}
        start_step, best_auc, bad_epochs = state["step"], state["best_auc"], state["bad_epochs"]
    head = head_module(model)
    head_params = {id(p) for p in head.parameters()}
    backbone_params = [p for p in model.parameters() if id(p) not in head_params]
    head_norms = {id(m) for m in head.modules()}
    backbone_norms = [m for m in model.modules()
                      if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in head_norms]
    eval_model = copy.deepcopy(model) if ema is not None else model

    labels = torch.from_numpy(store.labels[train_idx].astype(np.float32)).to(device)
    patches = _Patches(store, train_idx, device)
    amp = training_precision(cfg.precision, device, model)
    generator = torch.Generator(device=device)
    ckpt_meta = {"model_name": cfg.model, "model_args": model_args, "normalization": normalization,
                 "config": cfg.to_dict(), "steps_per_epoch": steps_per_epoch, "world_size": ctx.world}
    yield {"type": "start", "run_dir": str(run.path), "n_train": len(train_idx), "n_val": len(val_idx),
           "steps_per_epoch": steps_per_epoch, "epochs": cfg.epochs, "device": str(device),
           "precision": str(amp).replace("torch.", "") if amp else "fp32", "world_size": ctx.world,
           "resumed_at_step": start_step}

    frozen, wrapped = None, model
    step = start_step
    for epoch in range(start_step // steps_per_epoch, cfg.epochs):
        head_only = cfg.finetune == "head" or (cfg.finetune == "head_then_full" and epoch < cfg.head_epochs)
        if frozen != head_only:  # (re)wrap: DDP only syncs the parameters that need grads when it is built
            frozen = head_only
            for p in backbone_params:
                p.requires_grad_(not head_only)
            wrapped = model
            if ctx.world > 1:
                wrapped = nn.parallel.DistributedDataParallel(
                    model, device_ids=[device.index] if device.type == "cuda" else None)
            if cfg.compile:
                wrapped = torch.compile(wrapped)
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(train_idx))
        # every step's batch positions, sorted (memmap reads in file order), and one copy on the device
        order = order[:steps_per_epoch * ctx.world * batch].reshape(steps_per_epoch, ctx.world, batch)
        order = np.sort(order, axis=-1)
        order_on_device = torch.from_numpy(order).to(device)
        model.train()
        if head_only:
            for m in backbone_norms:
                m.eval()  # a frozen backbone keeps its BatchNorm statistics, as Keras' trainable=False does
        started, losses, seen = time.perf_counter(), [], 0
        for s in range(step - epoch * steps_per_epoch, steps_per_epoch):
            lr = scheduled_lr(cfg, step, steps_per_epoch)
            for g in optimizer.param_groups:
                g["lr"] = lr
            positions, positions_on_device = order[s, ctx.rank], order_on_device[s, ctx.rank]
            seed = (cfg.seed * 1_000_003 + step) * 64 + ctx.rank
            torch.manual_seed(seed)  # dropout
            generator.manual_seed(seed)  # augmentation
            x = patches.batch(positions, positions_on_device)  # (B, 96, 96, 3) uint8
            if cfg.augment:
                inputs = augment_batch(x, normalization, cfg.crop, cfg.jitter, generator)
            else:
                inputs = to_model_input(x, normalization, cfg.crop)
            inputs = inputs.contiguous(memory_format=memory_format)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                logits = wrapped(inputs).float().reshape(-1)
            loss = F.binary_cross_entropy_with_logits(logits, labels[positions_on_device])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ema is not None:
                ema.update(model, step)
            step += 1
            # Reading a loss waits for its step to finish. On a GPU, read the one before: by now it is done,
            # and the device keeps one step queued instead of idling while Python prepares the next.
            losses.append(loss.detach())
            shown = losses[-2 if device.type == "cuda" and len(losses) > 1 else -1].item()
            seen += len(positions) * ctx.world
            rate = seen / (time.perf_counter() - started)
            run.progress(epoch=epoch, step=step, steps_per_epoch=steps_per_epoch, loss=shown, lr=lr)
            yield {"type": "step", "epoch": epoch, "step": step, "steps_per_epoch": steps_per_epoch,
                   "loss": shown, "lr": lr, "img_per_s": rate}
            if ctx.any(stop.is_set()):
                path = run.checkpoint("last.pt", _resume_state(ckpt_meta, model, optimizer, ema, epoch, step,
                                                               best_auc, bad_epochs, {}))
                run.status(state="stopped", epoch=epoch, step=step,
                           message=f"stopped at step {step}; resume with --resume {run.path}")
                yield {"type": "stopped", "path": str(path), "step": step, "run_dir": str(run.path)}
                return

        if ema is not None:
            eval_model.load_state_dict(ema.state)
        train_loss = torch.stack(losses).float().mean().item() if losses else float("nan")
        metrics = {"epoch": epoch + 1, "train_loss": train_loss,
                   **_validate(eval_model, store, val_idx, normalization, cfg, ctx), "lr": lr,
                   "seconds": time.perf_counter() - started}
        improved = metrics["val_auc"] > best_auc
        best_auc, bad_epochs = (metrics["val_auc"], 0) if improved else (best_auc, bad_epochs + 1)
        early = cfg.patience > 0 and bad_epochs >= cfg.patience
        done = early or epoch + 1 == cfg.epochs
        run.epoch_end(metrics, best_auc)
        yield {"type": "epoch", "epoch": epoch + 1, "metrics": metrics, "best_auc": best_auc}
        resume_state = _resume_state(ckpt_meta, model, optimizer, ema, epoch + 1, step, best_auc, bad_epochs,
                                     metrics, finished=done)
        if improved:
            best = {k: v for k, v in resume_state.items() if k not in ("optimizer", "train_state_dict")}
            yield {"type": "checkpoint", "path": str(run.checkpoint("best.pt", best)), "best": True}
        yield {"type": "checkpoint", "path": str(run.checkpoint("last.pt", resume_state)), "best": False}
        if done:
            message = f"trained {epoch + 1} epochs"
            if early and epoch + 1 < cfg.epochs:
                message = f"early stop after {epoch + 1} epochs: no AUC gain for {cfg.patience} epochs"
            run.status(state="finished", epoch=epoch + 1, step=step, message=message)
            yield {"type": "finished", "run_dir": str(run.path), "best_auc": best_auc, "message": message}
            return


def _validate(model: nn.Module, store: PatchStore, val_idx: np.ndarray, normalization: dict,
              cfg: TrainConfig, ctx: Distributed) -> dict:
    """val_loss and val_auc over all of val_idx; under torchrun each rank predicts a shard."""
    shard = ctx.shard(val_idx)
    shard_prob = evaluate(model, store, shard, normalization, cfg.crop, ctx.device, cfg.val_tta,
                          cfg.precision)["prob"] if len(shard) else np.empty(0, np.float32)
    prob = ctx.unshard(ctx.gather(shard_prob))
    return scores(store.labels[val_idx], prob)


def _resume_state(meta: dict, model: nn.Module, optimizer: torch.optim.Optimizer, ema: _EMA | None,
                  epoch: int, step: int, best_auc: float, bad_epochs: int, metrics: dict,
                  finished: bool = False) -> dict:
    """A checkpoint: weights to use (EMA ones when kept) plus what an exact resume needs."""
    weights = {k: v.detach().cpu() for k, v in (ema.state if ema else model.state_dict()).items()}
    return {**meta, "state_dict": weights, "epoch": epoch, "step": step, "metrics": metrics,
            "best_auc": best_auc, "bad_epochs": bad_epochs, "finished": finished,
            "train_state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict()}

