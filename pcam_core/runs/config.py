"""TrainConfig: the one object that describes a training run, saved as config.json in its run folder.

The CLI builds it from flags, the train page from widgets; `fit` takes nothing else.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

SCHEDULES = ("onecycle", "cosine")
FINETUNE = ("full", "head", "head_then_full")
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class TrainConfig:
    """Everything a training run depends on.

    Attributes:
        data: dataset folder (any layout `data.open_dataset` reads).
        model: registry name (`models.list_models()`) or any timm model name.
        pretrained: start from ImageNet weights (offline for efficientnet_lite0).
        epochs: passes over the training split.
        batch_size: patches per step and per process (under torchrun each rank takes this many).
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay.
        schedule: "onecycle" (linear warm-up, cosine down) or "cosine" (no warm-up).
        warmup_frac: share of the steps spent warming up under "onecycle".
        val_frac: stratified share held out for validation when the data has no valid split.
        val_ids: CSV with an `id` column naming the validation patches (overrides val_frac).
        labels: CSV with `id` and `label` (0 or 1) columns whose labels replace the given ones, in
            training and validation (e.g. `reviewed-labels`' file of what the reviewers settled on).
        exclude_ids: CSV with an `id` column: patches left out of training and validation (e.g. those the
            reviewers could not settle).
        groups: CSV with `id` and `group` columns (e.g. the slide each patch was cut from): a drawn split
            or crossval fold never puts one group on both sides; "pcam-meta" reads PCam's
            camelyonpatch_level_2_split_*_meta.csv (its `wsi` column), used by default when present.
        out: run folder; default `runs.runs_dir()`/<model>-<time>.
        resume: run folder to continue exactly where it stopped (its saved config wins).
        device: "auto", "cpu" or "cuda".
        seed: seeds the split, the batch order, augmentation and initialisation.
        crop: input size in px: 96 (full patch with context) or a centre crop such as 32, 48, 64.
        finetune: "full" trains everything; "head" freezes the backbone; "head_then_full" trains the
            head for `head_epochs`, then everything at lr * `unfreeze_lr_factor` (the notebook's fine-tune).
        head_epochs: epochs of head-only training under "head_then_full".
        unfreeze_lr_factor: learning-rate multiplier once the backbone is unfrozen.
        augment: random dihedral transform and colour jitter on every training batch.
        jitter: strength of the stain/brightness/contrast jitter (0 turns it off).
        ema_decay: keep an exponential moving average of the weights and save/validate it (0 turns it off).
        patience: stop when validation AUC has not improved for this many epochs (0: never).
        val_tta: dihedral views averaged at validation (1, 2, 4 or 8).
        precision: "auto" (bf16 autocast on CUDA; on a CPU whichever of fp32 and bf16 `calibrate` timed
            faster for this model on this machine), "bf16" or "fp32".
        channels_last: NHWC memory format for the model and its input (unset: the faster, timed).
        compile: wrap the model in torch.compile (unset: when timed faster and the run repays its compile
            time).
        threads: CPU threads for torch (0: torch's default).
    """

    data: str = ""
    model: str = "efficientnet_lite0"
    pretrained: bool = False
    epochs: int = 5
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    schedule: str = "onecycle"
    warmup_frac: float = 0.15
    val_frac: float = 0.1
    val_ids: str | None = None
    labels: str | None = None
    exclude_ids: str | None = None
    groups: str | None = None
    out: str | None = None
    resume: str | None = None
    device: str = "auto"
    seed: int = 0
    crop: int = 96
    finetune: str = "full"
    head_epochs: int = 1
    unfreeze_lr_factor: float = 0.1
    augment: bool = True
    jitter: float = 0.05
    ema_decay: float = 0.0
    patience: int = 0
    val_tta: int = 1
    precision: str = "auto"
    channels_last: bool | None = None
    compile: bool | None = None
    threads: int = 0

    def validate(self) -> TrainConfig:
        """Checks the options that need no data; raises ValueError naming the bad one."""
        def allowed(name: str, value, choices) -> None:
            if value not in choices:
                raise ValueError(f"{name}={value!r} is not allowed; choose one of {list(choices)}")

        allowed("schedule", self.schedule, SCHEDULES)
        allowed("finetune", self.finetune, FINETUNE)
        allowed("precision", self.precision, PRECISIONS)
        allowed("device", self.device, ("auto", "cpu", "cuda"))
        allowed("val_tta", self.val_tta, (1, 2, 4, 8))
        if not self.data and not self.resume:
            raise ValueError("no dataset given: pass --data DIR")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        ranges = {  # option: (test, the allowed range in words)
            "val_frac": (lambda v: 0 < v < 1, "between 0 and 1 (e.g. 0.1)"),
            "lr": (lambda v: 0 < v <= 10, "a positive number up to 10 (e.g. 0.002)"),
            "weight_decay": (lambda v: 0 <= v <= 10, "0 or a positive number (e.g. 0.05)"),
            "warmup_frac": (lambda v: 0 <= v < 1, "from 0 up to below 1 (e.g. 0.15)"),
            "jitter": (lambda v: 0 <= v <= 1, "from 0 (off) to 1 (e.g. 0.05)"),
            "unfreeze_lr_factor": (lambda v: 0 < v <= 1, "above 0 and at most 1 (e.g. 0.1)"),
        }
        for name, (ok, allowed) in ranges.items():
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and ok(value)):
                raise ValueError(f"{name} must be {allowed}, got {value}")
        for name in ("patience", "threads", "seed", "head_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)}")
        if not 16 <= self.crop <= 96 or self.crop % 2:
            raise ValueError(f"crop must be an even size in px between 16 and 96 (e.g. 32, 48, 64, 96), "
                             f"got {self.crop}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be 0 (off) or below 1 (e.g. 0.999), got {self.ema_decay}")
        if self.finetune == "head_then_full" and not 0 < self.head_epochs < self.epochs:
            raise ValueError(f"head_then_full needs 0 < head_epochs < epochs, got "
                             f"head_epochs={self.head_epochs} and epochs={self.epochs}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def field_help(cls) -> dict[str, str]:
        """One help line per field, taken from the Attributes section of this docstring (CLI --help)."""
        text = cls.__doc__.split("Attributes:", 1)[1]
        helps, name = {}, None
        for line in text.splitlines():
            head, sep, rest = line.strip().partition(": ")
            if sep and head.isidentifier() and line.startswith(" " * 8) and not line.startswith(" " * 12):
                name, helps[head] = head, rest
            elif name and line.strip():
                helps[name] += " " + line.strip()
        return helps

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Builds a config from a dict, ignoring keys this version does not know (older or newer runs)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is this a run folder written by `pcam_core train`?")
        try:
            values = json.loads(path.read_text())
        except ValueError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); it is not a config.json written by "
                             f"`train`") from e
        if not isinstance(values, dict):
            raise ValueError(f"{path} holds a {type(values).__name__}, not a training config")
        return cls.from_dict(values)
