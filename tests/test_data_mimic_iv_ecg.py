"""MIMIC-IV-ECG preparation: joins, report cleaning, filters by reason, subject split, resume."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

wfdb = pytest.importorskip("wfdb")
datasets = pytest.importorskip("datasets")

from dbeta.train.data import mimic_iv_ecg  # noqa: E402
from dbeta.train.demo.make_demo_corpus import MIMIC_LEAD_ORDER, make_demo_corpus, mimic_relative_path, simulate_ecg  # noqa: E402
from dbeta.train.data.mimic_iv_ecg import decode_ecg, encode_signal, prepare_mimic_iv_ecg  # noqa: E402
from dbeta.text import clean_mimic_report, join_report_lines, normalize_report  # noqa: E402

NUM_VALID = 36
SHARD_SIZE = 8


def _append_study(root, subject_id, study_id, signal, lead_names, fs, report_lines):
    """Add one study with wfdb.wrsamp and a row in both CSVs."""
    relative = mimic_relative_path(subject_id, study_id)
    folder = root / relative.rsplit("/", 1)[0]
    folder.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(
        str(study_id), fs=fs, units=["mV"] * len(lead_names), sig_name=list(lead_names),
        p_signal=signal.T.astype(np.float64), fmt=["16"] * len(lead_names), adc_gain=[200.0] * len(lead_names),
        baseline=[0] * len(lead_names), write_dir=str(folder),
    )
    records = pd.read_csv(root / "record_list.csv", dtype=str)
    records.loc[len(records)] = [str(subject_id), str(study_id), str(study_id), "2150-01-01 10:00:00", relative]
    records.to_csv(root / "record_list.csv", index=False)
    measurements = pd.read_csv(root / "machine_measurements.csv", dtype=str)
    row = {"subject_id": str(subject_id), "study_id": str(study_id)}
    row.update({f"report_{index}": line for index, line in enumerate(report_lines)})
    measurements = pd.concat([measurements, pd.DataFrame([row])], ignore_index=True)
    measurements.to_csv(root / "machine_measurements.csv", index=False)


@pytest.fixture(scope="module")
def mimic_root(tmp_path_factory):
    root = make_demo_corpus(tmp_path_factory.mktemp("mimic"), num_records=NUM_VALID, num_subjects=15, seed=5, num_corrupt_records=7)
    rng = np.random.default_rng(0)
    # Standard (not MIMIC) lead order: the stored lead names must follow the file.
    standard = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    signal = simulate_ecg(rng, ["sinus_rhythm"]).signal[[MIMIC_LEAD_ORDER.index(name) for name in standard]]
    _append_study(root, 19000001, 39000001, signal, standard, 500, ["*** EKG Sinus rhythm  ", "Normal ECG ==="])
    # 12 s long: kept, cut to 10 s.
    long_signal = np.concatenate([signal, signal[:, :1000]], axis=1)
    _append_study(root, 19000002, 39000002, long_signal, MIMIC_LEAD_ORDER, 500, ["Sinus rhythm"])
    # 250 Hz and 4 s: skipped.
    _append_study(root, 19000003, 39000003, signal[:, ::2], MIMIC_LEAD_ORDER, 250, ["Sinus rhythm"])
    _append_study(root, 19000004, 39000004, signal[:, :2000], MIMIC_LEAD_ORDER, 500, ["Sinus rhythm"])
    # A measurement row without any record.
    measurements = pd.read_csv(root / "machine_measurements.csv", dtype=str)
    extra = pd.DataFrame([{"subject_id": "19000005", "study_id": "39000005", "report_0": "Sinus rhythm"}])
    pd.concat([measurements, extra], ignore_index=True).to_csv(root / "machine_measurements.csv", index=False)
    return root


@pytest.fixture(scope="module")
def prepared(mimic_root, tmp_path_factory):
    output = tmp_path_factory.mktemp("prepared")
    summary = prepare_mimic_iv_ecg(mimic_root, output, num_proc=1, val_fraction=0.2, seed=0, shard_size=SHARD_SIZE, progress=False)
    return summary, output


def test_text_cleaning():
    assert join_report_lines(["Sinus  rhythm", float("nan"), None, " ", "Normal ECG "]) == "Sinus rhythm Normal ECG"
    assert normalize_report("*** Sinus rhythm. Normal EKG") == "sinus rhythm. normal ecg"
    # The original strips "* ", then "=-", then "=": a space uncovered by a later strip stays.
    assert normalize_report("-- abnormal ekg ==") == " abnormal ecg "
    assert normalize_report("=== Sinus rhythm ***") == " sinus rhythm"
    assert clean_mimic_report([float("nan")] * 18) == ""


def test_counts_by_reason(prepared, mimic_root):
    summary, output = prepared
    corrupt = pd.read_csv(mimic_root / "corrupt_records.csv")
    expected = corrupt["expected_reason"].value_counts().to_dict()
    expected["unexpected_sampling_rate"] = 1
    expected["too_short"] = 1
    assert summary.skipped_by_reason == expected
    assert summary.records_listed == NUM_VALID + 7 + 4
    assert summary.records_kept == NUM_VALID + 2
    assert summary.records_read == summary.records_listed - expected["missing_report"]
    assert summary.measurements_without_record == 1
    assert summary.trimmed_to_num_samples == 1
    assert json.loads((output / "summary.json").read_text())["records_kept"] == NUM_VALID + 2
    skipped = pd.read_csv(output / "skipped.csv")
    assert set(skipped["study_id"]) >= set(corrupt["study_id"])
    assert len(skipped) == sum(expected.values())
    card = (output / "README.md").read_text()
    assert "MIMIC-IV-ECG" in card and "| `nan_values` | 1 |" in card
    assert not (output / mimic_iv_ecg.SHARDS_FOLDER).exists()


def test_dataset_contents_and_subject_split(prepared, mimic_root):
    summary, output = prepared
    data = datasets.load_from_disk(str(output))
    assert set(data) == {"train", "validation"}
    assert data["train"].num_rows + data["validation"].num_rows == summary.records_kept
    assert data["validation"].num_rows > 0
    train_subjects, validation_subjects = set(data["train"]["subject_id"]), set(data["validation"]["subject_id"])
    assert not train_subjects & validation_subjects
    assert summary.subjects_by_split == {"train": len(train_subjects), "validation": len(validation_subjects)}
    from processing_dbeta import read_wfdb_record

    everything = datasets.concatenate_datasets([data["train"], data["validation"]]).with_format("numpy")
    by_study = {int(study): index for index, study in enumerate(everything["study_id"])}
    for study_id in list(by_study)[:5]:
        row = everything[by_study[study_id]]
        record = read_wfdb_record(mimic_root / row["path"])
        assert row["ecg"].shape == (12, 5000) and row["sampling_rate"] == 500
        np.testing.assert_array_equal(decode_ecg(row), record.signal[:, :5000])
    # Standard-order file: names follow the file and the values belong to the named lead.
    row = everything[by_study[39000001]]
    assert list(row["lead_names"]) == ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    record = read_wfdb_record(mimic_root / row["path"])
    np.testing.assert_array_equal(decode_ecg(row)[4], record.signal[record.lead_names.index("aVL")])
    assert row["report"] == "ecg sinus rhythm normal ecg "  # the original's strip order keeps that space
    assert decode_ecg(everything[by_study[39000002]]).shape == (12, 5000)


def test_encode_keeps_large_amplitudes():
    signal = np.stack([np.linspace(-50, 50, 5000), np.sin(np.arange(5000) / 10.0)]).astype(np.float32)
    samples, gain = encode_signal(signal)
    assert samples.dtype == np.int16 and gain[1] == 1000.0 and gain[0] < 1000.0
    np.testing.assert_allclose(decode_ecg({"ecg": samples, "ecg_gain": gain}), signal, atol=0.5 / gain.min())


def _table(path):
    data = datasets.load_from_disk(str(path))
    return {split: data[split].data.table for split in data}


def test_resume_after_interruption_gives_the_same_dataset(mimic_root, prepared, tmp_path, monkeypatch):
    _, reference = prepared
    output = tmp_path / "interrupted"
    original = mimic_iv_ecg.process_shard
    calls = {"count": 0}

    def crash_on_third_shard(task, shards_dir, *fingerprint):
        calls["count"] += 1
        if calls["count"] == 3:
            raise KeyboardInterrupt("simulated kill")
        return original(task, shards_dir, *fingerprint)

    monkeypatch.setattr(mimic_iv_ecg, "process_shard", crash_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        prepare_mimic_iv_ecg(mimic_root, output, val_fraction=0.2, seed=0, shard_size=SHARD_SIZE, progress=False)
    finished = [p for p in (output / mimic_iv_ecg.SHARDS_FOLDER).iterdir() if (p / "result.json").is_file()]
    assert len(finished) == 2
    monkeypatch.setattr(mimic_iv_ecg, "process_shard", original)

    resumed_calls = {"count": 0}

    def counting(task, shards_dir, *fingerprint):
        resumed_calls["count"] += 1
        return original(task, shards_dir, *fingerprint)

    monkeypatch.setattr(mimic_iv_ecg, "process_shard", counting)
    summary = prepare_mimic_iv_ecg(mimic_root, output, val_fraction=0.2, seed=0, shard_size=SHARD_SIZE, progress=False)
    total_shards = -(-summary.records_read // SHARD_SIZE)
    assert resumed_calls["count"] <= total_shards + 1 - 2
    assert _table(output) == _table(reference)
    # Different settings over leftover shards: refused unless overwrite.
    (output / mimic_iv_ecg.SHARDS_FOLDER).mkdir()
    (output / mimic_iv_ecg.SHARDS_FOLDER / "plan.json").write_text(json.dumps({"fingerprint": "other"}))
    with pytest.raises(ValueError, match="overwrite"):
        prepare_mimic_iv_ecg(mimic_root, output, val_fraction=0.2, seed=0, shard_size=SHARD_SIZE, progress=False)


def test_parallel_run_matches_sequential(mimic_root, prepared, tmp_path):
    _, reference = prepared
    prepare_mimic_iv_ecg(mimic_root, tmp_path / "parallel", num_proc=2, val_fraction=0.2, seed=0, shard_size=SHARD_SIZE, progress=False)
    assert _table(tmp_path / "parallel") == _table(reference)
