"""`python -m pcam_core slide-labels` and `slide-eval`: a pathologist's outlines as cell labels, and tumour
maps scored against them (cells, slides, Camelyon16's lesion-level FROC)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pcam_core.atomic import atomic_write, write_text
from pcam_core.cli.common import Bar, writable_file


def cmd_slide_labels(args: argparse.Namespace) -> int:
    from pcam_core.geometry import PCAM_MPP
    from pcam_core.slides.annotations import cell_labels, read_annotations
    from pcam_core.slides.export import export_cells
    from pcam_core.slides.maps import cell_patch, tissue_fraction
    from pcam_core.slides.reader import Grid, open_slide

    if args.patches and args.patches.exists() and (not args.patches.is_dir() or any(args.patches.iterdir())):
        raise ValueError(f"--patches {args.patches} exists and is not an empty folder; give a new one")
    slide = open_slide(args.slide, args.mpp, args.model_mpp or PCAM_MPP)
    annotations = read_annotations(args.annotations)
    annotations.check_fits(slide.size, args.slide.name)
    grid = Grid.of(slide, args.stride)
    labels = cell_labels(grid, annotations, tissue_fraction(slide, grid))
    labels.to_csv(writable_file(args.out), index=False)
    tumour = int(labels["label"].sum())
    print(f"{len(labels):,} tissue cells of {args.slide.name} at stride {args.stride}: "
          f"{tumour:,} tumour, {len(labels) - tumour:,} normal; to {args.out}"
          + (f" ({annotations.repaired} self-crossing polygon(s) repaired)" if annotations.repaired else "")
          + (f"; {annotations.skipped} outline(s) of other classes skipped" if annotations.skipped else ""))
    if args.patches:
        bar = Bar("windows", unit="cell")
        windows = {}
        for i, cell in enumerate(labels.itertuples()):
            windows[f"{args.slide.stem}_x{cell.x}_y{cell.y}_w{cell.size}"] = cell_patch(slide, grid, cell.row,
                                                                                      cell.col)
            bar(i + 1, len(labels))
        bar.close()
        given = dict(zip(windows, labels["label"].astype(int), strict=True))
        written = export_cells(windows, given, args.patches)
        print(f"patch dataset in {args.patches} ({written['n_train']:,} labelled windows in train/)")
    return 0


def cmd_slide_eval(args: argparse.Namespace) -> int:
    from pcam_core.slides.annotations import ANNOTATION_SUFFIXES, annotation_for, read_annotations
    from pcam_core.slides.evaluate import FROC_RATES, evaluate_maps
    from pcam_core.slides.maps import map_slide
    from pcam_core.slides.reader import list_slides

    slides = list_slides(args.slides)
    if not slides:
        raise ValueError(f"{args.slides} holds no slide files (.svs, .tif, .ndpi, .mrxs, ...)")
    if not args.annotations.is_dir():
        raise FileNotFoundError(f"annotation folder {args.annotations} does not exist")
    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top-k must be 1 or more, got {args.top_k}")
    outlines = {}  # read and checked before any slide is mapped: a bad file fails at once
    for path in slides:
        found = annotation_for(path, args.annotations)
        outlines[path] = read_annotations(found) if found else None
    unmatched = sorted({p.name for p in args.annotations.iterdir() if p.suffix.lower() in ANNOTATION_SUFFIXES}
                       - {f"{s.stem}{suffix}" for s in slides for suffix in ANNOTATION_SUFFIXES})
    if unmatched:
        print(f"note: {len(unmatched)} outline file(s) name no slide here (a slide without one counts as "
              f"tumour-free): {', '.join(unmatched[:5])}{' ...' if len(unmatched) > 5 else ''}")
    pairs = []
    for path in slides:
        bar = Bar(path.name, unit="cell")
        try:
            slide_map = map_slide(args.checkpoint, path, stride=args.stride, tta=args.tta, mpp=args.mpp,
                                  device=args.device, progress=bar)
        finally:
            bar.close()
        pairs.append((slide_map, outlines[path]))
    table, summary = evaluate_maps(pairs, args.top_k)
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out / "slides.csv") as tmp:
        table.to_csv(tmp, index=False)
    write_text(args.out / "summary.json", json.dumps(summary, indent=2, default=str).replace("NaN", "null")
               + "\n")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    cell = summary["cell"]
    print(f"cells: ROC AUC {cell['roc_auc']:.3f} ({cell['roc_auc_ci'][0]:.3f}-{cell['roc_auc_ci'][1]:.3f}), "
          f"PR AUC {cell['pr_auc']:.3f} ({cell['pr_auc_ci'][0]:.3f}-{cell['pr_auc_ci'][1]:.3f}) over "
          f"{cell['cells']:,} cells ({cell['tumour_cells']:,} tumour)")
    print(f"slides: ROC AUC {summary['slide_roc_auc']:.3f} over {summary['slides']} slides "
          f"({summary['tumour_slides']} with tumour; score: {summary['slide_score']})")
    froc = summary["froc"]
    print(f"lesions: FROC {froc['score']:.3f} over {froc['lesions']} lesions; sensitivity at "
          + ", ".join(f"{r:g}: {froc['sensitivity'][str(r)]:.3f}" for r in FROC_RATES)
          + f" false positives per slide; tables in {args.out}")
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("slide-labels", help="PCam labels of a slide's cells from a pathologist's outlines "
                                            "(QuPath GeoJSON, ASAP XML)")
    s.add_argument("--slide", required=True, type=Path)
    s.add_argument("--annotations", required=True, type=Path, help="QuPath .geojson or ASAP .xml")
    s.add_argument("--stride", type=int, default=32, choices=[32, 48, 96], help="cell side in model pixels")
    s.add_argument("--mpp", type=float, help="microns per level-0 pixel (for slides without it)")
    s.add_argument("--model-mpp", type=float, help="the model's scale in um/px (default: PCam's 0.972)")
    s.add_argument("--out", required=True, type=Path, help="CSV to write: row, col, x, y, size, label")
    s.add_argument("--patches", type=Path, help="also write the labelled cells' 96 x 96 windows as a "
                                                "Kaggle-layout folder that train reads")
    s.set_defaults(func=cmd_slide_labels)

    s = sub.add_parser("slide-eval", help="score tumour maps against annotations: cell ROC/PR AUC, slide "
                                          "ROC AUC, Camelyon16 lesion FROC")
    s.add_argument("--slides", required=True, type=Path, help="a folder of slides")
    s.add_argument("--annotations", required=True, type=Path,
                   help="a folder of outlines named after the slides (tumor_001.xml for tumor_001.tif); a "
                        "slide without one counts as tumour-free")
    s.add_argument("--checkpoint", required=True, nargs="+", help="run folders or .pt files (averaged)")
    s.add_argument("--stride", type=int, default=32, choices=[32, 48, 96])
    s.add_argument("--tta", type=int, default=1, choices=[1, 2, 4, 8])
    s.add_argument("--mpp", type=float, help="microns per level-0 pixel (for slides without it)")
    s.add_argument("--top-k", type=int, help="a slide's score is the mean of its k highest cells (default: "
                                             "the highest)")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument("--out", required=True, type=Path, help="folder for slides.csv and summary.json")
    s.set_defaults(func=cmd_slide_eval)
