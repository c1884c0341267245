"""`python -m pcam_core train`, and what `crossval` shares with it: the flags of every TrainConfig field, the
config they give, a stop on SIGTERM or Ctrl-C, and the progress printed while a run trains."""

from __future__ import annotations

import argparse
import os

from tqdm import tqdm


def train_config(args: argparse.Namespace):
    """The TrainConfig the command line gave (only the flags given; the rest keep their defaults)."""
    from pcam_core.runs.config import TrainConfig

    given = {k: v for k, v in vars(args).items() if k in TrainConfig.field_help() and v is not None}
    extra = sorted(set(given) - {"resume", "device", "threads"}) if given.get("resume") else []
    if extra:
        extra = ", ".join(f"--{k.replace('_', '-')}" for k in extra)
        raise ValueError(f"--resume continues the run's saved config; drop {extra}")
    return TrainConfig(**given)


def stop_on_signals():
    """A threading.Event set by SIGTERM or Ctrl-C: the run then saves a resumable last.pt and ends."""
    import signal
    import threading

    stop = threading.Event()
    trainer = os.getpid()

    def request_stop(signum, frame):
        signal.signal(signum, signal.SIG_DFL)  # a second signal ends the trainer at once
        if os.getpid() != trainer:  # a forked worker (the pack pool) inherited this handler: just end
            os.kill(os.getpid(), signum)
        stop.set()  # the run saves a resumable last.pt at the end of this step

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, request_stop)
    return stop


def cmd_train(args: argparse.Namespace) -> int:
    from pcam_core.training.train import fit

    cfg = train_config(args)
    show_training(fit(cfg, stop_on_signals()), cfg.epochs if not cfg.resume else None)
    return 0


def show_training(events, epochs: int | None) -> None:
    """Prints train's events: a line at the start, a progress bar per epoch, a line per epoch and at the end
    (on rank 0 only under torchrun)."""
    show = os.environ.get("RANK", "0") == "0"
    bar = None
    try:
        for event in events:
            kind = event["type"]
            if not show:
                continue
            if kind == "start":
                print(f"run {event['run_dir']}: {event['n_train']} train / {event['n_val']} val patches, "
                      f"{event['device']} x{event['world_size']}, {event['setting']}"
                      + (f", resumed at step {event['resumed_at_step']}" if event["resumed_at_step"] else ""))
            elif kind == "step":
                if bar is None:
                    done = event["step"] - 1 - event["epoch"] * event["steps_per_epoch"]
                    bar = tqdm(total=event["steps_per_epoch"], initial=done, unit="step", dynamic_ncols=True,
                               desc=f"epoch {event['epoch'] + 1}/{epochs or '-'}")
                bar.update(1)
                bar.set_postfix(loss=f"{event['loss']:.3f}", img_s=f"{event['img_per_s']:.0f}")
            elif kind in ("epoch", "stopped", "finished", "failed") and bar is not None:
                bar.close()
                bar = None
            if kind == "epoch":
                m = event["metrics"]
                print(f"epoch {m['epoch']}: train loss {m['train_loss']:.4f}  val loss {m['val_loss']:.4f}  "
                      f"val AUC {m['val_auc']:.4f}  (best {event['best_auc']:.4f}, {m['seconds']:.0f} s)")
            elif kind == "stopped":
                print(f"stopped at step {event['step']}; resume with --resume {event['run_dir']}")
            elif kind == "finished":
                print(f"{event['message']}; best val AUC {event['best_auc']:.4f}; "
                      f"run folder {event['run_dir']}")
    finally:
        if bar is not None:
            bar.close()


def add_parsers(sub) -> None:
    s = sub.add_parser("train", help="train a model into a run folder (config, status, metrics, checkpoints)")
    add_train_flags(s)
    s.set_defaults(func=cmd_train)


def add_train_flags(s, leave_out: tuple[str, ...] = ()) -> None:
    """A flag per TrainConfig field but `leave_out`, defaulting to None (`train_config` keeps those given)."""
    from dataclasses import fields

    from pcam_core.runs.config import FINETUNE, PRECISIONS, SCHEDULES, TrainConfig

    choices = {"schedule": SCHEDULES, "finetune": FINETUNE, "precision": PRECISIONS,
               "device": ("auto", "cpu", "cuda"), "val_tta": (1, 2, 4, 8)}
    helps = TrainConfig.field_help()
    for f in fields(TrainConfig):
        if f.name in leave_out:
            continue
        flag, default = "--" + f.name.replace("_", "-"), f.default
        switch = str(f.type).startswith("bool")
        text = f"{helps[f.name]} (default: {'timed' if switch and default is None else default})"
        if switch:
            s.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            kind = type(default) if default is not None else str
            s.add_argument(flag, type=kind, choices=choices.get(f.name), default=None, help=text)
