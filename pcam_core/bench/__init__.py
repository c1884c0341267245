"""Bench: `python -m pcam_core bench`, speed and quality measured beside what a user would otherwise use.

- `stages`: the sections over one dataset (data, train, infer, cam) and `run_bench`, which runs them.
- `baselines`: the reference notebook's per-image PIL pipeline, and the full-size tiled set.
- `notebook`: the whole commands beside the notebook's own Keras pipeline, on the same data.
- `contention`: a training job beside another busy process.
- `embed`, `labels`, `slides`: embeddings and duplicates at 60k patches, injected label noise found by
  crossval + cleanlab, tumour-map cells per second on real and synthetic slides.
"""

from pcam_core import lazy_surface

__all__ = ["run_bench"]
__getattr__, __dir__ = lazy_surface(__name__, {"run_bench": "stages"})
