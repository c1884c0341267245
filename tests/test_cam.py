"""Grad-CAM family: every method on every model, hooks released, target direction, scores, overlays."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch import nn

from pcam_core.data.readers import CENTRE, open_dataset
from pcam_core.data.splits import holdout_indices
from pcam_core.inference import cam
from pcam_core.models.registry import Classifier, list_models, load
from pcam_core.runs.config import TrainConfig
from pcam_core.training.train import fit

pytest_plugins = ["apptest"]  # trained_runs: a base_cnn trained on the demo set

HALF = {"mean": [0.5] * 3, "std": [0.5] * 3}


@functools.cache  # building the timm models dominates these tests; CAM leaves a model as it found it
def untrained(name: str, crop: int) -> Classifier:
    torch.manual_seed(0)
    return Classifier.new(name, crop)


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


@pytest.fixture(scope="module")
def store(demo_dir):
    return open_dataset(demo_dir)


@pytest.mark.parametrize("method", list(cam.METHODS))
@pytest.mark.parametrize("name", list_models())
def test_every_method_runs_on_every_model(name, method, store):
    # a 64 px centre-crop model keeps the test quick and checks that maps land inside the crop; ScoreCAM
    # runs one forward pass per channel of its layer, so on the EfficientNets it takes a 24-channel stage
    # here instead of the default 320-channel one (which the CAM benchmark times)
    classifier = untrained(name, crop=64)
    layer = "blocks.1" if method == "scorecam" and name != "base_cnn" else None
    maps = cam.compute_cams(classifier, store.batch([0, 1]), method=method, layer=layer)
    assert maps.shape == (2, 96, 96) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1 + 1e-6
    assert maps[:, :16].max() == 0 and maps[:, :, 80:].max() == 0
    assert hook_count(classifier.module) == 0


def test_hooks_are_released_over_100_calls(store):
    classifier = untrained("base_cnn", crop=32)
    images = store.batch([0])
    before = hook_count(classifier.module)
    for i in range(100):
        cam.compute_cams(classifier, images, method=("gradcam", "eigencam")[i % 2])
    assert hook_count(classifier.module) == before == 0


def test_hooks_are_released_when_a_call_fails():
    classifier = untrained("base_cnn", crop=32)
    with pytest.raises(ValueError, match="uint8"):
        cam.compute_cams(classifier, np.zeros((1, 96, 96, 3), np.float32))
    broken = Classifier(classifier.module, "base_cnn", {}, {"mean": [0.5] * 2, "std": [0.5] * 2}, 32)
    with pytest.raises(RuntimeError):  # fails inside the CAM block, after its hooks are in place
        cam.compute_cams(broken, np.zeros((1, 96, 96, 3), np.uint8))
    assert hook_count(classifier.module) == 0


class RedNet(nn.Module):
    """logit = mean over pixels of the normalised red channel; its 1x1 conv is the CAM layer."""

    def __init__(self):
        super().__init__()
        self.red = nn.Conv2d(3, 1, 1, bias=False)
        with torch.no_grad():
            self.red.weight.copy_(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1))

    def forward(self, x):
        return self.red(x).mean(dim=(2, 3))  # (B, 1)


def test_tumour_and_normal_targets_point_opposite_ways():
    # red is high (normalised +1) on the left half, low (-1) on the right: raising the logit means more
    # of the left, lowering it (the normal direction) more of the right
    image = np.zeros((1, 96, 96, 3), np.uint8)
    image[:, :, :48, 0] = 255
    red = Classifier(RedNet().eval(), "rednet", {}, HALF)
    tumour = cam.compute_cams(red, image, layer="red")[0]
    normal = cam.compute_cams(red, image, layer="red", target="normal")[0]
    assert tumour[:, :48].min() == pytest.approx(1) and tumour[:, 48:].max() == 0
    assert normal[:, 48:].min() == pytest.approx(1) and normal[:, :48].max() == 0


def test_layer_override_and_its_errors(store):
    classifier = untrained("base_cnn", crop=96)
    names = cam.layer_names(classifier.module)
    assert {"features", "features.0", "features.8"} <= set(names) and "head.1" not in names
    maps = cam.compute_cams(classifier, store.batch([0]), layer="features.3")
    assert maps.shape == (1, 96, 96)
    with pytest.raises(ValueError, match="not a feature-map layer"):
        cam.compute_cams(classifier, store.batch([0]), layer="head.1")
    with pytest.raises(ValueError, match="unknown CAM method"):
        cam.compute_cams(classifier, store.batch([0]), method="nope")
    with pytest.raises(ValueError, match="unknown CAM target"):
        cam.compute_cams(classifier, store.batch([0]), target="nope")


def test_layers_are_offered_by_stage_with_their_cells_and_never_pooling_dropout_or_head(store):
    lite0 = untrained("efficientnet_lite0", crop=96)
    layers = cam.cam_layers(lite0.module, 96)
    assert [layer.label for layer in layers] == [
        "stem · 48 x 48", "block 1 · 48 x 48", "block 2 · 24 x 24", "block 3 · 12 x 12", "block 4 · 6 x 6",
        "block 5 · 6 x 6", "block 6 · 3 x 3", "block 7 · 3 x 3", "head conv · 3 x 3"]
    names = [layer.name for layer in layers]
    assert not {"global_pool", "global_pool.pool", "bn2.drop", "classifier"} & set(names)
    assert cam.default_layer(lite0.module) in names
    for layer in layers:  # each offered layer gives a map over the whole input
        maps = cam.compute_cams(lite0, store.batch([0]), layer=layer.name)
        assert maps.shape == (1, 96, 96) and np.isfinite(maps).all()
    cnn = untrained("base_cnn", crop=48)
    assert [layer.label for layer in cam.cam_layers(cnn.module, 48)] == [
        "conv 1 · 46 x 46", "conv 2 · 21 x 21", "conv 3 · 8 x 8"]
    assert cam.default_layer(cnn.module) == cam.cam_layers(cnn.module, 48)[-1].name


def test_an_empty_map_says_why():
    assert "Explain: normal" in cam.empty_reason("gradcam", "tumour")
    assert "Explain: tumour" in cam.empty_reason("layercam", "normal")
    assert all(cam.empty_reason(m, "tumour") for m in cam.METHODS)


def test_gradcam_of_a_trained_model_points_at_the_demo_tumour(trained_runs, demo_dir):
    # the demo data ships the tumour masks: a trained model's map should sit on tumour pixels far more
    # than a uniform map does, and its maximum should land on tumour more often than a random pixel (1.5x:
    # a two-epoch model's last-block map is coarse, and the demo's margin patches hold only a few tumour
    # nuclei, inside the centre, for its maximum to hit)
    store = open_dataset(demo_dir)
    run = trained_runs / "tiny"
    held = holdout_indices([run], store)
    tumour = held[store.labels[held] == 1]
    maps = cam.compute_cams(load(run), store.batch(tumour))
    scores = cam.localisation(maps, store.masks(tumour))
    chance = np.nanmean(scores["uniform_share"])
    assert len(tumour) >= 10
    assert np.nanmean(scores["tumour_share"]) > 2 * chance
    assert np.nanmean(scores["pointing_hit"]) > 1.5 * chance
    assert np.nanmean(cam.centre_focus(maps)) > 2 / 9  # the label is about the centre: twice a uniform map


@pytest.fixture(scope="module")
def lite0_run(demo_dir, tmp_path_factory):
    """efficientnet_lite0 from its offline ImageNet weights, one epoch on the demo set."""
    out = tmp_path_factory.mktemp("lite0") / "run"
    for _ in fit(TrainConfig(data=str(demo_dir), model="efficientnet_lite0", pretrained=True, epochs=1,
                             batch_size=32, out=str(out), device="cpu")):
        pass
    return out


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_lite0_maps_at_the_default_layer_point_at_the_demo_tumour(lite0_run, demo_dir, method):
    # the default layer (block 5, 6 x 6 cells) was chosen by this measure in the benchmark; LayerCAM's sign
    # is checked the same way: its map must sit on tumour more than a uniform map, not away from it
    store = open_dataset(demo_dir)
    held = holdout_indices([lite0_run], store)
    tumour = held[store.labels[held] == 1]
    classifier = load(lite0_run)
    assert cam.default_layer(classifier.module) == "blocks.4"
    maps = cam.compute_cams(classifier, store.batch(tumour), method=method)
    scores = cam.localisation(maps, store.masks(tumour))
    chance = np.nanmean(scores["uniform_share"])
    assert np.nanmean(scores["tumour_share"]) > 1.5 * chance
    assert np.nanmean(scores["pointing_hit"]) > 1.5 * chance


def test_centre_focus():
    uniform = np.ones((1, 96, 96))
    centre = np.zeros((1, 96, 96))
    centre[0, CENTRE, CENTRE] = 1
    focus = cam.centre_focus(np.concatenate([uniform, centre]))
    assert focus.tolist() == pytest.approx([1 / 9, 1.0])
    assert np.isnan(cam.centre_focus(np.zeros((1, 96, 96))))[0]


def test_localisation_scores():
    masks = np.zeros((3, 96, 96), bool)
    masks[0, 40:50, 40:50] = masks[1, 40:50, 40:50] = True  # 100 of 9216 pixels; patch 2 has no tumour
    on = np.zeros((96, 96))
    on[45, 45] = 1
    off = np.zeros((96, 96))
    off[5, 5] = 1
    scores = cam.localisation(np.stack([on, off, on]), masks)
    assert scores["tumour_share"][:2].tolist() == [1.0, 0.0]
    assert scores["pointing_hit"][:2].tolist() == [1.0, 0.0]
    assert scores["uniform_share"][0] == pytest.approx(100 / 9216)
    assert all(np.isnan(v[2]) for v in scores.values())
    assert cam.localisation(np.ones((3, 96, 96)), masks)["tumour_share"][0] == pytest.approx(100 / 9216)


def test_overlay():
    rgb = np.full((96, 96, 3), 100, np.uint8)
    heat = np.zeros((96, 96))
    plain = cam.overlay(rgb, heat, alpha=0.0)
    assert plain.dtype == np.uint8 and plain.shape == (96, 96, 3)
    assert (plain[31, 31:65] == 255).all() and (plain[64, 31:65] == 255).all()  # the frame round the centre
    assert (plain[CENTRE, CENTRE] == 100).all() and (plain[0, 0] == 100).all()
    full = cam.overlay(rgb, heat, alpha=1.0, colormap="gray", outline=None)
    assert (full == 0).all()  # gray maps 0 to black
    half = cam.overlay(rgb, np.ones((96, 96)), alpha=0.5, colormap="gray", outline=None)
    assert (half == 178).all()  # (100 + 255) / 2 rounded up
    with pytest.raises(ValueError, match="unknown colour map"):
        cam.overlay(rgb, heat, colormap="nope")
    with pytest.raises(ValueError, match="alpha"):
        cam.overlay(rgb, heat, alpha=2)


def test_cli_cam_writes_overlays_and_scores(demo_dir, store, tmp_path, capsys):
    import pandas as pd

    from pcam_core.cli.main import main

    untrained("base_cnn", crop=96).save(tmp_path / "c.pt")
    ids = list(store.ids[:3])
    code = main(["cam", "--checkpoint", str(tmp_path / "c.pt"), "--data", str(demo_dir), "--ids", *ids,
                 "--method", "gradcam++", "--out", str(tmp_path / "cams")])
    assert code == 0 and "wrote 3 overlays" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "cams" / "cams.csv")
    assert table["id"].tolist() == ids
    assert {"prob", "centre_focus", "tumour_share", "pointing_hit"} <= set(table.columns)
    assert sorted(p.name for p in (tmp_path / "cams").glob("*.png")) == sorted(f"{i}.png" for i in ids)

    code = main(["cam", "--checkpoint", str(tmp_path / "c.pt"), "--data", str(demo_dir), "--ids", "nope",
                 "--out", str(tmp_path / "cams")])
    err = capsys.readouterr().err
    assert code == 2 and "1 id(s) not in" in err and "nope" in err


def test_eigencam_is_the_library_projection_with_a_fixed_sign():
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    rng = np.random.default_rng(0)
    for shape in ((3, 16, 5, 5), (2, 64, 3, 3)):  # more positions than channels, and fewer
        a = rng.random(shape).astype(np.float32)
        a[:, :, 1, 1] += 3  # one strongly active position
        ours = cam.SignedEigenCAM.get_cam_image(None, None, None, None, a, None, False)
        theirs = get_2d_projection(a)
        for o, t in zip(ours, theirs, strict=True):
            assert abs(np.corrcoef(o.ravel(), t.ravel())[0, 1]) == pytest.approx(1, abs=1e-4)
            assert o.argmax() == np.ravel_multi_index((1, 1), o.shape)  # points at the active position


def test_cli_help_names_every_method(capsys):
    from pcam_core.cli.main import main

    with pytest.raises(SystemExit) as done:
        main(["cam", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert all(m in text for m in cam.METHODS)
