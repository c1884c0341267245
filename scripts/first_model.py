"""`make run`'s first model: when no run exists yet, train base_cnn on the centre 48 px of the demo
patches for 3 epochs in the background (under a minute on two CPU cores: the label is about the centre
32 x 32, and 48 px is a quarter of the pixels), so Inspect, Evaluate, Submit and Slides have a model soon
after the app opens. The Train page shows its progress; the sidebar picks it up when it finishes.

    python scripts/first_model.py DATA_DIR
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pcam_core import runs  # noqa: E402
from pcam_core.runs import jobs
from pcam_core.runs.config import TrainConfig  # noqa: E402


def main(data: str) -> int:
    folder = runs.runs_dir()
    if folder.is_dir() and any(p.is_dir() for p in folder.iterdir()):
        return 0  # the user has runs: nothing to do
    config = TrainConfig(data=str(Path(data).resolve()), model="base_cnn", crop=48, epochs=3, device="cpu")
    run = jobs.start(config)
    print(f"training a first demo model in the background: {run} (see the Train page)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
