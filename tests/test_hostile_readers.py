"""Hostile input to the readers and the feature extractor (external review, part A).

1. Symbolic links: a record's files may be links anywhere (git-annex / DataLad / DVC layouts);
   what a header may not do is *name* a file outside its folder.
2. Resource bounds: declared shapes and sizes are checked before anything is read (compressed
   MATLAB v5 bombs, HDF5 files declaring millions of exams, whole reads of Holter-length files).
3. Flat ECGs: an ECG whose every lead is flat is refused; some flat leads give one warning.

Real records come from `tests/fixtures`; every hostile file is written in `tmp_path`.
"""
import os
import shutil
import struct
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import scipy.io

import processing_dbeta
from processing_dbeta import (
    FLAT_LEAD_PEAK_TO_PEAK_MV,
    MAX_READ_ELEMENTS,
    STANDARD_LEAD_NAMES,
    DBetaFeatureExtractor,
    ECGRecord,
    iter_ecg_windows,
    read_code_hdf5,
    read_cpsc2018_mat,
    read_ecg_file,
    read_wfdb_record,
)


FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="module")
def feature_extractor():
    return DBetaFeatureExtractor()


def peak_traced(function):
    """(result or raised exception, peak bytes traced by tracemalloc while running `function`)."""
    tracemalloc.start()
    try:
        try:
            result = function()
        except Exception as error:  # noqa: BLE001 - returned for the caller to check
            result = error
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


# ------------------------------------------------------------------------------------------------
# 1. Symbolic links (git-annex / DataLad / DVC) and file names that leave the folder
# ------------------------------------------------------------------------------------------------


def annex_dataset(root: Path, sources: list[Path]) -> Path:
    """A git-annex-like layout: `root/dataset/<name>` are links into `root/.git/annex/objects/...`,
    files named by their content key (not by the record name)."""
    dataset = root / "dataset"
    dataset.mkdir(parents=True)
    for index, source in enumerate(sources):
        key = f"MD5E-s{source.stat().st_size}--{index:032x}{source.suffix}"
        store = root / ".git" / "annex" / "objects" / f"{index:02d}" / key
        store.mkdir(parents=True)
        shutil.copy(source, store / key)
        (dataset / source.name).symlink_to(os.path.relpath(store / key, dataset))
    return dataset


@pytest.mark.parametrize(
    "record, files",
    [
        ("ludb/1", ["ludb/1.hea", "ludb/1.dat"]),
        ("cinc2021/E07501", ["cinc2021/E07501.hea", "cinc2021/E07501.mat"]),
        ("cpsc2018/A1980.mat", ["cpsc2018/A1980.mat"]),
    ],
)
def test_git_annex_layout_reads_like_the_plain_files(tmp_path, feature_extractor, record, files):
    dataset = annex_dataset(tmp_path, [FIXTURES / name for name in files])
    linked = dataset / Path(record).name
    assert all((dataset / Path(name).name).is_symlink() for name in files)
    expected = read_ecg_file(FIXTURES / record)
    got = read_ecg_file(linked)
    np.testing.assert_array_equal(got.signal, expected.signal)
    assert got.lead_names == expected.lead_names and got.metadata["name"] == expected.metadata["name"]
    # The whole-record reader, the streaming windows and the feature extractor share the contract.
    [(start, window)] = list(iter_ecg_windows(linked, 10.0))
    assert start == 0.0
    np.testing.assert_array_equal(window.signal, expected.signal)
    np.testing.assert_array_equal(feature_extractor(linked)["input_values"], feature_extractor(expected)["input_values"])


def test_annex_content_not_fetched_is_a_clear_error(tmp_path):
    dataset = annex_dataset(tmp_path, [FIXTURES / "ludb" / "1.hea", FIXTURES / "ludb" / "1.dat"])
    shutil.rmtree(tmp_path / ".git" / "annex" / "objects" / "01")  # the .dat's content is not here
    with pytest.raises(ValueError, match="1.dat is a broken symbolic link .*fetch the file's content") as error:
        read_ecg_file(dataset / "1")
    assert "1.hea" in str(error.value)
    with pytest.raises(ValueError, match="broken symbolic link"):
        iter_ecg_windows(dataset / "1")
    shutil.rmtree(tmp_path / ".git" / "annex" / "objects" / "00")  # nor the header's
    with pytest.raises(ValueError, match="WFDB header .*1.hea is a broken symbolic link"):
        read_ecg_file(dataset / "1.hea")


