"""Runs: what a training run is (`TrainConfig`), its folder on disk, and the background jobs that fill it.

- `config`: `TrainConfig`, the one object that describes a run, saved as config.json.
- `folder`: the run folder's one writer (`RunFolder`) and every reader (status, metrics, checkpoints,
  the run list). Nothing here imports torch: the app lists runs on every rerun.
- `jobs`: start, stop and resume `python -m pcam_core train` (or crossval, or a slide map) detached.

`from pcam_core import runs` gives the run folder's readers as `runs.status(run_dir)` and so on.
"""

from pcam_core import lazy_surface

_FOLDER = ("ACTIVE_STATES", "CHECKPOINTS", "RunFolder", "alive", "checkpoint_file", "checkpoint_mtime",
           "checkpoint_path", "delete_run", "list_runs", "metrics", "new_run_dir", "progress", "read_json",
           "rename_run", "run_folder_of", "runs_dir", "save_checkpoint", "status", "steps", "timing",
           "val_ids")
__all__ = ["TrainConfig", *_FOLDER]
__getattr__, __dir__ = lazy_surface(__name__, {"TrainConfig": "config", **dict.fromkeys(_FOLDER, "folder")})
