"""N3S: exact far/hard neighbour search, the candidate cache, and negative sampling."""

import json

import numpy as np
import pytest

from dbeta.train.pretraining import n3s
from dbeta.train.pretraining.n3s import (
    N3SIndex,
    N3SSettings,
    build_n3s_index,
    load_or_build_n3s_index,
    search_candidates,
    unique_reports,
)


def unit_rows(*rows):
    array = np.asarray(rows, dtype=np.float32)
    return array / np.linalg.norm(array, axis=1, keepdims=True)


EMBEDDINGS = unit_rows([1, 0, 0], [0.9, 0.1, 0], [0.1, 1, 0.2], [-1, 0.05, 0.1], [0.2, -0.3, 1], [0.6, 0.8, -0.1])


def brute_force(embeddings, k, mode, max_similarity=0.95):
    similarity = embeddings @ embeddings.T
    result = []
    for row in range(len(embeddings)):
        others = [j for j in range(len(embeddings)) if j != row]
        if mode == "far":
            others.sort(key=lambda j: similarity[row, j])
        else:
            others = [j for j in others if similarity[row, j] < max_similarity]
            others.sort(key=lambda j: -similarity[row, j])
        result.append(others[:k])
    return result


def test_far_mode_returns_the_least_similar_rows_in_order_and_never_the_row_itself():
    candidates = search_candidates(EMBEDDINGS, num_candidates=3, mode="far")
    assert candidates.tolist() == brute_force(EMBEDDINGS, 3, "far")
    assert candidates[0].tolist()[0] == 3  # the opposite vector is the farthest
    assert all(row not in candidates[row] for row in range(len(EMBEDDINGS)))


def test_far_mode_equals_the_original_negated_query_l2_search():
    """The original searches an L2 index with -q: ||-q - x||^2 = 2 + 2 q.x, i.e. least similar first."""
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(40, 8)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    candidates = search_candidates(embeddings, num_candidates=5, mode="far")
    for row in range(40):
        distances = ((-embeddings[row] - embeddings) ** 2).sum(axis=1)
        distances[row] = np.inf
        assert candidates[row].tolist() == np.argsort(distances, kind="stable")[:5].tolist()


def test_hard_mode_returns_the_most_similar_rows_below_the_near_duplicate_threshold():
    candidates = search_candidates(EMBEDDINGS, num_candidates=2, mode="hard", hard_max_similarity=0.95)
    assert candidates.tolist() == brute_force(EMBEDDINGS, 2, "hard", 0.95)
    # rows 0 and 1 are near-duplicates (cosine 0.994): neither is offered as the other's negative
    assert 1 not in candidates[0] and 0 not in candidates[1]


def test_rows_with_too_few_candidates_are_filled_with_minus_one():
    candidates = search_candidates(EMBEDDINGS[:3], num_candidates=4, mode="far")
    assert candidates.shape == (3, 4)
    assert (candidates[:, 2:] == -1).all() and (candidates[:, :2] >= 0).all()
    assert (search_candidates(EMBEDDINGS[:1], num_candidates=4) == -1).all()


