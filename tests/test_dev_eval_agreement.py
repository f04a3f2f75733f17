"""benchmarks/dev_eval_agreement.py: the AUROC standard error, best-of-k selection, and the join of
dev and evaluation results."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from dev_eval_agreement import best_of_k, auroc_standard_error, joined_runs, macro_auroc_se, report  # noqa: E402


@pytest.mark.parametrize("num_positives, num_negatives", [(2, 63), (10, 55), (40, 25)])
def test_standard_error_at_chance_is_the_mann_whitney_null_variance(num_positives, num_negatives):
    exact = (num_positives + num_negatives + 1) / (12 * num_positives * num_negatives)
    assert auroc_standard_error(0.5, num_positives, num_negatives) ** 2 == pytest.approx(exact)


def test_standard_error_matches_a_simulation_of_binormal_scores():
    rng = np.random.default_rng(0)
    num_positives, num_negatives, shift = 6, 59, 1.8
    aurocs = []
    for _ in range(4000):
        positives, negatives = rng.normal(shift, 1, num_positives), rng.normal(0, 1, num_negatives)
        aurocs.append(np.mean(positives[:, None] > negatives[None, :]))
    aurocs = np.array(aurocs)
    assert auroc_standard_error(float(aurocs.mean()), num_positives, num_negatives) == pytest.approx(aurocs.std(), rel=0.06)


def test_standard_error_shrinks_with_positives_and_refuses_an_empty_class():
    assert auroc_standard_error(0.7, 2, 63) > auroc_standard_error(0.7, 10, 55) > auroc_standard_error(0.7, 30, 35)
    with pytest.raises(ValueError, match="positive and a negative"):
        auroc_standard_error(0.7, 0, 65)
    two_labels = macro_auroc_se({"a": 0.5, "b": 0.5}, {"a": 10, "b": 10}, 30)
    assert two_labels == pytest.approx(auroc_standard_error(0.5, 10, 20) / np.sqrt(2))


def test_best_of_k_follows_the_selector():
    target = np.array([0.6, 0.7, 0.8, 0.9])
    assert best_of_k(target, target, 2).tolist() == [0.7, 0.8, 0.9, 0.8, 0.9, 0.9]
    assert best_of_k(-target, target, 4).tolist() == [0.6]
    assert best_of_k(target, target, 1).tolist() == target.tolist()
    with pytest.raises(ValueError, match="k must be"):
        best_of_k(target, target, 5)


def _run(split, macro, cinc_part="dev", scoring="softmax"):
    run = {"real": {"macro": macro, "per_label": {"sinus rhythm": macro, "atrial fibrillation": macro},
                    "positives": {"sinus rhythm": 40, "atrial fibrillation": 6}, "records": 65, "split": split, "rhythm_scoring": scoring},
           "simulated": {"zero_shot_macro_auroc": 0.8}}
    if cinc_part:
        run["cinc"] = {"macro": 0.9, "per_label": {"sinus tachycardia": 0.9}, "part": cinc_part}
    return run


def test_join_pairs_seeds_and_refuses_mixed_figures():
    dev = {"sim": {str(seed): _run("dev", 0.6 + seed / 100) for seed in (1, 2, 3, 4)}}
    held_out = {"sim": {str(seed): _run("evaluation", 0.7 + seed / 100, cinc_part=None) for seed in (2, 3, 4, 5)}}
    rows = joined_runs(dev, [held_out])
    assert [row["seed"] for row in rows] == [2, 3, 4]
    assert rows[0]["combined dev"] == pytest.approx((0.62 + 0.62 + 0.9) / 3) and rows[0]["evaluation"] == pytest.approx(0.72)
    text = report(rows, [2])
    assert "| combined dev | +1.00 (0.00) | 0.737 / 0.00 / 0.00 |" in text  # the best of each pair: 0.73, 0.74, 0.74
    with pytest.raises(ValueError, match="not on the dev split"):
        joined_runs(held_out, [held_out])
    with pytest.raises(ValueError, match="scored differently"):
        joined_runs(dev, [{"sim": {"2": _run("evaluation", 0.7, cinc_part=None, scoring="sigmoid")}}])
    with pytest.raises(ValueError, match="no CinC/CPSC dev half"):
        joined_runs({"sim": {"2": _run("dev", 0.6, cinc_part=None)}}, [held_out])
