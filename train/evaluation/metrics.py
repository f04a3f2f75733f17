"""Evaluation metrics: multi-label ROC-AUC and cross-modal retrieval recall@k.

Everything here works on plain arrays (NumPy, or anything `np.asarray` accepts, such as CPU torch
tensors), so the pre-training validation loop, `train/evaluation/evaluate.py` and notebooks share one
definition of each number.

ROC-AUC conventions (DECISIONS 22): a label whose ground truth has no positive (or no negative) in
the evaluated split has no ROC curve; it is left out of the macro mean and listed in
`AUROCResult.skipped` with the reason, instead of silently counting as 0.5 or raising.

Retrieval conventions: `similarity[i, j]` scores query `i` against gallery item `j` (higher is
better). By default query `i` matches gallery item `i` only. Pass `query_groups` /
`gallery_groups` when several gallery items are equally correct (for example several ECGs with
the word-for-word same report): a query then counts as found when any gallery item of its group
is within the top k. Ties are resolved against the query (a wrong item scoring exactly as high as
the best correct one is ranked before it), so a constant scorer gets chance-level recall, not 1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

DEFAULT_RECALL_KS = (1, 5, 10)


def _as_2d_float(array, name: str) -> np.ndarray:
    if hasattr(array, "detach"):  # torch tensor
        array = array.detach().float().cpu().numpy()
    array = np.asarray(array, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"`{name}` must be 1-D or 2-D (samples, labels), got shape {array.shape}.")
    return array


@dataclass
class AUROCResult:
    """Per-label and macro ROC-AUC of a multi-label problem.

    Attributes:
        macro (`float`): mean ROC-AUC over the evaluable labels (`nan` when there is none).
        per_label (`dict[str, float]`): ROC-AUC of every evaluable label, in input order.
        skipped (`dict[str, str]`): labels left out of the macro mean, with the reason
            (`"no positives"` or `"no negatives"`).
        num_positives (`dict[str, int]`): positives per label (all labels, skipped ones included).
        num_samples (`int`): number of evaluated samples.
    """

    macro: float
    per_label: dict[str, float]
    skipped: dict[str, str] = field(default_factory=dict)
    num_positives: dict[str, int] = field(default_factory=dict)
    num_samples: int = 0

    @property
    def evaluated_labels(self) -> list[str]:
        return list(self.per_label)

    def to_dict(self) -> dict:
        return {
            "macro_auroc": None if np.isnan(self.macro) else float(self.macro),
            "per_label_auroc": {name: float(value) for name, value in self.per_label.items()},
            "skipped_labels": dict(self.skipped),
            "num_positives": {name: int(value) for name, value in self.num_positives.items()},
            "num_samples": int(self.num_samples),
        }


def multilabel_auroc(y_true, y_score, label_names: Sequence[str] | None = None) -> AUROCResult:
    """ROC-AUC per label and their macro mean, leaving out (and listing) labels without a curve.

    Args:
        y_true: `(num_samples, num_labels)` multi-hot ground truth (0/1 or bool); a 1-D array is a
            single label.
        y_score: scores of the same shape (logits, probabilities or raw dot products: ROC-AUC only
            depends on their order within a label).
        label_names: one name per column; defaults to `"0"`, `"1"`, ...

    Returns:
        `AUROCResult`. Its `macro` equals `sklearn.metrics.roc_auc_score(..., average="macro")`
        computed on the evaluable columns only.
    """
    y_true = _as_2d_float(y_true, "y_true")
    y_score = _as_2d_float(y_score, "y_score")
    if y_true.shape != y_score.shape:
        raise ValueError(f"`y_true` {y_true.shape} and `y_score` {y_score.shape} must have the same shape.")
    if not np.isin(y_true, (0.0, 1.0)).all():
        raise ValueError("`y_true` must be binary (0/1).")
    if not np.isfinite(y_score).all():
        raise ValueError("`y_score` contains NaN or infinite values.")
    names = [str(index) for index in range(y_true.shape[1])] if label_names is None else [str(n) for n in label_names]
    if len(names) != y_true.shape[1]:
        raise ValueError(f"{len(names)} label names for {y_true.shape[1]} label columns.")
    if len(set(names)) != len(names):
        raise ValueError("`label_names` must be unique.")

    per_label, skipped, num_positives = {}, {}, {}
    for column, name in enumerate(names):
        positives = int(y_true[:, column].sum())
        num_positives[name] = positives
        if positives == 0:
            skipped[name] = "no positives"
        elif positives == y_true.shape[0]:
            skipped[name] = "no negatives"
        else:
            per_label[name] = float(roc_auc_score(y_true[:, column], y_score[:, column]))
    macro = float(np.mean(list(per_label.values()))) if per_label else float("nan")
    return AUROCResult(macro, per_label, skipped, num_positives, y_true.shape[0])


def macro_auroc(y_true, y_score, label_names: Sequence[str] | None = None) -> float:
    """Macro ROC-AUC over the labels that have both positives and negatives (see `multilabel_auroc`)."""
    return multilabel_auroc(y_true, y_score, label_names).macro


def roc_curves(y_true, y_score, label_names: Sequence[str] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """`{label: (false_positive_rate, true_positive_rate)}` for every evaluable label (for plots)."""
    y_true = _as_2d_float(y_true, "y_true")
    y_score = _as_2d_float(y_score, "y_score")
    names = [str(index) for index in range(y_true.shape[1])] if label_names is None else [str(n) for n in label_names]
    curves = {}
    for column, name in enumerate(names):
        positives = y_true[:, column].sum()
        if 0 < positives < y_true.shape[0]:
            fpr, tpr, _ = roc_curve(y_true[:, column], y_score[:, column])
            curves[name] = (fpr, tpr)
    return curves


def _auroc_rows(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """ROC-AUC of every row of `(resamples, n)` binary labels / scores (Mann-Whitney U with tie-averaged
    ranks, which equals `roc_auc_score`); NaN where a row has no positive or no negative."""
    from scipy.stats import rankdata

    ranks = rankdata(y_score, axis=1)
    positives = y_true.sum(axis=1)
    negatives = y_true.shape[1] - positives
    rank_sum = (ranks * y_true).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auroc = (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
    auroc[(positives == 0) | (negatives == 0)] = np.nan
    return auroc


#: No interval is reported for a label with fewer positives (or negatives) than this: every
#: resample would hold the same few positives, and the interval would be far too narrow.
MIN_CLASS_COUNT_FOR_INTERVAL = 5
BOOTSTRAP_METHOD = (
    "percentile bootstrap; per label stratified (positives and negatives resampled separately); macro: "
    "records resampled jointly, only when every label has at least {min} positives and {min} negatives; "
    "no interval for a label with fewer than {min} positives or negatives"
)


def bootstrap_auroc_ci(
    y_true,
    y_score,
    label_names: Sequence[str] | None = None,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    chunk_size: int = 200,
    min_class_count: int = MIN_CLASS_COUNT_FOR_INTERVAL,
) -> dict:
    """Percentile bootstrap confidence intervals of the per-label and macro ROC-AUC.

    Per label the positives and the negatives are resampled separately (stratified), so every
    resample keeps the label's class balance and none is degenerate; a label with fewer than
    `min_class_count` positives or negatives gets no interval (`None`, with the reason in
    `no_interval`), since its resamples would all hold the same few positives. The macro interval
    resamples the records jointly (one index draw shared by all labels, so it keeps the labels'
    correlation) and is given only when every label `multilabel_auroc` evaluates has an interval.

    Returns:
        `{"per_label": {name: [low, high] | None}, "macro": [low, high] | None, "confidence",
        "num_resamples", "seed", "method", "min_class_count", "no_interval": {name: reason},
        "resamples_used": {name: count}, "macro_resamples_used": count}` (labels
        `multilabel_auroc` skips are absent from `per_label`).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"`confidence` must be in (0, 1), got {confidence}.")
    if num_resamples < 1:
        raise ValueError(f"`num_resamples` must be >= 1, got {num_resamples}.")
    full = multilabel_auroc(y_true, y_score, label_names)  # validates the inputs
    y_true = _as_2d_float(y_true, "y_true")
    y_score = _as_2d_float(y_score, "y_score")
    names = [str(index) for index in range(y_true.shape[1])] if label_names is None else [str(n) for n in label_names]
    evaluated = [names.index(name) for name in full.per_label]
    alpha = (1 - confidence) / 2

    def interval(samples: np.ndarray):
        samples = samples[np.isfinite(samples)]
        if samples.size == 0:
            return None
        low, high = np.quantile(samples, [alpha, 1 - alpha])
        return [float(low), float(high)]

    per_label, used, no_interval = {}, {}, {}
    for column in evaluated:
        name = names[column]
        positives = np.flatnonzero(y_true[:, column] == 1)
        negatives = np.flatnonzero(y_true[:, column] == 0)
        if min(positives.size, negatives.size) < min_class_count:
            per_label[name], used[name] = None, 0
            no_interval[name] = f"{positives.size} positives, {negatives.size} negatives (< {min_class_count})"
            continue
        # One stream per label and class: the draws do not depend on the chunking.
        pos_rng, neg_rng = (np.random.default_rng([seed, 1 + column, part]) for part in (0, 1))
        values = np.empty(num_resamples)
        for start in range(0, num_resamples, chunk_size):
            stop = min(start + chunk_size, num_resamples)
            pos = positives[pos_rng.integers(0, positives.size, size=(stop - start, positives.size))]
            neg = negatives[neg_rng.integers(0, negatives.size, size=(stop - start, negatives.size))]
            rows = np.concatenate([pos, neg], axis=1)
            values[start:stop] = _auroc_rows(y_true[rows, column], y_score[rows, column])
        per_label[name], used[name] = interval(values), num_resamples

    macro, complete_count = None, 0
    if evaluated and not no_interval:
        rng = np.random.default_rng([seed, 0])
        num_samples = y_true.shape[0]
        values = np.full((num_resamples, len(evaluated)), np.nan)
        for start in range(0, num_resamples, chunk_size):
            stop = min(start + chunk_size, num_resamples)
            draws = rng.integers(0, num_samples, size=(stop - start, num_samples))
            for slot, column in enumerate(evaluated):
                values[start:stop, slot] = _auroc_rows(y_true[draws, column], y_score[draws, column])
        complete = np.isfinite(values).all(axis=1)
        complete_count = int(complete.sum())
        # With >= min_class_count of each class a degenerate joint draw is rare; if many were, the
        # usable ones would be a biased subset: then no interval.
        if complete_count >= max(10, num_resamples // 2):
            macro = interval(values[complete].mean(axis=1))
    return {
        "per_label": per_label,
        "macro": macro,
        "confidence": confidence,
        "num_resamples": num_resamples,
        "seed": seed,
        "method": BOOTSTRAP_METHOD.format(min=min_class_count),
        "min_class_count": min_class_count,
        "no_interval": no_interval,
        "resamples_used": used,
        "macro_resamples_used": complete_count,
    }


# ---------------------------------------------------------------------------------------------
# Retrieval
# ---------------------------------------------------------------------------------------------


def _group_ids(groups, size: int, name: str) -> np.ndarray:
    if groups is None:
        return np.arange(size)
    # Any hashable ids work (ints, report strings); equality is all that is used.
    groups = np.asarray(list(groups))
    if groups.shape != (size,):
        raise ValueError(f"`{name}` must have one entry per row ({size}), got shape {groups.shape}.")
    return groups


def retrieval_ranks(similarity, query_groups=None, gallery_groups=None) -> np.ndarray:
    """0-based rank of the best correct gallery item for every query (0 = retrieved first).

    `similarity` is `(num_queries, num_gallery)`. Without groups, query `i` matches gallery item
    `i` (the matrix must then be square). The rank counts the wrong gallery items that score at
    least as high as the best correct one (ties count against the query). A query with no correct
    item in the gallery raises `ValueError`.
    """
    similarity = _as_2d_float(similarity, "similarity")
    num_queries, num_gallery = similarity.shape
    if query_groups is None and gallery_groups is None and num_queries != num_gallery:
        raise ValueError(
            f"Without groups query i matches gallery item i: `similarity` must be square, got {similarity.shape}."
        )
    query_ids = _group_ids(query_groups, num_queries, "query_groups")
    gallery_ids = _group_ids(gallery_groups, num_gallery, "gallery_groups")
    correct = query_ids[:, None] == gallery_ids[None, :]
    has_match = correct.any(axis=1)
    if not has_match.all():
        missing = np.flatnonzero(~has_match)[:5].tolist()
        raise ValueError(f"Queries {missing} have no correct item in the gallery.")
    best_correct = np.where(correct, similarity, -np.inf).max(axis=1)
    return ((similarity >= best_correct[:, None]) & ~correct).sum(axis=1)


def recall_at_k(
    similarity, ks: Iterable[int] = DEFAULT_RECALL_KS, query_groups=None, gallery_groups=None
) -> dict[int, float]:
    """Fraction of queries whose correct gallery item is among the `k` best, for each `k`.

    Example (hand check): with `similarity = [[0.9, 0.1], [0.8, 0.2]]` query 0 finds item 0 first
    and query 1 finds item 1 second, so recall@1 = 0.5 and recall@2 = 1.0.
    """
    ks = [int(k) for k in ks]
    if any(k < 1 for k in ks):
        raise ValueError(f"Every k must be >= 1, got {ks}.")
    ranks = retrieval_ranks(similarity, query_groups, gallery_groups)
    return {k: float((ranks < k).mean()) for k in ks}


def cross_modal_recall(
    ecg_embeds,
    text_embeds,
    ks: Iterable[int] = DEFAULT_RECALL_KS,
    groups=None,
) -> dict[str, dict[int, float]]:
    """Recall@k of ECG -> report and report -> ECG retrieval over paired embeddings.

    Row `i` of `ecg_embeds` and of `text_embeds` come from the same study. The similarity is the raw
    dot product, which ranks exactly as the ETS logit `scale * e.t + bias` with `scale > 0`.
    `groups` (one id per pair, e.g. the normalised report text) makes pairs with equal ids
    interchangeable, so that duplicate reports do not count as misses.

    Returns:
        `{"ecg_to_text": {k: recall}, "text_to_ecg": {k: recall}}`.
    """
    ecg = _as_2d_float(ecg_embeds, "ecg_embeds")
    text = _as_2d_float(text_embeds, "text_embeds")
    if ecg.shape[0] != text.shape[0]:
        raise ValueError(f"Paired embeddings needed: {ecg.shape[0]} ECGs vs {text.shape[0]} texts.")
    if ecg.shape[1] != text.shape[1]:
        raise ValueError(f"Embedding widths differ: {ecg.shape[1]} vs {text.shape[1]}.")
    ks = list(ks)
    similarity = ecg @ text.T
    return {
        "ecg_to_text": recall_at_k(similarity, ks, groups, groups),
        "text_to_ecg": recall_at_k(similarity.T, ks, groups, groups),
    }


__all__ = [
    "AUROCResult",
    "bootstrap_auroc_ci",
    "DEFAULT_RECALL_KS",
    "cross_modal_recall",
    "macro_auroc",
    "multilabel_auroc",
    "recall_at_k",
    "retrieval_ranks",
    "roc_curves",
]
