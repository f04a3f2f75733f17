"""The simulated MIMIC-IV-ECG-layout demo corpus: layout, determinism, and visible conditions."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

wfdb = pytest.importorskip("wfdb")

from dbeta.train.make_demo_corpus import (  # noqa: E402
    CORRUPT_RECORD_KINDS,
    DEMO_CONDITIONS,
    MIMIC_LEAD_ORDER,
    _write_wfdb,
    make_demo_corpus,
    simulate_ecg,
)
from dbeta.train.text import MIMIC_REPORT_COLUMNS  # noqa: E402


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return make_demo_corpus(tmp_path_factory.mktemp("demo"), num_records=40, num_subjects=12, seed=3)


def _folder_digest(root) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_layout_matches_mimic_iv_ecg(demo_root):
    records = pd.read_csv(demo_root / "record_list.csv")
    measurements = pd.read_csv(demo_root / "machine_measurements.csv")
    assert list(records.columns) == ["subject_id", "study_id", "file_name", "ecg_time", "path"]
    assert list(measurements.columns[:4]) == ["subject_id", "study_id", "cart_id", "ecg_time"]
    assert all(column in measurements.columns for column in MIMIC_REPORT_COLUMNS)
    assert len(records) == len(measurements) == 40
    assert records["subject_id"].nunique() <= 12
    row = records.iloc[0]
    subject = str(row.subject_id)
    assert row.path == f"files/p{subject[:4]}/p{subject}/s{row.study_id}/{row.study_id}"
    header = wfdb.rdheader(str(demo_root / row.path))
    assert header.sig_name == list(MIMIC_LEAD_ORDER)
    assert (header.fs, header.sig_len, header.n_sig) == (500, 5000, 12)
    assert header.fmt == ["16"] * 12 and header.units == ["mV"] * 12
    record = wfdb.rdrecord(str(demo_root / row.path))
    assert record.p_signal.shape == (5000, 12) and np.isfinite(record.p_signal).all()


def test_reports_state_the_simulated_conditions(demo_root):
    measurements = pd.read_csv(demo_root / "machine_measurements.csv")
    labels = pd.read_csv(demo_root / "demo_labels.csv").set_index("study_id")
    for _, row in measurements.iterrows():
        lines = [line for line in row[list(MIMIC_REPORT_COLUMNS)] if isinstance(line, str)]
        assert lines[-1] in ("Normal ECG", "Borderline ECG", "Abnormal ECG")
        text = " ".join(lines)
        for key, phrase in DEMO_CONDITIONS.items():
            assert (phrase in text) == bool(labels.loc[row.study_id, key]), (key, text)
    rhythm_counts = labels[["sinus_rhythm", "sinus_bradycardia", "sinus_tachycardia", "atrial_fibrillation"]].sum(axis=1)
    assert (rhythm_counts == 1).all()


def test_deterministic_from_seed(tmp_path):
    first = make_demo_corpus(tmp_path / "a", num_records=5, seed=7)
    second = make_demo_corpus(tmp_path / "b", num_records=5, seed=7)
    other = make_demo_corpus(tmp_path / "c", num_records=5, seed=8)
    assert _folder_digest(first) == _folder_digest(second) != _folder_digest(other)


def test_fast_writer_is_byte_identical_to_wfdb_wrsamp(tmp_path):
    signal = simulate_ecg(np.random.default_rng(1)).signal
    signal[3, 10:20] = np.nan
    _write_wfdb(tmp_path / "ours", "123", signal, list(MIMIC_LEAD_ORDER))
    (tmp_path / "wfdb").mkdir()
    wfdb.wrsamp(
        "123",
        fs=500,
        units=["mV"] * 12,
        sig_name=list(MIMIC_LEAD_ORDER),
        p_signal=signal.T.astype(np.float64),
        fmt=["16"] * 12,
        adc_gain=[200.0] * 12,
        baseline=[0] * 12,
        write_dir=str(tmp_path / "wfdb"),
    )
    for extension in ("hea", "dat"):
        assert (tmp_path / "ours" / f"123.{extension}").read_bytes() == (tmp_path / "wfdb" / f"123.{extension}").read_bytes()


def _r_peaks(lead: np.ndarray) -> np.ndarray:
    from scipy.signal import find_peaks

    detrended = lead - np.convolve(lead, np.ones(201) / 201, mode="same")
    peaks, _ = find_peaks(np.abs(detrended), height=0.5 * np.abs(detrended).max(), distance=150)
    return peaks


@pytest.mark.parametrize(
    ("rhythm", "low", "high"),
    [("sinus_bradycardia", 38, 60), ("sinus_rhythm", 58, 102), ("sinus_tachycardia", 100, 155)],
)
def test_heart_rate_is_visible(rhythm, low, high):
    for seed in range(3):
        ecg = simulate_ecg(np.random.default_rng(seed), [rhythm])
        peaks = _r_peaks(ecg.signal[MIMIC_LEAD_ORDER.index("V5")])
        rate = 60.0 * 500 / np.median(np.diff(peaks))
        assert low <= rate <= high, (rhythm, rate)


def test_atrial_fibrillation_is_irregular_and_sinus_is_not():
    def rr_variation(conditions, seed):
        peaks = _r_peaks(simulate_ecg(np.random.default_rng(seed), conditions).signal[MIMIC_LEAD_ORDER.index("V5")])
        rr = np.diff(peaks)
        return rr.std() / rr.mean()

    assert min(rr_variation(["atrial_fibrillation"], seed) for seed in range(4)) > 0.1
    assert max(rr_variation(["sinus_rhythm"], seed) for seed in range(4)) < 0.06


def test_low_voltage_and_lbbb_change_the_qrs():
    limb = slice(0, 6)

    def qrs_amplitude(conditions):
        return np.mean(
            [np.ptp(simulate_ecg(np.random.default_rng(seed), conditions).signal[limb], axis=1).max() for seed in range(4)]
        )

    assert qrs_amplitude(["sinus_rhythm", "low_qrs_voltages"]) < 0.6 * qrs_amplitude(["sinus_rhythm"])
    normal = simulate_ecg(np.random.default_rng(0), ["sinus_rhythm"])
    lbbb = simulate_ecg(np.random.default_rng(0), ["sinus_rhythm", "left_bundle_branch_block"])
    assert normal.qrs_duration_ms < 110 and lbbb.qrs_duration_ms > 120
    v1 = MIMIC_LEAD_ORDER.index("V1")
    assert lbbb.signal[v1].min() < normal.signal[v1].min()  # deep broad QS in V1


def test_corrupt_records_are_listed(tmp_path):
    root = make_demo_corpus(tmp_path, num_records=3, num_corrupt_records=len(CORRUPT_RECORD_KINDS), seed=1)
    corrupt = pd.read_csv(root / "corrupt_records.csv")
    assert sorted(corrupt["kind"]) == sorted(CORRUPT_RECORD_KINDS)
    assert len(pd.read_csv(root / "record_list.csv")) == 3 + len(CORRUPT_RECORD_KINDS)
    assert len(pd.read_csv(root / "demo_labels.csv")) == 3
