"""train/evaluate.py: end to end on real LUDB records, the original protocol, linear probe, fine-tuning."""

import json

import numpy as np
import pytest
import scipy.signal
import torch
import transformers
import yaml
from sklearn.metrics import roc_auc_score
from transformers import pipeline
from zero_shot_utils import LUDB_FIXTURES, save_tiny_zero_shot_folder

from dbeta.train import downstream
from dbeta.train.evaluate import finetune, label_prompts, linear_probe, main, prepare_original, probe_subset
from pipeline_dbeta import TASK
from processing_dbeta import ECGRecord


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return save_tiny_zero_shot_folder(tmp_path_factory.mktemp("dbeta-tiny"))


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
