"""PCam Review core library: the work behind the app and `python -m pcam_core`, in packages by concern.

Imports point down this list, never up (tests/test_structure.py checks it):

    cli/        `python -m pcam_core <command>`: argument parsing and one-line errors
    bench/      speed and quality measurements beside the peers (the notebook's Keras pipeline, ...)
    slides/     whole-slide images: reading, tissue, tumour maps, their cache and exports, the demo slide
    review/     the verdict store, the review table and queue, reviewers' agreement
    training/   fit, schedule, EMA, crossval and cleanlab's label issues
    inference/  predict with TTA, Grad-CAM, embeddings and the 2-D map, duplicates, metrics, submission
    models/     the model registry and `Classifier`, per-CPU calibration, the process's place under torchrun
    data/       dataset readers behind `PatchStore`, the pack cache, demo patches, transforms, splits
    runs/       `TrainConfig`, the run folder (one writer, every reader) and background jobs
    geometry, atomic, hardware   shared basics: patch geometry, atomic writes and locks, the CPU's name

Each package's `__init__` names its public surface; its modules are imported only when a name is used,
so listing runs or polling a job never imports torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_surface(package: str, homes: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list]]:
    """A package's `__getattr__` and `__dir__`: each public name in `homes` is imported from its module
    (`homes[name]`, relative to `package`) the first time it is used."""

    def __getattr__(name: str) -> object:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{homes[name]}"), name)

    def __dir__() -> list:
        return sorted(homes)

    return __getattr__, __dir__
