"""Inference runs without the training-only packages.

`dbeta classify / embed / report / export-onnx` run in a subprocess where scikit-learn, datasets,
accelerate, pandas and tensorboard cannot be imported (as after `pip install -e ".[readers,onnx]"`
without the `train` extra); the training-side commands say which extra they need. pandas is
blocked too except where a WFDB record is read: `wfdb` itself imports pandas (a dependency of
the `readers` extra, not of dbeta's code).
"""

import subprocess
import sys

import numpy as np
import pytest
from zero_shot_utils import CINC_FIXTURES, LUDB_FIXTURES, copy_records

TRAINING_ONLY = ("sklearn", "datasets", "accelerate", "pandas", "tensorboard")
WFDB_NEEDS = ("pandas",)

# The path finder is replaced by one that does not see the blocked packages, as if they were not
# installed: `import` raises ModuleNotFoundError and `importlib.util.find_spec` (transformers' and
# pyarrow's availability checks) returns None.
RUNNER = """
import importlib.machinery
import sys
TRAINING_ONLY = tuple(sys.argv.pop(1).split(","))

class NotInstalled(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.split(".")[0] in TRAINING_ONLY:
            return None
        return super().find_spec(name, path, target)

sys.meta_path = [NotInstalled if finder is importlib.machinery.PathFinder else finder for finder in sys.meta_path]
from dbeta.cli import main
status = main(sys.argv[1:])
loaded = sorted({name.split(".")[0] for name, module in sys.modules.items() if module is not None} & set(TRAINING_ONLY))
if loaded:
    print("training-only modules imported:", loaded, file=sys.stderr)
    sys.exit(99)
sys.exit(status)
"""


def run_without_training_packages(*args: str, reads_wfdb: bool = False) -> subprocess.CompletedProcess:
    blocked = [name for name in TRAINING_ONLY if not (reads_wfdb and name in WFDB_NEEDS)]
    return subprocess.run(
        [sys.executable, "-c", RUNNER, ",".join(blocked), *args], capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    copy_records(LUDB_FIXTURES, root, ["1", "2"])
    copy_records(CINC_FIXTURES, root, ["HR06000"])
    return root


@pytest.fixture(scope="module")
def hdf5_records(tmp_path_factory):
    """Two CODE-style exams (N, 4096, 12) at 400 Hz: read with h5py alone."""
    import h5py

    root = tmp_path_factory.mktemp("hdf5")
    rng = np.random.default_rng(0)
    with h5py.File(root / "code.hdf5", "w") as handle:
        handle["tracings"] = (0.2 * rng.standard_normal((2, 4096, 12))).astype(np.float32)
        handle["exam_id"] = np.array([11, 12])
    return root


def test_the_runner_really_blocks_the_training_packages():
    result = subprocess.run(
        [sys.executable, "-c", RUNNER.split("from dbeta.cli")[0] + "import sklearn", ",".join(TRAINING_ONLY)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr


@pytest.mark.parametrize("reads_wfdb", [False, True], ids=["hdf5-no-pandas", "wfdb"])
def test_classify_and_embed_without_training_packages(model_folder, records, hdf5_records, tmp_path, reads_wfdb):
    import pyarrow.parquet as pq

    folder, expected = (records, 3) if reads_wfdb else (hdf5_records, 2)
    scores = tmp_path / "scores.csv"
    result = run_without_training_packages(
        "classify", str(folder), "--model", str(model_folder), "--labels", "AFIB", "sinus rhythm",
        "--output", str(scores), "--no_progress", reads_wfdb=reads_wfdb,
    )
    assert result.returncode == 0, result.stderr
    lines = scores.read_text().splitlines()
    assert lines[0] == "record,AFIB,sinus rhythm" and len(lines) == 1 + expected

    embeddings = tmp_path / "embeddings.parquet"
    result = run_without_training_packages(
        "embed", str(folder), "--model", str(model_folder), "--output", str(embeddings), "--no_progress",
        reads_wfdb=reads_wfdb,
    )
    assert result.returncode == 0, result.stderr
    table = pq.read_table(embeddings)
    assert table.num_rows == expected
    assert np.isfinite(np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)).all()


def test_report_and_onnx_export_without_training_packages(model_folder, tmp_path):
    picture = tmp_path / "report.png"
    result = run_without_training_packages(
        "report", str(CINC_FIXTURES / "HR06000"), "--model", str(model_folder), "--labels", "AFIB",
        "--output", str(picture), "--device", "cpu", reads_wfdb=True,
    )
    assert result.returncode == 0, result.stderr
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    onnx_folder = tmp_path / "onnx"
    result = run_without_training_packages("export-onnx", str(model_folder), "--output", str(onnx_folder))
    assert result.returncode == 0, result.stderr
    assert (onnx_folder / "ecg_encoder.onnx").is_file() and (onnx_folder / "dbeta_onnx.json").is_file()


def test_training_commands_name_the_extra_they_need(tmp_path):
    result = run_without_training_packages("evaluate", "--help")
    assert result.returncode == 2
    assert "needs the training extra" in result.stderr and ".[train]" in result.stderr
