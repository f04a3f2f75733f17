"""`dbeta` command line against hostile names and option mixes (CSV injection, clashing outputs,
ignored options, a record that fails half-way through its windows)."""

import csv
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from zero_shot_utils import LUDB_FIXTURES, copy_records

from dbeta.cli import main
from dbeta.files import formula_safe


def rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


@pytest.mark.parametrize(
    "cell, expected",
    [
        ("=cmd|' /C calc'!A1", "'=cmd|' /C calc'!A1"),
        ("+2+3", "'+2+3"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("-0.25", "-0.25"),  # a number stays a number
        ("1e-3", "1e-3"),
        ("sinus rhythm", "sinus rhythm"),
        (0.5, 0.5),
    ],
)
def test_formula_safe_cells(cell, expected):
    assert formula_safe(cell) == expected


def test_record_names_and_labels_cannot_become_formulas(model_folder, tmp_path):
    records = tmp_path / "records"
    copy_records(LUDB_FIXTURES, records / "=cmd|calc!A1", ["1"])
    shutil.copy(LUDB_FIXTURES / "2.hea", records / "=cmd|calc!A1" / "@evil.hea")
    header = (records / "=cmd|calc!A1" / "@evil.hea").read_text().replace("2.dat", "@evil.dat").replace("2 12", "@evil 12", 1)
    (records / "=cmd|calc!A1" / "@evil.hea").write_text(header)
    (records / "=cmd|calc!A1" / "@evil.dat").write_bytes((LUDB_FIXTURES / "2.dat").read_bytes()[:100])  # damaged
    scores, errors = tmp_path / "scores.csv", tmp_path / "errors.csv"
    status = main(
        ["classify", str(records), "--model", str(model_folder), "--labels", "=2+3", "AFIB",
         "--output", str(scores), "--errors", str(errors), "--no_progress"]
    )  # fmt: skip
    assert status == 1  # one record scored, one skipped
    table = rows(scores)
    assert table[0] == ["record", "'=2+3", "AFIB"]
    assert table[1][0] == "'=cmd|calc!A1/1"
    assert 0.0 <= float(table[1][1]) <= 1.0
    error_rows = rows(errors)
    assert error_rows[1][0] == "'=cmd|calc!A1/@evil"
    assert all(not cell.startswith(("=", "+", "@")) for row in table + error_rows for cell in row)


def test_per_window_and_output_must_differ(model_folder, tmp_path, capsys):
    copy_records(LUDB_FIXTURES, tmp_path / "records", ["1"])
    same = tmp_path / "scores.csv"
    status = main(
        ["classify", str(tmp_path / "records"), "--model", str(model_folder), "--labels", "AFIB",
         "--window", "sliding", "--per_window", str(same), "--output", str(same)]
    )  # fmt: skip
    assert status == 2
    assert "--per_window and --output are the same file" in capsys.readouterr().err
    assert not same.exists()


@pytest.mark.parametrize(
    "command, options, needed",
    [
        ("classify", ["--labels", "AFIB", "--window_stride", "5"], "--window sliding"),
        ("classify", ["--labels", "AFIB", "--aggregation", "max"], "--window sliding"),
        ("classify", ["--labels", "AFIB", "--per_window", "w.csv"], "--window sliding"),
        ("embed", ["--window_stride", "5"], "--windows"),
    ],
)
def test_window_options_without_windows_are_refused(model_folder, tmp_path, capsys, command, options, needed):
    copy_records(LUDB_FIXTURES, tmp_path / "records", ["1"])
    output = tmp_path / ("out.csv" if command == "classify" else "out.parquet")
    options = [str(tmp_path / option) if option.endswith(".csv") else option for option in options]
    status = main([command, str(tmp_path / "records"), "--model", str(model_folder), *options, "--output", str(output)])
    assert status == 2
    assert f"only apply with {needed}" in capsys.readouterr().err
    assert not output.exists()


def test_a_record_failing_mid_way_leaves_no_windows(model_folder, tmp_path):
    """30 s record whose third 10 s window holds WFDB's missing-sample value (read as NaN): it is
    reported as skipped, and none of its windows reach the Parquet file."""
    records = tmp_path / "records"
    copy_records(LUDB_FIXTURES, records, ["1"])
    digital = np.fromfile(LUDB_FIXTURES / "1.dat", dtype="<i2").reshape(5000, 12)
    long = np.concatenate([digital, digital, digital])
    long[10500:10600, 3] = -32768  # format 16's "no sample" marker, in the third window
    long.astype("<i2").tofile(records / "gap.dat")
    header = (LUDB_FIXTURES / "1.hea").read_text().replace("1.dat", "gap.dat").replace("1 12 500 5000", "gap 12 500 15000", 1)
    (records / "gap.hea").write_text(header)
    output, errors = tmp_path / "windows.parquet", tmp_path / "errors.csv"
    status = main(
        ["embed", str(records), "--model", str(model_folder), "--windows", "--output", str(output),
         "--errors", str(errors), "--no_progress", "--batch_size", "1"]  # windows 1-2 embedded before 3 fails
    )  # fmt: skip
    assert status == 1  # one record written, one skipped
    table = pq.read_table(output).to_pydict()
    assert set(table["record"]) == {"1"}
    assert [row[0] for row in rows(errors)[1:]] == ["gap"]


def test_a_small_hdf5_file_declaring_millions_of_exams_is_one_skipped_record(model_folder, tmp_path, capsys):
    import h5py

    records = tmp_path / "records"
    records.mkdir()
    with h5py.File(records / "huge.hdf5", "w") as handle:  # a few kB on disk: nothing is allocated
        handle.create_dataset("tracings", shape=(2_000_000, 4096, 12), dtype="float32", chunks=(1, 4096, 12))
    assert (records / "huge.hdf5").stat().st_size < 100_000
    output = tmp_path / "scores.csv"
    status = main(["classify", str(records), "--model", str(model_folder), "--labels", "AFIB", "--output", str(output), "--no_progress"])
    assert status == 2 and not output.exists()
    assert "split the file" in capsys.readouterr().err


def test_a_two_hour_record_reads_only_its_first_window(model_folder, tmp_path):
    """12 leads x 2 h at 500 Hz is more than a whole read may take; the CLI reads the model's window
    and reports the recording's real duration."""
    records = tmp_path / "records"
    records.mkdir()
    digital = np.fromfile(LUDB_FIXTURES / "1.dat", dtype="<i2").reshape(5000, 12)
    total = 2 * 3600 * 500
    with open(records / "holter.dat", "wb") as handle:
        handle.write(np.concatenate([digital, digital]).astype("<i2").tobytes())  # 20 s of real ECG
        handle.truncate(total * 12 * 2)  # the rest is sparse
    header = (LUDB_FIXTURES / "1.hea").read_text().replace("1.dat", "holter.dat").replace("1 12 500 5000", f"holter 12 500 {total}", 1)
    (records / "holter.hea").write_text(header)
    output = tmp_path / "embeddings.parquet"
    status = main(["embed", str(records), "--model", str(model_folder), "--output", str(output), "--no_progress"])
    assert status == 0
    table = pq.read_table(output).to_pydict()
    assert table["record"] == ["holter"] and table["duration_s"] == [7200.0]
