"""Review: what reviewers answered and what their answers add up to.

- `verdicts`: the append-only verdict store (`ReviewStore`, SQLite in WAL), the table a reviewer
  filters (outcomes, doubt) and the review queue.
- `agreement`: each reviewer's latest answer, the label the reviewers settled on, the conflicts, and
  Cohen's kappa per pair.

`from pcam_core import review` gives the store and the table as `review.ReviewStore`, `review.review_table`.
"""

from pcam_core import lazy_surface

__all__ = ["OUTCOMES", "THRESHOLD", "VERDICTS", "VERDICT_FILTERS", "ReviewStore", "default_db",
           "review_table", "select", "settled_labels"]
__getattr__, __dir__ = lazy_surface(__name__, {**{name: "verdicts" for name in __all__},
                                               "settled_labels": "agreement"})
