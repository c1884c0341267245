"""`bench --only label-noise`: how many injected label errors crossval + cleanlab finds, and what
correcting them is worth.

On data with known labels (the demo set by default): 10% of the training patches are set aside as a clean
test set; 5% of the other labels are flipped (seeded); a 5-fold crossval of the noisy labels ranks them;
then the same model is trained three times and scored on the clean test set against its true labels (AUCs
with a paired bootstrap interval of each difference from the first):
- on the noisy labels as given;
- with the flagged labels reviewed, as the app's workflow does it: a reviewer looks at each flagged patch
  and gives it its true label (restoring the flipped ones, confirming the rest), nothing else changes;
- with every flagged label turned over unseen, the shortcut the review is there to prevent.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

SHARE, FOLDS = 0.05, 5
# the synthetic demo (it ships tumour masks) is learnt in seconds at 48 px; real patches get pretrained
# efficientnet_lite0 for one epoch, the real-sample crossval in BENCHMARKS.md that flags 4% (base_cnn at
# AUC 0.85 cannot tell a flipped label from a hard patch)
SETTINGS = {"demo": dict(model="base_cnn", crop=48, epochs=4, batch_size=64),
            "real": dict(model="efficientnet_lite0", pretrained=True, crop=96, epochs=1, batch_size=64)}


def bench_label_noise(data_dir: Path, device: str) -> list[dict]:
    from sklearn.model_selection import train_test_split

    from pcam_core.data.demo import noisy_copy
    from pcam_core.runs.config import TrainConfig
    from pcam_core.training import crossval

    clean = pd.read_csv(Path(data_dir) / "train_labels.csv", dtype={"id": str})
    settings = SETTINGS["demo" if (Path(data_dir) / "tumour_masks.npz").is_file() else "real"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        flipped = noisy_copy(data_dir, tmp / "noisy", SHARE, seed=0)
        _, test_ids = train_test_split(clean["id"], test_size=0.1, stratify=clean["label"], random_state=1)
        flipped -= set(test_ids)  # the test set keeps its true labels below; count only what crossval sees
        pd.DataFrame({"id": test_ids}).to_csv(tmp / "test_ids.csv", index=False)
        base = TrainConfig(data=str(tmp / "noisy"), device=device, **settings)
        start = time.perf_counter()
        for _ in crossval.crossval(replace(base, exclude_ids=str(tmp / "test_ids.csv")), FOLDS, tmp / "cv"):
            pass
        seconds = time.perf_counter() - start
        issues = crossval.write_label_issues(tmp / "cv")
        top = set(issues.head(round(SHARE * len(issues)))["id"])
        flagged = set(issues.loc[issues["issue"], "id"])
        rows += [
            {"what": f"{FOLDS}-fold crossval of {settings['model']} ({settings['epochs']} epochs, crop "
                     f"{settings['crop']}) on {len(issues):,} patches, {len(flipped)} labels flipped: wall "
                     f"time",
             "value": seconds, "unit": "s"},
            {"what": "flipped labels among cleanlab's worst 5% (recall)", "value": len(top & flipped) /
             len(flipped), "unit": "share"},
            {"what": "precision of the worst 5%", "value": len(top & flipped) / len(top), "unit": "share"},
            {"what": f"flagged by cleanlab: {len(flagged)}; of them flipped (precision)",
             "value": len(flagged & flipped) / max(len(flagged), 1), "unit": "share"},
            {"what": "flipped labels flagged by cleanlab (recall)", "value": len(flagged & flipped) /
             len(flipped), "unit": "share"},
        ]
        rows += _retrain_and_compare(base, tmp, flagged, clean, device)
    return rows


def _retrain_and_compare(base, tmp: Path, flagged: set[str], clean: pd.DataFrame, device: str) -> list[dict]:
    """The same model trained on the noisy labels, on them with the `flagged` patches reviewed (given their
    true label) and with `flagged` turned over, each scored on the clean test set against the true labels."""
    from pcam_core.data.readers import open_dataset
    from pcam_core.inference import infer, metrics
    from pcam_core.training.train import fit

    noisy = pd.read_csv(tmp / "noisy" / "train_labels.csv", dtype={"id": str})
    truth = clean.set_index("id")["label"]
    look = noisy["id"].isin(flagged)
    reviewed = noisy.assign(label=noisy["label"].where(~look, truth.reindex(noisy["id"]).to_numpy()))
    turned = noisy.assign(label=noisy["label"].where(~look, 1 - noisy["label"]))
    versions = {"the noisy labels": None}
    for name, table in [("the flagged labels reviewed", reviewed),
                        ("the flagged labels turned over", turned)]:
        versions[name] = str(tmp / f"{name.replace(' ', '-')}.csv")
        table.to_csv(versions[name], index=False)
    store = open_dataset(tmp / "noisy")
    scored = {}
    for name, labels in versions.items():
        run = tmp / name.replace(" ", "-")
        for _ in fit(replace(base, val_ids=str(tmp / "test_ids.csv"), labels=labels, out=str(run))):
            pass
        table = infer.predictions_table([str(run)], store, "holdout", device=device)
        scored[name] = table.assign(truth=truth.reindex(table["id"]).to_numpy()).sort_values("id")
    first = scored["the noisy labels"]
    what = f"held-out AUC on {len(first):,} clean test patches (true labels), trained on"
    rows = []
    for name in list(versions)[1:]:
        result = metrics.compare_aucs(first["truth"].to_numpy(), first["prob"].to_numpy(),
                                      scored[name]["prob"].to_numpy())
        if not rows:
            rows.append({"what": f"{what} the noisy labels (95% CI {result['ci_a'][0]:.3f}-"
                                 f"{result['ci_a'][1]:.3f})", "value": result["auc_a"], "unit": "AUC"})
        rows += [{"what": f"{what} {name} (95% CI {result['ci_b'][0]:.3f}-{result['ci_b'][1]:.3f})",
                  "value": result["auc_b"], "unit": "AUC"},
                 {"what": f"  difference from the noisy labels (paired bootstrap 95% CI "
                          f"{result['diff_ci'][0]:+.4f} to {result['diff_ci'][1]:+.4f})",
                  "value": result["diff"], "unit": "AUC"}]
    return rows