def ludb_copy(folder: Path, signal_file: str) -> Path:
    """LUDB record 1 with a header that names `signal_file`; the data is also at `folder/1.dat`."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURES / "ludb" / "1.dat", folder / "1.dat")
    header = (FIXTURES / "ludb" / "1.hea").read_text().replace("1.dat ", f"{signal_file} ")
    (folder / "1.hea").write_text(header)
    return folder / "1.hea"


@pytest.mark.parametrize(
    "name",
    ["../1.dat", "/tmp/1.dat", "sub/1.dat", "./1.dat", "sub\\1.dat", "C:1.dat", "..", "x\x00.dat"],
)
def test_header_names_that_leave_the_folder_are_refused(tmp_path, name):
    # Every target exists (even `sub/1.dat`, inside the folder): the rule is on the name, not the target.
    (tmp_path / "rec" / "sub").mkdir(parents=True)
    shutil.copy(FIXTURES / "ludb" / "1.dat", tmp_path / "rec" / "sub" / "1.dat")
    shutil.copy(FIXTURES / "ludb" / "1.dat", tmp_path / "1.dat")
    header = ludb_copy(tmp_path / "rec", name)
    message = "points outside the header's folder"
    for read in (lambda: read_wfdb_record(header), lambda: iter_ecg_windows(header), lambda: DBetaFeatureExtractor()(header)):
        with pytest.raises(ValueError, match=message) as error:
            read()
        assert str(header) in str(error.value)


def test_cinc_header_naming_a_mat_outside_is_refused(tmp_path):
    shutil.copy(FIXTURES / "cinc2021" / "E07501.mat", tmp_path / "E07501.mat")
    folder = tmp_path / "rec"
    folder.mkdir()
    header = (FIXTURES / "cinc2021" / "E07501.hea").read_text().replace("E07501.mat 16", "../E07501.mat 16")
    (folder / "E07501.hea").write_text(header)
    with pytest.raises(ValueError, match="'../E07501.mat' points outside the header's folder"):
        read_ecg_file(folder / "E07501.hea")


def test_a_link_named_plainly_is_followed_but_a_wfdb_ambiguity_is_not(tmp_path):
    """A plain name that is a link out of the folder is the user's; a header that `wfdb` would read
    differently from us stays refused, whole and windowed, with one message."""
    outside = tmp_path / "store"
    outside.mkdir()
    shutil.copy(FIXTURES / "ludb" / "1.dat", outside / "blob")
    folder = tmp_path / "rec"
    header = ludb_copy(folder, "1.dat")
    (folder / "1.dat").unlink()
    (folder / "1.dat").symlink_to(outside / "blob")
    np.testing.assert_array_equal(read_wfdb_record(header).signal, read_wfdb_record(FIXTURES / "ludb" / "1").signal)

    (folder / "1é.dat").write_bytes(b"\0" * 120000)  # the name we would read; `wfdb` reads "1.dat"
    header.write_text(header.read_text().replace("1.dat ", "1é.dat "))
    errors = []
    for read in (lambda: read_wfdb_record(header), lambda: list(iter_ecg_windows(header))):
        with pytest.raises(ValueError, match="header is ambiguous") as error:
            read()
        errors.append(str(error.value))
    assert errors[0] == errors[1] and str(header) in errors[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_pipes_are_refused_without_opening_them(tmp_path):
    """A named pipe (created here) in place of a signal file or a CPSC file: never opened (it would block)."""
    header = ludb_copy(tmp_path / "rec", "1.dat")
    (tmp_path / "rec" / "1.dat").unlink()
    os.mkfifo(tmp_path / "rec" / "1.dat")
    with pytest.raises(ValueError, match="1.dat is not a regular file"):
        read_wfdb_record(header)
    os.mkfifo(tmp_path / "A0001.mat")
    with pytest.raises(ValueError, match="A0001.mat is not a regular file"):
        read_ecg_file(tmp_path / "A0001.mat")
    os.mkfifo(tmp_path / "code.hdf5")
    with pytest.raises(ValueError, match="code.hdf5 is not a regular file"):
        read_code_hdf5(tmp_path / "code.hdf5")


def test_hdf5_external_link_to_a_linked_file_of_the_folder_is_followed(tmp_path):
    h5py = pytest.importorskip("h5py")
    store = tmp_path / "store"
    store.mkdir()
    data = np.random.default_rng(0).normal(size=(2, 4096, 12)).astype(np.float32)
    with h5py.File(store / "blob", "w") as handle:
        handle["tracings"] = data
    folder = tmp_path / "exams"
    folder.mkdir()
    (folder / "part.hdf5").symlink_to(store / "blob")
    with h5py.File(folder / "index.hdf5", "w") as handle:
        handle["tracings"] = h5py.ExternalLink("part.hdf5", "tracings")
        handle["escape"] = h5py.ExternalLink("../store/blob", "tracings")
    signals, _, _ = read_code_hdf5(folder / "index.hdf5")
    np.testing.assert_array_equal(signals, data.transpose(0, 2, 1))
    with pytest.raises(ValueError, match="stored in another file.*points outside the HDF5 file's folder"):
        read_code_hdf5(folder / "index.hdf5", dataset="escape")


# ------------------------------------------------------------------------------------------------
# 2. Resource bounds: declared sizes are checked before reading
# ------------------------------------------------------------------------------------------------


def mat5_element(data_type: int, payload: bytes) -> bytes:
    return struct.pack("<II", data_type, len(payload)) + payload + b"\0" * (-len(payload) % 8)


def mat5_array_header(class_id: int, dims, name: str) -> bytes:
    return (
        mat5_element(6, struct.pack("<II", class_id, 0))
        + mat5_element(5, struct.pack(f"<{len(dims)}i", *dims))
        + mat5_element(1, name.encode())
    )


def write_mat5(path: Path, name: str, columns: int, cpsc: bool, compress: bool = True, data=None):
    """A valid MATLAB v5 file written piece by piece (nothing of the size it declares is held in memory):
    `val` (12 x columns, double), or CPSC's struct `ECG` {sex, age, data (12 x columns, double)}.
    The values are `data` (12 x columns) or zeros."""
    data_bytes = 12 * columns * 8
    matrix_head = mat5_array_header(6, (12, columns), "" if cpsc else name) + struct.pack("<II", 9, data_bytes)
    if cpsc:
        sex = mat5_element(14, mat5_array_header(4, (1, 4), "") + mat5_element(4, "Male".encode("utf-16-le")))
        age = mat5_element(14, mat5_array_header(6, (1, 1), "") + mat5_element(9, struct.pack("<d", 52.0)))
        fields = b"".join(field.ljust(32, b"\0") for field in (b"sex", b"age", b"data"))
        data_element_size = len(matrix_head) + data_bytes
        body_head = (
            mat5_array_header(2, (1, 1), name) + mat5_element(5, struct.pack("<i", 32)) + mat5_element(1, fields)
            + sex + age + struct.pack("<II", 14, data_element_size)
        )
        prefix = struct.pack("<II", 14, len(body_head) + data_element_size) + body_head + matrix_head
    else:
        prefix = struct.pack("<II", 14, len(matrix_head) + data_bytes) + matrix_head

    def chunks():
        yield prefix
        if data is not None:
            yield np.asarray(data, dtype="<f8").T.tobytes()  # column-major
            return
        zeros = bytes(1 << 20)
        for start in range(0, data_bytes, len(zeros)):
            yield zeros[: min(len(zeros), data_bytes - start)]

    head = b"MATLAB 5.0 MAT-file, written by tests/test_hostile_readers.py".ljust(116) + bytes(8) + b"\x00\x01IM"
    with open(path, "wb") as handle:
        handle.write(head)
        if not compress:
            for chunk in chunks():
                handle.write(chunk)
            return path
        compressor = zlib.compressobj(6)
        body = bytearray()
        for chunk in chunks():
            body += compressor.compress(chunk)
        body += compressor.flush()
        handle.write(struct.pack("<II", 15, len(body)) + body)
    return path


def test_mat5_writer_writes_what_scipy_reads(tmp_path):
    """The hand-written MATLAB v5 files below are real ones: scipy and our readers read the small ones."""
    values = read_ecg_file(FIXTURES / "cpsc2018" / "A1980.mat").signal.astype(np.float64)
    path = write_mat5(tmp_path / "A0001.mat", "ECG", 5000, cpsc=True, data=values)
    record = read_cpsc2018_mat(path)
    np.testing.assert_array_equal(record.signal, values.astype(np.float32))
    assert record.metadata["age"] == 52 and record.metadata["sex"] == "Male"
    np.testing.assert_array_equal(scipy.io.loadmat(path)["ECG"]["data"][0, 0], values)


# The size of the reported bomb: a ~290 kB compressed file declaring 12 x 3,000,000 doubles (288 MB).
BOMB_COLUMNS = 3_000_000


@pytest.fixture(scope="module")
def cpsc_bomb(tmp_path_factory):
    return write_mat5(tmp_path_factory.mktemp("bomb") / "A9999.mat", "ECG", BOMB_COLUMNS, cpsc=True)


def test_compressed_cpsc_bomb_is_refused_before_inflating(cpsc_bomb, feature_extractor):
    assert cpsc_bomb.stat().st_size < 400_000
    assert scipy.io.whosmat(str(cpsc_bomb)) == [("ECG", (1, 1), "struct")]  # a valid MATLAB file
    message = f"ECG.data is declared as a 12 x {BOMB_COLUMNS} double array"
    for read in (
        lambda: read_ecg_file(cpsc_bomb, max_duration=10.0),  # even for its first 10 s
        lambda: read_cpsc2018_mat(cpsc_bomb),
        lambda: feature_extractor(cpsc_bomb),
        lambda: iter_ecg_windows(cpsc_bomb),
    ):
        error, peak = peak_traced(read)
        assert isinstance(error, ValueError) and message in str(error) and str(cpsc_bomb) in str(error)
        assert peak < 20 * 2**20, f"{peak / 2**20:.0f} MiB traced before refusing"


def test_compressed_cinc_val_bomb_is_refused(tmp_path):
    write_mat5(tmp_path / "E00001.mat", "val", BOMB_COLUMNS, cpsc=False)
    header = ["E00001.mat 12 500 3000000"] + [f"E00001.mat 16 1000/mV 16 0 0 0 0 {lead}" for lead in STANDARD_LEAD_NAMES]
    (tmp_path / "E00001.hea").write_text("\n".join(header) + "\n")
    error, peak = peak_traced(lambda: read_ecg_file(tmp_path / "E00001.hea", max_duration=10.0))
    assert isinstance(error, ValueError)
    assert f"'val' is declared as a 12 x {BOMB_COLUMNS} double array" in str(error) and "E00001.mat" in str(error)
    assert peak < 20 * 2**20


def test_uncompressed_mat5_within_the_limits_still_reads(tmp_path):
    values = read_ecg_file(FIXTURES / "cinc2021" / "E07501.hea")
    digital = np.round(values.signal.astype(np.float64) * 1000)
    write_mat5(tmp_path / "E07501.mat", "val", 5000, cpsc=False, compress=False, data=digital)
    shutil.copy(FIXTURES / "cinc2021" / "E07501.hea", tmp_path / "E07501.hea")
    np.testing.assert_allclose(read_ecg_file(tmp_path / "E07501.hea").signal, values.signal, atol=1e-6)


@pytest.mark.parametrize("damage", ["data element larger than dims", "field larger than struct", "truncated"])
def test_damaged_mat5_declarations_are_refused(tmp_path, damage):
    values = read_ecg_file(FIXTURES / "cpsc2018" / "A1980.mat").signal.astype(np.float64)
    path = write_mat5(tmp_path / "A0001.mat", "ECG", 5000, cpsc=True, compress=False, data=values)
    raw = bytearray(path.read_bytes())
    data_tag = raw.index(struct.pack("<II", 9, 12 * 5000 * 8))
    if damage == "data element larger than dims":
        raw[data_tag + 4 : data_tag + 8] = struct.pack("<I", 2**31 - 8)
        match = "ECG.data is declared as a 12 x 5000 double array but its data element holds"
    elif damage == "field larger than struct":
        field_tag = raw.rindex(struct.pack("<I", 14), 0, data_tag)
        raw[field_tag + 4 : field_tag + 8] = struct.pack("<I", 2**31 - 8)
        match = "field 'data' of 'ECG' declares"
    else:
        raw = raw[: len(raw) // 2]
        match = "truncated or damaged"
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=match) as error:
        read_cpsc2018_mat(path)
    assert str(path) in str(error.value)


HOLTER_SAMPLES = 24 * 3600 * 500


def sparse_holter(folder: Path, kind: str) -> Path:
    """24 hours of 12 leads at 500 Hz (a sparse file): LUDB record 1's 10 s, then a hole."""
    first = read_wfdb_record(FIXTURES / "ludb" / "1")
    digital = np.round(first.signal * 1000).astype("<i2")
    if kind == "dat":
        with open(folder / "holter.dat", "wb") as handle:
            handle.write(digital.T.tobytes())
            handle.truncate(12 * 2 * HOLTER_SAMPLES)
        lines = [f"holter 12 500 {HOLTER_SAMPLES}"] + [f"holter.dat 16 1000/mV 16 0 0 0 0 {n}" for n in STANDARD_LEAD_NAMES]
    else:
        head = np.array([30, 12, HOLTER_SAMPLES, 0, 4], dtype="<i4").tobytes() + b"val\0"
        with open(folder / "holter.mat", "wb") as handle:
            handle.write(head + digital.T.tobytes())
            handle.truncate(len(head) + 12 * 2 * HOLTER_SAMPLES)
        lines = [f"holter.mat 12 500 {HOLTER_SAMPLES}"] + [
            f"holter.mat 16x1+24 1000/mV 16 0 0 0 0 {n}" for n in STANDARD_LEAD_NAMES
        ]
    (folder / "holter.hea").write_text("\n".join(lines) + "\n")
    return folder / "holter.hea"


