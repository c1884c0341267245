"""A trained model leaves as a WSInfer model folder that QuPath's extension and `wsinfer run` load: the
config validates against wsinfer-zoo's own schema, and the TorchScript model, run with only torch and the
config's transforms done by hand, gives our P(tumour)."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from pcam_core.data.readers import open_dataset
from pcam_core.inference.infer import predict_images
from pcam_core.models.registry import Classifier, load

pytest_plugins = ["apptest"]  # trained_runs
pytestmark = pytest.mark.slow  # each exports and runs a model in a fresh interpreter

REPO = Path(__file__).resolve().parents[1]

# what WSInfer does with the folder, written without pcam_core: load, Resize (96 -> 96), ToTensor, Normalize
BY_HAND = """
import json, sys
import numpy as np, torch
folder, patches = sys.argv[1], np.load(sys.argv[2])
config = json.load(open(f"{folder}/config.json"))
norm = config["transform"][2]["arguments"]
model = torch.jit.load(f"{folder}/torchscript_model.pt").eval()
x = torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255  # ToTensor
x = (x - torch.tensor(norm["mean"]).view(1, 3, 1, 1)) / torch.tensor(norm["std"]).view(1, 3, 1, 1)
with torch.no_grad():
    logits = model(x)
print(json.dumps({"shape": list(logits.shape), "p": torch.softmax(logits, 1)[:, 1].tolist(),
                  "pcam_core": any(m.startswith("pcam_core") for m in sys.modules)}))
"""


def schema() -> dict:
    return json.loads(resources.files("wsinfer_zoo").joinpath("schemas/model-config.schema.json").read_text())



@pytest.fixture
def real_or_demo(request, demo_dir):
    try:
        return request.getfixturevalue("sample_dir")
    except pytest.skip.Exception:
        return demo_dir


@pytest.mark.parametrize("name, crop", [("base_cnn", 96), ("base_cnn", 48), ("efficientnet_lite0", 96)])
def test_the_exported_model_gives_our_probability_with_only_torch(name, crop, real_or_demo, tmp_path):
    from pcam_core.models.export import export_wsinfer

    ckpt = Classifier.new(name, crop=crop).save(tmp_path / "model.pt")
    out = export_wsinfer(ckpt, tmp_path / "wsinfer")
    config = json.loads((out / "config.json").read_text())
    jsonschema.validate(config, schema())
    assert config["class_names"] == ["Other", "Tumor"] and config["num_classes"] == 2
    assert config["patch_size_pixels"] == 96 and config["spacing_um_px"] == pytest.approx(0.972)
    images = open_dataset(real_or_demo).batch(np.arange(24) * 7)
    np.save(tmp_path / "patches.npy", images)
    done = subprocess.run([sys.executable, "-c", BY_HAND, str(out), str(tmp_path / "patches.npy")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = json.loads(done.stdout)
    assert theirs["shape"] == [24, 2] and not theirs["pcam_core"]
    ours = predict_images(load(ckpt), images, tta=1, device="cpu")["prob"]
    np.testing.assert_allclose(theirs["p"], ours, atol=1e-5)


def export(*args) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pcam_core", "export", "--format", "wsinfer", *map(str, args)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_the_export_command_writes_a_model_card_and_refuses_what_wsinfer_cannot_run(trained_runs, tmp_path):
    run = trained_runs / "tiny"
    out = tmp_path / "tiny-wsinfer"
    done = export("--checkpoint", run, "--out", out)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "torchscript_model.pt"]
    jsonschema.validate(json.loads((out / "config.json").read_text()), schema())
    card = (out / "README.md").read_text()
    assert "Held-out ROC AUC**: 0." in card and "95% bootstrap interval" in card and "not diagnosis" in card
    assert "held-out AUC 0." in done.stdout
    ensemble = export("--checkpoint", run, run, "--out", tmp_path / "two")
    assert ensemble.returncode == 2 and ensemble.stderr.count("\n") == 1
    assert "one --checkpoint" in ensemble.stderr and not (tmp_path / "two").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    refused = export("--checkpoint", run, "--out", busy)
    assert refused.returncode == 2 and "holds other files" in refused.stderr
    assert (busy / "notes.txt").read_text() == "mine" and len(list(busy.iterdir())) == 1
