"""`python -m pcam_core <command>`: the command line over the library.

Each command is a function `cmd_<name>(args) -> int` (each concern's commands live beside this file:
`predict.py`, `train.py`, `slide.py`, ...); `main` turns the errors a user can cause
(`common.USER_ERRORS`) into one line on stderr and a non-zero exit. Heavy modules (torch) are imported
inside the commands that need them so `info` and `pack` start fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pcam_core.cli import annotations as cli_annotations
from pcam_core.cli import embed as cli_embed
from pcam_core.cli import export as cli_export
from pcam_core.cli import labels as cli_labels
from pcam_core.cli import predict as cli_predict
from pcam_core.cli import review as cli_review
from pcam_core.cli import slide as cli_slide
from pcam_core.cli import train as cli_train
from pcam_core.cli.common import USER_ERRORS, Bar, ReportedByRankZero, keep_freed_memory, rank


def cmd_demo(args: argparse.Namespace) -> int:
    from pcam_core.data.demo import make_demo

    bar = Bar("demo")
    try:
        summary = make_demo(args.out, n_train=args.n_train, n_test=args.n_test, seed=args.seed, progress=bar)
    finally:
        bar.close()
    print(f"wrote {summary['n_train']} train ({summary['n_positive']} tumour) and {summary['n_test']} test "
          f"patches to {args.out}")
    if args.slide:
        from pcam_core.slides.demo import make_demo_slide

        info = make_demo_slide(args.out / "slides" / "demo-slide.tif", seed=args.seed)
        print(f"wrote a {info['width']} x {info['height']} px demo slide to {info['path']}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from pcam_core.data.readers import open_dataset

    bar = Bar("pack")
    try:
        store = open_dataset(args.data, progress=bar)
    finally:
        bar.close()
    print(store.describe())
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from pcam_core.data.readers import pack

    bar = Bar("pack")
    try:
        info = pack(args.data, progress=bar, force=args.force)
    finally:
        bar.close()
    state = "reused" if info["reused"] else f"packed {info['n']} patches in {info['seconds']:.1f} s"
    print(f"{state}: cache at {info['cache_dir']} ({info['n_skipped']} bad files skipped)")
    return 0


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

    cli_train.add_parsers(sub)
    cli_predict.add_parsers(sub)
    cli_slide.add_parsers(sub)
    cli_labels.add_parsers(sub)
    cli_embed.add_parsers(sub)
    cli_export.add_parsers(sub)
    cli_annotations.add_parsers(sub)
    cli_review.add_parsers(sub)

    s = sub.add_parser("bench", help="measure data, training and inference speed")
    s.add_argument("--data", type=Path, help="dataset folder (default: a fresh demo set)")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument("--only", nargs="+", help="sections to run (default: all)")
    s.add_argument("--keras-python", help="an interpreter with TensorFlow for the notebook's Keras pipeline "
                                          "(requirements-bench.txt; default: this one, if it has TensorFlow)")
    s.set_defaults(func=cmd_bench)
    return p


def cmd_bench(args: argparse.Namespace) -> int:
    from pcam_core.bench.stages import run_bench

    if args.keras_python:
        os.environ["PCAM_KERAS_PYTHON"] = args.keras_python
    run_bench(args.data, device=args.device, only=args.only)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    # the setting each model runs with, and a first calibration's timing, are worth a line on every command
    logging.getLogger("pcam_core.models.calibrate").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    keep_freed_memory()
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
