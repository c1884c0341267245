"""`python -m pcam_core crossval`, `label-issues` and `reviewed-labels`: out-of-fold predictions, the likely
label errors, and the labels the reviewers settled on (for `train --labels`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pcam_core.cli.common import rank
from pcam_core.cli.train import add_train_flags, show_training, stop_on_signals, train_config


def cmd_crossval(args: argparse.Namespace) -> int:
    from pcam_core import runs
    from pcam_core.training.crossval import crossval, write_label_issues

    cfg = train_config(args)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else runs.runs_dir() / f"crossval-{cfg.model}-{stamp}"
    cfg.out = None
    finished: dict = {}

    def folds():
        for event in crossval(cfg, args.folds, out, stop_on_signals()):
            kind = event["type"]
            if kind == "fold_done":
                if rank() == 0:
                    print(f"fold {event['fold']} of {event['folds']} "
                          + ("already finished: kept" if event["reused"] else "done"))
            elif kind == "stopped":
                if rank() == 0:
                    print(f"stopped in fold {event['fold']} of {event['folds']}; the same command (with "
                          f"--out {out}) resumes it")
                finished["stopped"] = True
            elif "oof_auc" in event:
                finished.update(event)
            else:
                yield event

    if rank() == 0:
        print(f"{args.folds}-fold cross-validation of {cfg.model} into {out}")
    show_training(folds(), cfg.epochs)
    if "oof_auc" not in finished:
        return 1 if finished.get("stopped") else 0
    if rank() == 0:  # oof.csv is rank 0's to write, and so is what follows from it
        issues = write_label_issues(out)
        print(f"out-of-fold AUC {finished['oof_auc']:.4f} on {finished['n']:,} patches: {finished['path']}")
        print(f"cleanlab flags {int(issues['issue'].sum()):,} likely label errors: "
              f"{out / 'label_issues.csv'}")
    return 0


def cmd_label_issues(args: argparse.Namespace) -> int:
    from pcam_core.training.crossval import write_label_issues

    table = write_label_issues(args.crossval, args.out)
    flagged = table[table["issue"]]
    written = args.out or Path(args.crossval) / "label_issues.csv"
    print(f"{len(table):,} labelled patches, {len(flagged):,} flagged as likely label errors "
          f"({len(flagged) / len(table):.1%}); worst first in {written}")
    for row in flagged.head(10).itertuples():
        print(f"  {row.id}  label {row.label}  out-of-fold P(tumour) {row.prob:.3f}  "
              f"quality {row.quality:.3f}")
    return 0


def cmd_reviewed_labels(args: argparse.Namespace) -> int:
    from pcam_core import review
    from pcam_core.cli.common import open_store
    from pcam_core.review import agreement

    store = open_store(args.data)
    key = str(store.root.resolve())
    settled = agreement.settled_labels(review.ReviewStore(args.db or review.default_db()).history(key))
    known = settled["id"].isin(set(store.ids))
    if not known.all():  # reported, not fatal: the data changed since those verdicts
        print(f"{int((~known).sum()):,} reviewed patch(es) are no longer in {args.data}: left out")
    settled = settled[known]
    labels = settled[settled["label"] >= 0][["id", "label"]]
    open_ids = settled[settled["settled"] == "conflict"][["id"]]
    labels.to_csv(args.out, index=False)
    counts = settled["settled"].value_counts()
    print(f"{len(labels):,} settled labels to {args.out} ({counts.get('agreed', 0):,} agreed, "
          f"{counts.get('majority', 0):,} by majority; {counts.get('unsure', 0):,} only unsure, left as "
          f"given)")
    if args.exclude_out:
        open_ids.to_csv(args.exclude_out, index=False)
        print(f"{len(open_ids):,} conflicting patch(es) to {args.exclude_out} (for --exclude-ids)")
    elif len(open_ids):
        print(f"{len(open_ids):,} conflicting patch(es) keep their given label; --exclude-out FILE lists "
              f"them for train --exclude-ids")
    print(f"rule: {agreement.RULE}")
    return 0


def add_parsers(sub) -> None:
    s = sub.add_parser("crossval", help="train K models on K stratified folds: out-of-fold P(tumour) for "
                                        "every labelled patch, and cleanlab's likely label errors")
    s.add_argument("--folds", type=int, default=5, help="K, at least 2 (default: 5)")
    add_train_flags(s, leave_out=("val_ids", "resume", "val_frac"))
    s.set_defaults(func=cmd_crossval)

    s = sub.add_parser("label-issues", help="rank the labels of a finished crossval by cleanlab's label "
                                            "quality; flag the likely errors")
    s.add_argument("--crossval", required=True, type=Path, help="the crossval folder (holds oof.csv)")
    s.add_argument("--out", type=Path, help="CSV to write (default: label_issues.csv in the crossval folder)")
    s.set_defaults(func=cmd_label_issues)

    s = sub.add_parser("reviewed-labels",
                       help="the labels the reviewers settled on, as a CSV for train --labels")
    s.add_argument("--data", required=True, type=Path, help="the dataset folder the verdicts were given on")
    s.add_argument("--db", help="the verdict store (default: $PCAM_REVIEW_DB, else models/reviews.sqlite)")
    s.add_argument("--out", required=True, type=Path, help="CSV to write: id, label")
    s.add_argument("--exclude-out", type=Path, help="CSV to write the conflicting patches to (for "
                                                    "train --exclude-ids)")
    s.set_defaults(func=cmd_reviewed_labels)
