"""Hostile and damaged ECG files (issue 10): every reader refuses them with a clear error.

Each test writes its own bad input (WFDB `.hea` + `.dat`, PhysioNet/CinC `.hea` + MATLAB v4
`.mat`, CPSC `.mat`, HDF5) in a temporary folder; the error must name the file and the problem.
"""
import os
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from processing_dbeta import (
    MAX_SAMPLING_RATE,
    MIN_SAMPLING_RATE,
    DBetaFeatureExtractor,
    read_code_hdf5,
    read_cpsc2018_mat,
    read_ecg_file,
    read_wfdb_record,
)


LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


def digital_ecg(num_signals=12, num_samples=5000, seed=0):
    """int16 samples of a plausible ECG at gain 1000/mV (about 1 mV peak-to-peak)."""
    time = np.arange(num_samples) / 500
    rng = np.random.default_rng(seed)
    wave = 500 * np.sin(2 * np.pi * 1.2 * time)[None] + rng.normal(scale=20, size=(num_signals, num_samples))
    return wave.astype(np.int16)


def write_dat_record(folder: Path, name="rec", digital=None, header_signals=None, header_samples=None,
                     rate="500", gain="1000/mV", signal_file=None, write_data=True):
    """A WFDB format-16 record; the header may claim other counts than the data holds."""
    digital = digital_ecg() if digital is None else digital
    num_signals = digital.shape[0] if header_signals is None else header_signals
    num_samples = digital.shape[1] if header_samples is None else header_samples
    signal_file = signal_file or f"{name}.dat"
    lines = [f"{name} {num_signals} {rate} {num_samples}"]
    lines += [f"{signal_file} 16 {gain} 16 0 0 0 0 {LEADS[i % 12]}" for i in range(num_signals)]
    (folder / f"{name}.hea").write_text("\n".join(lines) + "\n")
    if write_data:
        digital.T.astype("<i2").tofile(folder / f"{name}.dat")
    return folder / f"{name}.hea"


def write_matlab_v4(path: Path, values: np.ndarray, truncate_to=None):
    """A MATLAB v4 file holding `val` as int16, the way PhysioNet's wfdb2mat writes CinC records."""
    rows, columns = values.shape
    header = np.array([30, rows, columns, 0, 4], dtype="<i4").tobytes() + b"val\0"
    data = header + np.asarray(values, dtype="<i2").T.tobytes()
    path.write_bytes(data if truncate_to is None else data[:truncate_to])


def write_cinc_record(folder: Path, name="E00001", values=None, signal_file=None, rate="500", write_mat=True):
    values = digital_ecg() if values is None else values
    signal_file = signal_file or f"{name}.mat"
    lines = [f"{name}.mat {values.shape[0]} {rate} {values.shape[1]} 05-May-2020 14:50:55"]
    lines += [f"{signal_file} 16x1+24 1000.0(0)/mV 16 0 0 0 0 {LEADS[i % 12]}" for i in range(values.shape[0])]
    lines += ["#Age: 50", "#Sex: Male", "#Dx: 426783006"]
    (folder / f"{name}.hea").write_text("\n".join(lines) + "\n")
    if write_mat:
        write_matlab_v4(folder / f"{name}.mat", values)
    return folder / f"{name}.hea"


