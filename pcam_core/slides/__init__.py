"""Slides: whole-slide images as tumour maps, in level-0 pixels throughout.

- `reader`: `open_slide` (OpenSlide for scanner formats, Pillow for plain images), the tissue mask,
  the `Grid` of cells at the model's scale.
- `maps`: `score_slide`, each cell from the 96 x 96 window centred on it, in resumable chunks.
- `cache`: where a map lives on disk (keyed by slide, checkpoints and settings) and reading it back;
  no torch.
- `export`: the cells CSV, the overlay PNG, QuPath GeoJSON, and reviewed cells as a patch dataset.
- `demo`: a synthetic pyramidal slide with known tumour (and its mask).
"""

from pcam_core import lazy_surface

__all__ = ["Grid", "Slide", "load_map", "make_demo_slide", "open_slide", "score_slide"]
__getattr__, __dir__ = lazy_surface(__name__, {
    "Grid": "reader", "Slide": "reader", "open_slide": "reader", "score_slide": "maps", "load_map": "cache",
    "make_demo_slide": "demo"})
