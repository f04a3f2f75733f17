"""The simulated MIMIC-IV-ECG-layout demo corpus: layout, determinism, and visible conditions."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

wfdb = pytest.importorskip("wfdb")

from dbeta.train.demo.make_demo_corpus import (  # noqa: E402
    CORRUPT_RECORD_KINDS,
    DEMO_CONDITIONS,
    MIMIC_LEAD_ORDER,
    REAL_BEAT_FINDINGS,
    RHYTHM_CONDITIONS,
    RHYTHM_NAMES,
    _write_wfdb,
    make_demo_corpus,
    real_beat_library,
    simulate_ecg,
)
from dbeta.text import MIMIC_REPORT_COLUMNS  # noqa: E402


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
        # The rhythm statement comes first (machine style, or LUDB's "Rhythm: ..." line).
        rhythm = next(key for key in RHYTHM_CONDITIONS if labels.loc[row.study_id, key])
        assert RHYTHM_NAMES[rhythm].lower() in lines[0].lower(), lines
        assert all(line not in ("Normal ECG", "Borderline ECG", "Abnormal ECG") for line in lines[:-1])
        text = " ".join(lines).lower()
        for key, phrase in DEMO_CONDITIONS.items():
            assert (phrase.lower() in text) == bool(labels.loc[row.study_id, key]), (key, text)
    rhythm_counts = labels[list(RHYTHM_CONDITIONS)].sum(axis=1)
    assert (rhythm_counts == 1).all()


def test_deterministic_from_seed(tmp_path):
    first = make_demo_corpus(tmp_path / "a", num_records=5, seed=7)
    second = make_demo_corpus(tmp_path / "b", num_records=5, seed=7)
    other = make_demo_corpus(tmp_path / "c", num_records=5, seed=8)
    assert _folder_digest(first) == _folder_digest(second) != _folder_digest(other)


def test_fast_writer_is_byte_identical_to_wfdb_wrsamp(tmp_path):
    signal = simulate_ecg(np.random.default_rng(1), lead_normalised=False).signal
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


def _r_peaks(signal: np.ndarray) -> np.ndarray:
    """R peaks (samples) detected on the signal itself: 5-30 Hz band energy summed over the leads."""
    from scipy.signal import butter, filtfilt, find_peaks

    if signal.ndim == 1:
        signal = signal[None]
    b, a = butter(3, [5 / 250, 30 / 250], "band")
    energy = (filtfilt(b, a, signal.astype(np.float64), axis=1) ** 2).sum(axis=0)
    peaks, _ = find_peaks(energy, height=0.2 * np.percentile(energy, 99.5), distance=140)
    return peaks


@pytest.mark.parametrize("real_morphology", [False, True], ids=["dipole", "real_beats"])
@pytest.mark.parametrize(
    ("rhythm", "low", "high"),
    [("sinus_bradycardia", 36, 60), ("sinus_rhythm", 58, 102), ("sinus_tachycardia", 99, 162)],
)
def test_heart_rate_is_visible(rhythm, low, high, real_morphology):
    for seed in range(6):
        ecg = simulate_ecg(np.random.default_rng(seed), [rhythm], ectopic_beats=0, real_morphology=real_morphology)
        peaks = _r_peaks(ecg.signal)
        rate = 60.0 * 500 / np.median(np.diff(peaks))
        assert low <= rate <= high, (rhythm, rate)


@pytest.mark.parametrize("real_morphology", [False, True], ids=["dipole", "real_beats"])
def test_atrial_fibrillation_is_irregular_and_sinus_is_not(real_morphology):
    def rr_variation(conditions, seed):
        peaks = _r_peaks(simulate_ecg(np.random.default_rng(seed), conditions, ectopic_beats=0, real_morphology=real_morphology).signal)
        rr = np.diff(peaks)
        return rr.std() / rr.mean()

    assert min(rr_variation(["atrial_fibrillation"], seed) for seed in range(6)) > 0.08
    assert max(rr_variation(["sinus_rhythm"], seed) for seed in range(6)) < 0.07


def test_low_voltage_and_lbbb_change_the_qrs():
    limb = slice(0, 6)

    def qrs_amplitude(conditions):
        return np.mean(
            [np.ptp(simulate_ecg(np.random.default_rng(seed), conditions, lead_normalised=False).signal[limb], axis=1).max() for seed in range(8)]
        )

    assert qrs_amplitude(["sinus_rhythm", "low_qrs_voltages"]) < 0.6 * qrs_amplitude(["sinus_rhythm"])
    normal = simulate_ecg(np.random.default_rng(0), ["sinus_rhythm"], lead_normalised=False)
    lbbb = simulate_ecg(np.random.default_rng(0), ["sinus_rhythm", "left_bundle_branch_block"], lead_normalised=False)
    assert normal.qrs_duration_ms < 110 and lbbb.qrs_duration_ms > 120
    v1 = MIMIC_LEAD_ORDER.index("V1")
    assert lbbb.signal[v1].min() < normal.signal[v1].min()  # deep broad QS in V1


def test_worker_processes_write_the_same_corpus(tmp_path, monkeypatch):
    """`num_proc` splits the studies into blocks for worker processes; the files (corrupt studies
    and the csv rows' order included) are those of one process."""
    import dbeta.train.demo.make_demo_corpus as corpus

    monkeypatch.setattr(corpus, "STUDIES_PER_TASK", 3)  # 3 blocks of valid studies, the corrupt ones in 2 more
    kinds = len(CORRUPT_RECORD_KINDS)
    one = make_demo_corpus(tmp_path / "one", num_records=8, num_corrupt_records=kinds, seed=3)
    two = make_demo_corpus(tmp_path / "two", num_records=8, num_corrupt_records=kinds, seed=3, num_proc=2)
    assert _folder_digest(one) == _folder_digest(two)
    assert len(pd.read_csv(two / "record_list.csv")) == 8 + kinds


def test_corrupt_records_are_listed(tmp_path):
    root = make_demo_corpus(tmp_path, num_records=3, num_corrupt_records=len(CORRUPT_RECORD_KINDS), seed=1)
    corrupt = pd.read_csv(root / "corrupt_records.csv")
    assert sorted(corrupt["kind"]) == sorted(CORRUPT_RECORD_KINDS)
    assert len(pd.read_csv(root / "record_list.csv")) == 3 + len(CORRUPT_RECORD_KINDS)
    assert len(pd.read_csv(root / "demo_labels.csv")) == 3


# ---------------------------------------------------------------------------------------------
# Rhythm physiology and lead relations
# ---------------------------------------------------------------------------------------------


def _lead(ecg, name):
    return ecg.signal[MIMIC_LEAD_ORDER.index(name)].astype(np.float64)


@pytest.mark.parametrize("real_morphology", [False, True], ids=["dipole", "real_beats"])
def test_limb_leads_obey_einthoven_and_goldberger(real_morphology):
    """Noise is added per electrode, so the lead relations hold exactly (up to float32) as in a real
    recording; real beats (from per-lead normalised LUDB) are rebuilt from I, II, V1-V6, so they do too."""
    for seed in range(3):
        ecg = simulate_ecg(np.random.default_rng(seed), ["sinus_rhythm"], lead_normalised=False, filtered=bool(seed % 2), real_morphology=real_morphology)
        one, two, three = _lead(ecg, "I"), _lead(ecg, "II"), _lead(ecg, "III")
        np.testing.assert_allclose(three, two - one, atol=1e-5)
        np.testing.assert_allclose(_lead(ecg, "aVR"), -(one + two) / 2, atol=1e-5)
        np.testing.assert_allclose(_lead(ecg, "aVL"), (one - three) / 2, atol=1e-5)
        np.testing.assert_allclose(_lead(ecg, "aVF"), (two + three) / 2, atol=1e-5)


def test_atrial_fibrillation_has_irregular_rr_and_no_p_waves():
    for seed in range(6):
        af = simulate_ecg(np.random.default_rng(seed), ["atrial_fibrillation"])
        sinus = simulate_ecg(np.random.default_rng(seed), ["sinus_rhythm"], ectopic_beats=0)
        assert not af.has_p_waves and sinus.has_p_waves
        rr_af, rr_sinus = np.diff(af.r_peaks_s), np.diff(sinus.r_peaks_s)
        # Irregularly irregular: large spread and successive differences (RMSSD) far above sinus.
        assert rr_af.std() / rr_af.mean() > 0.1
        assert np.sqrt(np.mean(np.diff(rr_af) ** 2)) > 3 * np.sqrt(np.mean(np.diff(rr_sinus) ** 2))


def test_sinus_p_wave_precedes_each_qrs_and_af_baseline_has_none():
    """Mean lead-II activity 120-220 ms before the R peaks: a P wave (a bump) in sinus rhythm, only
    fibrillatory waves (mean near zero after averaging over beats) in atrial fibrillation."""

    def pre_r_bump(ecg):
        lead, bumps = _lead(ecg, "II"), []
        for r in ecg.r_peaks_s:
            start, stop = int((r - 0.22) * 500), int((r - 0.08) * 500)
            if start >= 0:
                window = lead[start:stop]
                bumps.append(window.max() - 0.5 * (window[0] + window[-1]))
        return float(np.median(bumps))

    for real in (False, True):
        sinus = [pre_r_bump(simulate_ecg(np.random.default_rng(s), ["sinus_rhythm"], lead_normalised=False, ectopic_beats=0, real_morphology=real)) for s in range(6)]
        af = [pre_r_bump(simulate_ecg(np.random.default_rng(s), ["atrial_fibrillation"], lead_normalised=False, real_morphology=real)) for s in range(6)]
        assert np.median(sinus) > 2 * np.median(af), real


def test_flutter_has_sawtooth_waves_at_atrial_rate_and_conducted_beats():
    from scipy.signal import welch

    for seed in range(4):
        ecg = simulate_ecg(np.random.default_rng(seed), ["atrial_flutter"], lead_normalised=False)
        assert not ecg.has_p_waves
        rr = np.diff(ecg.r_peaks_s)
        assert 0.25 <= rr.min() and rr.max() <= 1.1  # 2:1 to 4:1 of a 240-340 /min atrial rate
        frequencies, power = welch(_lead(ecg, "II"), fs=500, nperseg=2500)
        band = (frequencies > 3.8) & (frequencies < 6.0)  # 240-340 /min
        assert power[band].max() > 3 * np.median(power[(frequencies > 3.0) & (frequencies < 8.0)])
        assert any(word in " ".join(ecg.report_lines) for word in ("Atrial flutter", "atrial flutter"))


def test_rates_match_the_rhythm_definitions():
    for seed in range(10):
        assert simulate_ecg(np.random.default_rng(seed), ["sinus_bradycardia"], ectopic_beats=0).heart_rate_bpm < 61
        assert simulate_ecg(np.random.default_rng(seed), ["sinus_tachycardia"], ectopic_beats=0).heart_rate_bpm > 99
        assert 55 <= simulate_ecg(np.random.default_rng(seed), ["sinus_rhythm"], ectopic_beats=0).heart_rate_bpm <= 104


def test_lead_normalised_records_have_unit_peak_to_peak():
    ecg = simulate_ecg(np.random.default_rng(0), ["sinus_rhythm"], lead_normalised=True)
    np.testing.assert_allclose(np.ptp(ecg.signal, axis=1), 1.0, atol=1e-5)


def test_premature_ventricular_complexes_are_early_and_reported():
    ecg = simulate_ecg(np.random.default_rng(0), ["sinus_rhythm"], ectopic_beats=2)
    rr = np.diff(ecg.r_peaks_s)
    assert (rr < 0.8 * np.median(rr)).sum() >= 1  # premature
    assert (rr > 1.2 * np.median(rr)).sum() >= 1  # compensatory pause
    text = " ".join(ecg.report_lines).lower()
    assert "premature ventricular complexes" in text or "ventricular extrasystoles" in text
    assert "sinus rhythm" in text


def test_marked_sinus_arrhythmia_is_irregular_with_p_waves_and_reported_as_such():
    """The irregular rhythm that is *not* atrial fibrillation: P waves before every QRS, a phasic
    (respiratory) RR modulation with a spread like LUDB's sinus-arrhythmia records."""
    for seed in range(6):
        ecg = simulate_ecg(np.random.default_rng(seed), ["sinus_arrhythmia"], ectopic_beats=0)
        rr = np.diff(ecg.r_peaks_s)
        assert ecg.has_p_waves
        assert 0.04 < rr.std() / rr.mean() < 0.2
        assert 55 <= ecg.heart_rate_bpm <= 101
        assert "sinus arrhythmia" in ecg.report_lines[0].lower()
        assert "sinus rhythm" not in " ".join(ecg.report_lines).lower()


def test_atrial_fibrillation_rates_overlap_the_sinus_rates():
    """Rate alone must not give atrial fibrillation away: most AF records run at sinus-rhythm rates."""
    rates = [simulate_ecg(np.random.default_rng(seed), ["atrial_fibrillation"]).heart_rate_bpm for seed in range(40)]
    assert 60 <= np.median(rates) <= 100
    assert np.mean([60 <= rate <= 100 for rate in rates]) > 0.5


# ---------------------------------------------------------------------------------------------
# Real beats (REAL_MORPHOLOGY_FRACTION of the records)
# ---------------------------------------------------------------------------------------------


def test_real_beats_come_only_from_the_ludb_training_part():
    from dbeta.train.demo.real_ecg import load_ludb_eval_set, load_ludb_train_set

    library = real_beat_library()
    sources = {beat.record_id for beat in library}
    assert len(library) >= 50
    assert sources <= set(load_ludb_train_set().record_ids)
    assert not sources & set(load_ludb_eval_set().record_ids)
    training = load_ludb_train_set()
    for beat in library:
        rhythm = training.rhythms[training.record_ids.index(beat.record_id)]
        assert rhythm.startswith("sinus") and "arrhythmia" not in rhythm  # regular sinus sources only


def test_real_beat_record_carries_the_source_morphology():
    """The QRS of a real-beat record is its source patient's: lead by lead it correlates with the
    source's median beat far better than with another patient's."""
    from dbeta.train.demo.real_ecg import load_ludb_train_set

    training = load_ludb_train_set()
    ecg = simulate_ecg(np.random.default_rng(4), ["sinus_rhythm"], ectopic_beats=0, real_morphology=True, lead_normalised=False, filtered=False)
    source = next(beat for beat in real_beat_library() if beat.record_id == ecg.real_beat_record)
    other = next(beat for beat in real_beat_library() if beat.record_id != ecg.real_beat_record)
    window = slice(int(0.23 * 500), int(0.37 * 500))  # -50..+90 ms around R in the beat template

    def qrs_correlation(beat):
        leads = [MIMIC_LEAD_ORDER.index(name) for name in ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")]
        correlations = []
        for r in ecg.r_peaks_s[1:-1]:
            start = int(round(r * 500)) - int(0.28 * 500)
            segment = ecg.signal[leads, start + window.start : start + window.stop]
            template = beat.ventricular[:, window]
            correlations.append(np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(segment, template)]))
        return float(np.median(correlations))

    assert qrs_correlation(source) > 0.9
    assert qrs_correlation(source) > qrs_correlation(other) + 0.1
    assert training.record_ids.index(ecg.real_beat_record) >= 0


