"""Model registry, offline lite0 weights, checkpoints and the batched transforms."""

from __future__ import annotations

import pickle

import pytest
import torch

from pcam_core.data import transforms
from pcam_core.models import registry as models


@pytest.mark.parametrize("name", models.list_models())
def test_forward_every_registered_model(name):
    model = models.create_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 96, 96))
    assert out.shape == (2, 1)
    assert not torch.isnan(out).any()
    assert isinstance(models.cam_target_layer(model), torch.nn.Module)
    norm = models.normalization_for(model)
    assert len(norm["mean"]) == len(norm["std"]) == 3


def test_base_cnn_is_the_notebook_network():
    model = models.create_model("base_cnn")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128]
    assert model.head[1].in_features == 128 * 10 * 10  # valid padding, three max-pools from 96 px
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.5 for m in model.modules())
    small = models.create_model("base_cnn", **models.model_args_for("base_cnn", 48))
    assert small(torch.randn(2, 3, 48, 48)).shape == (2, 1)


def test_base_cnn_pooling_before_relu_changes_neither_outputs_nor_gradients():
    torch.manual_seed(0)
    model = models.create_model("base_cnn")
    model.head[3].p = 0.0  # dropout off, so training mode is deterministic
    x = torch.randn(4, 3, 96, 96)

    def run():
        model.zero_grad()
        out = model(x)
        out.sum().backward()
        return out.detach(), [p.grad.clone() for p in model.parameters()]

    fast, fast_grads = run()
    hook = model.features[1].register_forward_hook(lambda *args: None)  # as Grad-CAM's: layer by layer
    layered, layered_grads = run()
    hook.remove()
    torch.testing.assert_close(fast, layered)
    for a, b in zip(fast_grads, layered_grads, strict=True):
        torch.testing.assert_close(a, b)


def test_other_timm_names_work_and_unknown_names_list_the_valid_ones():
    assert models.create_model("resnet10t")(torch.randn(1, 3, 96, 96)).shape == (1, 1)
    with pytest.raises(ValueError, match="base_cnn.*efficientnet_lite0"):
        models.create_model("no_such_net")


def test_offline_lite0_weights_match_every_tensor():
    model = models.create_model("efficientnet_lite0")
    mapped = models.lite0_imagenet_state_dict(model)
    target = model.state_dict()
    assert set(mapped) == {k for k in target if not k.startswith("classifier.")}
    pretrained = models.create_model("efficientnet_lite0", pretrained=True).state_dict()
    assert all(torch.equal(pretrained[k], v) for k, v in mapped.items())
    assert models.normalization_for(model) == {"mean": [0.5] * 3, "std": [0.5] * 3}


def test_pretrained_b0_offline_fails_with_one_line_naming_offline_models(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="efficientnet_lite0") as err:
        models.create_model("efficientnet_b0", pretrained=True)
    assert "\n" not in str(err.value)


def test_classifier_round_trip_from_file_and_run_folder(tmp_path):
    torch.manual_seed(0)
    new = models.Classifier.new("base_cnn", crop=48)
    new.save(tmp_path / "best.pt", epoch=1, metrics={"val_auc": 0.5})
    loaded = models.load(tmp_path)
    assert (loaded.name, loaded.crop, loaded.args) == ("base_cnn", 48, {"input_size": 48})
    assert loaded.source == tmp_path / "best.pt" and not loaded.module.training
    assert loaded.normalization == new.normalization
    assert all(torch.equal(v, new.module.state_dict()[k]) for k, v in loaded.module.state_dict().items())
    assert models.read_checkpoint(tmp_path)["metrics"] == {"val_auc": 0.5}
    assert not list(tmp_path.glob(".*.tmp"))


class Foreign:
    pass


def damaged(tmp_path, name: str, **fields):
    """A base_cnn checkpoint file with some fields replaced."""
    ckpt = models.Classifier.new("base_cnn").to_checkpoint()
    ckpt.update(fields)
    path = tmp_path / f"{name}.pt"
    torch.save(ckpt, path)
    return path


def test_bad_checkpoints_get_clear_errors(tmp_path):
    good = models.Classifier.new("base_cnn").save(tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:1000])
    foreign = tmp_path / "foreign.pt"
    with open(foreign, "wb") as f:
        pickle.dump(Foreign(), f, protocol=2)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    nan = models.Classifier.new("base_cnn").to_checkpoint()
    nan["state_dict"]["head.1.weight"][0, 0] = float("nan")
    cases = [(truncated, "not a readable"), (foreign, "not a readable"), (plain, "missing"),
             (damaged(tmp_path, "other", model_name="efficientnet_lite0", model_args={}),
              "do not fit model efficientnet_lite0"),
             (damaged(tmp_path, "lite", model_name="efficientnet_lite0"), "do not fit efficientnet_lite0"),
             (damaged(tmp_path, "huge", model_args={"input_size": 5000}), "expected {'input_size': 96}"),
             (damaged(tmp_path, "text", model_args={"input_size": "96"}), "model_args"),
             (damaged(tmp_path, "args", model_args=["input_size"]), "model_args"),
             (damaged(tmp_path, "keys", model_args={"width": 3}), "model_args"),
             (damaged(tmp_path, "config", config=[1, 2]), "config is a list"),
             (damaged(tmp_path, "crop", config={"crop": 8}), "crop 8"),
             (damaged(tmp_path, "norm", normalization={}), "normalization"),
             (damaged(tmp_path, "nan", state_dict=nan["state_dict"]), "NaN")]
    for path, pattern in cases:
        with pytest.raises(ValueError, match=pattern) as err:
            models.load(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no best.pt or last.pt"):
        models.load(empty)


def test_resolve_device():
    assert models.resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            models.resolve_device("cuda")


def test_dihedral_transforms_are_the_eight_distinct_symmetries():
    x = torch.arange(2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    views = [transforms.dihedral(x, k) for k in range(8)]
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8
    assert torch.equal(views[0], x)
    with pytest.raises(ValueError):
        transforms.dihedral(x, 8)
    gen = torch.Generator().manual_seed(0)
    out = transforms.random_dihedral(x.repeat(32, 1, 1, 1), gen)
    assert all(any(torch.equal(o, v[0]) for v in views) for o in out[::2])  # every sample is one of the 8


def test_to_model_input_and_augment_batch():
    x = torch.randint(0, 256, (4, 96, 96, 3), dtype=torch.uint8)
    norm = {"mean": [0.5] * 3, "std": [0.5] * 3}
    out = transforms.to_model_input(x, norm)
    assert out.shape == (4, 3, 96, 96) and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out[0, :, 5, 7], x[0, 5, 7].float() / 127.5 - 1)
    crop = transforms.to_model_input(x, norm, crop=32)
    assert torch.equal(crop, out[:, :, 32:64, 32:64])
    aug = transforms.augment_batch(x, norm, 48, 0.05, torch.Generator().manual_seed(1))
    assert aug.shape == (4, 3, 48, 48) and aug.min() >= -1 and aug.max() <= 1
    plain = transforms.augment_batch(x, norm, 96, 0.0, torch.Generator().manual_seed(1))
    assert sorted(plain[0].flatten().tolist()) == sorted(out[0].flatten().tolist())  # only moved pixels
