"""ECG file readers of `processing_dbeta`, checked on the vendored real recordings.

Expected values are computed independently of the readers: from the header text by hand and
from the raw signal bytes with numpy / scipy.io.
"""
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from processing_dbeta import (
    MIMIC_LEAD_NAMES,
    STANDARD_LEAD_NAMES,
    DBetaFeatureExtractor,
    ECGRecord,
    canonical_lead_name,
    read_code_hdf5,
    read_cpsc2018_mat,
    read_ecg_file,
    read_wfdb_record,
)


def _header_signal_fields(header_path: Path) -> list[dict]:
    """(gain, baseline, units, init value, name) of each signal line, parsed the simple way."""
    lines = [line for line in header_path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    fields = []
    for line in lines[1:]:
        parts = line.split()
        gain_field = parts[2]  # e.g. "1716(6)/mV" or "1000/mV"
        gain_text, units = gain_field.split("/")
        if "(" in gain_text:
            gain_text, baseline_text = gain_text.rstrip(")").split("(")
            baseline = int(baseline_text)
        else:
            baseline = int(parts[4])
        fields.append(dict(gain=float(gain_text), baseline=baseline, units=units, init=int(parts[5]), name=parts[8]))
    return fields


# -- lead names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [("avl", "aVL"), ("AVF", "aVF"), ("i", "I"), ("ii", "II"), ("iii", "III"), ("v1", "V1"), (" V6 ", "V6"),
     ("aVR", "aVR"), ("MLII", "MLII"), ("vx", "vx"), ("V7", "V7")],
)
def test_canonical_lead_name(name, expected):
    assert canonical_lead_name(name) == expected


def test_lead_name_constants():
    assert STANDARD_LEAD_NAMES == ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
    assert MIMIC_LEAD_NAMES == ("I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6")


# -- WFDB .hea + .dat (LUDB) -----------------------------------------------------------------


def test_ludb_record_values_follow_header_arithmetic(fixtures_dir):
    header_path = fixtures_dir / "ludb" / "1.hea"
    record = read_wfdb_record(header_path)
    assert isinstance(record, ECGRecord)
    assert record.signal.shape == (12, 5000) and record.signal.dtype == np.float32
    assert record.lead_names == ["i", "ii", "iii", "avr", "avl", "avf", "v1", "v2", "v3", "v4", "v5", "v6"]
    assert record.sampling_rate == 500.0
    # WFDB: physical = (digital - baseline) / gain; the baseline is the "(6)" after the gain.
    assert record.signal[0, 0] == pytest.approx((-120 - 6) / 1716, rel=1e-6)

    signal_fields = _header_signal_fields(header_path)
    digital = np.fromfile(fixtures_dir / "ludb" / "1.dat", dtype="<i2").reshape(-1, 12).T
    for lead, spec in enumerate(signal_fields):
        assert digital[lead, 0] == spec["init"]
        expected = (digital[lead].astype(np.float64) - spec["baseline"]) / spec["gain"]
        np.testing.assert_allclose(record.signal[lead], expected, rtol=1e-6, atol=1e-7)


def test_ludb_metadata(fixtures_dir):
    record = read_wfdb_record(fixtures_dir / "ludb" / "1")
    assert record.metadata["name"] == "1"
    assert record.metadata["age"] == 51 and record.metadata["sex"] == "F"
    assert record.metadata["diagnoses"] == [
        "Rhythm: Sinus bradycardia.",
        "Electric axis of the heart: left axis deviation.",
        "Left ventricular hypertrophy.",
        "Left ventricular overload.",
        "Non-specific repolarization abnormalities: posterior wall.",
    ]
    assert record.metadata["comments"][:3] == ["<age>: 51", "<sex>: F", "<diagnoses>:"]


@pytest.mark.parametrize("suffix", ["", ".hea", ".dat"])
def test_wfdb_path_with_or_without_extension(fixtures_dir, suffix):
    reference = read_wfdb_record(fixtures_dir / "ludb" / "2")
    record = read_wfdb_record(str(fixtures_dir / "ludb" / "2") + suffix)
    np.testing.assert_array_equal(record.signal, reference.signal)
    np.testing.assert_array_equal(read_ecg_file(str(fixtures_dir / "ludb" / "2") + suffix).signal, reference.signal)