def test_real_beat_st_t_follows_the_rate():
    beat = real_beat_library()[0]
    slow, fast = beat.ventricular_at(1.5 * beat.rr_s), beat.ventricular_at(0.5 * beat.rr_s)
    assert fast.shape[1] < beat.ventricular.shape[1] < slow.shape[1]
    qrs = slice(0, int((0.28 + 0.08) * 500))  # up to the end of the QRS: unchanged
    np.testing.assert_allclose(fast[:, qrs], beat.ventricular[:, qrs])


def test_real_beat_reports_state_the_rhythm_axis_and_only_the_findings_a_real_beat_can_carry():
    seen, findings = 0, set()
    for seed in range(80):
        ecg = simulate_ecg(np.random.default_rng(seed))
        if ecg.real_beat_record is None:
            continue
        seen += 1
        assert set(ecg.conditions) <= set(RHYTHM_CONDITIONS) | {"ventricular_extrasystoles", *REAL_BEAT_FINDINGS}
        text = " ".join(ecg.report_lines).lower()
        assert "bundle branch block" not in text
        for finding, words in (("low_qrs_voltages", "low qrs"), ("inverted_t_waves", "inverted t")):
            assert (words in text) == (finding in ecg.conditions), (seed, text)
        findings.update(key for key in ecg.conditions if key in REAL_BEAT_FINDINGS)
    assert 52 <= seen <= 76  # REAL_MORPHOLOGY_FRACTION = 0.8 of 80
    assert findings == set(REAL_BEAT_FINDINGS)
    with pytest.raises(ValueError, match="real beat has its own morphology"):
        simulate_ecg(np.random.default_rng(0), ["sinus_rhythm", "left_bundle_branch_block"], real_morphology=True)


