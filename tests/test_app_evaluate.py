"""The Evaluate page: headline metrics, the live threshold, and mistakes opening in Inspect."""

import pytest

pytest_plugins = ["apptest"]


def test_evaluate_without_a_model_says_what_to_do(open_app, page_text):
    at = open_app("evaluate")
    assert not at.exception
    assert "Choose a trained model" in page_text(at)


def test_threshold_updates_the_confusion_and_rates(open_app, with_model, page_text):
    at = open_app("evaluate")
    assert not at.exception
    assert at.selectbox(key="eval_split").value == "held-out validation patches of this run"
    metrics = {m.label: m.value for m in at.metric}
    assert 0.5 <= float(metrics["ROC AUC"]) <= 1
    assert metrics["Patches"] == "60"  # val_frac 0.1 of 600
    low, high = (float(v) for v in metrics["95% interval"].split("–"))
    assert low <= float(metrics["ROC AUC"]) <= high

    at.slider(key="eval_threshold").set_value(0.0).run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Sensitivity"], metrics["Specificity"]) == ("1.000", "0.000")
    assert "Top false negatives" in page_text(at) and "None at this threshold." in page_text(at)

    at.selectbox(key="eval_split").set_value("train").run()
    assert not at.exception
    assert {m.label: m.value for m in at.metric}["Patches"] == "600"


def test_a_false_positive_opens_in_inspect(open_app, with_model):
    at = open_app("evaluate")
    at.slider(key="eval_threshold").set_value(0.0).run()
    first = next(b for b in at.button if b.key.startswith("eval_fp_"))
    first.click().run()
    assert not at.exception
    assert at.title[0].value == "Inspect"
    assert at.session_state["inspect_index"] == int(first.key.rsplit("_", 1)[1])


def test_the_roc_marker_sits_at_the_threshold_own_point(open_app, with_model, demo_dir):
    import json

    from pcam_core.data.readers import open_dataset
    from pcam_core.inference import metrics
    from pcam_core.inference.infer import predictions_table

    at = open_app("evaluate")
    at.slider(key="eval_threshold").set_value(0.91).run()
    assert not at.exception
    figures = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    roc = next(f for f in figures if f["layout"]["title"]["text"] == "ROC")
    marker = roc["data"][2]
    held = predictions_table([with_model], open_dataset(demo_dir), "holdout")
    rates = metrics.at_threshold(held["label"], held["prob"], 0.91)
    assert marker["x"][0] == pytest.approx(1 - rates["specificity"])
    assert marker["y"][0] == pytest.approx(rates["sensitivity"])


@pytest.mark.slow
def test_two_runs_are_compared_on_the_patches_both_held_out(open_app, trained_runs, demo_dir, tmp_path,
                                                           monkeypatch):
    import shutil
    import subprocess
    import sys

    from pcam_core.data.readers import open_dataset
    from pcam_core.inference import infer, metrics

    runs_dir = tmp_path / "runs"
    shutil.copytree(trained_runs / "tiny", runs_dir / "tiny")
    done = subprocess.run([sys.executable, "-m", "pcam_core", "train", "--data", str(demo_dir), "--model",
                           "base_cnn", "--crop", "32", "--epochs", "1", "--device", "cpu", "--out",
                           str(runs_dir / "small")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-1000:]
    monkeypatch.setenv("PCAM_RUNS_DIR", str(runs_dir))
    at = open_app()
    at.selectbox(key="model_choice").set_value("tiny").run()
    at.switch_page("views/evaluate.py").run()
    assert not at.exception
    assert at.selectbox(key="eval_other").value == "small"
    store = open_dataset(demo_dir)
    a = infer.predictions_table([str(runs_dir / "tiny")], store, "holdout")
    b = infer.predictions_table([str(runs_dir / "small")], store, "holdout")
    both = a.merge(b[["id", "prob"]], on="id", suffixes=("", "_b"))
    expected = metrics.compare_aucs(both["label"], both["prob"], both["prob_b"])
    shown = {m.label: m.value for m in at.metric}
    assert shown["tiny"] == f"{expected['auc_a']:.4f}" and shown["small"] == f"{expected['auc_b']:.4f}"
    assert shown["Difference (other - this)"] == f"{expected['diff']:+.4f}"
    differ = int(((both["prob"] >= 0.5) != (both["prob_b"] >= 0.5)).sum())
    assert f"{differ:,} patches get different calls at 0.5" in " ".join(c.value for c in at.caption)
