"""Long recordings: sliding windows streamed from disk, `window="sliding"` in the pipeline, CLI windows."""

import csv
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
from transformers import pipeline

from dbeta.cli import main
from pipeline_dbeta import TASK
from processing_dbeta import ECGRecord, iter_ecg_windows, read_ecg_file

LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
LABELS = ["AFIB", "sinus rhythm", "LBBB"]


def write_wfdb(folder, name: str, seconds: float, rate: int = 500, seed: int = 0, chunk_seconds: float = 600):
    """A 12-lead format-16 WFDB record (200 adu/mV), written chunk by chunk (any length, little memory)."""
    total = int(seconds * rate)
    rng = np.random.default_rng(seed)
    with open(folder / f"{name}.dat", "wb") as handle:
        for start in range(0, total, int(chunk_seconds * rate)):
            count = min(int(chunk_seconds * rate), total - start)
            time = (start + np.arange(count)) / rate
            beat = np.sin(2 * np.pi * 1.1 * time) ** 15  # a spiky 66 bpm "QRS"
            signal = 0.8 * beat[None] * np.linspace(0.3, 1.2, 12)[:, None] + 0.03 * rng.standard_normal((12, count))
            handle.write(np.round(200 * signal.T).astype("<i2").tobytes())
    lines = [f"{name} 12 {rate} {total}"] + [f"{name}.dat 16 200/mV 16 0 0 0 0 {lead}" for lead in LEADS]
    (folder / f"{name}.hea").write_text("\n".join(lines) + "\n")
    return folder / name


@pytest.fixture(scope="module")
def long_records(tmp_path_factory):
    folder = tmp_path_factory.mktemp("long")
    write_wfdb(folder, "holter", 35.0)
    write_wfdb(folder, "short", 4.0, seed=1)
    return folder


def test_windows_equal_slices_of_the_whole_record(long_records):
    record = read_ecg_file(long_records / "holter")
    rate = int(record.sampling_rate)
    for stride, starts in ((None, [0, 10, 20, 25]), (5.0, [0, 5, 10, 15, 20, 25])):
        windows = list(iter_ecg_windows(long_records / "holter", 10.0, stride))
        # The 5 s tail after the last full window (20-30 s) is covered by a window ending with the record.
        assert [start for start, _ in windows] == starts
        for start, window in windows:
            assert window.signal.shape == (12, 5000) and window.lead_names == record.lead_names
            first = int(start * rate)
            np.testing.assert_array_equal(window.signal, record.signal[:, first : first + 5000])
            assert window.metadata["window_start_s"] == start and window.metadata["total_samples"] == 35 * rate
        # In-memory sources cut the same windows.
        from_record = list(iter_ecg_windows(record, 10.0, stride))
        from_array = list(iter_ecg_windows(record.signal, 10.0, stride, sampling_rate=500))
        for (a, first), (b, second), (c, third) in zip(windows, from_record, from_array):
            assert a == b == c
            np.testing.assert_array_equal(first.signal, second.signal)
            np.testing.assert_array_equal(first.signal, third.signal)
    short = list(iter_ecg_windows(long_records / "short"))
    assert [start for start, _ in short] == [0] and short[0][1].signal.shape == (12, 2000)
    with pytest.raises(ValueError, match="stride"):
        next(iter_ecg_windows(long_records / "holter", 10.0, 0))


