"""A trained model handed to QuPath users: a WSInfer model folder (wsinfer-zoo config spec 1.0).

The folder holds `config.json` (architecture, two classes ["Other", "Tumor"], 96 px patches at PCam's
scale or the `mpp` in the checkpoint's config, and the transforms Resize -> ToTensor -> Normalize with the
run's normalisation), `torchscript_model.pt` (traced on the CPU, in eval mode, float32, not frozen) and a
`README.md` model card.

Our networks give one tumour logit z. QuPath's WSInfer extension always applies softmax to the output, so a
one-logit model would show 1.0 on every tile (qupath/qupath-extension-wsinfer#69): the exported module
outputs the two logits [0, z], whose softmax's second column is sigmoid(z), our P(tumour). A model trained
on a centre crop gets the crop inside the traced module: WSInfer feeds the whole 96 px patch.
"""

from __future__ import annotations

import json
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from pcam_core.atomic import atomic_write, write_text
from pcam_core.geometry import PATCH, PCAM_MPP
from pcam_core.models.registry import Classifier, load
from pcam_core.runs.folder import checkpoint_file

SPEC_VERSION = "1.0"
CLASS_NAMES = ["Other", "Tumor"]
EXPORTED = ("config.json", "torchscript_model.pt", "README.md")
# WSInfer's contract is TorchScript, which torch now calls deprecated in favour of torch.export
JIT_DEPRECATED = r"`torch\.jit\.\w+` is deprecated"


class TwoLogits(nn.Module):
    """(B, 3, 96, 96) normalised input -> (B, 2) logits [0, z]: softmax[:, 1] is sigmoid(z)."""

    def __init__(self, network: nn.Module, crop: int):
        super().__init__()
        self.network = network
        self.start = (PATCH - crop) // 2
        self.crop = crop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, self.start:self.start + self.crop, self.start:self.start + self.crop]
        z = self.network(x)  # (B, 1)
        return torch.cat([torch.zeros_like(z), z], dim=1)


def wsinfer_config(classifier: Classifier) -> dict:
    """config.json for `classifier` (wsinfer-zoo's model-config schema, spec 1.0)."""
    norm = classifier.normalization
    return {"spec_version": SPEC_VERSION, "architecture": classifier.name, "num_classes": len(CLASS_NAMES),
            "class_names": CLASS_NAMES, "patch_size_pixels": PATCH,
            "spacing_um_px": classifier.mpp,
            "transform": [{"name": "Resize", "arguments": {"size": PATCH}}, {"name": "ToTensor"},
                          {"name": "Normalize", "arguments": {"mean": [float(v) for v in norm["mean"]],
                                                              "std": [float(v) for v in norm["std"]]}}]}


def trace(classifier: Classifier) -> torch.jit.ScriptModule:
    """The two-logit module traced on the CPU in float32 (ValueError when the network cannot be traced)."""
    module = TwoLogits(classifier.module.float().cpu(), classifier.crop).eval()
    example = torch.rand(2, 3, PATCH, PATCH)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=JIT_DEPRECATED, category=FutureWarning)
            traced = torch.jit.trace(module, example, check_trace=True)
    except (RuntimeError, TypeError, ValueError, torch.jit.TracingCheckError) as e:
        raise ValueError(f"the {classifier.name} network cannot be traced for TorchScript ({e}); "
                         "export a run of another architecture") from e
    return traced


def check_out(out: str | Path) -> Path:
    """`out` as a folder an export may fill: new, empty, or an earlier export (ValueError otherwise)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(p.name not in EXPORTED for p in out.iterdir())):
        raise ValueError(f"{out} exists and holds other files: give a new or empty folder (or an earlier "
                         "export of a model, which is replaced)")
    return out


def model_card(classifier: Classifier, config: dict, held_out: dict | None) -> str:
    """README.md: what the model is, how it was trained, how good it was, and what it is for."""
    cfg = classifier.config
    norm = config["transform"][2]["arguments"]
    auc = ("not measured (the run's held-out patches could not be read)" if not held_out else
           f"{held_out['auc']:.4f} (95% bootstrap interval {held_out['ci'][0]:.4f}-{held_out['ci'][1]:.4f}) "
           f"on {held_out['n']:,} held-out patches, one view")
    scale = "PatchCamelyon's, Camelyon16 level 2" if config["spacing_um_px"] == PCAM_MPP else "the run's"
    crop = (f" The network sees the centre {classifier.crop} px; the crop is inside the TorchScript module."
            if classifier.crop != PATCH else "")
    start = "ImageNet-initialised" if cfg.get("pretrained") else "from scratch"
    return f"""# {classifier.name}: tumour in the centre of 96 x 96 lymph-node patches

Exported by PCam Review on {datetime.now(timezone.utc):%Y-%m-%d} from `{classifier.source}`.

- **Task**: P(tumour) that metastatic tumour touches the centre 32 x 32 of a 96 x 96 px patch
  (PatchCamelyon's label rule), for H&E sections of lymph nodes.
- **Scale**: {config['spacing_um_px']:g} um per pixel ({scale}); WSInfer reads patches at this spacing.
- **Output**: two logits [0, z] for {CLASS_NAMES}; softmax's `Tumor` column is the model's P(tumour),
  which WSInfer writes as `prob_Tumor`.
- **Input**: Resize to {PATCH} px, ToTensor, Normalize(mean {norm['mean']}, std {norm['std']}).{crop}
- **Held-out ROC AUC**: {auc}.
- **Training**: data `{cfg.get('data', 'unknown')}`, {cfg.get('epochs', '?')} epochs, batch
  {cfg.get('batch_size', '?')}, learning rate {cfg.get('lr', '?')}, {start}, seed {cfg.get('seed', '?')};
  the whole training configuration is below.
- **Not included**: test-time augmentation and ensembles (WSInfer runs one network on one view), so a
  map made in PCam Review with TTA or several checkpoints differs slightly.
- **Intended use**: research, and review of tumour maps beside a pathologist; not diagnosis. Check the
  scale of your slides, and how the model does on your scanner and stain, before trusting its P.

```json
{json.dumps(cfg, indent=2, sort_keys=True)}
```
"""


def export_wsinfer(checkpoint: str | Path, out: str | Path, held_out: dict | None = None) -> Path:
    """Writes the WSInfer model folder for one checkpoint (a run folder or a .pt file) into `out`.

    Args:
        held_out: {"auc", "ci": (low, high), "n"} of the run's held-out patches for the model card.

    Raises:
        ValueError: the checkpoint is not one model, cannot be traced, or `out` holds other files.
    """
    out = check_out(out)
    classifier = load(checkpoint_file(checkpoint), device="cpu")
    config = wsinfer_config(classifier)
    traced = trace(classifier)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "torchscript_model.pt") as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=JIT_DEPRECATED, category=FutureWarning)
        torch.jit.save(traced, str(tmp))
    write_text(out / "config.json", json.dumps(config, indent=2) + "\n")
    write_text(out / "README.md", model_card(classifier, config, held_out))
    return out
