"""`python -m pcam_core <command>`: the command line over the library.

Each command is a function `cmd_<name>(args) -> int`; `main` turns expected failures
(ValueError, FileNotFoundError, ...) into one line on stderr and a non-zero exit. Heavy
modules (torch) are imported inside the commands that need them so `info` and `pack` start fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from tqdm import tqdm

# failures a user can cause: `main` turns them into one line on stderr and exit status 2
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, KeyError)


class _Bar:
    """A tqdm bar driven by `progress(done, total)` callbacks from the library."""

    def __init__(self, desc: str, unit: str = "patch"):
        self.desc, self.unit, self.bar = desc, unit, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, dynamic_ncols=True,
                            disable=_rank() > 0)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_demo(args: argparse.Namespace) -> int:
    from pcam_core.demo import make_demo

    bar = _Bar("demo")
    try:
        summary = make_demo(args.out, n_train=args.n_train, n_test=args.n_test, seed=args.seed, progress=bar)
    finally:
        bar.close()
    print(f"wrote {summary['n_train']} train ({summary['n_positive']} tumour) and {summary['n_test']} test "
          f"patches to {args.out}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from pcam_core.data import open_dataset

    bar = _Bar("pack")
    try:
        store = open_dataset(args.data, progress=bar)
    finally:
        bar.close()
    print(store.describe())
    return 0


def cmd_pack(args: argparse.Namespace) -> int:
    from pcam_core.data import pack

    bar = _Bar("pack")
    try:
        info = pack(args.data, progress=bar, force=args.force)
    finally:
        bar.close()
    state = "reused" if info["reused"] else f"packed {info['n']} patches in {info['seconds']:.1f} s"
    print(f"{state}: cache at {info['cache_dir']} ({info['n_skipped']} bad files skipped)")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import signal
    import threading

    from pcam_core.config import TrainConfig
    from pcam_core.train import fit

    given = {k: v for k, v in vars(args).items() if k in TrainConfig.field_help() and v is not None}
    extra = sorted(set(given) - {"resume", "device", "threads"}) if args.resume else []
    if extra:
        extra = ", ".join(f"--{k.replace('_', '-')}" for k in extra)
        raise ValueError(f"--resume continues the run's saved config; drop {extra}")
    cfg = TrainConfig(**given)
    stop = threading.Event()
    trainer = os.getpid()

    def request_stop(signum, frame):
        signal.signal(signum, signal.SIG_DFL)  # a second signal ends the trainer at once
        if os.getpid() != trainer:  # a forked worker (the pack pool) inherited this handler: just end
            os.kill(os.getpid(), signum)
        stop.set()  # the run saves a resumable last.pt at the end of this step

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, request_stop)
    show = os.environ.get("RANK", "0") == "0"
    bar = None
    try:
        for event in fit(cfg, stop):
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
                               desc=f"epoch {event['epoch'] + 1}/{cfg.epochs if not cfg.resume else '-'}")
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
    return 0


def _add_train_parser(sub) -> None:
    from dataclasses import fields

    from pcam_core.config import FINETUNE, PRECISIONS, SCHEDULES, TrainConfig

    s = sub.add_parser("train", help="train a model into a run folder (config, status, metrics, checkpoints)")
    choices = {"schedule": SCHEDULES, "finetune": FINETUNE, "precision": PRECISIONS,
               "device": ("auto", "cpu", "cuda"), "val_tta": (1, 2, 4, 8)}
    helps = TrainConfig.field_help()
    for f in fields(TrainConfig):
        flag, default = "--" + f.name.replace("_", "-"), f.default
        text = f"{helps[f.name]} (default: {default})"
        if isinstance(default, bool):
            s.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            kind = type(default) if default is not None else str
            s.add_argument(flag, type=kind, choices=choices.get(f.name), default=None, help=text)
    s.set_defaults(func=cmd_train)


def _writable_file(path: Path) -> Path:
    """Fails before any long work when `path` cannot be written (creates its folder)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the folder of {path}: {e.strerror or e}; pick another --out") from e
    target = path if path.exists() else path.parent
    if path.is_dir() or not os.access(target, os.W_OK):
        raise ValueError(f"cannot write {path}: not a writable file path; choose another --out")
    return path


def _open_store(data: Path):
    from pcam_core.data import open_dataset

    bar = _Bar("pack")
    try:
        return open_dataset(data, progress=bar)
    finally:
        bar.close()


class _ReportedByRankZero(ValueError):
    """An error rank 0 has already printed; the other ranks exit without repeating it."""


def _rank() -> int:
    """This process's rank under torchrun (0 otherwise): only rank 0 prints results and writes files.

    Read from the environment, not `distributed.Distributed`, so commands that never touch torch start fast.
    """
    return int(os.environ.get("RANK", "0"))


