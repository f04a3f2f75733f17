"""MIMIC-IV-ECG preparation on hostile and damaged input (issue 10: items 1, 6, 9, 13).

Every bad input is built here: paths and headers pointing outside ``--mimic_root``, infinite and
float32-overflowing values, constant non-zero leads, studies listed twice, repeated measurement
rows, malformed CSVs, and a preparation killed while its workers run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

wfdb = pytest.importorskip("wfdb")
datasets = pytest.importorskip("datasets")

import processing_dbeta  # noqa: E402
from dbeta.train.data import mimic_iv_ecg  # noqa: E402
from dbeta.train.demo.make_demo_corpus import MIMIC_LEAD_ORDER, make_demo_corpus, mimic_relative_path, simulate_ecg  # noqa: E402
from dbeta.train.data.mimic_iv_ecg import SkipRecord, convert_record, prepare_mimic_iv_ecg, read_study_index  # noqa: E402
from test_data_mimic_iv_ecg import _append_study  # noqa: E402

NUM_VALID = 8
OUTSIDE_STUDIES = {
    "dotdot_path": 39100001,
    "absolute_path": 39100002,
    "symlinked_header": 39100003,
    "header_dotdot_signal_file": 39100004,
    "header_absolute_signal_file": 39100005,
}
CONSTANT_LEAD_STUDY = 39100010
INFINITE_STUDY = 39100011
OVERFLOW_STUDY = 39100012


def _signal(seed=0):
    return simulate_ecg(np.random.default_rng(seed), ["sinus_rhythm"]).signal


def _write_outside_record(folder: Path, study_id: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(
        str(study_id), fs=500, units=["mV"] * 12, sig_name=list(MIMIC_LEAD_ORDER), p_signal=_signal(1).T.astype(np.float64),
        fmt=["16"] * 12, adc_gain=[200.0] * 12, baseline=[0] * 12, write_dir=str(folder),
    )


def _list_study(root: Path, subject_id: int, study_id: int, path: str, report=("Sinus rhythm",)) -> None:
    records = pd.read_csv(root / "record_list.csv", dtype=str)
    records.loc[len(records)] = [str(subject_id), str(study_id), str(study_id), "2150-01-01 10:00:00", path]
    records.to_csv(root / "record_list.csv", index=False)
    measurements = pd.read_csv(root / "machine_measurements.csv", dtype=str)
    row = {"subject_id": str(subject_id), "study_id": str(study_id), **{f"report_{i}": line for i, line in enumerate(report)}}
    pd.concat([measurements, pd.DataFrame([row])], ignore_index=True).to_csv(root / "machine_measurements.csv", index=False)


def _retarget_signal_file(header: Path, new_name: str) -> None:
    """Rewrite every signal line's file field (first token) of a header written by wfdb."""
    lines = header.read_text().splitlines()
    lines = [lines[0]] + [" ".join([new_name, *line.split()[1:]]) for line in lines[1:13]] + lines[13:]
    header.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A small corpus with one study per bad case, prepared once (records read in this process)."""
    base = tmp_path_factory.mktemp("hostile")
    root = make_demo_corpus(base / "mimic", num_records=NUM_VALID, num_subjects=4, seed=3)
    outside = base / "outside"  # a sibling of the root: nothing here may be read

    # Item 1: record_list.csv paths that leave the root.
    _write_outside_record(outside, OUTSIDE_STUDIES["dotdot_path"])
    _list_study(root, 19100001, OUTSIDE_STUDIES["dotdot_path"], f"../outside/{OUTSIDE_STUDIES['dotdot_path']}")
    _write_outside_record(outside, OUTSIDE_STUDIES["absolute_path"])
    _list_study(root, 19100002, OUTSIDE_STUDIES["absolute_path"], str(outside / str(OUTSIDE_STUDIES["absolute_path"])))
    study = OUTSIDE_STUDIES["symlinked_header"]
    _write_outside_record(outside, study)
    relative = mimic_relative_path(19100003, study)
    (root / relative).parent.mkdir(parents=True)
    os.symlink(outside / f"{study}.hea", root / f"{relative}.hea")
    os.symlink(outside / f"{study}.dat", root / f"{relative}.dat")
    _list_study(root, 19100003, study, relative)
    # Headers inside the root whose signal-file field points outside it.
    for subject_id, key, name in [
        (19100004, "header_dotdot_signal_file", "../../../../../outside/{study}.dat"),
        (19100005, "header_absolute_signal_file", str(outside) + "/{study}.dat"),
    ]:
        study = OUTSIDE_STUDIES[key]
        _write_outside_record(outside, study)
        _append_study(root, subject_id, study, _signal(2), MIMIC_LEAD_ORDER, 500, ["Sinus rhythm"])
        relative = mimic_relative_path(subject_id, study)
        _retarget_signal_file(root / f"{relative}.hea", name.format(study=study))
        (root / f"{relative}.dat").unlink()

    # Item 6: a lead held at a constant non-zero level (0.305 mV: read back as float32, its
    # standard deviation is 3e-8, not 0, so a `std == 0` test let it through).
    constant = _signal(3)
    constant[7] = 0.305
    _append_study(root, 19100010, CONSTANT_LEAD_STUDY, constant, MIMIC_LEAD_ORDER, 500, ["Sinus rhythm"])
    # Item 6: records the (patched) reader returns with +inf, and with finite 1e300 values.
    for subject_id, study in [(19100011, INFINITE_STUDY), (19100012, OVERFLOW_STUDY)]:
        _append_study(root, subject_id, study, _signal(4), MIMIC_LEAD_ORDER, 500, ["Sinus rhythm"])
    # Item 6: a study listed twice under its subject, and again under another subject.
    records = pd.read_csv(root / "record_list.csv", dtype=str)
    first = records.iloc[0]
    duplicate_same = first.copy()
    duplicate_other = first.copy()
    duplicate_other["subject_id"] = "19100099"
    records = pd.concat([records, pd.DataFrame([duplicate_same, duplicate_other])], ignore_index=True)
    records.to_csv(root / "record_list.csv", index=False)
    # Item 6: a repeated machine_measurements.csv row (the "Internal error" after all the work).
    measurements = pd.read_csv(root / "machine_measurements.csv", dtype=str)
    pd.concat([measurements, measurements.iloc[[1]]], ignore_index=True).to_csv(root / "machine_measurements.csv", index=False)

    reader = processing_dbeta.read_wfdb_record

    def reader_with_bad_values(path, max_duration=None):  # the preparation reads the first 10 s only
        record = reader(path, max_duration=max_duration)
        name = Path(path).name
        if name in (str(INFINITE_STUDY), str(OVERFLOW_STUDY)):
            signal_ = record.signal.astype(np.float64)
            signal_[5, 100] = np.inf if name == str(INFINITE_STUDY) else 1e300
            record.signal = signal_
        return record

    output = base / "prepared"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(processing_dbeta, "read_wfdb_record", reader_with_bad_values)
        summary = prepare_mimic_iv_ecg(root, output, num_proc=1, val_fraction=0.5, seed=1, shard_size=4, progress=False)
    return root, output, summary, int(first["study_id"])


def _skipped(output):
    return pd.read_csv(output / "skipped.csv")


def test_paths_outside_the_root_are_skipped_and_never_read(hostile):
    _, output, summary, _ = hostile
    skipped = _skipped(output)
    reasons = dict(zip(skipped["study_id"], skipped["reason"]))
    for case, study in OUTSIDE_STUDIES.items():
        assert reasons.get(study) == "path_outside_root", case
    assert summary.skipped_by_reason["path_outside_root"] == len(OUTSIDE_STUDIES)
    details = " ".join(skipped.loc[skipped["reason"] == "path_outside_root", "detail"])
    assert "outside" in details
    data = datasets.load_from_disk(str(output))
    kept = set(data["train"]["study_id"]) | set(data["validation"]["study_id"])
    assert not kept & set(OUTSIDE_STUDIES.values())


def test_constant_infinite_and_overflowing_leads_are_skipped(hostile):
    _, output, summary, _ = hostile
    reasons = dict(zip(_skipped(output)["study_id"], _skipped(output)["reason"]))
    assert reasons[CONSTANT_LEAD_STUDY] == "flat_lead"
    assert reasons[INFINITE_STUDY] == "infinite_values"
    assert reasons[OVERFLOW_STUDY] == "infinite_values"
    assert summary.skipped_by_reason["infinite_values"] == 2
    data = datasets.load_from_disk(str(output))
    for split in data:
        gains = np.asarray(data[split].with_format("numpy")["ecg_gain"])
        assert np.isfinite(gains).all() and (gains > 0).all()


def test_duplicate_studies_kept_once_and_duplicate_measurements_counted(hostile):
    root, output, summary, duplicated_study = hostile
    skipped = _skipped(output)
    duplicates = skipped[skipped["reason"] == "duplicate_study"]
    assert list(duplicates["study_id"]) == [duplicated_study, duplicated_study]
    assert summary.skipped_by_reason["duplicate_study"] == 2
    assert summary.duplicate_measurement_rows == 1
    data = datasets.load_from_disk(str(output))
    train, validation = list(data["train"]["study_id"]), list(data["validation"]["study_id"])
    everything = train + validation
    assert len(everything) == len(set(everything))
    assert everything.count(duplicated_study) == 1
    assert not set(data["train"]["subject_id"]) & set(data["validation"]["subject_id"])
    # Every listed row is accounted for: kept + skipped = listed, and the valid studies are all kept.
    assert summary.records_listed == len(pd.read_csv(root / "record_list.csv"))
    assert summary.records_kept + summary.records_skipped == summary.records_listed
    assert summary.records_kept == NUM_VALID
    assert summary.subjects_by_split["train"] == len(set(data["train"]["subject_id"]))
    card = (output / "README.md").read_text()
    assert "| `duplicate_study` | 2 |" in card and "| `path_outside_root` | 5 |" in card


def _record(signal_, fs=500.0):
    return processing_dbeta.ECGRecord(signal=signal_, lead_names=list(MIMIC_LEAD_ORDER), sampling_rate=fs)


def test_convert_record_flat_and_non_finite_thresholds():
    signal_ = _signal(5).astype(np.float32)
    convert_record(_record(signal_))
    for value in (0.0, 0.305, -0.7, 0.1):
        constant = signal_.copy()
        constant[2] = np.float32(value)
        assert value == 0 or constant[2].std() > 0  # what the old `std == 0` test missed
        with pytest.raises(SkipRecord) as error:
            convert_record(_record(constant))
        assert error.value.reason == "flat_lead" and "III" in error.value.detail
    # 5 uV steps (MIMIC's resolution): one step of noise is flat, two steps (10 uV) are not.
    tiny = signal_.copy()
    tiny[2] = np.resize([0.0, 0.005], tiny.shape[1]).astype(np.float32)
    with pytest.raises(SkipRecord, match="flat_lead"):
        convert_record(_record(tiny))
    tiny[2] = np.resize([-0.005, 0.0, 0.005], tiny.shape[1]).astype(np.float32)
    convert_record(_record(tiny))
    for bad in (np.inf, -np.inf, 1e300):
        broken = signal_.astype(np.float64)
        broken[0, 10] = bad
        with pytest.raises(SkipRecord) as error:
            convert_record(_record(broken))
        assert error.value.reason == "infinite_values"
    # Past 10 s nothing is kept, so nothing there is checked.
    long = np.concatenate([signal_, np.full((12, 100), np.inf, dtype=np.float32)], axis=1)
    samples, gain, _, trimmed = convert_record(_record(long))
    assert trimmed and np.isfinite(gain).all()


def test_empty_splits_can_be_loaded(tmp_path):
    """One subject (no validation subject) and then every study skipped: the splits still load."""
    root = make_demo_corpus(tmp_path / "m", num_records=2, num_subjects=1, seed=2)
    summary = prepare_mimic_iv_ecg(root, tmp_path / "one", val_fraction=0.2, shard_size=1, progress=False)
    data = datasets.load_from_disk(str(tmp_path / "one"))
    assert data["train"].num_rows == 2 == summary.records_kept and data["validation"].num_rows == 0
    assert data["validation"].features == mimic_iv_ecg.dataset_features()
    records = pd.read_csv(root / "record_list.csv")
    records["path"] = "../elsewhere/" + records["path"]
    records.to_csv(root / "record_list.csv", index=False)
    summary = prepare_mimic_iv_ecg(root, tmp_path / "none", val_fraction=0.2, shard_size=1, progress=False)
    assert summary.records_kept == 0 and summary.skipped_by_reason == {"path_outside_root": 2}
    data = datasets.load_from_disk(str(tmp_path / "none"))
    assert data["train"].num_rows == 0 == data["validation"].num_rows


# --- Item 13: malformed CSVs are errors naming the file, the column and the first bad row -------


def _write_index(root: Path, records: str, measurements: str = "subject_id,study_id,report_0\n1,2,Sinus rhythm\n") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "record_list.csv").write_text(records)
    (root / "machine_measurements.csv").write_text(measurements)
    return root


def test_non_integer_subject_id_names_csv_column_and_row(tmp_path):
    root = _write_index(
        tmp_path / "m",
        "subject_id,study_id,file_name,ecg_time,path\n1,2,2,t,files/a/2\n1x,3,3,t,files/a/3\n4.5,4,4,t,files/a/4\n",
    )
    with pytest.raises(ValueError) as error:
        prepare_mimic_iv_ecg(root, tmp_path / "out", progress=False)
    message = str(error.value)
    assert "record_list.csv" in message and "'subject_id'" in message and "row 2 (line 3" in message and "'1x'" in message
    assert "2 bad rows" in message
    assert not (tmp_path / "out" / mimic_iv_ecg.SHARDS_FOLDER).exists()  # refused before any work


def test_empty_study_id_and_bad_measurement_ids(tmp_path):
    root = _write_index(tmp_path / "a", "subject_id,study_id,path\n1,2,files/a/2\n1,,files/a/3\n")
    with pytest.raises(ValueError, match=r"record_list\.csv: column 'study_id', row 2 \(line 3 of the file\): '' is not an integer"):
        read_study_index(root)
    root = _write_index(
        tmp_path / "b", "subject_id,study_id,path\n1,2,files/a/2\n", "subject_id,study_id,report_0\n1,2,x\n1,abc,y\n"
    )
    with pytest.raises(ValueError, match=r"machine_measurements\.csv: column 'study_id', row 2 .*'abc'"):
        read_study_index(root)


def test_missing_columns_name_the_csv_and_column(tmp_path):
    root = _write_index(tmp_path / "a", "subject_id,study_id,file_name\n1,2,2\n")
    with pytest.raises(ValueError, match=r"record_list\.csv: missing column\(s\) 'path'"):
        prepare_mimic_iv_ecg(root, tmp_path / "out", progress=False)
    root = _write_index(tmp_path / "b", "subject_id,study_id,path\n1,2,files/a/2\n1,3,\n")
    with pytest.raises(ValueError, match=r"record_list\.csv: column 'path', row 2 .*is not a record path"):
        read_study_index(root)
    root = _write_index(tmp_path / "c", "subject_id,study_id,path\n1,2,files/a/2\n", "subject_id,report_0\n1,x\n")
    with pytest.raises(ValueError, match=r"machine_measurements\.csv: missing column\(s\) 'study_id'"):
        read_study_index(root)
    root = _write_index(tmp_path / "d", "subject_id,study_id,path\n1,2,files/a/2\n", "subject_id,study_id,cart_id\n1,2,3\n")
    with pytest.raises(ValueError, match=r"machine_measurements\.csv: missing column\(s\) 'report_0' \.\.\."):
        read_study_index(root)
    with pytest.raises(FileNotFoundError, match="record_list.csv"):
        read_study_index(tmp_path / "nowhere")


# --- Item 9: workers end with a killed parent ---------------------------------------------------

_DRIVER = """
import sys, time
from dbeta.train.data import mimic_iv_ecg