def test_every_vendored_and_shared_record_reads(fixtures_dir, shared_real_data_dir):
    headers = sorted(fixtures_dir.glob("*/*.hea"))
    if shared_real_data_dir is not None:  # optional: more real records when the shared folder is there
        headers += sorted(shared_real_data_dir.glob("*/records/*.hea")) + sorted(shared_real_data_dir.glob("ludb/data/*.hea"))
    assert len(headers) >= 13
    for header_path in headers:
        record = read_ecg_file(header_path)
        assert record.signal.shape[0] == len(record.lead_names) >= 12
        assert np.isfinite(record.signal).all(), header_path
        assert 0.0 < np.abs(record.signal).max() < 20.0, header_path  # millivolts, not µV or adu


# -- CinC .hea + .mat --------------------------------------------------------------------------


def test_cinc_record_values_and_labels(fixtures_dir):
    record = read_ecg_file(fixtures_dir / "cinc2021" / "E07501.mat")
    val = scipy.io.loadmat(fixtures_dir / "cinc2021" / "E07501.mat")["val"]
    assert record.signal.shape == val.shape == (12, 5000)
    np.testing.assert_allclose(record.signal, val / 1000.0, rtol=1e-6)  # 1000 adu/mV: values are µV
    assert record.lead_names == list(STANDARD_LEAD_NAMES)
    assert record.sampling_rate == 500.0
    assert record.metadata["dx"] == ["253352002", "427084000"]
    assert record.metadata["age"] == 65 and record.metadata["sex"] == "Male"
    assert record.metadata["name"] == "E07501"

    ptbxl = read_wfdb_record(fixtures_dir / "cinc2021" / "HR06002")  # lower-case "mv" units
    assert ptbxl.metadata["dx"] == ["426177001", "426783006", "713426002"]
    assert ptbxl.signal[0, 0] == pytest.approx(0.280)


def test_cinc_format_16_plus_24_with_date(fixtures_dir):
    record = read_wfdb_record(fixtures_dir / "cinc2021" / "JS00666.hea")
    first_samples = [spec["init"] / 1000 for spec in _header_signal_fields(fixtures_dir / "cinc2021" / "JS00666.hea")]
    np.testing.assert_allclose(record.signal[:, 0], first_samples, rtol=1e-6)
    assert record.metadata["dx"] == ["427084000"] and record.metadata["age"] == 28


def test_cinc_2020_record_line_with_mat_extension(fixtures_dir, tmp_path):
    """CinC 2020 headers name the record 'E00666.mat' on the record line (wfdb rejects that)."""
    source = fixtures_dir / "cinc2021" / "JS00666"
    shutil.copy(source.with_suffix(".mat"), tmp_path / "E00666.mat")
    lines = source.with_suffix(".hea").read_text().splitlines()
    lines[0] = "E00666.mat 12 500 5000"
    lines = [lines[0]] + [line.replace("JS00666.mat", "E00666.mat") for line in lines[1:]]
    (tmp_path / "E00666.hea").write_text("\n".join(lines) + "\n")

    record = read_ecg_file(tmp_path / "E00666.mat")
    assert record.metadata["name"] == "E00666"
    np.testing.assert_array_equal(record.signal, read_wfdb_record(source).signal)


def test_microvolt_header_is_converted_to_millivolts(fixtures_dir, tmp_path):
    source = fixtures_dir / "cinc2021" / "E07501"
    shutil.copy(source.with_suffix(".mat"), tmp_path / "E07501.mat")
    header = source.with_suffix(".hea").read_text().replace("1000.0(0)/mV", "1(0)/uV")
    (tmp_path / "E07501.hea").write_text(header)
    record = read_wfdb_record(tmp_path / "E07501")
    assert record.metadata["units"][0] == "uV"
    np.testing.assert_allclose(record.signal, read_wfdb_record(source).signal, rtol=1e-6)


# -- CPSC 2018 .mat ----------------------------------------------------------------------------