def _open_store_ranked(args: argparse.Namespace):
    """`_open_store`, except under torchrun: rank 0 packs the data while the other ranks wait, then they
    open the cache it wrote (several ranks packing one folder at once would each do all the work)."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return _open_store(args.data)
    from pcam_core.data import open_dataset
    from pcam_core.distributed import Distributed

    ctx = Distributed(args.device)
    store, failure = None, None
    if ctx.main:
        try:
            store = _open_store(args.data)
        except USER_ERRORS as e:
            failure = e
    message = ctx.same(str(failure) if failure else None)  # also the barrier the other ranks wait at
    if failure:
        raise failure
    if message:
        raise _ReportedByRankZero(message)
    return store or open_dataset(args.data)


def _predictions(args: argparse.Namespace, store, split: str):
    from pcam_core.infer import predictions_table

    bar = _Bar(f"predict {split} x{args.tta}")
    try:
        return predictions_table(args.checkpoint, store, split, tta=args.tta, device=args.device,
                                 batch_size=args.batch_size, precision=args.precision, progress=bar)
    finally:
        bar.close()


def cmd_predict(args: argparse.Namespace) -> int:
    out = _writable_file(args.out)
    store = _open_store_ranked(args)
    table = _predictions(args, store, args.split)
    if _rank():
        return 0
    table[["id", "prob"]].to_csv(out, index=False, float_format="%.8g")
    print(f"wrote {len(table):,} {args.split} predictions (TTA {args.tta}, mean spread "
          f"{table['spread'].mean():.4f}) to {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from pcam_core import metrics

    out = _writable_file(args.out) if args.out else None
    store = _open_store_ranked(args)
    split = args.split
    if split is None:
        from pcam_core.infer import holdout_indices

        try:
            holdout_indices(args.checkpoint, store)
            split = "holdout"
        except ValueError as e:
            split = "valid" if "valid" in store.split_names() else "train"
            if not _rank():
                print(f"note: {e}; evaluating on the {split} split, which may include training patches")
    if split != "holdout" and not store.has_labels(split):
        raise ValueError(f"the {split} patches of {store.root} are not all labelled; evaluate needs labels "
                         f"(splits here: {', '.join(store.split_names())}; the Kaggle test part has none)")
    table = _predictions(args, store, split)
    if _rank():
        return 0
    y, p = table["label"].to_numpy(), table["prob"].to_numpy()
    s = metrics.summary(y, p, threshold=args.threshold)
    print(f"{split}: {s['n']:,} patches ({s['n_positive']:,} tumour), TTA {args.tta}")
    print(f"ROC AUC {s['roc_auc']:.4f} (95% CI {s['roc_auc_ci_low']:.4f}-{s['roc_auc_ci_high']:.4f})  "
          f"PR AUC {s['pr_auc']:.4f}")
    print(f"at {args.threshold:g}: accuracy {s['accuracy']:.4f}  sensitivity {s['sensitivity']:.4f}  "
          f"specificity {s['specificity']:.4f}  F1 {s['f1']:.4f}  (tn {s['tn']} fp {s['fp']} fn {s['fn']} "
          f"tp {s['tp']})")
    print(f"Youden threshold {s['youden_threshold']:.4f}  Brier {s['brier']:.4f}  ECE {s['ece']:.4f}")
    if out is not None:
        report = {"checkpoints": [str(c) for c in args.checkpoint], "data": str(store.root), "split": split,
                  "tta": args.tta, "summary": s,
                  "roc": metrics.roc_points(y, p).to_dict(orient="list"),
                  "pr": metrics.pr_points(y, p).fillna(-1).to_dict(orient="list"),
                  "calibration": metrics.calibration(y, p).fillna(-1).to_dict(orient="list")}
        out.write_text(json.dumps(report, indent=1))
        print(f"wrote {out}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from pcam_core.submission import expected_ids, validate_submission, write_submission

    out = _writable_file(args.out)
    store = _open_store_ranked(args)
    expected_ids(store)  # no test part: fail before predicting
    table = _predictions(args, store, "test")
    if _rank():
        return 0
    table = write_submission(table, store, out)
    problems = validate_submission(out, store)
    if problems:
        raise ValueError(f"{out} was written but does not validate: " + "; ".join(problems))
    print(f"wrote {len(table):,} test probabilities to {out} (valid: every test id once, labels in [0, 1])")
    return 0


def cmd_cam(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd
    from PIL import Image

    from pcam_core import cam
    from pcam_core.infer import predict
    from pcam_core.models import load_checkpoint, resolve_device

    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the output folder {args.out}: {e.strerror or e}") from e
    if not os.access(args.out, os.W_OK):
        raise ValueError(f"cannot write into {args.out}; choose a writable --out folder")
    store = _open_store(args.data)
    indices = store.index_of(args.ids)
    loaded = load_checkpoint(args.checkpoint, device=resolve_device(args.device))
    maps = cam.compute_cams(loaded, store, indices, method=args.method, layer=args.layer, target=args.target,
                            device=args.device)
    images = store.batch(indices)
    table = pd.DataFrame({"id": store.ids[indices], "label": store.labels[indices],
                          "prob": predict(loaded, store, indices, device=args.device)["prob"],
                          "centre_focus": cam.centre_focus(maps)})
    masks = store.masks(indices)
    if masks is not None:
        table = table.assign(**cam.localisation(maps, masks))
    for pid, image, heat in zip(table["id"], images, maps, strict=True):
        shown = cam.overlay(image, heat, alpha=args.alpha, colormap=args.colormap)
        pair = np.concatenate([image, shown], axis=1)  # (96, 192, 3): the patch beside its overlay
        big = Image.fromarray(pair).resize((pair.shape[1] * 3, pair.shape[0] * 3), Image.NEAREST)
        big.save(args.out / f"{pid}.png")
    table.to_csv(args.out / "cams.csv", index=False, float_format="%.5g")
    print(f"wrote {len(table)} overlays (patch | {args.method}, {args.target}) and cams.csv to {args.out}; "
          f"mean centre focus {table['centre_focus'].mean():.3f} (uniform map: 0.111)")
    return 0


def _add_inference_parsers(sub) -> None:
    # choices are spelled out, not imported from infer/cam, so that building the parser never imports torch
    def common(s, several: bool = True) -> None:
        s.add_argument("--checkpoint", required=True, type=Path, nargs="+" if several else None,
                       help="checkpoint file or run folder" + ("s (averaged)" if several else ""))
        s.add_argument("--data", required=True, type=Path)
        s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        if several:
            s.add_argument("--tta", type=int, default=1, choices=(1, 2, 4, 8), help="dihedral views averaged")
            s.add_argument("--batch-size", type=int,
                           help="patches per forward pass (default: 2048 on CUDA, 32-64 on CPU by model)")
            s.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                           help="auto: bf16 autocast on CUDA and on CPUs with AMX")

    s = sub.add_parser("predict", help="tumour probabilities for one split, as a CSV id,prob")
    common(s)
    s.add_argument("--split", default="test", choices=["holdout", "train", "valid", "test"],
                   help="holdout: the patches the checkpoints' training runs held out for validation")
    s.add_argument("--out", required=True, type=Path)
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("evaluate", help="AUC with its CI, threshold metrics and calibration on labelled data")
    common(s)
    s.add_argument("--split", choices=["holdout", "train", "valid", "test"],
                   help="holdout: the patches the checkpoints' training held out (the default when known; "
                        "else valid, else train)")
    s.add_argument("--threshold", type=float, default=0.5, help="for accuracy, sensitivity, specificity, F1")
    s.add_argument("--out", type=Path, help="metrics.json: the summary and ROC, PR and calibration points")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("submit", help="predict the test part and write a validated Kaggle submission CSV")
    common(s)
    s.add_argument("--out", required=True, type=Path)
    s.set_defaults(func=cmd_submit)

    s = sub.add_parser("cam", help="Grad-CAM overlays (PNG) and scores (cams.csv) for chosen patches")
    common(s, several=False)
    s.add_argument("--ids", required=True, nargs="+", help="patch ids")
    s.add_argument("--method", default="gradcam", help="gradcam, gradcam++, eigencam, layercam or scorecam")
    s.add_argument("--layer", help="module name of the target layer (default: the architecture's last stage)")
    s.add_argument("--target", default="tumour", choices=("tumour", "normal"),
                   help="explain the tumour or the normal side of the logit")
    s.add_argument("--alpha", type=float, default=0.5, help="heat-map opacity in [0, 1]")
    s.add_argument("--colormap", default="jet", help="matplotlib colour map")
    s.add_argument("--out", required=True, type=Path, help="output folder")
    s.set_defaults(func=cmd_cam)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pcam_core", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("demo", help="write the synthetic demo dataset in the Kaggle layout")
    s.add_argument("--out", required=True, type=Path)
    s.add_argument("--n-train", type=int, default=5000)
    s.add_argument("--n-test", type=int, default=500)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("info", help="summarise a dataset folder (packs it first when needed)")
    s.add_argument("--data", required=True, type=Path)
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("pack", help="decode a Kaggle or image folder once into the uint8 cache")
    s.add_argument("--data", required=True, type=Path)
    s.add_argument("--force", action="store_true", help="rebuild even when the cache is current")
    s.set_defaults(func=cmd_pack)

    _add_train_parser(sub)
    _add_inference_parsers(sub)

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
    except _ReportedByRankZero:
        return 2
    except USER_ERRORS as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error{f' (rank {_rank()})' if _rank() else ''}: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if "torch" in sys.modules:  # under torchrun: leave the process group cleanly
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()
