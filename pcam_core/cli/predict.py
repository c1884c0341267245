"""The inference commands: predict, evaluate, submit and cam (see `main.py` for the others)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from pcam_core.atomic import atomic_write, write_text
from pcam_core.cli.common import Bar, open_store, open_store_ranked, rank, writable_file


def _predictions(args: argparse.Namespace, store, split: str):
    from pcam_core.inference.infer import predictions_table

    bar = Bar(f"predict {split} x{args.tta}")
    try:
        return predictions_table(args.checkpoint, store, split, tta=args.tta, device=args.device,
                                 batch_size=args.batch_size, precision=args.precision, progress=bar,
                                 compile=args.compile)
    finally:
        bar.close()


def cmd_predict(args: argparse.Namespace) -> int:
    out = writable_file(args.out)
    store = open_store_ranked(args)
    table = _predictions(args, store, args.split)
    if rank():
        return 0
    with atomic_write(out) as tmp:
        table[["id", "prob"]].to_csv(tmp, index=False, float_format="%.8g")
    print(f"wrote {len(table):,} {args.split} predictions (TTA {args.tta}, mean spread "
          f"{table['spread'].mean():.4f}) to {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from pcam_core.inference import metrics

    if not 0 <= args.threshold <= 1:  # NaN fails this too
        raise ValueError(f"--threshold must be a probability between 0 and 1, got {args.threshold}")
    out = writable_file(args.out) if args.out else None
    store = open_store_ranked(args)
    split = args.split
    if split is None:
        from pcam_core.data.splits import holdout_indices

        try:
            holdout_indices(args.checkpoint, store)
            split = "holdout"
        except (ValueError, FileNotFoundError) as e:
            split = "valid" if "valid" in store.split_names() else "train"
            if not rank():
                print(f"note: {e}; evaluating on the {split} split, which may include training patches")
    if split != "holdout" and not store.has_labels(split):
        raise ValueError(f"the {split} patches of {store.root} are not all labelled; evaluate needs labels "
                         f"(splits here: {', '.join(store.split_names())}; the Kaggle test part has none)")
    table = _predictions(args, store, split)
    if rank():
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
        write_text(out, json.dumps(report, indent=1))
        print(f"wrote {out}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from pcam_core.inference.submission import expected_ids, validate_submission, write_submission

    out = writable_file(args.out)
    store = open_store_ranked(args)
    expected_ids(store)  # no test part: fail before predicting
    table = _predictions(args, store, "test")
    if rank():
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

    from pcam_core.inference import cam
    from pcam_core.inference.infer import predict
    from pcam_core.models.registry import load

    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the output folder {args.out}: {e.strerror or e}") from e
    if not os.access(args.out, os.W_OK):
        raise ValueError(f"cannot write into {args.out}; choose a writable --out folder")
    store = open_store(args.data)
    indices = store.index_of(args.ids)
    classifier = load(args.checkpoint, device=args.device)
    images = store.batch(indices)
    maps = cam.compute_cams(classifier, images, method=args.method, layer=args.layer, target=args.target)
    table = pd.DataFrame({"id": store.ids[indices], "label": store.labels[indices],
                          "prob": predict([classifier], store, indices, device=args.device)["prob"],
                          "centre_focus": cam.centre_focus(maps)})
    masks = store.masks(indices)
    if masks is not None:
        table = table.assign(**cam.localisation(maps, masks))
    for pid, image, heat in zip(table["id"], images, maps, strict=True):
        shown = cam.overlay(image, heat, alpha=args.alpha, colormap=args.colormap)
        pair = np.concatenate([image, shown], axis=1)  # (96, 192, 3): the patch beside its overlay
        big = Image.fromarray(pair).resize((pair.shape[1] * 3, pair.shape[0] * 3), Image.NEAREST)
        big.save(args.out / f"{pid}.png")
    with atomic_write(args.out / "cams.csv") as tmp:
        table.to_csv(tmp, index=False, float_format="%.5g")
    print(f"wrote {len(table)} overlays (patch | {args.method}, {args.target}) and cams.csv to {args.out}; "
          f"mean centre focus {table['centre_focus'].mean():.3f} (uniform map: 0.111)")
    return 0


def add_parsers(sub) -> None:
    # choices are spelled out, not imported from infer/cam, so that building the parser never imports torch
    def common(s, several: bool = True) -> None:
        s.add_argument("--checkpoint", required=True, type=Path, nargs="+" if several else None,
                       help="checkpoint file or run folder" + ("s (averaged)" if several else ""))
        s.add_argument("--data", required=True, type=Path)
        s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        if several:
            s.add_argument("--tta", type=int, default=1, choices=(1, 2, 4, 8), help="dihedral views averaged")
            s.add_argument("--batch-size", type=int,
                           help="patches per forward pass (default: 2048 on CUDA; on a CPU, timed)")
            s.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                           help="auto: bf16 autocast on CUDA; on a CPU whichever was timed faster")
            s.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                           help="torch.compile the model (default: when timed faster, compile time included)")

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
