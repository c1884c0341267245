"""Training: one run (`fit`), the pieces it steps with, and K runs for out-of-fold predictions.

- `train`: `fit(cfg)` yields the events the CLI prints and the app renders; `train_one_epoch`, `evaluate`.
- `schedule`: the learning rate as a pure function of the step (a resumed run repeats the unbroken one).
- `ema`: an exponential moving average of the weights, saved in the checkpoints.
- `crossval`: K stratified (or grouped) folds, out-of-fold P for every labelled patch, and the likely
  label errors cleanlab's confident learning finds in them.
"""

from pcam_core import lazy_surface

__all__ = ["fit", "label_issues", "out_of_fold"]
__getattr__, __dir__ = lazy_surface(__name__, {"fit": "train", "label_issues": "crossval",
                                               "out_of_fold": "crossval"})
