"""`dbeta prepare-mimic` over several processes: blocks of consecutive subjects prepared by each,
assembled into the dataset one process writes (same rows, same order, same skipped.csv)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("datasets")
from datasets import load_from_disk  # noqa: E402

from dbeta.train.data.mimic_iv_ecg import CHECKSUM_MANIFEST, PreparationInputError, prepare_mimic_iv_ecg  # noqa: E402
from dbeta.train.data.prepare_mimic_iv_ecg import main as prepare_main  # noqa: E402
from dbeta.train.demo.make_demo_corpus import make_demo_corpus  # noqa: E402
from tests.launch_helpers import accelerate_launch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ["--val_fraction", "0.25", "--seed", "3", "--shard_size", "4"]


@pytest.fixture(scope="module")
def mimic_root(tmp_path_factory):
    # 21 valid and 3 corrupt studies of 9 subjects: 7 preparation shards of <= 4 studies in the two splits.
    return make_demo_corpus(tmp_path_factory.mktemp("mimic"), num_records=21, num_subjects=9, seed=4, num_corrupt_records=3)


@pytest.fixture(scope="module")
def one_process(mimic_root, tmp_path_factory):
    output = tmp_path_factory.mktemp("one") / "prepared"
    prepare_main(["--mimic_root", str(mimic_root), "--output_dir", str(output), *SETTINGS])
    return output


def assert_same_preparation(actual: Path, expected: Path) -> None:
    for split in ("train", "validation"):
        got, want = load_from_disk(str(actual / split)), load_from_disk(str(expected / split))
        assert got.num_rows == want.num_rows and got.num_rows > 0
        assert got.to_dict() == want.to_dict(), split  # rows and their order
    assert (actual / "skipped.csv").read_text() == (expected / "skipped.csv").read_text()
    summary, reference = (json.loads((folder / "summary.json").read_text()) for folder in (actual, expected))
    for key in ("seconds", "output_dir"):
        summary.pop(key), reference.pop(key)
    assert summary == reference
    # The Arrow files themselves: a shard prepared by any process is the same bytes.
    manifest, reference_manifest = (json.loads((folder / CHECKSUM_MANIFEST).read_text())["files"] for folder in (actual, expected))
    assert manifest == reference_manifest
    assert not (actual / ".shards").exists()


def _launch(argv, rank, world_size):
    env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, "-m", "dbeta.cli", "prepare-mimic", *argv],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def test_two_launcher_processes_equal_one_process(mimic_root, one_process, tmp_path):
    output = tmp_path / "prepared"
    argv = ["--mimic_root", str(mimic_root), "--output_dir", str(output), *SETTINGS]
    processes = [_launch(argv, rank, 2) for rank in (0, 1)]
    results = [(process.wait(timeout=300), process.stderr.read()) for process in processes]
    assert [code for code, _ in results] == [0, 0], results
    assert "Process 1 of 2: preparation shards 4 of 7" in results[1][1]
    assert "Rank 0: waiting" in results[0][1]
    assert_same_preparation(output, one_process)


def test_slurm_style_shards_then_a_plain_run_assembles(mimic_root, one_process, tmp_path, caplog):
    output = tmp_path / "prepared"
    argv = ["--mimic_root", str(mimic_root), "--output_dir", str(output), *SETTINGS]
    for index in (2, 0, 1):  # array tasks finish in any order
        prepare_main([*argv, "--num_shards", "3", "--shard_index", str(index)])
        assert not (output / "dataset_dict.json").exists()  # nothing assembled by a shard task
    finished = sorted(path.name for path in (output / ".shards").iterdir() if (path / "result.json").is_file())
    assert len(finished) == 7
    stamps = {name: (output / ".shards" / name / "result.json").stat().st_mtime_ns for name in finished}
    with caplog.at_level("INFO"):
        summary = prepare_mimic_iv_ecg(mimic_root, output, val_fraction=0.25, seed=3, shard_size=4, progress=False, keep_shards=True)
    assert summary is not None and "Resuming: 7 of 7 shards already finished" in caplog.text
    assert stamps == {name: (output / ".shards" / name / "result.json").stat().st_mtime_ns for name in finished}
    shutil.rmtree(output / ".shards")
    assert_same_preparation(output, one_process)


def test_a_shard_of_another_plan_is_recomputed(mimic_root, one_process, tmp_path):
    output = tmp_path / "prepared"
    argv = ["--mimic_root", str(mimic_root), "--output_dir", str(output), *SETTINGS]
    prepare_main([*argv, "--num_shards", "2", "--shard_index", "0"])
    # A result.json left by another plan (e.g. another seed) under the same name is not reused.
    stale = output / ".shards" / "train-00000" / "result.json"
    stale.write_text(json.dumps({**json.loads(stale.read_text()), "fingerprint": "another run", "kept": 0}))
    prepare_main([*argv, "--num_shards", "2", "--shard_index", "1"])
    prepare_main(argv)
    assert_same_preparation(output, one_process)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--shard_index", "1"], "--shard_index needs --num_shards"),
        (["--num_shards", "2", "--shard_index", "2"], "--shard_index must be between 0 and 1"),
        (["--num_shards", "0"], "--num_shards must be >= 1"),
    ],
)
def test_bad_shard_options_are_one_line_errors(mimic_root, tmp_path, capsys, options, message):
    with pytest.raises(SystemExit) as exit_info:
        prepare_main(["--mimic_root", str(mimic_root), "--output_dir", str(tmp_path / "out"), *SETTINGS, *options])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_bad_launcher_environment_is_an_input_error(mimic_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(PreparationInputError, match="RANK is not"):
        prepare_mimic_iv_ecg(mimic_root, tmp_path / "out", progress=False, launcher_shards=True)


def test_a_library_call_under_a_launcher_prepares_everything(mimic_root, one_process, tmp_path, monkeypatch):
    # Pretraining prepares the demo corpus on rank 0 while the other ranks wait (SharedPreparation):
    # the launcher's RANK/WORLD_SIZE must not make rank 0 wait for shards nobody writes.
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    summary = prepare_mimic_iv_ecg(mimic_root, tmp_path / "out", val_fraction=0.25, seed=3, shard_size=4, progress=False, merge_timeout=5)
    assert summary is not None
    assert_same_preparation(tmp_path / "out", one_process)


def test_accelerate_launch_two_processes(mimic_root, one_process, tmp_path):
    pytest.importorskip("accelerate")
    output = tmp_path / "prepared"
    result = accelerate_launch(
        tmp_path, "-m", "dbeta.cli", "prepare-mimic", "--mimic_root", str(mimic_root), "--output_dir", str(output), *SETTINGS
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Process 1 of 2" in result.stderr
    assert_same_preparation(output, one_process)