def test_real_beat_findings_change_the_source_beat_where_they_should():
    """Inverted T waves negate the ST-T part and keep the QRS; low QRS voltages shrink the QRS to
    0.2-0.35 of its size and the T wave to 0.6."""
    from dbeta.train.demo.make_demo_corpus import (
        _REAL_BEAT_START_S,
        _REAL_QRS_END_S,
        _with_real_beat_findings,
    )

    beat = real_beat_library()[3].ventricular_at(0.9)
    time_s = _REAL_BEAT_START_S + np.arange(beat.shape[1]) / 500
    qrs, st_t = (time_s > -0.05) & (time_s <= _REAL_QRS_END_S), time_s > _REAL_QRS_END_S + 0.03
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(_with_real_beat_findings(rng, beat, ["sinus_rhythm"]), beat)

    inverted = _with_real_beat_findings(rng, beat, ["sinus_rhythm", "inverted_t_waves"])
    np.testing.assert_array_equal(inverted[:, qrs], beat[:, qrs])
    ratio = inverted[:, st_t] / np.where(np.abs(beat[:, st_t]) > 1e-9, beat[:, st_t], np.nan)
    assert np.nanmax(ratio) == pytest.approx(np.nanmin(ratio)) and -1.3 <= np.nanmax(ratio) <= -0.8

    low = _with_real_beat_findings(rng, beat, ["sinus_rhythm", "low_qrs_voltages"])
    qrs_ratio = np.ptp(low[:, qrs], axis=1) / np.ptp(beat[:, qrs], axis=1)
    assert np.allclose(qrs_ratio, qrs_ratio[0]) and 0.2 <= qrs_ratio[0] <= 0.35
    np.testing.assert_allclose(low[:, st_t], 0.6 * beat[:, st_t])


