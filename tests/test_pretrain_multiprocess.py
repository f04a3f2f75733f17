"""Several processes from a fresh folder: `accelerate launch` with the shipped two-CPU-process
configuration writes the demo corpus, its preparation and the N3S cache once (main process first,
the others wait and then read), prints logs and the summary once, resumes from "latest", and a
preparation that fails on the main process stops the others with a message instead of a hang."""

import json
import os
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from dbeta.train.pretraining.processes import SharedPreparation
from tests import launch_helpers

REPO_ROOT = Path(__file__).resolve().parents[1]
SUMMARY_LINE = "Validation zero-shot macro AUROC:"
#: Small enough for 2 CPU cores: a 160-study demo corpus, batches of 8 per process, 4 steps.
FAST_DEMO = [
    "--demo_num_records", "160", "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
    "--eval_steps", "0", "--checkpointing_steps", "2", "--logging_steps", "1", "--report_to", "none",
]  # fmt: skip


def accelerate_launch(cwd: Path, *script_args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file train/configs/cpu_2_processes.yaml train/pretrain.py ...` in `cwd`."""
    return launch_helpers.accelerate_launch(cwd, str(REPO_ROOT / "train" / "pretrain.py"), *script_args, timeout=timeout)


# ---------------------------------------------------------------------------------------------
# SharedPreparation with two real gloo processes
# ---------------------------------------------------------------------------------------------


def _preparation_rank(rank: int, init_file: str, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        os.environ["LOCAL_WORLD_SIZE"] = "2"
        accelerator = SimpleNamespace(num_processes=2, process_index=rank, is_main_process=rank == 0, is_local_main_process=rank == 0)
        preparation = SharedPreparation(accelerator, timeout_seconds=120)
        shared = Path(folder) / "shared.txt"

        def write_then_read():
            if rank == 0:
                time.sleep(1.0)  # the other process must wait, not race ahead and miss the file
                shared.write_text("written by the main process")
            return shared.read_text()

        def fail_on_the_main_process():
            if rank == 0:
                raise ValueError("disk full")
            return "should not run"

        result = {"read": preparation.run("writing the shared file", write_then_read)}
        started = time.perf_counter()
        try:
            preparation.run("preparing the data", fail_on_the_main_process)
        except Exception as error:  # noqa: BLE001
            result["error"] = f"{type(error).__name__}: {error}"
        result["seconds"] = time.perf_counter() - started
        # Afterwards the processes are still in step: a collective completes.
        result["after"] = preparation.run("a later step", lambda: rank)
        preparation.close()
        (Path(folder) / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_shared_preparation_runs_on_the_main_process_first_and_shares_failures(tmp_path):
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        mp.spawn(_preparation_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    finally:
        if previous is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = previous
    main, other = (json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1))
    assert main["read"] == other["read"] == "written by the main process"
    assert main["error"] == "ValueError: disk full"  # the failing process keeps its own error
    assert other["error"] == (
        "PreparationFailed: Process 1 stops: preparing the data failed on process 0: ValueError: disk full "
        "(see that process's traceback)."
    )
    assert other["seconds"] < 30
    assert (main["after"], other["after"]) == (0, 1)


def test_preparation_turns_per_machine(monkeypatch):
    """Main process, then the first process of each other machine (machine-local paths), then the rest."""
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")

    def turns(process_index, local_index, num_processes):
        accelerator = SimpleNamespace(
            num_processes=1, process_index=process_index, is_main_process=process_index == 0, is_local_main_process=local_index == 0
        )
        preparation = SharedPreparation(accelerator)  # no group: one process
        preparation.several_machines = num_processes > 2
        return preparation._turns()

    assert turns(0, 0, 2) == [True, False] and turns(1, 1, 2) == [False, True]
    assert turns(0, 0, 4) == [True, False, False]
    assert turns(2, 0, 4) == [False, True, False]  # first process of the second machine
    assert turns(3, 1, 4) == [False, False, True]


# ---------------------------------------------------------------------------------------------
# accelerate launch with train/configs/cpu_2_processes.yaml from an empty folder
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fresh_launch(tmp_path_factory):
    """The issue's command, with a small demo, in a folder with nothing prepared."""
    cwd = tmp_path_factory.mktemp("fresh_clone")
    started = time.perf_counter()
    completed = accelerate_launch(cwd, "--max_train_steps", "4", *FAST_DEMO)
    return SimpleNamespace(cwd=cwd, completed=completed, seconds=time.perf_counter() - started)


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes_from_an_empty_folder(fresh_launch):
    completed = fresh_launch.completed
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-6000:]
    output_dir = fresh_launch.cwd / "outputs" / "dbeta-demo"
    names = {p.name for p in output_dir.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "results.json", "processor_config.json", "tokenizer.json"} <= names
    results = json.loads((output_dir / "results.json").read_text())
    assert results["completed_steps"] == 4
    assert results["samples_seen"] == 4 * 8 * 2  # two processes, each its own batch of 8
    assert "| processes | 2 |" in (output_dir / "README.md").read_text()
    assert sorted(p.name for p in (output_dir / "checkpoints").iterdir()) == ["step_2", "step_4"]
    # Prepared once, by the main process; logs and summary once.
    assert (fresh_launch.cwd / "outputs" / "demo_corpus_prepared" / "dataset_dict.json").is_file()
    assert output.count("Demo corpus: 160 simulated studies") == 1
    assert output.count("***** Pre-training *****") == 1
    assert output.count("Pre-training finished") == 1
    assert output.count(SUMMARY_LINE) == 1
    assert "Num processes: 2" in output


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes_resumes_from_latest(fresh_launch):
    assert fresh_launch.completed.returncode == 0
    completed = accelerate_launch(fresh_launch.cwd, "--max_train_steps", "6", "--resume_from_checkpoint", "latest", *FAST_DEMO)
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-6000:]
    output_dir = fresh_launch.cwd / "outputs" / "dbeta-demo"
    assert output.count(f"Resuming from {Path('outputs/dbeta-demo/checkpoints/step_4')}") == 1
    results = json.loads((output_dir / "results.json").read_text())
    assert results["completed_steps"] == 6 and results["samples_seen"] == 6 * 8 * 2
    assert sorted(p.name for p in (output_dir / "checkpoints").iterdir()) == ["step_2", "step_4", "step_6"]
    assert output.count(SUMMARY_LINE) == 1


@pytest.mark.slow
def test_accelerate_launch_stops_every_process_when_the_main_process_fails_to_prepare(fresh_launch, tmp_path):
    (tmp_path / "not_a_folder").write_text("a file where the demo corpus should go")
    started = time.perf_counter()
    completed = accelerate_launch(tmp_path, "--demo_corpus_dir", "not_a_folder", "--max_train_steps", "2", *FAST_DEMO, timeout=300)
    output = completed.stdout + completed.stderr
    assert completed.returncode != 0
    assert time.perf_counter() - started < 240  # no collective left waiting
    assert "FileExistsError" in output, output[-4000:]  # the main process's own error
    assert "PreparationFailed: Process 1 stops: writing and preparing the demo corpus failed on process 0: FileExistsError" in output
    assert not (tmp_path / "outputs" / "dbeta-demo" / "model.safetensors").exists()
