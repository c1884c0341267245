"""Review: what reviewers answered and what their answers add up to.

- `store`: the review store a team shares (`ReviewStore`: SQLAlchemy over SQLite or PostgreSQL, Alembic
  migrations in `migrations/`): append-only verdicts, tags, drawn regions, the audit trail of events.
- `verdicts`: what a verdict is, the table a reviewer filters (outcomes, doubt) and the review queue.
- `regions`: regions reviewers draw on slides, in the same store.
- `agreement`: each reviewer's latest answer, the label the reviewers settled on, the conflicts, and
  Cohen's kappa per pair.

`from pcam_core import review` gives the store and the table as `review.ReviewStore`, `review.review_table`.
"""

from pcam_core import lazy_surface

__all__ = ["OUTCOMES", "THRESHOLD", "VERDICTS", "VERDICT_FILTERS", "ReviewStore", "default_db",
           "review_table", "select", "settled_labels"]
__getattr__, __dir__ = lazy_surface(__name__, {**{name: "verdicts" for name in __all__},
                                               "settled_labels": "agreement", "ReviewStore": "store",
                                               "default_db": "store"})
