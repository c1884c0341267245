"""`python -m pcam_core slide` and `demo-slide`: tumour maps of whole-slide images from the command line."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from pcam_core.cli.common import Bar, rank


def cmd_slide(args: argparse.Namespace) -> int:
    from pcam_core.models.distributed import Distributed
    from pcam_core.slides.maps import map_slide
    from pcam_core.slides.reader import list_slides

    slides = list_slides(args.slide) if args.slide.is_dir() else [args.slide]
    if not slides:
        raise ValueError(f"{args.slide} holds no slide files (.svs, .tif, .ndpi, .mrxs, ...)")
    stop = threading.Event()

    def request_stop(signum, frame):
        signal.signal(signum, signal.SIG_DFL)  # a second signal ends the run at once
        stop.set()  # the map so far is saved at the end of the current chunk

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, request_stop)
    failures = 0
    for path in slides:
        bar = Bar(path.name, unit="cell")
        try:
            result = map_slide(args.checkpoint, path, stride=args.stride, tta=args.tta, mpp=args.mpp,
                               out=args.out, device=args.device, precision=args.precision,
                               workers=args.workers, batch_size=args.batch_size, progress=bar, stop=stop,
                               **({} if args.min_tissue is None else {"min_tissue": args.min_tissue}))
        except (ValueError, OSError) as e:
            if len(slides) == 1:
                raise
            failures += 1
            print(f"error: {path.name}: {e}")  # one bad slide in a folder does not stop the others
            continue
        finally:
            bar.close()
        if rank() == 0:
            m = result.meta
            print(f"{path.name}: {m['state']}, {m['done']:,} of {m['total']:,} tissue cells scored"
                  + (f", {m['failed']:,} unreadable" if m.get("failed") else "")
                  + f" ({m['rows']} x {m['cols']} grid, stride {m['stride']}"
                  + (f", {m['seconds']:.1f} s" if "seconds" in m else "") + f"); map in {result.folder}")
        if stop.is_set():
            print("stopped; run the same command again to carry on")
            break
    Distributed(args.device).close()
    return 1 if failures or stop.is_set() else 0


def cmd_demo_slide(args: argparse.Namespace) -> int:
    from pcam_core.slides.demo import make_demo_slide, make_tissue_slide

    if args.tissue_only:
        info = make_tissue_slide(args.out, args.width, args.height, seed=args.seed)
        print(f"wrote a {info['width']} x {info['height']} px all-tissue slide to {info['path']}")
        return 0
    info = make_demo_slide(args.out, args.width, args.height, seed=args.seed, mpp=args.mpp)
    print(f"wrote {info['width']} x {info['height']} px demo slide "
          f"({info['tumour_share']:.1%} tumour pixels) to {info['path']}")
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("slide", help="tumour maps of whole-slide images (grid, cells CSV, PNG, GeoJSON)")
    s.add_argument("--checkpoint", required=True, type=Path, nargs="+",
                   help="checkpoint files or run folders (several: averaged)")
    s.add_argument("--slide", required=True, type=Path, help="a slide file, or a folder of slides")
    s.add_argument("--mpp", type=float,
                   help="microns per level-0 pixel (for slides without it in their metadata)")
    s.add_argument("--stride", type=int, default=32, choices=(32, 48, 96),
                   help="cell side in model px: 32 scores each centre 32x32 as PCam labels it; 96 is quick")
    s.add_argument("--tta", type=int, default=1, choices=(1, 2, 4, 8), help="dihedral views averaged")
    s.add_argument("--out", type=Path, help="folder for the maps (default: the slide folder's cache)")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    s.add_argument("--min-tissue", type=float,
                   help="share of a cell that must be tissue (default: slide.MIN_TISSUE, a quarter)")
    s.add_argument("--workers", type=int, help="slide-reading processes (default: 1 on CPU, up to 8 on GPU)")
    s.add_argument("--batch-size", type=int, help="windows per forward pass")
    s.set_defaults(func=cmd_slide)

    s = sub.add_parser("demo-slide", help="write a synthetic slide with known tumour (and its mask)")
    s.add_argument("--out", required=True, type=Path, help="the .tif to write")
    s.add_argument("--width", type=int, default=3072)
    s.add_argument("--height", type=int, default=2048)
    s.add_argument("--mpp", type=float, default=0.972, help="scale written into the file")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--tissue-only", action="store_true",
                   help="tissue everywhere, one drawn region repeated: for throughput tests of big slides")
    s.set_defaults(func=cmd_demo_slide)