original = mimic_iv_ecg.process_shard

def slow_shard(task, shards_dir, *fingerprint):  # keep the workers busy long enough to be killed mid-run
    time.sleep(0.5)
    return original(task, shards_dir, *fingerprint)

mimic_iv_ecg.process_shard = slow_shard

if __name__ == "__main__":
    mimic_iv_ecg.prepare_mimic_iv_ecg(sys.argv[1], sys.argv[2], num_proc=2, shard_size=1, progress=False)
"""


def _workers_of(psutil, pid):
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    workers = []
    for child in children:
        try:
            if "resource_tracker" not in " ".join(child.cmdline()):
                workers.append(child)
        except psutil.Error:
            pass
    return workers


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process-tree semantics checked on Linux")
def test_killed_preparation_leaves_no_worker(tmp_path):
    """Two preparations with 2 workers each, run side by side; one parent gets SIGKILL, one SIGTERM."""
    psutil = pytest.importorskip("psutil")
    root = make_demo_corpus(tmp_path / "mimic", num_records=12, num_subjects=4, seed=0)
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(_DRIVER))
    kill_signals = {"sigkill": signal.SIGKILL, "sigterm": signal.SIGTERM}
    logs = {name: tmp_path / f"{name}.log" for name in kill_signals}  # a file: a full pipe would block the driver
    parents = {}
    for name in kill_signals:
        with open(logs[name], "wb") as log:
            parents[name] = subprocess.Popen(
                [sys.executable, str(driver), str(root), str(tmp_path / name)], stdout=log, stderr=subprocess.STDOUT
            )
    workers = {name: [] for name in kill_signals}
    try:
        deadline = time.monotonic() + 90
        pending = set(kill_signals)
        while pending and time.monotonic() < deadline:
            for name in sorted(pending):
                parent = parents[name]
                assert parent.poll() is None, logs[name].read_text(errors="replace")[-2000:]
                planned = (tmp_path / name / mimic_iv_ecg.SHARDS_FOLDER / "plan.json").is_file()
                workers[name] = _workers_of(psutil, parent.pid)
                if len(workers[name]) >= 2 and planned:
                    time.sleep(0.2)
                    parent.send_signal(kill_signals[name])  # killed while its workers hold shards
                    parent.wait(timeout=10)
                    pending.discard(name)
            time.sleep(0.05)
        assert not pending, f"preparation never reached its workers: {pending}"
        for name in kill_signals:
            _, alive = psutil.wait_procs(workers[name], timeout=5)
            assert not alive, f"{name}: workers still running 5 s after the parent was killed: {[p.pid for p in alive]}"
    finally:
        for parent in parents.values():
            if parent.poll() is None:
                parent.kill()
                parent.wait()
        for worker in (worker for group in workers.values() for worker in group):  # never leave an orphan
            try:
                worker.kill()
            except psutil.Error:
                pass


def test_command_line_reports_bad_csv_on_one_line(tmp_path, capsys):
    from dbeta.train.data.prepare_mimic_iv_ecg import main

    root = _write_index(tmp_path / "m", "subject_id,study_id,path\nabc,2,files/a/2\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["--mimic_root", str(root), "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "record_list.csv: column 'subject_id', row 1 (line 2 of the file): 'abc' is not an integer" in error
    assert "Traceback" not in error
    with pytest.raises(SystemExit):
        main(["--mimic_root", str(root), "--output_dir", str(tmp_path / "out"), "--shard_size", "0"])
    assert "shard_size must be at least 1" in capsys.readouterr().err


def test_oversized_header_is_not_read(tmp_path):
    root = tmp_path / "m"
    folder = root / "files" / "p1" / "s2"
    folder.mkdir(parents=True)
    (folder / "2.hea").write_bytes(b"2 12 500 5000\n" + b"#" * (mimic_iv_ecg.MAX_HEADER_BYTES + 10))
    entry = mimic_iv_ecg.StudyEntry(1, 2, "files/p1/s2/2", "", "report")
    with pytest.raises(SkipRecord) as error:
        mimic_iv_ecg.read_study(root, entry)
    assert error.value.reason == "unreadable" and "larger than" in error.value.detail
