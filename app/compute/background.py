"""Long computations in a thread of the server: a page shows their progress, a reader who leaves and
comes back finds them further on (or done, their result cached on disk by pcam_core)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

Work = Callable[..., Any]


class BackgroundJob:
    """`work(progress)` run once in a daemon thread; progress(stage, done, total) updates what it shows.
    With `partial=True`, `work(progress, keep)`: keep(value) makes a first result a page can show meanwhile
    (`.partial`)."""

    def __init__(self, work: Work, name: str, partial: bool = False):
        self.stage, self.done, self.total, self.error, self.result = "starting", 0, 0, None, None
        self.partial, self._takes_partial = None, partial
        self.thread = threading.Thread(target=self._run, args=(work,), daemon=True, name=name)
        self.thread.start()

    def _progress(self, stage: str, done: int, total: int) -> None:
        self.stage, self.done, self.total = stage, done, total

    def _run(self, work: Work) -> None:
        try:
            self.result = work(self._progress, self._keep) if self._takes_partial else work(self._progress)
        except Exception as e:  # noqa: BLE001 - shown on the page that asked, never lost in a thread
            self.error = f"{type(e).__name__}: {e}" if not isinstance(e, (ValueError, OSError)) else str(e)

    def _keep(self, partial: Any) -> None:
        self.partial = partial

    @property
    def running(self) -> bool:
        return self.thread.is_alive()


_JOBS: dict[tuple, BackgroundJob] = {}
_LOCK = threading.Lock()


def running(key: tuple) -> bool:
    """Whether a job for `key` is running now (a page reopened while it works shows its progress)."""
    with _LOCK:
        job = _JOBS.get(key)
        return job is not None and job.running


def job_for(key: tuple, work: Work, partial: bool = False) -> BackgroundJob:
    """The job computing `key`: the running or finished one, or a new one (also after a failure)."""
    with _LOCK:
        job = _JOBS.get(key)
        if job is None or (not job.running and job.error):
            job = _JOBS[key] = BackgroundJob(work, name=f"background-{key[0]}", partial=partial)
        if not job.running and job.error is None:  # done: drop the others done (their results are on disk)
            for old in [k for k, j in _JOBS.items() if k != key and not j.running]:
                del _JOBS[old]
        return job
