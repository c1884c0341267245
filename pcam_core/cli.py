"""`python -m pcam_core <command>`: the command line over the library.

Each command is a function `cmd_<name>(args) -> int` (the inference commands live in `cli_predict.py`);
`main` turns the errors a user can cause (`cli_common.USER_ERRORS`) into one line on stderr and a
non-zero exit. Heavy modules (torch) are imported inside the commands that need them so `info` and
`pack` start fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from tqdm import tqdm

from pcam_core import cli_labels, cli_predict, cli_slide
from pcam_core.cli_common import USER_ERRORS, Bar, ReportedByRankZero, rank


def cmd_demo(args: argparse.Namespace) -> int:
    from pcam_core.demo import make_demo

    bar = Bar("demo")
    try:
        summary = make_demo(args.out, n_train=args.n_train, n_test=args.n_test, seed=args.seed, progress=bar)
    finally:
        bar.close()
    print(f"wrote {summary['n_train']} train ({summary['n_positive']} tumour) and {summary['n_test']} test "
          f"patches to {args.out}")
    if args.slide:
        from pcam_core.demo_slide import make_demo_slide

        info = make_demo_slide(args.out / "slides" / "demo-slide.tif", seed=args.seed)
        print(f"wrote a {info['width']} x {info['height']} px demo slide to {info['path']}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from pcam_core.data import open_dataset

    bar = Bar("pack")
    try:
        store = open_dataset(args.data, progress=bar)
    finally:
        bar.close()
    print(store.describe())
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from pcam_core.data import pack

    bar = Bar("pack")
    try:
        info = pack(args.data, progress=bar, force=args.force)
    finally:
        bar.close()
    state = "reused" if info["reused"] else f"packed {info['n']} patches in {info['seconds']:.1f} s"
    print(f"{state}: cache at {info['cache_dir']} ({info['n_skipped']} bad files skipped)")
    return 0


def train_config(args: argparse.Namespace):
    """The TrainConfig the command line gave (only the flags given; the rest keep their defaults)."""
    from pcam_core.config import TrainConfig

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
    from pcam_core.train import fit

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
                      f"{event['device']} x{event['world_size']}, {event['precision']}"
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


def _add_train_parser(sub) -> None:
    s = sub.add_parser("train", help="train a model into a run folder (config, status, metrics, checkpoints)")
    add_train_flags(s)
    s.set_defaults(func=cmd_train)


def add_train_flags(s, leave_out: tuple[str, ...] = ()) -> None:
    """A flag per TrainConfig field but `leave_out`, defaulting to None (`train_config` keeps those given)."""
    from dataclasses import fields

    from pcam_core.config import FINETUNE, PRECISIONS, SCHEDULES, TrainConfig

    choices = {"schedule": SCHEDULES, "finetune": FINETUNE, "precision": PRECISIONS,
               "device": ("auto", "cpu", "cuda"), "val_tta": (1, 2, 4, 8)}
    helps = TrainConfig.field_help()
    for f in fields(TrainConfig):
        if f.name in leave_out:
            continue
        flag, default = "--" + f.name.replace("_", "-"), f.default
        text = f"{helps[f.name]} (default: {default})"
        if isinstance(default, bool):
            s.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            kind = type(default) if default is not None else str
            s.add_argument(flag, type=kind, choices=choices.get(f.name), default=None, help=text)



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pcam_core", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("demo", help="write the synthetic demo dataset in the Kaggle layout")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--n-train", type=int, default=5000)
    s.add_argument("--n-test", type=int, default=500)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--slide", action=argparse.BooleanOptionalAction, default=True,
                   help="also write a synthetic whole-slide image with known tumour to OUT/slides")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("info", help="summarise a dataset folder (packs it first when needed)")
    s.add_argument("--data", required=True, type=Path)
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("pack", help="decode a Kaggle or image folder once into the uint8 cache")
    s.add_argument("--data", required=True, type=Path)
    s.add_argument("--force", action="store_true", help="rebuild even when the cache is current")
    s.set_defaults(func=cmd_pack)

    _add_train_parser(sub)
    cli_predict.add_parsers(sub)
    cli_slide.add_parsers(sub)
    cli_labels.add_parsers(sub)

    s = sub.add_parser("bench", help="measure data, training and inference speed")
    s.add_argument("--data", type=Path, help="dataset folder (default: a fresh demo set)")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument("--only", nargs="+", help="sections to run (default: all)")
    s.set_defaults(func=cmd_bench)
    return p


def cmd_bench(args: argparse.Namespace) -> int:
    from pcam_core.bench import run_bench

    run_bench(args.data, device=args.device, only=args.only)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except ReportedByRankZero:
        return 2
    except USER_ERRORS as e:
        print(f"error{f' (rank {rank()})' if rank() else ''}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if "torch" in sys.modules:  # under torchrun: leave the process group cleanly
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