def test_cpsc2018_mat(fixtures_dir):
    path = fixtures_dir / "cpsc2018" / "A1980.mat"
    record = read_cpsc2018_mat(path)
    data = scipy.io.loadmat(path)["ECG"][0, 0]["data"]
    assert record.signal.shape == (12, 5000) and record.signal.dtype == np.float32
    np.testing.assert_allclose(record.signal, data, rtol=1e-6)
    assert record.lead_names == list(STANDARD_LEAD_NAMES) and record.sampling_rate == 500.0
    assert record.metadata["age"] == 52 and record.metadata["sex"] == "Male" and record.metadata["name"] == "A1980"
    # No .hea beside it: the dispatcher picks the CPSC reader.
    np.testing.assert_array_equal(read_ecg_file(path).signal, record.signal)


# -- CODE HDF5 ---------------------------------------------------------------------------------


def test_code_hdf5(tmp_path):
    h5py = pytest.importorskip("h5py")  # part of the `train` extra
    tracings = np.random.default_rng(0).normal(size=(5, 4096, 12)).astype(np.float32)
    path = tmp_path / "ecg_tracings.hdf5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("tracings", data=tracings)

    signals, lead_names, sampling_rate = read_code_hdf5(path)
    assert signals.shape == (5, 12, 4096) and signals.dtype == np.float32
    np.testing.assert_array_equal(signals, tracings.transpose(0, 2, 1))
    assert lead_names == list(STANDARD_LEAD_NAMES) and sampling_rate == 400.0

    chunk, _, _ = read_code_hdf5(path, start=1, stop=3)
    np.testing.assert_array_equal(chunk, signals[1:3])

    with h5py.File(tmp_path / "other.hdf5", "w") as handle:
        handle.create_dataset("x", data=tracings)
    with pytest.raises(ValueError, match="tracings"):
        read_code_hdf5(tmp_path / "other.hdf5")
    (tmp_path / "broken.hdf5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="broken.hdf5"):
        read_code_hdf5(tmp_path / "broken.hdf5")


# -- 15-lead PTB-DB style record -----------------------------------------------------------------


def _write_fifteen_lead_record(directory: Path) -> Path:
    """A synthetic PTB-DB-like WFDB record: 12 standard + 3 Frank leads, 1000 Hz, 12 s."""
    wfdb = pytest.importorskip("wfdb")
    rng = np.random.default_rng(1)
    names = ["i", "ii", "iii", "avr", "avl", "avf", "v1", "v2", "v3", "v4", "v5", "v6", "vx", "vy", "vz"]
    signal = rng.normal(scale=0.5, size=(12_000, 15))
    signal[:, 12:] = 9.0  # Frank leads: a value no standard lead has
    wfdb.wrsamp(
        "synthetic_ptb", fs=1000, units=["mV"] * 15, sig_name=names, p_signal=signal,
        fmt=["16"] * 15, adc_gain=[2000.0] * 15, baseline=[0] * 15, write_dir=str(directory),
        comments=["age: 81", "sex: female"],
    )
    return directory / "synthetic_ptb"


@pytest.fixture
def fifteen_lead_record(tmp_path, shared_real_data_dir) -> Path:
    """The real PTB-DB record s0010_re when the shared data is there, else a synthetic one."""
    if shared_real_data_dir is not None and (shared_real_data_dir / "ptbdb" / "records" / "s0010_re.hea").is_file():
        return shared_real_data_dir / "ptbdb" / "records" / "s0010_re"
    return _write_fifteen_lead_record(tmp_path)


def _check_fifteen_lead_processing(path: Path) -> None:
    record = read_ecg_file(path)
    assert record.signal.shape[0] == 15 and record.sampling_rate == 1000.0
    assert record.lead_names[12:] == ["vx", "vy", "vz"]
    assert record.metadata["age"] == 81 and record.metadata["sex"] == "female"

    feature_extractor = DBetaFeatureExtractor()
    output = feature_extractor(record)["input_values"]
    assert output.shape == (1, 12, 5000)
    # The 12 standard leads are kept, in MIMIC order; the Frank leads are dropped.
    standard = feature_extractor(record.signal[:12], sampling_rate=1000, lead_names=record.lead_names[:12])
    np.testing.assert_array_equal(output, standard["input_values"])
    expected_lead_i = DBetaFeatureExtractor(lead_names=list(STANDARD_LEAD_NAMES))(
        record.signal[:12], sampling_rate=1000
    )["input_values"][0, 0]
    np.testing.assert_allclose(output[0, 0], expected_lead_i, rtol=1e-6)


def test_fifteen_lead_record_keeps_the_12_standard_leads(fifteen_lead_record):
    _check_fifteen_lead_processing(fifteen_lead_record)


def test_synthetic_fifteen_lead_record(tmp_path):
    path = _write_fifteen_lead_record(tmp_path)
    _check_fifteen_lead_processing(path)
    output = DBetaFeatureExtractor()(path)["input_values"]
    assert np.abs(output).max() < 5.0  # nothing of the 9 mV Frank leads leaked in


# -- damaged files ---------------------------------------------------------------------------


def test_truncated_dat_raises_value_error_naming_the_file(fixtures_dir, tmp_path):
    shutil.copy(fixtures_dir / "ludb" / "1.hea", tmp_path / "1.hea")
    (tmp_path / "1.dat").write_bytes((fixtures_dir / "ludb" / "1.dat").read_bytes()[:50_001])
    with pytest.raises(ValueError, match=r"1\.dat"):
        read_wfdb_record(tmp_path / "1")
    # Whole frames but fewer than the header declares.
    (tmp_path / "1.dat").write_bytes((fixtures_dir / "ludb" / "1.dat").read_bytes()[: 24 * 1000])
    with pytest.raises(ValueError, match=r"1\.dat"):
        read_ecg_file(tmp_path / "1.hea")


def test_garbage_header_raises_value_error(fixtures_dir, tmp_path):
    shutil.copy(fixtures_dir / "ludb" / "1.dat", tmp_path / "1.dat")
    (tmp_path / "1.hea").write_text("this is not a header\nat all\n")
    with pytest.raises(ValueError, match=r"1\.hea"):
        read_wfdb_record(tmp_path / "1")
    (tmp_path / "1.hea").write_text("1 12 500 5000\n1.dat 16 12x/mV 0 0 0 0 0 i\n")
    with pytest.raises(ValueError, match=r"1\.hea"):
        read_wfdb_record(tmp_path / "1")
    (tmp_path / "1.hea").write_text("")
    with pytest.raises(ValueError, match=r"1\.hea"):
        read_wfdb_record(tmp_path / "1")


def test_missing_or_damaged_signal_files(fixtures_dir, tmp_path):
    shutil.copy(fixtures_dir / "ludb" / "3.hea", tmp_path / "3.hea")
    with pytest.raises(ValueError, match=r"3\.dat"):
        read_wfdb_record(tmp_path / "3")
    with pytest.raises(ValueError, match="not found"):
        read_wfdb_record(tmp_path / "nothing_here")

    shutil.copy(fixtures_dir / "cinc2021" / "E07502.hea", tmp_path / "E07502.hea")
    (tmp_path / "E07502.mat").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match=r"E07502\.mat"):
        read_ecg_file(tmp_path / "E07502.mat")

    (tmp_path / "A0001.mat").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"A0001\.mat"):
        read_ecg_file(tmp_path / "A0001.mat")
    scipy.io.savemat(tmp_path / "A0002.mat", {"something": np.zeros(3)})
    with pytest.raises(ValueError, match="ECG"):
        read_cpsc2018_mat(tmp_path / "A0002.mat")
    with pytest.raises(ValueError, match="Unsupported"):
        read_ecg_file(tmp_path / "record.csv")


def test_header_length_disagreeing_with_signal_file(fixtures_dir, tmp_path):
    source = fixtures_dir / "cinc2021" / "E07501"
    shutil.copy(source.with_suffix(".mat"), tmp_path / "E07501.mat")
    header = source.with_suffix(".hea").read_text().replace("E07501 12 500 5000", "E07501 12 500 6000", 1)
    (tmp_path / "E07501.hea").write_text(header)
    with pytest.raises(ValueError, match=r"E07501\.hea.*6000.*5000"):
        read_wfdb_record(tmp_path / "E07501")
