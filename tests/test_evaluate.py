"""train/evaluation/evaluate.py: end to end on real LUDB records, the original protocol, linear probe, fine-tuning."""

import json

import numpy as np
import pytest
import scipy.signal
import torch
import transformers
import yaml
from sklearn.metrics import roc_auc_score
from transformers import pipeline
from zero_shot_utils import LUDB_FIXTURES

from dbeta.train.evaluation import downstream
from dbeta.train.evaluation.evaluate import finetune, label_prompts, linear_probe, main, prepare_original, probe_subset
from pipeline_dbeta import TASK
from processing_dbeta import ECGRecord


def test_evaluate_end_to_end_on_ludb(model_folder, tmp_path):
    output_dir, card = tmp_path / "eval", tmp_path / "card" / "README.md"
    results = main(
        [
            "--model",
            str(model_folder),
            "--dataset",
            f"ludb={LUDB_FIXTURES}",
            "--tasks",
            "zero_shot",
            "retrieval",
            "linear_probe",
            "--output_dir",
            str(output_dir),
            "--model_card",
            str(card),
            "--no_progress",
        ]
    )

    saved = json.loads((output_dir / "results.json").read_text())
    assert saved == results
    provenance = saved["provenance"]
    assert provenance["versions"]["transformers"] == transformers.__version__
    assert set(provenance) >= {"git", "seeds", "versions", "command", "model_path"}
    assert len(provenance["git"]["revision"]) == 40

    ludb = saved["datasets"]["ludb"]
    assert ludb["counts"] == {"train": 0, "validation": 0, "test": 6}
    assert ludb["path"] == str(LUDB_FIXTURES.resolve())
    assert ludb["failed_records"] == {}
    assert "needs train/validation/test" in ludb["linear_probe"]["skipped"]

    # Zero-shot numbers are what the pipeline's scores give with scikit-learn.
    dataset = downstream.load_ludb(LUDB_FIXTURES)
    zero_shot = ludb["zero_shot"]
    assert zero_shot["prompts"] == {name: name for name in dataset.label_names}  # not codes: used as written
    classifier = pipeline(TASK, model=str(model_folder), trust_remote_code=True, device="cpu")
    outputs = classifier([dataset.read(i) for i in range(len(dataset))], candidate_labels=dataset.label_names)
    scores = np.array(
        [[{d["label"]: d["score"] for d in out}[name] for name in dataset.label_names] for out in outputs]
    )
    for column, name in enumerate(dataset.label_names):
        assert zero_shot["per_label_auroc"][name] == pytest.approx(
            roc_auc_score(dataset.labels[:, column], scores[:, column])
        )
    assert zero_shot["macro_auroc"] == pytest.approx(np.mean(list(zero_shot["per_label_auroc"].values())))

    retrieval = ludb["retrieval"]
    assert retrieval["num_pairs"] == 6 and set(retrieval["recall_at_k"]) == {"ecg_to_text", "text_to_ecg"}
    assert retrieval["recall_at_k"]["ecg_to_text"]["10"] == 1.0  # 6 reports: all within the top 10

    markdown = (output_dir / "results.md").read_text()
    assert "## Zero-shot" in markdown and "Sinus rhythm" in markdown and "R@5" in markdown
    assert (output_dir / "roc_ludb_package.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    text = card.read_text()
    metadata = yaml.safe_load(text.split("---")[1])
    entries = metadata["model-index"][0]["results"]
    zero_shot_entry = next(e for e in entries if e["task"]["type"] == "zero-shot-classification")
    assert zero_shot_entry["dataset"]["type"] == "ludb"
    assert zero_shot_entry["metrics"][0]["value"] == pytest.approx(round(zero_shot["macro_auroc"], 4))
    assert "![roc_ludb_package](roc_ludb_package.png)" in text and (card.parent / "roc_ludb_package.png").is_file()


def test_original_protocol_preparation_and_prompts(model_folder, tmp_path):
    # A CODE-test-like exam: 4096 samples at 400 Hz -> FFT-resampled to 5120, first 5000, leads untouched.
    rng = np.random.default_rng(0)
    signal = rng.standard_normal((12, 4096)).astype(np.float32)
    prepared = prepare_original(ECGRecord(signal, ["I"] * 12, 400.0))
    np.testing.assert_allclose(
        prepared, scipy.signal.resample(signal.astype(np.float64), 5120, axis=-1)[:, :5000], rtol=1e-5, atol=1e-6
    )
    short = prepare_original(ECGRecord(signal[:, :2000], ["I"] * 12, 500.0))
    assert short.shape == (12, 5000) and not short[:, 2000:].any()
    with pytest.raises(ValueError, match="12 leads"):
        prepare_original(ECGRecord(signal[:8], ["I"] * 8, 400.0))

    descriptions = {"1AVB": "First degree AV block.", "RBBB": "Right bundle branch block."}
    prompts = label_prompts("code-test", ["1dAVb", "RBBB", "LBBB"], descriptions, {"LBBB": "left bundle"})
    assert prompts == {"1dAVb": "First degree AV block.", "RBBB": "Right bundle branch block.", "LBBB": "left bundle"}

    results = main(
        [
            "--model",
            str(model_folder),
            "--dataset",
            f"ludb={LUDB_FIXTURES}",
            "--tasks",
            "zero_shot",
            "--protocol",
            "original",
            "--output_dir",
            str(tmp_path),
            "--no_progress",
        ]
    )
    assert results["protocol"] == "original" and (tmp_path / "roc_ludb_original.png").is_file()
    assert 0.0 <= results["datasets"]["ludb"]["zero_shot"]["macro_auroc"] <= 1.0


def test_linear_probe_learns_a_separable_task():
    rng = np.random.default_rng(0)

    def make(count):
        features = rng.standard_normal((count, 32)).astype(np.float32)
        labels = np.stack([features[:, 0] > 0, features[:, 1] + features[:, 2] > 0.5, features[:, 3] < -0.5], axis=1)
        return torch.from_numpy(features), labels.astype(np.int8)

    (train_x, train_y), (val_x, val_y), (test_x, test_y) = make(400), make(100), make(200)
    result = linear_probe(train_x, train_y, val_x, val_y, test_x, test_y, ["a", "b", "c"], epochs=100, seed=0)
    assert result["test_macro_auroc"] > 0.95
    assert 1 <= result["best_epoch"] <= 100 and result["num_train"] == 400
    again = linear_probe(train_x, train_y, val_x, val_y, test_x, test_y, ["a", "b", "c"], epochs=100, seed=0)
    assert again["test_macro_auroc"] == result["test_macro_auroc"]  # seeded

    subset = probe_subset(1000, 0.01)
    assert len(subset) == 10 and np.array_equal(subset, probe_subset(1000, 0.01))
    assert len(probe_subset(1000, 0.1)) == 100 and len(probe_subset(1000, 1.0)) == 1000


def test_finetuning_with_the_classification_head(model_folder, tmp_path):
    from processing_dbeta import DBetaFeatureExtractor

    rng = np.random.default_rng(0)
    count = 12
    signals = (0.2 * rng.standard_normal((count, 12, 5000))).astype(np.float32)
    labels = np.zeros((count, 2), dtype=np.int8)
    labels[::2, 0] = 1
    labels[1::3, 1] = 1
    labels[0, 1] = 1  # every split keeps positives and negatives for both labels below
    dataset = downstream.DownstreamDataset(
        name="synthetic",
        record_ids=[str(i) for i in range(count)],
        labels=labels,
        label_names=["A", "B"],
        splits=np.array(["train"] * 6 + ["validation"] * 3 + ["test"] * 3, dtype=object),
        reader=lambda index: ECGRecord(
            signals[index], ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"], 500.0
        ),
    )
    result = finetune(str(model_folder), dataset, DBetaFeatureExtractor(), tmp_path / "ft", epochs=1, batch_size=4)
    assert result["num_train"] == 6 and result["epochs"] == 1
    assert result["val_macro_auroc"] is not None and "test_per_label_auroc" in result


def _synthetic_split_dataset(count: int = 18):
    """Records with train/validation/test splits, both labels positive and negative in every split."""
    rng = np.random.default_rng(1)
    signals = (0.2 * rng.standard_normal((count, 12, 5000))).astype(np.float32)
    labels = np.zeros((count, 2), dtype=np.int8)
    labels[::2, 0] = 1
    labels[1::3, 1] = 1
    labels[0, 1] = labels[12, 1] = labels[15, 1] = 1
    names = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    return downstream.DownstreamDataset(
        name="synthetic",
        record_ids=[str(i) for i in range(count)],
        labels=labels,
        label_names=["AFIB", "sinus rhythm"],
        splits=np.array(["train"] * 8 + ["validation"] * 4 + ["test"] * 6, dtype=object),
        reader=lambda index: ECGRecord(signals[index], names, 500.0, {"name": str(index)}),
    )


def test_zero_filled_lead_sets_match_the_feature_extractor_on_fewer_leads():
    from processing_dbeta import DBetaFeatureExtractor, canonical_lead_name

    from dbeta.train.evaluation.evaluate import LEAD_SETS, zero_fill_leads

    extractor = DBetaFeatureExtractor()
    record = downstream.load_ludb(LUDB_FIXTURES).read(0)  # real 12-lead LUDB record, lower-case names
    names = [canonical_lead_name(str(name)) for name in record.lead_names]
    full = extractor(record)["input_values"][0]
    for leads in ("6", "3", "2", "1", "1-II"):
        prepared = zero_fill_leads(extractor, LEAD_SETS[leads], "package", extractor.lead_names)(record)
        # The same as giving the extractor only those leads (it zero-fills the missing ones).
        rows = [names.index(name) for name in LEAD_SETS[leads]]
        subset = ECGRecord(record.signal[rows], list(LEAD_SETS[leads]), record.sampling_rate)
        np.testing.assert_array_equal(prepared, extractor(subset)["input_values"][0])
        kept = [i for i, name in enumerate(extractor.lead_names) if name in LEAD_SETS[leads]]
        np.testing.assert_array_equal(prepared[kept], full[kept])
        assert not np.delete(prepared, kept, axis=0).any()
    # The original protocol keeps the file's lead order: zeroed by the record's own names.
    original = zero_fill_leads(prepare_original, LEAD_SETS["2"], "original", extractor.lead_names)(record)
    assert original[:2].any() and not original[2:].any()


def test_reduced_leads_random_baseline_and_confidence_intervals(model_folder, tmp_path, monkeypatch):
    from dbeta.train.evaluation import evaluate

    dataset = _synthetic_split_dataset()
    monkeypatch.setitem(evaluate.DATASETS, "synthetic", (lambda path, **kwargs: dataset, {}))
    results = main(
        [
            "--model",
            str(model_folder),
            "--dataset",
            f"synthetic={tmp_path}",
            "--tasks",
            "zero_shot",
            "linear_probe",
            "--leads",
            "6",
            "1",
            "--random_baseline",
            "--probe_ratios",
            "1.0",
            "--probe_epochs",
            "3",
            "--bootstrap",
            "200",
            "--output_dir",
            str(tmp_path / "eval"),
            "--no_progress",
        ]
    )
    entry = results["datasets"]["synthetic"]
    assert list(entry["lead_sets"]) == ["12", "6", "1"]  # 12 leads first, as the reference row
    assert entry["lead_sets"]["6"]["leads"] == ["I", "II", "III", "aVR", "aVL", "aVF"]
    assert entry["lead_sets"]["1"]["leads"] == ["I"]
    twelve = entry["lead_sets"]["12"]
    assert twelve["zero_shot"]["macro_auroc"] == entry["zero_shot"]["macro_auroc"]
    assert twelve["linear_probe"] == entry["linear_probe"]
    assert entry["lead_sets"]["1"]["zero_shot"]["per_label_auroc"] != twelve["zero_shot"]["per_label_auroc"]

    # Random-init baseline: same probe protocol, other (seeded) features.
    random_probe = entry["linear_probe_random_init"]["ratios"]["1.0"]
    assert random_probe["num_train"] == 8 and 0.0 <= random_probe["test_macro_auroc"] <= 1.0
    assert entry["lead_sets"]["6"]["linear_probe_random_init"]["ratios"]["1.0"]["num_train"] == 8
    from dbeta.loading import load_model_and_processor

    model, _ = load_model_and_processor(model_folder)
    first, second = evaluate.random_encoder(model, 42), evaluate.random_encoder(model, 42)
    for (key, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), key
    pairs = list(zip(first.ecg_model.parameters(), model.ecg_model.parameters()))
    assert len(pairs) == len(list(model.ecg_model.parameters()))  # same architecture
    assert all(a.shape == b.shape for a, b in pairs) and not all(torch.equal(a, b) for a, b in pairs)

    # 95 % bootstrap intervals, per label and macro, for zero-shot and the probe.
    # A label gets an interval only with >= 5 positives and >= 5 negatives (stratified resampling);
    # below that, none, and the reason is recorded.
    zero_shot = entry["zero_shot"]
    bootstrap = zero_shot["bootstrap"]
    assert bootstrap["num_resamples"] == 200 and bootstrap["confidence"] == 0.95 and "stratified" in bootstrap["method"]
    for label, interval in zero_shot["per_label_auroc_ci"].items():
        if interval is None:
            assert "(< 5)" in bootstrap["no_interval"][label], label
        else:
            assert 0.0 <= interval[0] <= interval[1] <= 1.0, label
    assert (zero_shot["macro_auroc_ci"] is None) == bool(bootstrap["no_interval"])
    probe = entry["linear_probe"]["ratios"]["1.0"]
    assert set(probe["test_per_label_auroc_ci"]) == {"AFIB", "sinus rhythm"}
    assert (probe["test_macro_auroc_ci"] is None) == bool(probe["test_bootstrap"]["no_interval"])

    markdown = (tmp_path / "eval" / "results.md").read_text()
    assert "## Reduced leads" in markdown and "| synthetic | 6 | I II III aVR aVL aVF |" in markdown
    assert "random init (baseline)" in markdown and "random-init probe 100%" in markdown
    assert "macro AUROC [95% CI]" in markdown


def test_records_the_model_learnt_from_are_left_out(model_folder, tmp_path):
    """A model folder that says it learnt from LUDB records 1 and 2 (as the demo's does for the
    patients whose beats it borrows) is evaluated on the other LUDB records only."""
    import shutil

    from dbeta.loading import TRAINING_RECORDS_NAME

    folder = tmp_path / "model"
    shutil.copytree(model_folder, folder)
    (folder / TRAINING_RECORDS_NAME).write_text(
        json.dumps({"datasets": {"ludb": {"ids": ["1", "2"], "uses": ["median beats"]}, "cinc2021": {"ids": ["x"], "uses": []}}})
    )
    results = main(
        ["--model", str(folder), "--dataset", f"ludb={LUDB_FIXTURES}", "--tasks", "zero_shot",
         "--output_dir", str(tmp_path / "eval"), "--no_progress"]
    )  # fmt: skip
    ludb = results["datasets"]["ludb"]
    assert ludb["excluded_training_records"] == 2 and ludb["counts"]["test"] == 4
    assert ludb["zero_shot"]["num_samples"] == 4

    (folder / TRAINING_RECORDS_NAME).write_text(json.dumps({"datasets": {"ludb": {"ids": [str(i) for i in range(1, 7)]}}}))
    with pytest.raises(ValueError, match="every record .* is one the model learnt from"):
        main(["--model", str(folder), "--dataset", f"ludb={LUDB_FIXTURES}", "--tasks", "zero_shot",
              "--output_dir", str(tmp_path / "eval2"), "--no_progress"])  # fmt: skip


def test_the_demo_export_records_the_real_records_it_learnt_from():
    from dbeta.train.demo.make_demo_corpus import real_beat_library
    from dbeta.train.demo.real_ecg import load_ludb_eval_set
    from dbeta.train.demo.recipe import demo_training_records

    records = demo_training_records("none")
    assert set(records) == {"ludb"}
    assert records["ludb"]["ids"] == [beat.record_id for beat in real_beat_library()]
    assert len(records["ludb"]["ids"]) == 58
    assert not set(records["ludb"]["ids"]) & set(load_ludb_eval_set().record_ids)  # none is an evaluation patient
    with_pairs = demo_training_records("ludb")
    assert len(with_pairs["ludb"]["ids"]) == 95 and len(with_pairs["ludb"]["uses"]) == 2