def test_low_voltage_real_beat_records_have_small_limb_lead_qrs():
    """Low QRS voltage by its clinical definition: QRS under 0.5 mV in every limb lead."""
    kwargs = {"ectopic_beats": 0, "real_morphology": True, "lead_normalised": False, "filtered": False}
    limb = [MIMIC_LEAD_ORDER.index(name) for name in ("I", "II", "III", "aVR", "aVL", "aVF")]

    def limb_qrs_mv(ecg):  # the largest limb-lead median QRS peak-to-peak (-50..+80 ms around R)
        beats = [np.ptp(ecg.signal[limb, round(r * 500) - 25 : round(r * 500) + 40], axis=1) for r in ecg.r_peaks_s[1:-1]]
        return float(np.median(np.stack(beats), axis=0).max())

    normal, low = [], []
    for seed in range(8):
        normal.append(limb_qrs_mv(simulate_ecg(np.random.default_rng(seed), ["sinus_rhythm"], **kwargs)))
        ecg = simulate_ecg(np.random.default_rng(seed), ["sinus_rhythm", "low_qrs_voltages"], **kwargs)
        low.append(limb_qrs_mv(ecg))
        assert "low qrs" in " ".join(ecg.report_lines).lower()
    assert np.median(low) < 0.5 and max(low) < 0.6 and np.median(low) < 0.5 * np.median(normal), (low, normal)