def test_streaming_a_long_record_keeps_memory_bounded(tmp_path):
    # Two hours of 12-lead 500 Hz: 86 MB on disk, 345 MB as float64 if read whole. Streaming it holds
    # one read block (300 s) at a time; the peak RSS growth is measured in a fresh process.
    write_wfdb(tmp_path, "two_hours", 2 * 3600.0)
    script = textwrap.dedent(
        f"""
        import resource, sys
        from processing_dbeta import iter_ecg_windows
        import wfdb, numpy  # imported before the baseline is taken
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        count = 0
        for start, window in iter_ecg_windows({str(tmp_path / "two_hours")!r}, 10.0):
            count += 1
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        print(count, grown)
        """
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    count, grown_mib = completed.stdout.split()
    assert int(count) == 720
    assert float(grown_mib) < 120, f"peak RSS grew by {grown_mib} MiB while streaming"


def test_pipeline_sliding_windows_score_each_window_and_aggregate(model_folder, long_records):
    classifier = pipeline(TASK, model=str(model_folder), trust_remote_code=True, device="cpu")
    path = str(long_records / "holter")
    result = classifier(path, candidate_labels=LABELS, window="sliding", window_stride=5, return_windows=True)
    windows = result["windows"]
    assert [window["start"] for window in windows] == [0, 5, 10, 15, 20, 25]
    assert result["aggregation"] == "mean"

    # Each window's scores are the ordinary pipeline's scores on that 10 s window.
    for start, window in iter_ecg_windows(path, 10.0, 5.0):
        expected = {item["label"]: item["score"] for item in classifier(window, candidate_labels=LABELS)}
        got = next(item for item in windows if item["start"] == start)["scores"]
        for label in LABELS:
            assert got[label] == pytest.approx(expected[label], abs=1e-6)
    mean = {item["label"]: item["score"] for item in result["scores"]}
    for label in LABELS:
        assert mean[label] == pytest.approx(np.mean([window["scores"][label] for window in windows]), abs=1e-6)

    top = classifier(path, candidate_labels=LABELS, window="sliding", window_stride=5, aggregation="max", top_k=2)
    maxima = {label: max(window["scores"][label] for window in windows) for label in LABELS}
    assert [item["label"] for item in top] == sorted(LABELS, key=lambda label: -maxima[label])[:2]
    assert top[0]["score"] == pytest.approx(maxima[top[0]["label"]], abs=1e-6)
    with pytest.raises(ValueError, match="aggregation"):
        classifier(path, candidate_labels=LABELS, window="sliding", aggregation="median")


def test_cli_embed_windows_and_classify_sliding(model_folder, long_records, tmp_path):
    output = tmp_path / "windows.parquet"
    status = main(
        ["embed", str(long_records), "--model", str(model_folder), "--output", str(output), "--windows", "--no_progress"]
    )
    assert status == 0
    table = pd.read_parquet(output)
    holter = table[table["record"] == "holter"]
    assert holter["window_start_s"].tolist() == [0.0, 10.0, 20.0, 25.0]  # the last one ends with the record
    assert table.loc[table["record"] == "short", "window_start_s"].tolist() == [0.0]

    from dbeta.embedding import embed_ecg_batch
    from dbeta.loading import load_model_and_processor

    model, processor = load_model_and_processor(model_folder)
    window = next(w for s, w in iter_ecg_windows(long_records / "holter", 10.0) if s == 10)
    expected = embed_ecg_batch(model, processor.feature_extractor(window)["input_values"])[0].numpy()
    got = np.asarray(holter.loc[holter["window_start_s"] == 10.0, "embedding"].item(), dtype=np.float32)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)

    scores, per_window = tmp_path / "scores.csv", tmp_path / "per_window.csv"
    status = main(
        [
            "classify",
            str(long_records),
            "--model",
            str(model_folder),
            "--labels",
            *LABELS,
            "--window",
            "sliding",
            "--window_stride",
            "5",
            "--aggregation",
            "max",
            "--per_window",
            str(per_window),
            "--output",
            str(scores),
            "--no_progress",
        ]
    )
    assert status == 0
    rows = {row["record"]: row for row in csv.DictReader(open(scores, newline=""))}
    assert rows["holter"]["num_windows"] == "6" and rows["short"]["num_windows"] == "1"
    window_rows = [row for row in csv.DictReader(open(per_window, newline="")) if row["record"] == "holter"]
    assert [float(row["window_start_s"]) for row in window_rows] == [0, 5, 10, 15, 20, 25]
    for label in LABELS:
        assert float(rows["holter"][label]) == pytest.approx(max(float(row[label]) for row in window_rows), rel=1e-5)


def test_ecgrecord_windows_keep_lead_names():
    signal = np.zeros((6, 12_000), dtype=np.float32)
    record = ECGRecord(signal, LEADS[:6], 500.0, {"name": "limb"})
    windows = list(iter_ecg_windows(record, 10.0, 2.0))
    assert [start for start, _ in windows] == [0, 2, 4, 6, 8, 10, 12, 14]
    assert windows[0][1].lead_names == LEADS[:6] and windows[0][1].metadata["name"] == "limb"
