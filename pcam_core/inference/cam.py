"""Grad-CAM family via pytorch-grad-cam: maps, overlays, and how well the maps point at the tumour.

The models have a single logit, so the "tumour" target is the logit and the "normal" target its
negation (what a second softmax class would give); EigenCAM ignores the target. Every CAM object lives
in a `with` block so its hooks are released even when a call fails: in a Streamlit rerun loop a leaked
hook keeps the whole activation graph alive.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM
from torch import nn

from pcam_core.data.transforms import to_model_input
from pcam_core.geometry import CENTRE, PATCH, as_patches
from pcam_core.models.registry import BaseCNN, Classifier, cam_target_layer


class SignedEigenCAM(EigenCAM):
    """EigenCAM (the layer's activations projected on their first principal component; target-independent)
    computed from the smaller Gram matrix, 20-100x faster than the library's full SVD at these sizes, and
    with a fixed sign: the component's sign is arbitrary, so the map is turned to point where the layer is
    most active."""

    def get_cam_image(self, input_tensor, target_layer, targets, activations, grads, eigen_smooth):
        a = np.nan_to_num(np.asarray(activations, dtype=np.float64))  # (B, C, H, W)
        b, c, h, w = a.shape
        flat = a.reshape(b, c, h * w).transpose(0, 2, 1)  # (B, HW, C)
        centred = flat - flat.mean(axis=1, keepdims=True)
        if h * w <= c:  # the first left singular vector, up to scale, from the (HW, HW) Gram matrix
            projection = np.linalg.eigh(centred @ centred.transpose(0, 2, 1))[1][:, :, -1]
        else:  # the first right singular vector from the (C, C) one, then the projection on it
            top = np.linalg.eigh(centred.transpose(0, 2, 1) @ centred)[1][:, :, -1]  # (B, C)
            projection = np.einsum("bpc,bc->bp", centred, top)  # (B, HW)
        energy = flat.sum(axis=2)
        sign = np.sign(np.einsum("bp,bp->b", projection, energy - energy.mean(axis=1, keepdims=True)))
        sign[sign == 0] = 1
        return (projection * sign[:, None]).reshape(b, h, w).astype(np.float32)


METHODS = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "eigencam": SignedEigenCAM,
    "layercam": LayerCAM,
    "scorecam": ScoreCAM,
}
TARGETS = ("tumour", "normal")


class LogitTarget:
    """The model's single logit, signed: +1 explains "tumour", -1 explains "normal"."""

    def __init__(self, sign: int):
        self.sign = sign

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return self.sign * output[..., 0]  # (1,) per sample -> scalar; (B, 1) -> (B,)


def layer_names(model: nn.Module, crop: int = PATCH) -> list[str]:
    """Names of the submodules whose output is a feature map (B, C, H, W): the valid `layer` values."""
    return list(_feature_sides(model, crop))


def _feature_sides(model: nn.Module, crop: int, names: list[str] | None = None) -> dict[str, int]:
    """Height of the feature map (B, C, H, W) each submodule (or each of `names`) outputs on a crop x crop
    input, in the order of the forward pass; modules with other outputs are left out."""
    sides: dict[str, int] = {}

    def record(name: str):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.dim() == 4:
                sides.setdefault(name, int(output.shape[-2]))
        return hook

    chosen = names if names is not None else [name for name, _ in model.named_modules() if name]
    handles = [model.get_submodule(name).register_forward_hook(record(name)) for name in chosen]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, crop, crop, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return sides


@dataclass(frozen=True)
class CamLayer:
    """A layer a CAM can be taken from, as a person would pick it: `label` is "block 5 · 6 x 6" (the map's
    cells across the patch), `name` the module's name for `compute_cams(layer=...)`."""

    name: str
    label: str
    side: int


def cam_layers(model: nn.Module, crop: int = PATCH) -> list[CamLayer]:
    """The model's stages whose output is a feature map of at least 2 x 2 cells, shallowest first.

    One per stage, since the layers inside a stage share its cells: base_cnn's three conv + ReLU outputs;
    for timm's EfficientNet/MobileNet family the stem, each of `blocks`, and the head conv (all after
    their activation); for other timm models the stages of `feature_info`. Pooling, dropout, flatten and
    the classifier are never offered: their output has no spatial layout to map.
    """
    if isinstance(model, BaseCNN):
        named = [(f"features.{i}", f"conv {n + 1}")
                 for n, i in enumerate(i for i, m in enumerate(model.features) if isinstance(m, nn.ReLU))]
    elif isinstance(getattr(model, "blocks", None), nn.Sequential):
        stem = "bn1" if hasattr(model, "bn1") else "conv_stem"
        head = "bn2" if hasattr(model, "bn2") else "conv_head"
        named = [(stem, "stem"), *((f"blocks.{i}", f"block {i + 1}") for i in range(len(model.blocks))),
                 (head, "head conv")]
    elif getattr(model, "feature_info", None):
        named = [(f["module"], f"stage {i + 1}") for i, f in enumerate(model.feature_info)]
    else:
        named = [(name, f"conv {i + 1}") for i, (name, _) in enumerate(
            (n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))]
    sides = _feature_sides(model, crop, [name for name, _ in named if _has(model, name)])
    return [CamLayer(name, f"{label} · {sides[name]} x {sides[name]}", sides[name])
            for name, label in named if sides.get(name, 0) >= 2]


def default_layer(model: nn.Module, crop: int = PATCH) -> str:
    """The module name of the architecture's default CAM layer (`models.cam_target_layer`)."""
    target = cam_target_layer(model)
    return next(name for name, module in model.named_modules() if module is target)


EMPTY_REASONS = {
    "gradcam": "no feature at this layer pushes the model towards {target}: Grad-CAM keeps only the "
               "positive evidence. Try Explain: {other}, or another layer.",
    "gradcam++": "no feature at this layer pushes the model towards {target}: Grad-CAM++ keeps only the "
                 "positive evidence. Try Explain: {other}, or another layer.",
    "layercam": "no cell of this layer has both positive activations and positive gradients towards "
                "{target}. Try Explain: {other}, or another layer.",
    "eigencam": "this layer's activations are the same all over the patch: they have no main pattern.",
    "scorecam": "masking no part of the patch raises the {target} score.",
}


def empty_reason(method: str, target: str) -> str:
    """Why a map of `method` came out empty (all zeros), in words for the page."""
    other = TARGETS[1 - TARGETS.index(target)]
    return EMPTY_REASONS[method].format(target=target, other=other)


def _has(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


def _target_layer(model: nn.Module, layer: str | None, crop: int) -> nn.Module:
    if layer is None:
        return cam_target_layer(model)
    valid = layer_names(model, crop)
    if layer not in valid:
        offered = ", ".join(f"{c.name} ({c.label})" for c in cam_layers(model, crop))
        raise ValueError(f"layer {layer!r} is not a feature-map layer of this model; its stages are: "
                         f"{offered}")
    return model.get_submodule(layer)


def compute_cams(classifier: Classifier, images: np.ndarray, method: str = "gradcam",
                 layer: str | None = None, target: str = "tumour",
                 batch_size: int | None = None) -> np.ndarray:
    """CAM maps for uint8 patches, on the device the classifier's module is on.

    Args:
        classifier: a `models.Classifier` (its normalisation and crop are used).
        images: (N, 96, 96, 3) uint8, e.g. `store.batch(indices)`.
        method: a key of METHODS.
        layer: a module name, e.g. a `cam_layers(classifier.module)` entry's `name` (any module with a
            feature-map output works); None picks the architecture's default (`models.cam_target_layer`).
        target: "tumour" explains the logit, "normal" its negation.
        batch_size: patches per CAM pass (default: 32 on CPU, 256 on CUDA).

    Returns:
        (N, 96, 96) float32 maps in [0, 1]; a model trained on a centre crop gets zeros outside it.
    """
    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose from {', '.join(METHODS)}")
    if target not in TARGETS:
        raise ValueError(f"unknown CAM target {target!r}; choose from {', '.join(TARGETS)}")
    images = as_patches(images)
    model, crop = classifier.module.eval(), classifier.crop
    device = next(model.parameters()).device
    target_layer = _target_layer(model, layer, crop)
    maps = np.zeros((len(images), PATCH, PATCH), dtype=np.float32)
    lo = (PATCH - crop) // 2
    sign = 1 if target == "tumour" else -1
    # ScoreCAM scores every channel of the layer on a masked copy of the input: one patch per pass keeps
    # that (channels x 3 x 96 x 96) tensor small; the masked copies themselves go 128 per forward pass
    step = 1 if method == "scorecam" else batch_size or (256 if device.type == "cuda" else 32)
    with torch.enable_grad(), METHODS[method](model=model, target_layers=[target_layer]) as cam:
        if method == "scorecam":
            cam.batch_size = 128
        for start in range(0, len(images), step):
            x = to_model_input(torch.from_numpy(images[start:start + step]).to(device),
                               classifier.normalization, crop=crop)
            targets = [LogitTarget(sign)] * len(x)
            # ScoreCAM draws a tqdm bar per patch on stderr; the library has no switch for it
            quiet = method == "scorecam"
            try:
                with contextlib.redirect_stderr(io.StringIO()) if quiet else contextlib.nullcontext():
                    out = cam(input_tensor=x, targets=targets)  # (B, crop, crop) in [0, 1]
            except IndexError as e:
                # the library's __exit__ prints and swallows an IndexError; surface it instead
                raise RuntimeError(f"{method} failed on layer {layer or 'default'}: {e}") from e
            maps[start:start + len(x), lo:lo + crop, lo:lo + crop] = out
    return maps


def centre_focus(cams: np.ndarray) -> np.ndarray:
    """(N,) share of each map's mass inside the centre 32x32; a uniform map gives 1/9, an empty map NaN."""
    cams = np.asarray(cams, dtype=np.float64)
    total = cams.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return cams[:, CENTRE, CENTRE].sum(axis=(1, 2)) / total


def localisation(cams: np.ndarray, masks: np.ndarray) -> dict[str, np.ndarray]:
    """How well maps point at the tumour, where tumour masks exist (the demo data).

    Returns:
        dict of (N,) arrays, NaN for patches without tumour pixels:
        tumour_share: share of the map's mass on tumour pixels;
        uniform_share: the same for a uniform map (the tumour's share of the patch), the chance level;
        pointing_hit: 1.0 when the map's maximum lies on a tumour pixel, else 0.0 (a uniform map has no
        maximum: its expected hit rate is uniform_share).
    """
    cams = np.asarray(cams, dtype=np.float64)
    masks = np.asarray(masks, dtype=bool)
    if cams.shape != masks.shape:
        raise ValueError(f"maps {cams.shape} and masks {masks.shape} differ in shape")
    has_tumour = masks.any(axis=(1, 2))
    total = cams.sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        share = (cams * masks).sum(axis=(1, 2)) / total
    flat = cams.reshape(len(cams), -1)
    hit = masks.reshape(len(masks), -1)[np.arange(len(cams)), flat.argmax(axis=1)].astype(np.float64)
    uniform = masks.mean(axis=(1, 2))
    nan = np.where(has_tumour, 1.0, np.nan)
    return {"tumour_share": share * nan, "uniform_share": uniform * nan, "pointing_hit": hit * nan}


def overlay(rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.5, colormap: str = "jet",
            outline: tuple[int, int, int] | None = (255, 255, 255)) -> np.ndarray:
    """The map blended over the patch, with the centre 32x32 outlined.

    Args:
        rgb: (96, 96, 3) uint8 patch.
        cam: (96, 96) map in [0, 1].
        alpha: opacity of the heat map (0 shows the patch only, 1 the map only).
        colormap: a matplotlib colour map name.
        outline: colour of the 1-px frame just outside the centre 32x32; None for no frame.

    Returns:
        (96, 96, 3) uint8 RGB.
    """
    import matplotlib

    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be within [0, 1], got {alpha}")
    try:
        cmap = matplotlib.colormaps[colormap]
    except KeyError:
        raise ValueError(f"unknown colour map {colormap!r}; try jet, viridis, inferno or magma") from None
    heat = cmap(np.clip(cam, 0, 1))[..., :3] * 255  # (96, 96, 3) float
    out = ((1 - alpha) * rgb.astype(np.float32) + alpha * heat).round().clip(0, 255).astype(np.uint8)
    if outline is not None:
        lo, hi = CENTRE.start - 1, CENTRE.stop  # the frame sits on the first pixels outside the centre
        out[lo, lo:hi + 1] = out[hi, lo:hi + 1] = outline
        out[lo:hi + 1, lo] = out[lo:hi + 1, hi] = outline
    return out