def test_chunked_search_equals_one_block(monkeypatch):
    rng = np.random.default_rng(1)
    embeddings = rng.normal(size=(50, 6)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    whole = search_candidates(embeddings, 7, "far")
    monkeypatch.setattr(n3s, "SEARCH_CHUNK_ELEMENTS", 50 * 3)  # 3 queries per chunk
    assert (search_candidates(embeddings, 7, "far") == whole).all()


REPORTS = [
    "Sinus rhythm. Normal ECG",
    "sinus rhythm normal ecg",
    "*** Sinus rhythm. Normal EKG",
    "Atrial fibrillation with rapid ventricular response Abnormal ECG",
    "atrial fibrillation abnormal ecg",
    "Sinus bradycardia Borderline ECG",
    "Sinus rhythm Left bundle branch block Abnormal ECG",
    "sinus tachycardia inverted t waves abnormal ecg",
    "",
]


def test_reports_are_normalised_and_deduplicated():
    texts = unique_reports(REPORTS)
    assert texts == sorted(set(texts))
    assert "sinus rhythm. normal ecg" in texts  # "*** ... EKG" and "... ECG" collapse into one
    assert "" not in texts
    assert len(texts) == 7


def test_tfidf_far_candidates_avoid_reports_sharing_the_finding():
    index = build_n3s_index(REPORTS, N3SSettings(num_candidates=2))
    negatives = index.negatives_of("atrial fibrillation abnormal ecg")
    assert len(negatives) == 2
    assert not any("atrial fibrillation" in text or "abnormal" in text for text in negatives)


def test_sample_negative_is_uniform_over_the_candidates_and_never_the_positive():
    index = build_n3s_index(REPORTS, N3SSettings(num_candidates=64))
    rng = np.random.default_rng(0)
    for positive in index.reports:
        draws = [index.sample_negative(positive, rng) for _ in range(400)]
        assert positive not in draws
        counts = {text: draws.count(text) for text in set(draws)}
        assert set(counts) == set(index.negatives_of(positive)) == set(index.reports) - {positive}
        assert min(counts.values()) > 400 / len(counts) / 2  # no candidate is starved
    assert index.sample_negative("a report that was never indexed", rng) is None


def test_a_single_report_has_no_negative():
    index = build_n3s_index(["sinus rhythm normal ecg"] * 3)
    assert index.sample_negative("sinus rhythm normal ecg", np.random.default_rng(0)) is None


def test_a_corrupted_cache_listing_the_positive_itself_is_caught():
    index = N3SIndex(["a", "b"], np.array([[0], [0]]), N3SSettings(num_candidates=1))
    with pytest.raises(RuntimeError, match="identical"):
        index.sample_negative("a", np.random.default_rng(0))


def test_cache_is_written_beside_the_data_and_reused(tmp_path, monkeypatch):
    calls = []
    original = n3s.embed_reports

    def counting_embed(texts, settings, device=None):
        calls.append(len(texts))
        return original(texts, settings, device)

    monkeypatch.setattr(n3s, "embed_reports", counting_embed)
    settings = N3SSettings(num_candidates=3)
    first = load_or_build_n3s_index(REPORTS, tmp_path, settings)
    folder = tmp_path / settings.cache_name()
    assert sorted(p.name for p in folder.iterdir()) == ["candidates.npy", "n3s_config.json", "reports.json"]
    meta = json.loads((folder / "n3s_config.json").read_text())
    assert meta["encoder"] == "tfidf" and meta["mode"] == "far" and meta["num_candidates"] == 3
    assert calls == [7]

    second = load_or_build_n3s_index(list(reversed(REPORTS)), tmp_path, settings)  # same set of reports
    assert calls == [7]
    assert second.reports == first.reports and (second.candidates == first.candidates).all()

    load_or_build_n3s_index(REPORTS + ["sinus rhythm first degree av block"], tmp_path, settings)  # new data
    assert calls == [7, 8]
    load_or_build_n3s_index(REPORTS, tmp_path, N3SSettings(num_candidates=3, mode="hard"))  # new settings
    assert calls == [7, 8, 7]
    assert (tmp_path / N3SSettings(num_candidates=3, mode="hard").cache_name()).is_dir()


def test_encoder_embeddings_are_unit_norm_mean_pooled_over_real_tokens_only(tmp_path):
    """The T5 path (flan-t5-small for real runs), exercised offline with a tiny random T5."""
    import torch
    from transformers import T5Config, T5EncoderModel

    from tests.pretraining_helpers import demo_tokenizer

    tokenizer = demo_tokenizer()
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    T5EncoderModel(config).save_pretrained(tmp_path / "encoder")
    tokenizer.save_pretrained(tmp_path / "encoder")

    reports = ["sinus rhythm normal ecg", "atrial fibrillation with rapid ventricular response low qrs voltages abnormal ecg"]
    together = n3s.embed_reports_with_encoder(reports, str(tmp_path / "encoder"), device="cpu")
    alone = n3s.embed_reports_with_encoder(reports[:1], str(tmp_path / "encoder"), device="cpu")
    assert together.shape == (2, 32) and together.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    # padding to the longer report does not change the shorter one's embedding
    np.testing.assert_allclose(together[0], alone[0], atol=1e-5)

    index = build_n3s_index(REPORTS, N3SSettings(encoder=str(tmp_path / "encoder"), num_candidates=2))
    assert index.candidates.shape == (7, 2) and (index.candidates >= 0).all()


def test_random_mode_draws_distinct_other_rows_without_embedding(monkeypatch):
    """The ablation without N3S: uniformly drawn other reports, no text encoder involved."""
    from dbeta.train.pretraining import n3s

    monkeypatch.setattr(n3s, "embed_reports", lambda *a, **k: pytest.fail("random negatives must not embed the reports"))
    reports = [f"report number {i}" for i in range(30)]
    index = n3s.build_n3s_index(reports, n3s.N3SSettings(mode="random", num_candidates=8))
    assert index.candidates.shape == (30, 8)
    for row in range(30):
        candidates = index.candidates[row]
        assert row not in candidates and len(set(candidates.tolist())) == 8
        assert candidates.min() >= 0 and candidates.max() < 30
    # Every other report is reachable: over all rows the candidates cover the corpus.
    assert set(index.candidates.ravel().tolist()) == set(range(30))
    small = n3s.build_n3s_index(reports[:3], n3s.N3SSettings(mode="random", num_candidates=8))
    assert sorted(small.candidates[0, :2].tolist()) == [1, 2] and (small.candidates[:, 2:] == -1).all()
