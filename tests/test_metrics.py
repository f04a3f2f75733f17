"""Metrics: macro ROC-AUC against scikit-learn, labels without positives, recall@k by hand."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from dbeta.train.evaluation.metrics import (
    cross_modal_recall,
    macro_auroc,
    multilabel_auroc,
    recall_at_k,
    retrieval_ranks,
    roc_curves,
)


def hand_made_case():
    # 6 samples, 4 labels: "AFIB" and "LBBB" are ordinary, "PACE" has no positive, "SR" no negative.
    y_true = np.array(
        [
            [1, 0, 0, 1],
            [0, 1, 0, 1],
            [1, 1, 0, 1],
            [0, 0, 0, 1],
            [0, 1, 0, 1],
            [1, 0, 0, 1],
        ]
    )
    y_score = np.array(
        [
            [0.9, 0.2, 0.5, 0.1],
            [0.3, 0.7, 0.4, 0.2],
            [0.6, 0.4, 0.3, 0.3],
            [0.2, 0.5, 0.2, 0.4],
            [0.7, 0.8, 0.1, 0.5],
            [0.5, 0.1, 0.6, 0.6],
        ]
    )
    return y_true, y_score, ["AFIB", "LBBB", "PACE", "SR"]


def test_macro_auroc_matches_sklearn_and_lists_skipped_labels():
    y_true, y_score, names = hand_made_case()
    result = multilabel_auroc(y_true, y_score, names)

    assert result.skipped == {"PACE": "no positives", "SR": "no negatives"}
    assert list(result.per_label) == ["AFIB", "LBBB"]
    # AFIB by hand: positives {0.9, 0.6, 0.5}, negatives {0.3, 0.2, 0.7}: 3 + 2 + 2 = 7 of 9 pairs ordered.
    assert result.per_label["AFIB"] == pytest.approx(7 / 9)
    expected = roc_auc_score(y_true[:, :2], y_score[:, :2], average="macro")
    assert result.macro == pytest.approx(expected)
    assert macro_auroc(y_true, y_score, names) == pytest.approx(expected)
    assert result.num_positives == {"AFIB": 3, "LBBB": 3, "PACE": 0, "SR": 6}
    assert result.num_samples == 6

    summary = result.to_dict()
    assert summary["skipped_labels"] == {"PACE": "no positives", "SR": "no negatives"}
    assert summary["macro_auroc"] == pytest.approx(expected)
    assert set(roc_curves(y_true, y_score, names)) == {"AFIB", "LBBB"}


def test_macro_auroc_random_case_and_torch_inputs():
    rng = np.random.default_rng(0)
    y_true = (rng.random((200, 7)) < 0.3).astype(int)
    y_score = rng.normal(size=(200, 7)) + y_true
    expected = roc_auc_score(y_true, y_score, average="macro")
    assert macro_auroc(torch.tensor(y_true), torch.tensor(y_score)) == pytest.approx(expected)


def test_macro_auroc_rejects_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        multilabel_auroc(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="binary"):
        multilabel_auroc(np.full((3, 1), 2), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="NaN"):
        multilabel_auroc(np.array([[0], [1]]), np.array([[np.nan], [1.0]]))
    assert np.isnan(multilabel_auroc(np.zeros((3, 1)), np.zeros((3, 1))).macro)


def test_recall_at_k_hand_case():
    # Query 0: its item (0) scores best -> rank 0. Query 1: item 1 is beaten by item 0 -> rank 1.
    # Query 2: item 2 is beaten by items 0 and 1 -> rank 2.
    similarity = np.array(
        [
            [0.9, 0.1, 0.2],
            [0.8, 0.5, 0.1],
            [0.7, 0.6, 0.3],
        ]
    )
    assert retrieval_ranks(similarity).tolist() == [0, 1, 2]
    assert recall_at_k(similarity, ks=(1, 2, 3)) == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: 1.0}
    # The other direction: columns as queries.
    # Text 1 scores ECG 2 (0.6) above ECG 1 (0.5).
    assert retrieval_ranks(similarity.T).tolist() == [0, 1, 0]


def test_recall_ties_count_against_the_query_and_groups_merge_duplicates():
    constant = np.zeros((4, 4))
    assert recall_at_k(constant, ks=(1,))[1] == 0.0
    similarity = np.array([[0.1, 0.9], [0.9, 0.1]])
    assert recall_at_k(similarity, ks=(1,))[1] == 0.0
    # Both reports are "sinus rhythm": either one is a correct answer.
    groups = ["sinus rhythm", "sinus rhythm"]
    assert recall_at_k(similarity, ks=(1,), query_groups=groups, gallery_groups=groups)[1] == 1.0
    with pytest.raises(ValueError, match="square"):
        recall_at_k(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="no correct item"):
        recall_at_k(np.zeros((1, 2)), query_groups=["a"], gallery_groups=["b", "c"])


def test_cross_modal_recall_both_directions():
    ecg = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    text = np.array([[2.0, 0.0], [0.0, 1.0], [0.9, 0.9]])
    # ECG->text: e2 scores t0 at 2.0 > t2 at 1.8 (rank 1); others first.
    # text->ECG: t0 scores e0=2 == e2=2 (tie, counts against) -> rank 1; t1: e1=1 == e2=1 -> rank 1;
    # t2: e2 = 1.8 > 0.9 -> rank 0.
    recalls = cross_modal_recall(ecg, text, ks=(1, 2))
    assert recalls["ecg_to_text"] == {1: pytest.approx(2 / 3), 2: 1.0}
    assert recalls["text_to_ecg"] == {1: pytest.approx(1 / 3), 2: 1.0}


def test_bootstrap_auroc_ci_matches_a_loop_over_sklearn():
    from dbeta.train.evaluation.metrics import _auroc_rows, bootstrap_auroc_ci

    rng = np.random.default_rng(3)
    y_true = (rng.random((60, 3)) < 0.3).astype(int)
    y_score = np.round(rng.normal(size=(60, 3)) + y_true, 1)  # rounded: ties inside a label
    # The vectorised rank AUROC is scikit-learn's, ties included.
    rows = _auroc_rows(y_true.T.astype(float), y_score.T)
    assert rows == pytest.approx([roc_auc_score(y_true[:, c], y_score[:, c]) for c in range(3)])

    result = bootstrap_auroc_ci(y_true, y_score, ["a", "b", "c"], num_resamples=300, seed=7, chunk_size=300)
    assert "stratified" in result["method"] and result["no_interval"] == {}
    # Reference, per label: positives and negatives drawn separately from the label's own stream.
    for column, name in enumerate("abc"):
        positives = np.flatnonzero(y_true[:, column] == 1)
        negatives = np.flatnonzero(y_true[:, column] == 0)
        pos = positives[np.random.default_rng([7, 1 + column, 0]).integers(0, positives.size, size=(300, positives.size))]
        neg = negatives[np.random.default_rng([7, 1 + column, 1]).integers(0, negatives.size, size=(300, negatives.size))]
        values = [
            roc_auc_score(np.r_[np.ones(positives.size), np.zeros(negatives.size)], y_score[np.r_[p, n], column])
            for p, n in zip(pos, neg)
        ]
        assert result["per_label"][name] == pytest.approx(np.quantile(values, [0.025, 0.975]).tolist())
        assert result["resamples_used"][name] == 300
    # Macro: the records resampled jointly, from the macro stream.
    draws = np.random.default_rng([7, 0]).integers(0, 60, size=(300, 60))
    macro = []
    for draw in draws:
        truth = y_true[draw]
        if all(0 < truth[:, c].sum() < len(truth) for c in range(3)):
            macro.append(np.mean([roc_auc_score(truth[:, c], y_score[draw, c]) for c in range(3)]))
    assert result["macro"] == pytest.approx(np.quantile(macro, [0.025, 0.975]).tolist())
    assert result["macro_resamples_used"] == len(macro)
    # Deterministic for a seed, whatever the chunking.
    again = bootstrap_auroc_ci(y_true, y_score, ["a", "b", "c"], num_resamples=300, seed=7, chunk_size=300)
    assert again == result
    assert bootstrap_auroc_ci(y_true, y_score, ["a", "b", "c"], num_resamples=300, seed=7, chunk_size=70)["per_label"] == result["per_label"]


def test_bootstrap_ci_narrows_with_more_data_and_refuses_few_positives():
    from dbeta.train.evaluation.metrics import bootstrap_auroc_ci

    rng = np.random.default_rng(0)

    def width(count):
        y_true = (rng.random((count, 1)) < 0.5).astype(int)
        y_score = rng.normal(size=(count, 1)) + y_true
        low, high = bootstrap_auroc_ci(y_true, y_score, num_resamples=400)["per_label"]["0"]
        return high - low

    assert width(2000) < width(50) / 3

    y_true, y_score, names = hand_made_case()  # PACE has no positive, SR no negative
    result = bootstrap_auroc_ci(y_true, y_score, names, num_resamples=500)
    assert set(result["per_label"]) == {"AFIB", "LBBB"}
    # 6 records: fewer than 5 positives or negatives per label -> no interval, and the reason.
    assert result["per_label"] == {"AFIB": None, "LBBB": None} and result["macro"] is None
    assert "(< 5)" in result["no_interval"]["AFIB"]
    # One or two positives among many records: the old joint bootstrap gave [0.77, 0.94]-like
    # intervals from resamples that all hold the same positive; now none.
    rare = np.zeros((65, 2), dtype=int)
    rare[0, 0] = rare[1, 0] = rare[2, 1] = 1
    sparse = bootstrap_auroc_ci(rare, np.random.default_rng(1).random((65, 2)), ["two", "one"], num_resamples=1000)
    assert sparse["per_label"] == {"two": None, "one": None} and sparse["macro"] is None
    assert sparse["no_interval"]["two"].startswith("2 positives")
    # Five of each class: intervals, stratified, every resample usable.
    five = np.r_[np.ones(5), np.zeros(5)].astype(int)[:, None]
    enough = bootstrap_auroc_ci(five, np.random.default_rng(2).random((10, 1)), num_resamples=200)
    assert enough["per_label"]["0"] is not None and enough["resamples_used"]["0"] == 200
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_auroc_ci(y_true, y_score, names, confidence=1.5)