@pytest.mark.parametrize("kind", ["dat", "mat"])
def test_holter_whole_read_is_refused_but_parts_and_windows_stream(tmp_path, kind):
    header = sparse_holter(tmp_path, kind)
    error, peak = peak_traced(lambda: read_ecg_file(header))
    assert isinstance(error, ValueError) and f"MAX_READ_ELEMENTS ({MAX_READ_ELEMENTS})" in str(error)
    assert f"reading {HOLTER_SAMPLES} samples x 12 leads" in str(error) and str(header) in str(error)
    assert peak < 20 * 2**20
    expected = np.round(read_wfdb_record(FIXTURES / "ludb" / "1").signal * 1000) / 1000
    record, peak = peak_traced(lambda: read_ecg_file(header, max_duration=10.0))
    np.testing.assert_allclose(record.signal, expected, atol=1e-6)
    assert peak < 20 * 2**20
    # Windows stream block by block (MATLAB v4 `.mat` files included): the first costs one block.
    first, peak = peak_traced(lambda: next(iter_ecg_windows(header, 10.0)))
    np.testing.assert_allclose(first[1].signal, expected, atol=1e-6)
    assert first[0] == 0.0 and first[1].metadata["total_samples"] == HOLTER_SAMPLES
    assert peak < 100 * 2**20


