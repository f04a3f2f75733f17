"""Robustness of `dbeta embed` / `dbeta classify` (issue 10, items 7, 8, 12): atomic output under
interruption (subprocesses killed mid-run with SIGINT and SIGKILL, SIGTERM and errors in-process),
output folders and `--model` checked before any work, inconsistent or damaged model folders."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from safetensors.torch import load_file, save_file
from zero_shot_utils import LUDB_FIXTURES, copy_records

import dbeta.cli as cli
import dbeta.embedding as retrieval

OLD = b"record,AFIB\nold-complete-file,0.5\n"

# Runs the CLI in a subprocess; the second ECG batch announces itself (a marker file) and waits,
# so that the test can signal the process while the output is half written.
SLOW_CLI = """
import pathlib, sys, time
import dbeta.embedding as retrieval
original, calls = retrieval.embed_ecg_batch, []
def slow(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        pathlib.Path(sys.argv[1]).write_text("mid-run")
        time.sleep(120)
    return original(*args, **kwargs)
retrieval.embed_ecg_batch = slow
from dbeta.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    copy_records(LUDB_FIXTURES, root, ["1", "2", "3"])
    return root


def classify_args(records, model, output, *extra):
    return ["classify", str(records), "--model", str(model), "--labels", "AFIB", "--output", str(output),
            "--batch_size", "1", "--no_progress", *extra]


def embed_args(records, model, output, *extra):
    return ["embed", str(records), "--model", str(model), "--output", str(output), "--batch_size", "1",
            "--no_progress", *extra]


def new_files(folder, keep):
    return sorted(path.name for path in folder.iterdir() if path.name not in keep)


def edited_folder(model_folder, target, edit_config=None, edit_weights=None):
    shutil.copytree(model_folder, target)
    for name in ("preprocessor_config.json", "processor_config.json", "config.json"):
        path = target / name
        if edit_config is not None and path.is_file():
            data = json.loads(path.read_text())
            edit_config(name, data)
            path.write_text(json.dumps(data))
    if edit_weights is not None:
        weights = load_file(target / "model.safetensors")
        edit_weights(weights)
        save_file(weights, target / "model.safetensors", metadata={"format": "pt"})
    return target


# -- item 8: atomic output -------------------------------------------------------------------------


def test_killed_mid_run_leave_the_old_file_intact(model_folder, records, tmp_path):
    """SIGINT: nothing new, exit 130. SIGKILL: the old file intact, only an explicitly named `.partial`."""
    runs = {}
    for name, signum, make_args, output_name in (
        ("sigint", signal.SIGINT, classify_args, "scores.csv"),
        ("sigkill", signal.SIGKILL, embed_args, "embeddings.parquet"),
    ):
        folder = tmp_path / name
        folder.mkdir()
        (folder / output_name).write_bytes(OLD)
        marker = tmp_path / f"{name}.marker"
        process = subprocess.Popen(
            [sys.executable, "-c", SLOW_CLI, str(marker), *make_args(records, model_folder, folder / output_name)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            # A shell starts background jobs with SIGINT ignored, and the child would inherit that
            # (Ctrl-C then rightly does nothing): give it the default disposition, as in a terminal.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        runs[name] = (process, signum, folder, output_name, marker)
    for name, (process, signum, folder, output_name, marker) in runs.items():
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert process.poll() is None, process.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the CLI never reached its second batch"
            time.sleep(0.05)
        partial = [path for path in folder.iterdir() if path.name.endswith(".partial")]
        assert len(partial) == 1  # really mid-run: the rows go to the temporary file
        if output_name.endswith(".csv"):
            assert partial[0].read_text().splitlines()[1].startswith("1,")  # the first batch was written
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
        assert (folder / output_name).read_bytes() == OLD, name
        if signum == signal.SIGINT:
            assert process.returncode == 130, stderr[-2000:]
            assert "interrupted (SIGINT)" in stderr and "Traceback" not in stderr
            assert new_files(folder, {output_name}) == []
        else:
            assert process.returncode == -signal.SIGKILL
            left = new_files(folder, {output_name})
            assert len(left) == 1 and left[0].startswith(f"{output_name}.") and left[0].endswith(".partial")


def test_sigterm_and_errors_mid_run_remove_the_partial_file(model_folder, records, tmp_path, monkeypatch, capsys):
    output = tmp_path / "scores.csv"
    output.write_bytes(OLD)
    original = retrieval.embed_ecg_batch
    calls = []

    def terminate_on_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            assert len(list(tmp_path.glob("scores.csv.*.partial"))) == 1
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(retrieval, "embed_ecg_batch", terminate_on_second_batch)
    previous = signal.getsignal(signal.SIGTERM)
    assert cli.main(classify_args(records, model_folder, output, "--errors", str(tmp_path / "errors.csv"))) == 143
    assert signal.getsignal(signal.SIGTERM) == previous  # the handler is restored
    assert "interrupted (SIGTERM)" in capsys.readouterr().err
    assert output.read_bytes() == OLD and new_files(tmp_path, {"scores.csv"}) == []

    def fail_on_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("device lost")
        return original(*args, **kwargs)

    monkeypatch.setattr(retrieval, "embed_ecg_batch", fail_on_second_batch)
    parquet = tmp_path / "embeddings.parquet"
    parquet.write_bytes(OLD)
    with pytest.raises(RuntimeError, match="device lost"):
        cli.main(embed_args(records, model_folder, parquet))
    assert parquet.read_bytes() == OLD and new_files(tmp_path, {"scores.csv", "embeddings.parquet"}) == []


def test_complete_run_replaces_the_old_file_with_the_usual_permissions(model_folder, records, tmp_path):
    output = tmp_path / "embeddings.parquet"
    output.write_bytes(OLD)
    assert cli.main(embed_args(records, model_folder, output, "--batch_size", "3")) == 0
    assert sorted(pd.read_parquet(output)["record"]) == ["1", "2", "3"]
    umask = os.umask(0)
    os.umask(umask)
    assert output.stat().st_mode & 0o777 == 0o666 & ~umask
    assert new_files(tmp_path, {"embeddings.parquet"}) == []


def test_non_finite_rows_are_failed_records_and_no_output_when_nothing_succeeds(
    model_folder, records, tmp_path, monkeypatch, capsys
):
    original = retrieval.embed_ecg_batch

    def nan_for_record_2(model, input_values):
        embeddings = original(model, input_values)
        embeddings[1] = float("nan")  # the second record of the (single) batch
        return embeddings

    monkeypatch.setattr(retrieval, "embed_ecg_batch", nan_for_record_2)
    output, errors = tmp_path / "scores.csv", tmp_path / "errors.csv"
    assert cli.main(classify_args(records, model_folder, output, "--batch_size", "3", "--errors", str(errors))) == 1
    assert [line.split(",")[0] for line in output.read_text().splitlines()[1:]] == ["1", "3"]
    failed = pd.read_csv(errors, dtype=str)
    assert list(failed["record"]) == ["2"] and "not finite" in failed["error"][0]
    assert "skipped 2: ValueError: the score of this record is not finite" in capsys.readouterr().err

    monkeypatch.setattr(retrieval, "embed_ecg_batch", lambda model, values: original(model, values) * float("nan"))
    output.write_bytes(OLD)
    assert cli.main(classify_args(records, model_folder, output, "--batch_size", "3")) == 2
    assert "no record could be processed (3 skipped)" in capsys.readouterr().err
    assert output.read_bytes() == OLD


# -- items 8 and 12: argument checks before any work ----------------------------------------------


@pytest.mark.parametrize(
    "model, message",
    [
        ("does/not/exist", "--model does/not/exist: no such model folder"),
        ("{tmp}/missing", "no such model folder"),
        ("{tmp}/empty", "no config.json in this folder"),
        ("{tmp}/file.txt", "is a file, not a D-BETA model folder"),
    ],
)
def test_missing_model_is_a_one_line_usage_error(records, tmp_path, monkeypatch, capsys, model, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    monkeypatch.setattr(cli, "find_records", lambda folder: pytest.fail("work started before the checks"))
    model = model.format(tmp=tmp_path)
    for make_args in (classify_args, embed_args):
        assert cli.main(make_args(records, model, tmp_path / "out")) == 2
        stderr = capsys.readouterr().err
        assert stderr.count("\n") == 1 and stderr.startswith("dbeta: error: ") and message in stderr
    assert not (tmp_path / "out").exists()


def test_unloadable_model_folder_is_a_usage_error(model_folder, records, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    assert cli.main(classify_args(records, broken, tmp_path / "out.csv")) == 2
    stderr = capsys.readouterr().err.strip().splitlines()
    assert stderr[-1].startswith(f"dbeta: error: cannot load the model '{broken}'")
    assert "Traceback" not in "".join(stderr)


@pytest.mark.parametrize(
    "output, errors, message",
    [
        ("nodir/out.csv", None, "--output {tmp}/nodir/out.csv: the folder {tmp}/nodir does not exist"),
        ("out.csv", "nodir/errors.csv", "--errors {tmp}/nodir/errors.csv: the folder {tmp}/nodir does not exist"),
        ("adir", None, "--output {tmp}/adir is a folder"),
        ("out.csv", "out.csv", "--errors and --output are the same file"),
        ("afile/out.csv", None, "the folder {tmp}/afile is not a folder"),
    ],
)
def test_output_paths_are_checked_before_any_work(
    model_folder, records, tmp_path, monkeypatch, capsys, output, errors, message
):
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    monkeypatch.setattr(cli, "find_records", lambda folder: pytest.fail("work started before the checks"))
    extra = ["--errors", str(tmp_path / errors)] if errors else []
    for make_args in (classify_args, embed_args):
        assert cli.main(make_args(records, model_folder, tmp_path / output, *extra)) == 2
        stderr = capsys.readouterr().err
        assert stderr.count("\n") == 1 and message.format(tmp=tmp_path) in stderr


# -- item 7: inconsistent or damaged model folders --------------------------------------------------


def test_inconsistent_or_damaged_model_folders_are_refused(model_folder, records, tmp_path, capsys):
    def rate_250(name, data):
        if name != "config.json":
            data.get("feature_extractor", data)["sampling_rate"] = 250

    def swap_leads(name, data):
        if name != "config.json":
            target = data.get("feature_extractor", data)
            leads = target["lead_names"]
            target["lead_names"] = [*leads[:4], leads[5], leads[4], *leads[6:]]

    def nan_scale(name, data):
        if name == "config.json":
            data["ets_logit_scale"] = float("nan")

    def nan_weight(weights):
        key = next(key for key in weights if key.endswith("encoder.layers.0.mlp.fc1.weight"))
        weights[key][0, 0] = float("nan")

    cases = {
        "rate": (edited_folder(model_folder, tmp_path / "rate", rate_250), "sampling_rate: feature extractor 250"),
        "leads": (edited_folder(model_folder, tmp_path / "leads", swap_leads), "lead order: feature extractor"),
        "scale": (edited_folder(model_folder, tmp_path / "scale", nan_scale), "config.ets_logit_scale is not finite"),
        "weights": (
            edited_folder(model_folder, tmp_path / "weights", edit_weights=nan_weight),
            "contain NaN/inf values (ecg_model.encoder.layers.0.mlp.fc1.weight)",
        ),
    }
    output = tmp_path / "out.csv"
    output.write_bytes(OLD)
    for name, (folder, message) in cases.items():
        for make_args in (classify_args, embed_args):
            assert cli.main(make_args(records, folder, output)) == 2, name
            stderr = capsys.readouterr().err.strip().splitlines()
            assert stderr[-1].startswith("dbeta: error: ") and message in stderr[-1], (name, stderr)
    assert output.read_bytes() == OLD


def test_sigkill_of_the_cli_ends_its_reader_workers(model_folder, records, tmp_path):
    """`embed --num_workers 2` killed with SIGKILL: its reader processes end with it (they used to
    stay alive for minutes, blocked on their queue)."""
    psutil = pytest.importorskip("psutil")
    marker = tmp_path / "marker"
    output = tmp_path / "embeddings.parquet"
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_CLI, str(marker), *embed_args(records, model_folder, output, "--num_workers", "2")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the CLI never reached its second batch"
        time.sleep(0.05)
    workers = psutil.Process(process.pid).children(recursive=True)
    assert len(workers) >= 2
    process.kill()
    process.communicate(timeout=60)
    gone, alive = psutil.wait_procs(workers, timeout=20)
    for worker in alive:
        worker.kill()
    assert not alive, [worker.pid for worker in alive]



def test_a_missing_local_model_folder_says_so(tmp_path):
    # The checked loader (behind `dbeta demo` too), not the Hub's "Repo id must be in the form ...",
    # for a path that can only be local.
    from dbeta.loading import ModelLoadError, load_any_model, load_model_and_processor

    for missing in (str(tmp_path / "no-such-model"), "./no-such-model", "outputs/runs/no-such-model"):
        for load in (load_any_model, load_model_and_processor):
            with pytest.raises(ModelLoadError, match=r"no such folder \(a Hub id looks like 'namespace/name'\)"):
                load(missing)
