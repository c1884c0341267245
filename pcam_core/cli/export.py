"""`python -m pcam_core export`: a trained model as a WSInfer model folder for QuPath users."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_export(args: argparse.Namespace) -> int:
    from pcam_core.inference.infer import held_out_auc
    from pcam_core.models.export import check_out, export_wsinfer

    if len(args.checkpoint) != 1:
        raise ValueError("a WSInfer model is one network: give one --checkpoint (ensembles and TTA are not "
                         "part of WSInfer's model contract)")
    check_out(args.out)  # before the held-out patches are predicted: a wrong folder is said at once
    held_out = held_out_auc(args.checkpoint[0])
    out = export_wsinfer(args.checkpoint[0], args.out, held_out)
    auc = f"held-out AUC {held_out['auc']:.4f}" if held_out else "held-out AUC not measured"
    print(f"WSInfer model in {out} (config.json, torchscript_model.pt, README.md; {auc}). In QuPath: copy "
          "the folder into the WSInfer extension's user models directory; or `wsinfer run --model-path "
          f"{out} ...`")
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("export", help="a trained model as a WSInfer model folder (QuPath's WSInfer "
                                      "extension, the wsinfer command)")
    s.add_argument("--checkpoint", required=True, nargs="+", help="one run folder or .pt file")
    s.add_argument("--format", required=True, choices=["wsinfer"], help="wsinfer: config.json (wsinfer-zoo "
                                                                        "spec 1.0) and TorchScript")
    s.add_argument("--out", required=True, type=Path, help="a new or empty folder")
    s.set_defaults(func=cmd_export)