@pytest.fixture
def outside(tmp_path):
    """A signal file outside the record folder (`tmp_path/records`), which readers must never open."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    write_matlab_v4(folder / "x.mat", digital_ecg())
    digital_ecg().T.astype("<i2").tofile(folder / "x.dat")
    return folder


@pytest.fixture
def records(tmp_path):
    folder = tmp_path / "records"
    folder.mkdir()
    return folder


# -- 1. signal files must stay inside the header's folder ---------------------------------------


@pytest.mark.parametrize("kind", ["mat", "dat"])
@pytest.mark.parametrize("how", ["relative", "absolute"])
def test_signal_file_outside_the_folder_is_refused(records, outside, kind, how):
    target = "../elsewhere/x." + kind if how == "relative" else str(outside / f"x.{kind}")
    if kind == "mat":
        header = write_cinc_record(records, signal_file=target, write_mat=False)
    else:
        header = write_dat_record(records, signal_file=target, write_data=False)
    with pytest.raises(ValueError, match="outside the header's folder") as error:
        read_ecg_file(header)
    assert str(header) in str(error.value)
    with pytest.raises(ValueError, match="outside the header's folder"):
        DBetaFeatureExtractor()(header)


@pytest.mark.parametrize("kind", ["mat", "dat"])
def test_symlinks_of_the_folder_are_followed_wherever_they_point(records, outside, kind):
    """The rule is on the name the header writes (checked above), not on where the folder's own entries
    point: git-annex / DataLad / DVC datasets keep every file as a link into an object store elsewhere."""
    (records / f"link.{kind}").symlink_to(outside / f"x.{kind}")
    if kind == "mat":
        header = write_cinc_record(records, signal_file="link.mat", write_mat=False)
    else:
        header = write_dat_record(records, signal_file="link.dat", write_data=False)
    record = read_ecg_file(header)
    np.testing.assert_allclose(record.signal, digital_ecg() / 1000.0, rtol=1e-6)
    # A link to a file of the same folder is fine too.
    (records / f"link.{kind}").unlink()
    (records / f"data.{kind}").write_bytes((outside / f"x.{kind}").read_bytes())
    (records / f"link.{kind}").symlink_to(records / f"data.{kind}")
    record = read_ecg_file(header)
    assert record.signal.shape == (12, 5000)


def test_hdf5_external_link_outside_is_refused(records, outside):
    h5py = pytest.importorskip("h5py")
    with h5py.File(outside / "data.hdf5", "w") as handle:
        handle["tracings"] = np.zeros((1, 4096, 12), np.float32)
    with h5py.File(records / "inside.hdf5", "w") as handle:
        handle["tracings"] = np.zeros((1, 4096, 12), np.float32)
    path = records / "links.hdf5"
    with h5py.File(path, "w") as handle:
        handle["tracings"] = h5py.ExternalLink(str(outside / "data.hdf5"), "tracings")
        handle["relative"] = h5py.ExternalLink("../elsewhere/data.hdf5", "tracings")
        handle["local"] = h5py.ExternalLink("inside.hdf5", "tracings")
    for dataset in ("tracings", "relative"):
        with pytest.raises(ValueError, match="stored in another file.*outside") as error:
            read_code_hdf5(path, dataset=dataset)
        assert str(path) in str(error.value)
    signals, _, _ = read_code_hdf5(path, dataset="local")
    assert signals.shape == (1, 12, 4096)


# -- 2. implausible rates and lengths: errors, not memory bombs -----------------------------------


@pytest.mark.parametrize("rate", ["0.02", "1e-9", "49", "20000", "inf"])
def test_header_sampling_rate_outside_the_range(records, rate):
    header = write_dat_record(records, rate=rate)
    with pytest.raises(ValueError, match="outside the accepted ECG range") as error:
        read_wfdb_record(header)
    assert str(header) in str(error.value)
    cinc = write_cinc_record(records, rate=rate)
    with pytest.raises(ValueError, match="outside the accepted ECG range"):
        read_ecg_file(cinc)


def test_accepted_rate_bounds(records):
    for rate in (MIN_SAMPLING_RATE, MAX_SAMPLING_RATE):
        record = read_wfdb_record(write_dat_record(records, rate=f"{rate:g}"))
        assert record.sampling_rate == rate


@pytest.mark.parametrize("claimed", [10**9, 2**40])
def test_header_claiming_a_huge_length_allocates_nothing(records, claimed):
    header = write_dat_record(records, header_samples=claimed)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="header disagrees with the data"):
            read_wfdb_record(header)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20


def _sparse_file(path: Path, size: int, head: bytes = b""):
    with open(path, "wb") as handle:
        handle.write(head)
        handle.truncate(size)


HOLTER_SAMPLES = 24 * 3600 * 500  # 24 hours at 500 Hz


@pytest.mark.parametrize("kind", ["dat", "mat"])
def test_holter_length_file_reads_only_the_window(records, kind):
    """A 24-hour, 12-lead file (1 GiB, sparse on disk) costs what its first seconds cost."""
    # The first 12 s hold an ECG (an all-zero, flat ECG is refused by the feature extractor); the
    # rest of the file is a hole.
    first = digital_ecg(12, 6000).T.astype("<i2").tobytes()
    if kind == "dat":
        header = write_dat_record(records, digital=digital_ecg(12, 10), header_samples=HOLTER_SAMPLES,
                                  write_data=False)
        _sparse_file(records / "rec.dat", 12 * 2 * HOLTER_SAMPLES, first)
    else:
        header = write_cinc_record(records, values=digital_ecg(12, 10), write_mat=False)
        text = header.read_text().replace(" 12 500 10 ", f" 12 500 {HOLTER_SAMPLES} ")
        header.write_text(text)
        head = np.array([30, 12, HOLTER_SAMPLES, 0, 4], dtype="<i4").tobytes() + b"val\0"
        _sparse_file(records / "E00001.mat", 24 + 12 * 2 * HOLTER_SAMPLES, head + first)
    tracemalloc.start()
    try:
        record = read_ecg_file(header, max_duration=12.0)
        values = DBetaFeatureExtractor()(header)["input_values"]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert record.signal.shape == (12, 6000)
    assert record.metadata["total_samples"] == HOLTER_SAMPLES
    assert values.shape == (1, 12, 5000)
    assert peak < 100 * 2**20


def test_max_duration_reads_a_prefix(fixtures_dir):
    for path in (fixtures_dir / "ludb" / "1.hea", fixtures_dir / "cinc2021" / "E07501.hea",
                 fixtures_dir / "cpsc2018" / "A1980.mat"):
        whole = read_ecg_file(path)
        part = read_ecg_file(path, max_duration=2.0)
        np.testing.assert_array_equal(part.signal, whole.signal[:, : int(2 * whole.sampling_rate)])
        assert part.metadata["total_samples"] == whole.num_samples
    with pytest.raises(ValueError, match="max_duration"):
        read_ecg_file(fixtures_dir / "ludb" / "1.hea", max_duration=0)


# -- 5. header disagreeing with the data ---------------------------------------------------------


def test_eleven_signals_over_a_twelve_signal_dat(records):
    header = write_dat_record(records, header_signals=11)  # 12 signals in the file
    with pytest.raises(ValueError, match="11 signal\\(s\\) x 5000 samples.*header disagrees with the data") as error:
        read_wfdb_record(header)
    assert "rec.dat has 120000 bytes" in str(error.value)


def test_eleven_signals_without_a_length_in_the_header(records):
    header = write_dat_record(records, digital=digital_ecg(12, 4999), header_signals=11)
    header.write_text(header.read_text().replace("rec 11 500 4999", "rec 11 500"))
    with pytest.raises(ValueError, match="not a whole number of 11-signal frames"):
        read_wfdb_record(header)


@pytest.mark.parametrize("cut", [2, 1000])
def test_truncated_dat(records, cut):
    header = write_dat_record(records)
    data = (records / "rec.dat").read_bytes()
    (records / "rec.dat").write_bytes(data[:-cut])
    with pytest.raises(ValueError, match="header disagrees with the data"):
        read_wfdb_record(header)


def test_dat_longer_than_the_header(records):
    header = write_dat_record(records, header_samples=4000)
    with pytest.raises(ValueError, match="120000 bytes.*96000 bytes"):
        read_wfdb_record(header)


def test_truncated_matlab_v4(records):
    header = write_cinc_record(records)
    write_matlab_v4(records / "E00001.mat", digital_ecg(), truncate_to=24 + 1000)
    with pytest.raises(ValueError, match="E00001.mat is truncated"):
        read_ecg_file(header)


def test_cinc_header_with_eleven_signals_over_twelve_rows(records):
    header = write_cinc_record(records, values=digital_ecg(11))
    write_matlab_v4(records / "E00001.mat", digital_ecg(12))
    with pytest.raises(ValueError, match="declares 11 signals, the signal files hold 12"):
        read_ecg_file(header)


@pytest.mark.parametrize("gain", ["1e-300/mV", "-200/mV", "nan/mV", "inf/mV", "1e-7/uV", "0.0005/mV"])
def test_bad_gains_are_errors(records, gain):
    header = write_dat_record(records, gain=gain)
    with pytest.raises(ValueError, match="gain .* a gain must be finite, positive and at least") as error:
        read_wfdb_record(header)
    assert str(header) in str(error.value)


def test_gain_zero_follows_the_wfdb_rule_with_a_warning(records):
    header = write_dat_record(records, gain="0/mV")
    with pytest.warns(UserWarning, match="gain 0 \\(uncalibrated\\).*200"):
        record = read_wfdb_record(header)
    np.testing.assert_allclose(record.signal, digital_ecg() / 200.0, rtol=1e-6)


def test_small_but_valid_gains(records):
    # 1 adu per uV = 1000 adu per mV; 0.01 adu per mV is coarse but physical.
    for gain, divisor in (("1/uV", 1000.0), ("0.01/mV", 0.01)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            record = read_wfdb_record(write_dat_record(records, gain=gain))
        np.testing.assert_allclose(record.signal, digital_ecg() / divisor, rtol=1e-6)


# -- 14. HDF5 and CPSC files with the wrong kind of data ------------------------------------------


def test_hdf5_string_data_names_the_file(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "strings.hdf5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("tracings", data=np.full((1, 4096, 12), "0.1", dtype=object),
                              dtype=h5py.string_dtype())
    with pytest.raises(ValueError, match="must hold real numbers") as error:
        read_code_hdf5(path)
    assert str(path) in str(error.value)


def test_hdf5_max_duration(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "ecg.hdf5"
    data = np.random.default_rng(0).normal(size=(2, 4096, 12)).astype(np.float32)
    with h5py.File(path, "w") as handle:
        handle["tracings"] = data
    signals, _, _ = read_code_hdf5(path, max_duration=1.0)
    np.testing.assert_array_equal(signals, data[:, :400].transpose(0, 2, 1))


def test_cpsc_string_data_names_the_file(tmp_path):
    path = tmp_path / "A0001.mat"
    scipy.io.savemat(path, {"ECG": {"sex": "Male", "age": 50, "data": np.array([["x"] * 10] * 12)}})
    with pytest.raises(ValueError, match="A0001.mat") as error:
        read_cpsc2018_mat(path)
    assert "real numbers" in str(error.value) or "(12, N)" in str(error.value)


def test_matlab_v5_val_without_header_limit(records):
    """A CinC record whose .mat is MATLAB v5 (scipy) is read whole and still checked."""
    header = write_cinc_record(records, write_mat=False)
    scipy.io.savemat(records / "E00001.mat", {"val": digital_ecg(12, 4000)})
    with pytest.raises(ValueError, match="header declares 5000 samples, the signal files hold 4000"):
        read_ecg_file(header)
    scipy.io.savemat(records / "E00001.mat", {"val": np.full((12, 5000), "a")})
    with pytest.raises(ValueError, match="E00001.mat: 'val' must be a 2-D real numeric matrix"):
        read_ecg_file(header)


def test_clean_records_still_read(records):
    record = read_ecg_file(write_cinc_record(records))
    np.testing.assert_allclose(record.signal, digital_ecg() / 1000.0, rtol=1e-6)
    record = read_ecg_file(write_dat_record(records))
    np.testing.assert_allclose(record.signal, digital_ecg() / 1000.0, rtol=1e-6)
    assert os.path.basename(record.metadata["name"]) == "rec"


def test_matlab_values_that_overflow_float32(records):
    header = write_cinc_record(records, write_mat=False)
    values = digital_ecg().astype(np.float64)
    values[3, 10] = 1e300
    head = np.array([0, 12, 5000, 0, 4], dtype="<i4").tobytes() + b"val\0"  # type 0: float64
    (records / "E00001.mat").write_bytes(head + values.T.astype("<f8").tobytes())
    with pytest.raises(ValueError, match="E00001.hea: signal 'aVR' overflows float32"):
        read_ecg_file(header)


def test_oversized_header_is_refused(records):
    header = write_dat_record(records)
    with open(header, "a") as handle:
        handle.write("# " + "x" * (1 << 20) + "\n")
    with pytest.raises(ValueError, match="more than the 1048576"):
        read_wfdb_record(header)


@pytest.mark.parametrize("with_length", [True, False])
def test_packed_format_212(records, with_length):
    wfdb = pytest.importorskip("wfdb")
    digital = digital_ecg(12, 5001).T.astype(np.int64) // 16  # 12-bit range
    wfdb.wrsamp("p212", fs=500, units=["mV"] * 12, sig_name=list(LEADS), d_signal=digital.astype(np.int16),
                fmt=["212"] * 12, adc_gain=[200.0] * 12, baseline=[0] * 12, write_dir=str(records))
    header = records / "p212.hea"
    if not with_length:
        lines = header.read_text().splitlines()
        lines[0] = "p212 12 500"
        header.write_text("\n".join(lines) + "\n")
    record = read_wfdb_record(header)
    np.testing.assert_allclose(record.signal, digital.T / 200.0, rtol=1e-6)
    part = read_wfdb_record(header, max_duration=2.0)
    np.testing.assert_array_equal(part.signal, record.signal[:, :1000])
    data = (records / "p212.dat").read_bytes()
    (records / "p212.dat").write_bytes(data[:-100])
    if with_length:
        with pytest.raises(ValueError, match="header disagrees with the data"):
            read_wfdb_record(header)


def test_whole_and_windowed_reads_share_the_header_checks(tmp_path):
    """A header naming `1é.dat` (present, harmless) that `wfdb` reads as `1.dat` (a link out of the
    folder, which as a link of the folder would be followed): the header is ambiguous, and the
    sliding-window reader refuses it exactly as the whole-record reader does."""
    from processing_dbeta import iter_ecg_windows

    fixtures = Path(__file__).resolve().parent / "fixtures" / "ludb"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.dat").write_bytes((fixtures / "1.dat").read_bytes())
    folder = tmp_path / "record"
    folder.mkdir()
    (folder / "1é.dat").write_bytes((fixtures / "1.dat").read_bytes())
    (folder / "1.dat").symlink_to(outside / "secret.dat")
    header = (fixtures / "1.hea").read_bytes().replace(b"1.dat", "1é.dat".encode()).replace(b"1 12", b"evil 12", 1)
    (folder / "evil.hea").write_bytes(header)

    errors = []
    for read in (lambda: read_wfdb_record(folder / "evil"), lambda: list(iter_ecg_windows(str(folder / "evil"), 2.0))):
        with pytest.raises(ValueError) as caught:
            read()
        errors.append(str(caught.value))
    assert errors[0] == errors[1]
    assert "evil.hea" in errors[0] and "ambiguous" in errors[0]
