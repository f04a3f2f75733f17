"""`dbeta embed` / `dbeta classify` on real WFDB records, a CODE-style HDF5 file and a corrupt record."""

import csv
import shutil
import subprocess

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from transformers import pipeline
from zero_shot_utils import CINC_FIXTURES, LUDB_FIXTURES, copy_records

from dbeta.cli import find_records, main
from pipeline_dbeta import TASK

LABELS = ["AFIB", "LBBB", "sinus rhythm"]
GOOD = ["cinc/E07501", "cinc/HR06000", "cinc/JS00666", "code.hdf5#0", "code.hdf5#1", "ludb/1", "ludb/2", "ludb/3"]


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    copy_records(LUDB_FIXTURES, root / "ludb", ["1", "2", "3"])
    copy_records(CINC_FIXTURES, root / "cinc", ["E07501", "HR06000", "JS00666"])
    # A corrupt record: a valid header whose signal file was cut short.
    shutil.copy(LUDB_FIXTURES / "4.hea", root / "ludb" / "broken.hea")
    header = (root / "ludb" / "broken.hea").read_text().replace("4.dat", "broken.dat").replace("4 12", "broken 12", 1)
    (root / "ludb" / "broken.hea").write_text(header)
    (root / "ludb" / "broken.dat").write_bytes((LUDB_FIXTURES / "4.dat").read_bytes()[:1000])
    (root / "notes.txt").write_text("not an ECG")
    # Two CODE-test style exams: (N, 4096, 12) at 400 Hz.
    rng = np.random.default_rng(0)
    with h5py.File(root / "code.hdf5", "w") as handle:
        handle["tracings"] = (0.2 * rng.standard_normal((2, 4096, 12))).astype(np.float32)
    return root


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_find_records(records):
    found = [ref.record_id for ref in find_records(records)]
    assert sorted(found) == sorted(GOOD + ["ludb/broken"])


def test_classify_reports_the_corrupt_record_and_scores_the_others(model_folder, records, tmp_path, capsys):
    output, errors = tmp_path / "scores.csv", tmp_path / "errors.csv"
    status = main(
        [
            "classify",
            str(records),
            "--model",
            str(model_folder),
            "--labels",
            *LABELS,
            "--output",
            str(output),
            "--errors",
            str(errors),
            "--batch_size",
            "3",
            "--no_progress",
        ]
    )
    assert status == 1  # some records failed, the rest were written
    stderr = capsys.readouterr().err
    assert "skipped ludb/broken" in stderr and "8 records written" in stderr

    rows = read_csv(output)
    assert list(rows[0]) == ["record", *LABELS]
    assert sorted(row["record"] for row in rows) == sorted(GOOD)
    failed = read_csv(errors)
    assert [row["record"] for row in failed] == ["ludb/broken"] and failed[0]["error"]

    # The CLI scores are the pipeline's scores.
    classifier = pipeline(TASK, model=str(model_folder), trust_remote_code=True, device="cpu")
    expected = {
        item["label"]: item["score"] for item in classifier(str(records / "ludb" / "2"), candidate_labels=LABELS)
    }
    row = next(row for row in rows if row["record"] == "ludb/2")
    for label in LABELS:
        assert float(row[label]) == pytest.approx(expected[label], rel=1e-5)


def test_classify_softmax_and_unknown_code(model_folder, records, tmp_path, capsys):
    output = tmp_path / "softmax.csv"
    assert (
        main(
            [
                "classify",
                str(records / "ludb"),
                "--model",
                str(model_folder),
                "--labels",
                "AFIB",
                "LBBB",
                "--softmax",
                "--output",
                str(output),
                "--no_progress",
            ]
        )
        == 1
    )
    for row in read_csv(output):
        assert float(row["AFIB"]) + float(row["LBBB"]) == pytest.approx(1.0, abs=1e-5)
    status = main(
        [
            "classify",
            str(records),
            "--model",
            str(model_folder),
            "--labels",
            "AFIBB",
            "--labels_are_codes",
            "yes",
            "--output",
            str(tmp_path / "x.csv"),
            "--no_progress",
        ]
    )
    assert status == 2 and "did you mean AFIB" in capsys.readouterr().err


def test_embed_writes_parquet(model_folder, records, tmp_path):
    output = tmp_path / "embeddings.parquet"
    status = main(
        [
            "embed",
            str(records),
            "--model",
            str(model_folder),
            "--output",
            str(output),
            "--batch_size",
            "4",
            "--num_workers",
            "2",
            "--no_progress",
        ]
    )
    assert status == 1
    table = pd.read_parquet(output)
    assert sorted(table["record"]) == sorted(GOOD)
    assert set(table.loc[table["record"].str.startswith("code"), "sampling_rate"]) == {400.0}
    assert table.loc[table["record"] == "ludb/1", "duration_s"].item() == 10.0

    from dbeta.loading import load_model_and_processor

    model, processor = load_model_and_processor(model_folder)
    inputs = processor.feature_extractor(str(records / "cinc" / "HR06000"), return_tensors="pt")
    with torch.no_grad():
        expected = model.get_ecg_features(inputs["input_values"]).pooler_output[0].numpy()
    embedding = np.asarray(table.loc[table["record"] == "cinc/HR06000", "embedding"].item(), dtype=np.float32)
    np.testing.assert_allclose(embedding, expected, rtol=1e-5, atol=1e-6)


def test_empty_folder_and_console_script(model_folder, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert (
        main(["embed", str(tmp_path / "empty"), "--model", str(model_folder), "--output", str(tmp_path / "x.parquet")])
        == 2
    )
    assert "no ECG records" in capsys.readouterr().err
    executable = shutil.which("dbeta")
    assert executable is not None, "the `dbeta` console script is not installed"
    completed = subprocess.run([executable, "classify", "--help"], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0 and "--labels" in completed.stdout
