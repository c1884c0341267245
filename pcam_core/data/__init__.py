"""Data: every dataset layout behind one `PatchStore`, and what is made from patches before a model sees them.

- `readers`: detect a folder's layout (Kaggle, PCam HDF5, a folder of images) and `open_dataset` it.
- `store`: `PatchStore`, the one way to reach pixels, labels, splits and per-patch stats.
- `decode`, `pack`: image files decoded once, in parallel, into the memory-mapped uint8 cache.
- `pcam_h5`: PCam's HDF5 files, read lazily.
- `demo`: the synthetic H&E-like dataset with a tumour mask per patch (and noisy or duplicated copies).
- `transforms`: batched tensor transforms (model input, the 8 dihedral views, colour jitter).
- `splits`: which patches train and which validate, for training, the CLI, the app and the benchmarks.
"""

from pcam_core import lazy_surface

__all__ = ["PatchStore", "make_demo", "open_dataset", "split_train_val"]
__getattr__, __dir__ = lazy_surface(__name__, {"PatchStore": "store", "make_demo": "demo",
                                               "open_dataset": "readers", "split_train_val": "splits"})
