"""What several reviewers' verdicts add up to: the label they settled on, where they conflict, and how
well each pair agrees (Cohen's kappa).

Every function takes a verdict history (`ReviewStore.history(dataset)`: one row per verdict given, oldest
first) and counts each reviewer's latest verdict on a patch only: an earlier one was a changed mind.
A reviewer is their name without case or extra spaces ("Alice", "alice " are one person, shown as first
written). Unsure counts for nothing anywhere: not in a label, not as a disagreement, not in kappa.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd

SETTLED_COLUMNS = ("id", "label", "tumour", "normal", "unsure", "settled")
RULE = ("Each reviewer's latest verdict on a patch counts. Unsure counts for nothing. The label is the "
        "answer of the majority of the reviewers who said tumour or normal; as many of one as of the other "
        "is a conflict, and the patch is left out of training until the reviewers settle it.")


def reviewer_key(name: str) -> str:
    """Who a typed name is: case and runs of spaces do not make another reviewer."""
    return " ".join(str(name).split()).casefold()


def per_reviewer(history: pd.DataFrame) -> pd.DataFrame:
    """The latest verdict of each reviewer on each patch: patch_id, reviewer, verdict, created (and prob,
    the P(tumour) of the model the reviewer saw, where the history has it)."""
    if history.empty:
        return pd.DataFrame(columns=["patch_id", "reviewer", "verdict", "created"])
    ordered = history.sort_values("seq")
    keys = ordered["reviewer"].map(reviewer_key)
    shown = ordered.groupby(keys)["reviewer"].transform("first").map(lambda name: " ".join(name.split()))
    latest = ordered.assign(reviewer=shown).drop_duplicates(["patch_id", "reviewer"], keep="last")
    columns = ["patch_id", "reviewer", "verdict", "created"] + (["prob"] if "prob" in latest else [])
    return latest[columns].reset_index(drop=True)


def settled_labels(history: pd.DataFrame) -> pd.DataFrame:
    """Per reviewed patch, what the reviewers settled on (the rule is `RULE`).

    Returns:
        id, label (1 tumour, 0 normal, -1 not settled), tumour / normal / unsure (how many reviewers said
        so), settled ("agreed": every answer the same; "majority"; "conflict": a tie; "unsure": no answer
        but unsure).
    """
    latest = per_reviewer(history)
    counts = pd.crosstab(latest["patch_id"], latest["verdict"]).reindex(
        columns=["tumour", "normal", "unsure"], fill_value=0)
    tumour, normal = counts["tumour"].to_numpy(), counts["normal"].to_numpy()
    label = np.where(tumour > normal, 1, np.where(normal > tumour, 0, -1))
    settled = np.select([(tumour + normal) == 0, tumour == normal, (tumour == 0) | (normal == 0)],
                        ["unsure", "conflict", "agreed"], "majority")
    table = pd.DataFrame({"id": counts.index.astype(str), "label": label, "tumour": tumour, "normal": normal,
                          "unsure": counts["unsure"].to_numpy(), "settled": settled})
    return table.reset_index(drop=True)[list(SETTLED_COLUMNS)]


def kappa_table(history: pd.DataFrame) -> pd.DataFrame:
    """Cohen's kappa for each pair of reviewers on the patches both answered tumour or normal (an unsure
    answer counts for nothing, here as in the label).

    Returns:
        reviewer_a, reviewer_b, patches (in common), agree (share of identical answers), kappa (NaN when
        they share no patch, or when kappa is undefined: both gave one and the same answer throughout).
    """
    from sklearn.metrics import cohen_kappa_score

    latest = per_reviewer(history)
    latest = latest[latest["verdict"].isin(["tumour", "normal"])]
    wide = latest.pivot(index="patch_id", columns="reviewer", values="verdict")
    rows = []
    for a, b in combinations(sorted(wide.columns), 2):
        both = wide[[a, b]].dropna()
        kappa = np.nan
        if len(both) and len(set(both[a]) | set(both[b])) > 1:
            kappa = cohen_kappa_score(both[a], both[b])
        rows.append({"reviewer_a": a, "reviewer_b": b, "patches": len(both),
                     "agree": float((both[a] == both[b]).mean()) if len(both) else np.nan, "kappa": kappa})
    return pd.DataFrame(rows, columns=["reviewer_a", "reviewer_b", "patches", "agree", "kappa"])


def reviewer_table(history: pd.DataFrame, labels: pd.Series, probs: pd.Series | None = None) -> pd.DataFrame:
    """Per reviewer: how many patches, how many of each answer, and how often the answer (tumour or normal)
    matches the given label and the model's call at 0.5.

    Args:
        labels: the given label (1, 0, -1 unknown), indexed by patch id.
        probs: a model's P(tumour), indexed by patch id; None: the P each verdict was recorded with (the
            model the reviewer saw), where there is one.
    """
    latest = per_reviewer(history)
    rows = []
    for reviewer, mine in latest.groupby("reviewer"):
        answered = mine[mine["verdict"].isin(["tumour", "normal"])]
        says = (answered["verdict"] == "tumour").to_numpy()
        given = labels.reindex(answered["patch_id"]).to_numpy()
        known = given >= 0
        row = {"reviewer": reviewer, "patches": len(mine),
               **{v: int((mine["verdict"] == v).sum()) for v in ("tumour", "normal", "unsure")},
               "agrees with the label": float((says[known] == (given[known] == 1)).mean()) if known.any()
               else np.nan}
        if probs is not None or "prob" in answered:
            p = (probs.reindex(answered["patch_id"]) if probs is not None else answered["prob"]).to_numpy(
                np.float64)
            scored = np.isfinite(p)
            row["agrees with the model"] = (float((says[scored] == (p[scored] >= 0.5)).mean())
                                            if scored.any() else np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def conflicts(history: pd.DataFrame) -> pd.DataFrame:
    """The patches on which reviewers disagree (someone said tumour and someone normal; unsure counts for
    nothing), as a queue: the ties first (`settled_labels`' "conflict", left out of training), then the
    other most even splits (a 2-to-1 before a 3-to-1), then the most reviewers, then the latest verdict.

    Returns:
        id, tumour, normal, unsure, settled ("conflict" for a tie, "majority"), reviewers ("Ann: tumour,
        Ben: normal"), last (the latest verdict's time).
    """
    latest = per_reviewer(history)
    if latest.empty:
        return pd.DataFrame(columns=["id", "tumour", "normal", "unsure", "settled", "reviewers", "last"])
    settled = settled_labels(history).set_index("id")
    grouped = latest.groupby("patch_id")
    ids = settled.index[(settled["tumour"] > 0) & (settled["normal"] > 0)]
    table = settled.loc[ids, ["tumour", "normal", "unsure", "settled"]].copy()
    table["reviewers"] = [", ".join(f"{r}: {v}" for r, v in zip(g["reviewer"], g["verdict"], strict=True))
                          for g in (grouped.get_group(i).sort_values("reviewer") for i in ids)]
    table["last"] = grouped["created"].max().loc[ids]
    answered = table["tumour"] + table["normal"]
    table["_split"] = np.abs(table["tumour"] - table["normal"]) / answered.clip(lower=1)
    table["_n"] = answered + table["unsure"]
    table = table.sort_values(["_split", "_n", "last"], ascending=[True, False, False], kind="stable")
    return table.drop(columns=["_split", "_n"]).rename_axis("id").reset_index()
