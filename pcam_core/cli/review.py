"""`python -m pcam_core review export|audit|import`: the review store on the command line.

    review export --out verdicts.csv [--db URL]     every verdict row (who, verified or not, when)
    review audit --out events.csv [--db URL]        the audit trail
    review import --from OTHER [--db URL]           merge another store (an SQLite file or a URL) into this
"""

from __future__ import annotations

import argparse
from pathlib import Path

DB_HELP = ("the review store: an SQLite file or a database URL (default: $PCAM_DB_URL, else "
           "$PCAM_REVIEW_DB, else models/reviews.sqlite)")


def _store(where: str | None):
    from pcam_core.review.store import ReviewStore, default_db

    return ReviewStore(where or default_db())


def _write(frame, out: Path) -> None:
    from pcam_core.atomic import write_text

    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, frame.to_csv(index=False))


def cmd_export(args: argparse.Namespace) -> int:
    rows = _store(args.db).every_verdict()
    _write(rows, args.out)
    print(f"{len(rows):,} verdicts by {rows['reviewer'].nunique():,} reviewers on "
          f"{rows['dataset'].nunique():,} datasets -> {args.out}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    rows = _store(args.db).events()
    _write(rows, args.out)
    print(f"{len(rows):,} events -> {args.out}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    import sqlite3
    import tempfile

    from pcam_core.review.merge import merge

    target = _store(args.db)
    with tempfile.TemporaryDirectory() as tmp:
        source = args.source
        if "://" not in source:  # a file: merged from a snapshot, so the other machine's file is only read
            if not Path(source).is_file():
                raise FileNotFoundError(f"{source} does not exist: name another store's file or a URL")
            snapshot = Path(tmp) / "source.sqlite"
            try:
                with sqlite3.connect(f"file:{Path(source).resolve()}?mode=ro", uri=True) as src, \
                        sqlite3.connect(snapshot) as copy:
                    src.backup(copy)
            except sqlite3.DatabaseError as e:
                raise ValueError(f"{source} is not an SQLite review store ({e})") from e
            source = str(snapshot)
        added = merge(target, _store(source))
    target.log("import", args.actor, {"from": args.source, **added})
    print(f"imported from {args.source}: " + ", ".join(f"{n:,} {table}" for table, n in added.items()))
    return 0


def add_parsers(sub) -> None:
    review = sub.add_parser("review", help="the review store: export the verdicts or the audit trail, "
                                           "merge another store")
    actions = review.add_subparsers(dest="review_action", required=True)
    s = actions.add_parser("export", help="every verdict row as CSV (dataset, patch, verdict, note, "
                                          "reviewer, reviewer id, verified, time)")
    s.add_argument("--db", help=DB_HELP)
    s.add_argument("--out", required=True, type=Path, help="the CSV to write")
    s.set_defaults(func=cmd_export)
    s = actions.add_parser("audit", help="the audit trail as CSV (exports, jobs, imports, label snapshots)")
    s.add_argument("--db", help=DB_HELP)
    s.add_argument("--out", required=True, type=Path, help="the CSV to write")
    s.set_defaults(func=cmd_audit)
    s = actions.add_parser("import", help="merge a store written elsewhere into this one (no row twice)")
    s.add_argument("--from", dest="source", required=True, help="the other store: an SQLite file or a URL")
    s.add_argument("--db", help=DB_HELP)
    s.add_argument("--actor", default="command line", help="who imports, for the audit trail")
    s.set_defaults(func=cmd_import)
