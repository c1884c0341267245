"""`python -m pcam_core embed` and `duplicates`: the dataset as a 2-D map, and the same tissue twice."""

from __future__ import annotations

import argparse
from pathlib import Path

from pcam_core.cli.common import Bar, open_store, writable_file
from pcam_core.inference.duplicates import NEAR_PSNR


def cmd_embed(args: argparse.Namespace) -> int:
    from pcam_core.inference import embed

    out = writable_file(args.out)
    store = open_store(args.data)
    bars = {}

    def progress(stage: str, done: int, total: int) -> None:
        bars.setdefault(stage, Bar(stage))(done, total)

    try:
        table = embed.map_table(store, args.split, args.checkpoint, device=args.device,
                                batch_size=args.batch_size, seed=args.seed, progress=progress)
    finally:
        for bar in bars.values():
            bar.close()
    if out.suffix == ".parquet":
        table.to_parquet(out, index=False)
    else:
        table.drop(columns="index").to_csv(out, index=False)
    print(f"map of {len(table):,} {args.split} patches from {table.attrs['source']}: {out} "
          f"(columns id, label, x, y, prob)")
    return 0


def cmd_duplicates(args: argparse.Namespace) -> int:
    from pcam_core.inference import duplicates

    out = writable_file(args.out)
    store = open_store(args.data)
    bar = Bar("scan")
    try:
        pairs = duplicates.duplicates(store, args.checkpoint, args.min_psnr, progress=bar)
    finally:
        bar.close()
    pairs.to_csv(out, index=False)
    print(f"{len(pairs):,} duplicate pairs in {pairs['group'].nunique():,} groups among {len(store):,} "
          f"patches: {out}")
    for row in duplicates.summary(pairs).itertuples():
        print(f"  {row.splits}: {row.exact:,} exact, {row.near:,} near")
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("embed", help="per-patch embeddings of a split and their 2-D UMAP map (cached)")
    s.add_argument("--data", required=True, type=Path)
    s.add_argument("--checkpoint", help="a run folder or .pt file; leave out to map colour and texture "
                                        "statistics (no model needed)")
    s.add_argument("--split", default="train", help="train, valid, test, or holdout (the run's held-out "
                                                    "patches; default: train)")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument("--batch-size", type=int)
    s.add_argument("--seed", type=int, default=0, help="the map's seed (default: 0)")
    s.add_argument("--out", required=True, type=Path, help="CSV (or .parquet): id, label, x, y, prob")
    s.set_defaults(func=cmd_embed)

    s = sub.add_parser("duplicates", help="exact (also flipped or turned) and near-duplicate patches, "
                                          "within and between splits")
    s.add_argument("--data", required=True, type=Path)
    s.add_argument("--checkpoint", help="also look for near copies among the model's nearest embeddings")
    s.add_argument("--min-psnr", type=float, default=NEAR_PSNR,
                   help=f"dB two patches' pixels must agree to as near copies (default: {NEAR_PSNR})")
    s.add_argument("--out", required=True, type=Path, help="CSV of pairs to write")
    s.set_defaults(func=cmd_duplicates)