def test_hdf5_declaring_twenty_million_exams(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "exams.hdf5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("tracings", shape=(20_000_000, 4096, 12), dtype="f4", chunks=(1, 4096, 12))
        handle["tracings"][7] = np.full((4096, 12), 0.5, np.float32)
    assert path.stat().st_size < 1_000_000
    error, peak = peak_traced(lambda: read_code_hdf5(path))
    assert isinstance(error, ValueError)
    assert "reading exams 0:20000000" in str(error) and "MAX_READ_ELEMENTS" in str(error) and str(path) in str(error)
    assert peak < 20 * 2**20
    # One exam reads only that exam.
    (signals, names, rate), peak = peak_traced(lambda: read_code_hdf5(path, start=7, stop=8))
    assert signals.shape == (1, 12, 4096) and np.all(signals == 0.5) and rate == 400.0
    assert peak < 20 * 2**20


def test_hdf5_long_exam_reads_only_the_samples_asked_for(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "long.hdf5"
    first = read_wfdb_record(FIXTURES / "ludb" / "1").signal[:, :4096]
    with h5py.File(path, "w") as handle:
        tracings = handle.create_dataset("tracings", shape=(1, 10_000_000, 12), dtype="f4", chunks=(1, 4096, 12))
        tracings[0, :4096] = first.T
    (signals, _, _), peak = peak_traced(lambda: read_code_hdf5(path, start=0, stop=1, max_duration=10.0))
    np.testing.assert_array_equal(signals[0], first[:, :4000])
    assert peak < 20 * 2**20
    with pytest.raises(ValueError, match="1 x 10000000 samples x 12 leads = 120000000 values\\) is more than MAX_READ_ELEMENTS"):
        read_code_hdf5(path, start=0, stop=1)


def test_hdf5_huge_chunks_and_bad_exam_ranges(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "chunky.hdf5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("tracings", shape=(1, 2**23, 12), dtype="f4", chunks=(1, 2**23, 12))
        handle["small"] = np.zeros((3, 4096, 12), np.float32)
    with pytest.raises(ValueError, match="stored in chunks of .*402653184 bytes"):
        read_code_hdf5(path, max_duration=10.0)
    for start, stop, kind, match in (
        (3, None, ValueError, "exams 3:None are not a range of the 3 exams"),
        (0, 4, ValueError, "exams 0:4 are not a range"),
        (-1, None, ValueError, "exams -1:None are not a range"),
        (2, 2, ValueError, "exams 2:2 are not a range"),
        (True, None, TypeError, "start must be an exam index"),
        (0, 1.5, TypeError, "stop must be an exam index"),
    ):
        with pytest.raises(kind, match=match):
            read_code_hdf5(path, start=start, stop=stop, dataset="small")
    signals, _, _ = read_code_hdf5(path, start=np.int64(1), stop=3, dataset="small")
    assert signals.shape == (2, 12, 4096)


def test_wfdb_without_length_is_bounded_by_its_file_size(tmp_path, monkeypatch):
    """Without the length in the header a record is decoded whole: its size is bounded first."""
    header = ludb_copy(tmp_path, "1.dat")
    header.write_text(header.read_text().replace("1 12 500 5000", "1 12 500", 1))
    np.testing.assert_array_equal(read_wfdb_record(header).signal, read_wfdb_record(FIXTURES / "ludb" / "1").signal)
    monkeypatch.setattr(processing_dbeta, "MAX_READ_ELEMENTS", 12 * 4999)
    with pytest.raises(ValueError, match="up to 5000 samples x 12 signals.*can only be read whole"):
        read_wfdb_record(header)


# ------------------------------------------------------------------------------------------------
# 3. Flat ECGs
# ------------------------------------------------------------------------------------------------


def ludb_record(number=1) -> ECGRecord:
    return read_wfdb_record(FIXTURES / "ludb" / str(number))


def flat_warnings(caught):
    return [str(warning.message) for warning in caught if "flat lead" in str(warning.message)]


@pytest.mark.parametrize("value", [0.0, 0.7])
def test_all_flat_array_is_refused(feature_extractor, value):
    ecg = np.full((12, 5000), value, np.float32)
    with pytest.raises(ValueError, match="The ECG: every lead is flat \\(peak-to-peak under 10 uV"):
        feature_extractor(ecg, sampling_rate=500)


def test_all_flat_real_record_names_the_record(feature_extractor, tmp_path):
    record = ludb_record()
    flat = ECGRecord(np.repeat(record.signal[:, :1], 5000, axis=1), record.lead_names, 500.0, {"name": "LUDB-1-flat"})
    with pytest.raises(ValueError, match="record LUDB-1-flat: every lead is flat"):
        feature_extractor(flat)
    # A file of zeros: the message names the file.
    header = ludb_copy(tmp_path, "1.dat")
    (tmp_path / "1.dat").write_bytes(bytes(12 * 2 * 5000))
    with pytest.raises(ValueError, match=f"{header}: every lead is flat"):
        feature_extractor(header)


def test_volts_passed_as_millivolts_are_flat(feature_extractor):
    volts = ludb_record().signal / 1000
    with pytest.raises(ValueError, match="every lead is flat.*far smaller than the stated units"):
        feature_extractor(volts, sampling_rate=500, lead_names=ludb_record().lead_names)
    assert feature_extractor(volts, sampling_rate=500, units="V")["input_values"].shape == (1, 12, 5000)


def test_some_flat_leads_warn_once_and_are_scored_as_given(feature_extractor):
    record = ludb_record()
    signal = record.signal.copy()
    signal[[7, 11]] = 0.0  # v2 and v6 disconnected
    partly = ECGRecord(signal, record.lead_names, 500.0, {"name": "LUDB-1"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        output = feature_extractor(partly)["input_values"]
    messages = flat_warnings(caught)
    assert len(messages) == 1
    assert messages[0].startswith("record LUDB-1: flat lead(s) ['V2', 'V6']")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = feature_extractor(signal, sampling_rate=500, lead_names=record.lead_names)["input_values"]
    np.testing.assert_array_equal(output, expected)
    assert np.all(output[0, 7] == 0) and np.all(output[0, 11] == 0)  # MIMIC order: V2 is 7, V6 is 11


def test_absent_leads_are_not_flat_leads(feature_extractor):
    record = ludb_record()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        six = feature_extractor(record.signal[:6], sampling_rate=500, lead_names=record.lead_names[:6])
        eight = feature_extractor(record.signal[[0, 1, 6, 7, 8, 9, 10, 11]], sampling_rate=500,
                                  lead_names=[record.lead_names[i] for i in (0, 1, 6, 7, 8, 9, 10, 11)])
        one = feature_extractor(record.signal[1:2], sampling_rate=500, lead_names=["II"])
    assert flat_warnings(caught) == []
    assert np.all(six["input_values"][0, 6:] == 0) and np.all(one["input_values"][0, [0, 2, 3, 4, 5]] == 0)
    assert eight["input_values"].shape == (1, 12, 5000)
    with pytest.raises(ValueError, match="every lead is flat"):
        feature_extractor(np.zeros((1, 5000)), sampling_rate=500, lead_names=["II"])


def test_flat_threshold_and_batches(feature_extractor):
    rng = np.random.default_rng(0)
    record = ludb_record()
    quiet = rng.uniform(-1, 1, size=(12, 5000)) * FLAT_LEAD_PEAK_TO_PEAK_MV * 0.4  # 8 uV peak-to-peak
    with pytest.raises(ValueError, match="every lead is flat"):
        feature_extractor(quiet, sampling_rate=500)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        feature_extractor(quiet * 3, sampling_rate=500)  # 24 uV: small, but not flat
    batch = np.stack([record.signal, np.zeros_like(record.signal), record.signal])
    with pytest.raises(ValueError, match="ECG 1 of the batch: every lead is flat"):
        feature_extractor(batch, sampling_rate=500, lead_names=record.lead_names)
    with pytest.raises(ValueError, match="ECG 1 of the batch \\(record flat\\): every lead is flat"):
        feature_extractor([record, ECGRecord(np.zeros((12, 5000), np.float32), record.lead_names, 500.0, {"name": "flat"})])


def test_record_units_cannot_be_contradicted(feature_extractor):
    record = ludb_record()
    with pytest.raises(ValueError, match="record 1: units='uV' contradicts the record, whose signal is in millivolts"):
        feature_extractor(record, units="uV")
    with pytest.raises(ValueError, match="units='uV' contradicts the record"):
        feature_extractor(FIXTURES / "ludb" / "1", units="uV")
    np.testing.assert_array_equal(
        feature_extractor(record, units="mV")["input_values"], feature_extractor(record)["input_values"]
    )


def test_windows_of_real_data_cover_the_tail(shared_real_data_dir):
    """Optional real data (CPSC 2018 recordings of 10-19 s): the tail is a window ending with the record."""
    if shared_real_data_dir is None:
        pytest.skip("shared real data not available")
    path = shared_real_data_dir / "cpsc2018" / "records" / "A1984.mat"
    if not path.is_file():
        pytest.skip("A1984.mat not available")
    record = read_ecg_file(path)
    windows = list(iter_ecg_windows(path, 10.0))
    assert record.duration == 19.0 and [start for start, _ in windows] == [0.0, 9.0]
    np.testing.assert_array_equal(windows[1][1].signal, record.signal[:, -5000:])
    assert [start for start, _ in iter_ecg_windows(path, 10.0, 4.0)] == [0.0, 4.0, 8.0, 9.0]
