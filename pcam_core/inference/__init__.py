"""Inference: what a trained model says about patches, and how good that is.

- `infer`: batched prediction with the 8 dihedral test-time views, and the cached predictions table.
- `cam`: Grad-CAM family maps (pytorch-grad-cam), overlays, and how well a map points at the centre.
- `embed`: per-patch embeddings and the seeded 2-D UMAP map of a split.
- `duplicates`: the same tissue twice (exact under the 8 transforms, near by PSNR-checked neighbours).
- `metrics`: ROC AUC with bootstrap intervals, threshold metrics, calibration.
- `submission`: the Kaggle CSV, validated.
"""

from pcam_core import lazy_surface

__all__ = ["compute_cams", "find_duplicates", "map_2d", "predict", "predictions_table", "roc_auc",
           "write_submission"]
__getattr__, __dir__ = lazy_surface(__name__, {
    "predict": "infer", "predictions_table": "infer", "compute_cams": "cam", "map_2d": "embed",
    "find_duplicates": "duplicates", "roc_auc": "metrics", "write_submission": "submission"})
