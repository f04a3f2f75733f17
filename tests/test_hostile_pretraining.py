"""Pre-training and data preparation on hostile input (external review): each defect class is fixed
at its root and checked here with the input that showed it.

1. `--resume_from_checkpoint` with other settings: every checkpoint holds the run's fingerprint;
   a resume that changes it is refused (each change named) unless `--allow_resume_mismatch`.
2. The demo's corpus / prepared folder reused whatever `--seed` / `--demo_num_records` say.
3. Random bytes or a truncation inside a prepared `.arrow` file: the checksum manifest.
4. `--overwrite_output_dir` leaving the previous run's exported model in place.
5. Unclear crashes (another architecture, a full disk during a checkpoint): one line, exit status 2.
6. MIMIC preparation reading a whole 6 h record for its first 10 s.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from dbeta.train.data import mimic_iv_ecg
from dbeta.train.data.mimic_iv_ecg import CHECKSUM_MANIFEST, prepare_mimic_iv_ecg
from dbeta.train.pretraining.args import parse_args
from dbeta.train.pretraining.checkpoints import EXPORT_MANIFEST, resolve_checkpoint
from dbeta.train.pretraining.errors import (
    CheckpointWriteError,
    OutputDirInUseError,
    PretrainingFileError,
    PretrainingInputError,
)
from dbeta.train.pretraining.fingerprint import FINGERPRINT_FILE, check_resume, run_fingerprint, write_fingerprint
from tests.test_pretrain import common_args, prepared_dataset, run_main, tiny_setup  # noqa: F401  (fixtures)

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def accelerate_state():
    """The accelerate logger needs a state; `run_main` resets it around each run."""
    from accelerate import PartialState

    PartialState(cpu=True)


@pytest.fixture(scope="module")
def base_run(tiny_setup, tmp_path_factory):
    """4 optimiser steps with checkpoints at 2 and 4 (gradient accumulation 2, batch 8)."""
    output_dir = tmp_path_factory.mktemp("base") / "run"
    result = run_main(common_args(tiny_setup, output_dir, "--max_train_steps", "4"))
    return SimpleNamespace(result=result, output_dir=output_dir)


def resumable_copy(base_run, folder: Path, step: int = 2) -> Path:
    """A fresh output folder holding only the base run's checkpoint `step`."""
    (folder / "checkpoints").mkdir(parents=True)
    shutil.copytree(base_run.output_dir / "checkpoints" / f"step_{step}", folder / "checkpoints" / f"step_{step}")
    return folder


def same_weights(folder_a: Path, folder_b: Path) -> bool:
    a, b = load_file(folder_a / "model.safetensors"), load_file(folder_b / "model.safetensors")
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


# ---------------------------------------------------------------------------------------------
# 1. Run fingerprint: resume only the run that wrote the checkpoint
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_checkpoint_holds_the_run_fingerprint(base_run, tiny_setup):
    fingerprint = json.loads((base_run.output_dir / "checkpoints" / "step_2" / FINGERPRINT_FILE).read_text())
    settings = fingerprint["settings"]
    assert fingerprint["format"] == 1 and fingerprint["resumes"] == []
    assert settings["seed"] == 0 and settings["optimizer.learning_rate"] == 1e-3
    assert (settings["optimizer.adam_beta1"], settings["optimizer.adam_beta2"], settings["optimizer.adam_epsilon"]) == (0.9, 0.98, 1e-6)
    assert settings["schedule.type"] == "tri_stage" and settings["schedule.hold_ratio"] == 0.4
    assert settings["schedule.max_train_steps"] == 4 and settings["batch.total"] == 16  # 8 x 1 process x 2 accumulation
    assert settings["n3s.encoder"] == "tfidf" and settings["n3s.negative_fraction"] == 0.5
    assert settings["model.mlm_probability"] == 0.25 and settings["model.ecg_config.mask_ratio"] == 0.75
    assert settings["model.ets_loss_weight"] == 1.0 and "model._name_or_path" not in settings
    assert settings["text_encoder_init"].startswith("random initialisation")
    train_rows = json.loads((tiny_setup.dataset / "summary.json").read_text())["kept_by_split"]["train"]
    assert settings["data.train_rows"] == train_rows and settings["data.validation_rows"] > 0
    assert settings["data.train_files"].startswith("sha256:")  # from the preparation's checksum manifest
    assert fingerprint["layout"] == {"processes": 1, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 2, "mixed_precision": "no"}
    # The same on the later checkpoint; none of it reaches the Hub folder.
    assert json.loads((base_run.output_dir / "checkpoints" / "step_4" / FINGERPRINT_FILE).read_text())["settings"] == settings
    assert not (base_run.output_dir / FINGERPRINT_FILE).exists()


@pytest.mark.slow
def test_a_resume_with_the_same_settings_continues_bit_exactly(base_run, tiny_setup, tmp_path):
    folder = resumable_copy(base_run, tmp_path / "same")
    resumed = run_main(common_args(tiny_setup, folder, "--max_train_steps", "4", "--resume_from_checkpoint", "latest"))
    assert resumed.history == base_run.result.history[2:]  # every loss term, bit for bit
    assert same_weights(base_run.output_dir, folder)
    assert "resumes" not in json.loads((folder / "results.json").read_text())


@pytest.mark.slow
def test_a_resume_with_other_settings_is_refused_naming_every_change(base_run, tiny_setup, tmp_path):
    folder = resumable_copy(base_run, tmp_path / "other")
    with pytest.raises(PretrainingInputError) as raised:
        run_main(
            common_args(tiny_setup, folder, "--max_train_steps", "4", "--resume_from_checkpoint", "latest", "--seed", "1",
                        "--learning_rate", "2e-3", "--config_overrides", "mlm_probability=0.15,ecg_config.mask_ratio=0.5")
        )  # fmt: skip
    message = str(raised.value)
    assert "\n" not in message and "step_2" in message
    for change in ("seed 0 -> 1", "optimizer.learning_rate 0.001 -> 0.002", "model.mlm_probability 0.25 -> 0.15",
                   "model.ecg_config.mask_ratio 0.75 -> 0.5"):  # fmt: skip
        assert change in message
    assert "--allow_resume_mismatch" in message
    assert not (folder / "model.safetensors").exists() and sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["step_2"]


@pytest.mark.slow
def test_a_resume_on_other_data_is_refused(base_run, tiny_setup, tmp_path):
    """The same corpus prepared with another split seed: other rows in each split."""
    other = tmp_path / "other_prepared"
    prepare_mimic_iv_ecg(tiny_setup.dataset.parent / "raw", other, val_fraction=0.2, seed=1, progress=False)
    folder = resumable_copy(base_run, tmp_path / "data")
    setup = SimpleNamespace(**{**vars(tiny_setup), "dataset": other})
    with pytest.raises(PretrainingInputError, match=r"data\.train_files 'sha256:[0-9a-f]+' -> 'sha256:[0-9a-f]+'"):
        run_main(common_args(setup, folder, "--max_train_steps", "4", "--resume_from_checkpoint", "latest"))
    # A byte-identical copy of the data elsewhere is the same data: the run goes on.
    copy = tmp_path / "copied_prepared"
    shutil.copytree(tiny_setup.dataset, copy, ignore=shutil.ignore_patterns("n3s"))
    setup = SimpleNamespace(**{**vars(tiny_setup), "dataset": copy})
    resumed = run_main(common_args(setup, folder, "--max_train_steps", "4", "--resume_from_checkpoint", "latest"))
    assert resumed.history == base_run.result.history[2:]


@pytest.mark.slow
def test_allow_resume_mismatch_continues_and_records_the_changes(base_run, tiny_setup, tmp_path, caplog):
    folder = resumable_copy(base_run, tmp_path / "allowed")
    caplog.set_level("WARNING")
    result = run_main(
        common_args(tiny_setup, folder, "--max_train_steps", "4", "--resume_from_checkpoint", "latest", "--seed", "1",
                    "--allow_resume_mismatch")
    )  # fmt: skip
    assert result.completed_steps == 4
    assert "--allow_resume_mismatch: resuming from" in caplog.text and "seed 0 -> 1" in caplog.text
    resumes = json.loads((folder / "results.json").read_text())["resumes"]
    assert resumes == [{"checkpoint": "step_2", "step": 2, "changed": {"seed": [0, 1]}, "allowed_by": "--allow_resume_mismatch"}]
    assert "Resumed from checkpoint step_2 at step 2 with changed settings (--allow_resume_mismatch): seed 0 -> 1" in (folder / "README.md").read_text()
    # The next checkpoint carries this run's settings and the record of the change.
    fingerprint = json.loads((folder / "checkpoints" / "step_4" / FINGERPRINT_FILE).read_text())
    assert fingerprint["settings"]["seed"] == 1 and fingerprint["resumes"] == resumes


@pytest.mark.slow
def test_a_checkpoint_without_a_fingerprint_resumes_bit_exactly_with_a_warning(base_run, tiny_setup, tmp_path, caplog):
    folder = resumable_copy(base_run, tmp_path / "older")
    (folder / "checkpoints" / "step_2" / FINGERPRINT_FILE).unlink()  # as written before fingerprints existed
    caplog.set_level("WARNING")
    resumed = run_main(common_args(tiny_setup, folder, "--max_train_steps", "4", "--resume_from_checkpoint", "latest"))
    assert resumed.history == base_run.result.history[2:]
    assert f"has no {FINGERPRINT_FILE}" in caplog.text
    assert json.loads((folder / "results.json").read_text())["resumes"][0]["changed"] == "unknown (no fingerprint)"


def fingerprinted_checkpoint(tmp_path: Path, argv_extra=(), num_processes=1) -> tuple[Path, SimpleNamespace]:
    args = parse_args(["--dataset_dir", "d", "--config_name", "c", "--n3s_encoder", "tfidf", "--text_encoder_from_scratch",
                       "--max_train_steps", "100", "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "2", *argv_extra])  # fmt: skip
    checkpoint = tmp_path / "checkpoints" / "step_10"
    checkpoint.mkdir(parents=True)
    write_fingerprint(checkpoint, run_fingerprint(args, num_processes))
    return checkpoint, args


def test_the_global_batch_and_the_run_length_may_change_with_a_warning(tmp_path):
    checkpoint, _ = fingerprinted_checkpoint(tmp_path)
    # Another node count, same global batch (1 x 8 x 2 = 2 x 4 x 2): nothing to say.
    args = parse_args(["--dataset_dir", "d", "--config_name", "c", "--n3s_encoder", "tfidf", "--text_encoder_from_scratch",
                       "--max_train_steps", "100", "--per_device_train_batch_size", "4", "--gradient_accumulation_steps", "2",
                       "--resume_from_checkpoint", str(checkpoint)])  # fmt: skip
    assert check_resume(args, checkpoint, num_processes=2) == []
    # A longer run on another global batch: a warning naming both, and a record.
    args.max_train_steps, args.per_device_train_batch_size = 200, 16
    warnings = check_resume(args, checkpoint, num_processes=1)
    assert len(warnings) == 1 and "schedule.max_train_steps 100 -> 200" in warnings[0] and "batch.total 16 -> 32" in warnings[0]
    assert args._run_fingerprint_notes["resumes"][-1]["allowed_by"] == "declared (run length / global batch)"


def test_an_unreadable_fingerprint_is_refused_unless_allowed(tmp_path):
    checkpoint, args = fingerprinted_checkpoint(tmp_path)
    (checkpoint / FINGERPRINT_FILE).write_bytes(os.urandom(64))
    with pytest.raises(PretrainingInputError, match=rf"Cannot check that .*step_10 belongs to this run: .*{FINGERPRINT_FILE} is unreadable"):
        check_resume(args, checkpoint, num_processes=1)
    args.allow_resume_mismatch = True
    assert "without checking its settings" in check_resume(args, checkpoint, num_processes=1)[0]


def test_resume_flags_are_checked():
    with pytest.raises(PretrainingInputError, match="--allow_resume_mismatch only applies with --resume_from_checkpoint"):
        parse_args(["--dataset_dir", "d", "--allow_resume_mismatch"])
    with pytest.raises(FileNotFoundError, match="No checkpoint folder nowhere/step_3"):
        resolve_checkpoint("nowhere/step_3", "out")


# ---------------------------------------------------------------------------------------------
# 2. The demo's corpus and prepared folder belong to their settings
# ---------------------------------------------------------------------------------------------


def demo_args(tmp_path, *extra):
    return parse_args(["--demo_corpus_dir", str(tmp_path / "corpus"), "--demo_dataset_dir", str(tmp_path / "prepared"),
                       "--demo_num_records", "12", "--output_dir", str(tmp_path / "out"), *extra])  # fmt: skip


def test_the_demo_refuses_a_corpus_or_prepared_folder_written_with_other_settings(tmp_path, caplog):
    from dbeta.train.demo.make_demo_corpus import simulator_fingerprint
    from dbeta.train.demo.recipe import DEMO_SETTINGS_FILE, prepare_demo_dataset

    simulator = simulator_fingerprint()
    assert re.fullmatch(r"[0-9a-f]{16}", simulator)
    dataset_dir = Path(prepare_demo_dataset(demo_args(tmp_path)))
    assert json.loads((tmp_path / "corpus" / DEMO_SETTINGS_FILE).read_text()) == {"demo_num_records": 12, "seed": 0, "simulator": simulator}
    assert json.loads((dataset_dir / DEMO_SETTINGS_FILE).read_text()) == {
        "demo_num_records": 12, "seed": 0, "simulator": simulator, "demo_real_pairs": "none", "demo_real_repeats": 0,
    }  # fmt: skip
    assert prepare_demo_dataset(demo_args(tmp_path)) == str(dataset_dir)  # same settings: reused

    # A corpus written by another simulator (another beat share, say) is not trained on as this one's.
    settings_file = tmp_path / "corpus" / DEMO_SETTINGS_FILE
    settings_file.write_text(json.dumps({"demo_num_records": 12, "seed": 0, "simulator": "0123456789abcdef"}))
    with pytest.raises(PretrainingInputError, match=rf"was written with simulator='0123456789abcdef', not simulator='{simulator}'"):
        prepare_demo_dataset(demo_args(tmp_path))
    settings_file.write_text(json.dumps({"demo_num_records": 12, "seed": 0, "simulator": simulator}))

    for extra, change in ((["--seed", "1"], "seed=0, not seed=1"), (["--demo_num_records", "20"], "demo_num_records=12, not demo_num_records=20")):
        args = demo_args(tmp_path, *extra)
        args.demo_num_records = int(extra[1]) if extra[0] == "--demo_num_records" else 12
        with pytest.raises(PretrainingInputError) as raised:
            prepare_demo_dataset(args)
        message = str(raised.value)
        assert f"{tmp_path / 'corpus'} was written with " in message and change in message
        assert f"delete {tmp_path / 'corpus'} and {tmp_path / 'prepared'}" in message and "--demo_corpus_dir" in message

    # The corpus deleted but not the prepared folder: the corpus is written anew, the old preparation refused.
    shutil.rmtree(tmp_path / "corpus")
    with pytest.raises(PretrainingInputError, match=rf"{tmp_path / 'prepared'} was prepared with seed=0, not seed=1: delete it"):
        prepare_demo_dataset(demo_args(tmp_path, "--seed", "1"))
    assert json.loads((tmp_path / "corpus" / DEMO_SETTINGS_FILE).read_text())["seed"] == 1

    # Folders from before the settings were recorded: reused, with a warning.
    (tmp_path / "corpus" / DEMO_SETTINGS_FILE).unlink()
    (dataset_dir / DEMO_SETTINGS_FILE).unlink()
    caplog.set_level("WARNING")
    assert prepare_demo_dataset(demo_args(tmp_path, "--seed", "1")) == str(dataset_dir)
    assert "was written before demo corpora recorded their settings" in caplog.text
    assert "was prepared before demo folders recorded their settings" in caplog.text


# ---------------------------------------------------------------------------------------------
# 3. Prepared files are checked against the checksums of their preparation
# ---------------------------------------------------------------------------------------------


def test_the_preparation_records_the_checksum_of_every_file(prepared_dataset):
    manifest = json.loads((prepared_dataset / CHECKSUM_MANIFEST).read_text())
    assert manifest["algorithm"] == "sha256" and manifest["splits"] == ["train", "validation"]
    arrows = sorted(str(p.relative_to(prepared_dataset)) for p in prepared_dataset.glob("*/*.arrow"))
    assert arrows and set(arrows) <= set(manifest["files"]) and "dataset_dict.json" in manifest["files"]
    for name in (*arrows, "train/state.json"):
        data = (prepared_dataset / name).read_bytes()
        assert manifest["files"][name] == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    # The split's `_fingerprint` (the key of `datasets` caches) follows the content, not the path.
    state = json.loads((prepared_dataset / "train" / "state.json").read_text())
    digests = "".join(manifest["files"][f"train/{item['filename']}"]["sha256"] for item in state["_data_files"])
    assert state["_fingerprint"] == hashlib.sha256(digests.encode()).hexdigest()[:16]


@pytest.fixture
def damaged_copy(prepared_dataset, tmp_path):
    copy = tmp_path / "prepared"
    shutil.copytree(prepared_dataset, copy, ignore=shutil.ignore_patterns("n3s"))
    return copy


def load(setup, dataset_dir, tmp_path, *extra):
    from dbeta.train.pretraining.data import load_splits

    return load_splits(parse_args(common_args(SimpleNamespace(**{**vars(setup), "dataset": dataset_dir}), tmp_path / "out", *extra)))


def first_train_arrow(dataset_dir: Path) -> Path:
    return sorted((dataset_dir / "train").glob("*.arrow"))[0]


def test_random_bytes_inside_an_arrow_file_stop_training_naming_the_file(tiny_setup, damaged_copy, tmp_path):
    arrow = first_train_arrow(damaged_copy)
    with open(arrow, "r+b") as handle:  # same size: only the checksum tells
        handle.seek(arrow.stat().st_size // 2)
        handle.write(os.urandom(64))
    with pytest.raises(PretrainingFileError) as raised:
        run_main(common_args(SimpleNamespace(**{**vars(tiny_setup), "dataset": damaged_copy}), tmp_path / "out"))
    message = str(raised.value)
    assert str(arrow) in message and "SHA-256 mismatch" in message and "prepare the data again" in message and "\n" not in message
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_only_the_hashing_process_reads_the_contents(damaged_copy):
    """`pretrain.py` hashes the prepared files on one process per machine (`check_prepared_data`
    through `SharedPreparation`); the others check presence and sizes only."""
    from dbeta.train.data.mimic_iv_ecg import PreparedDatasetError, verify_prepared_dataset

    arrow = first_train_arrow(damaged_copy)
    with open(arrow, "r+b") as handle:
        handle.seek(arrow.stat().st_size // 2)
        handle.write(os.urandom(64))
    assert verify_prepared_dataset(damaged_copy, ("train", "validation"), hash_files=False) is not None
    with pytest.raises(PreparedDatasetError, match="SHA-256 mismatch"):
        verify_prepared_dataset(damaged_copy, ("train", "validation"))
    os.truncate(arrow, arrow.stat().st_size // 2)
    with pytest.raises(PreparedDatasetError, match="truncated"):
        verify_prepared_dataset(damaged_copy, ("train", "validation"), hash_files=False)


@pytest.mark.parametrize("damage", ["truncated", "deleted", "state_edited"])
def test_truncated_missing_or_edited_files_are_named(tiny_setup, damaged_copy, tmp_path, damage):
    arrow = first_train_arrow(damaged_copy)
    if damage == "truncated":
        os.truncate(arrow, arrow.stat().st_size // 2)
        expected = rf"{arrow} has \d+ bytes, but the preparation wrote \d+ \(truncated, damaged or edited file\)"
    elif damage == "deleted":
        arrow.unlink()
        expected = rf"{arrow} is missing"
    else:
        state = damaged_copy / "train" / "state.json"
        state.write_text(state.read_text().replace('"_split": "train"', '"_split": "tr4in"'))  # same size
        expected = rf"{state} differs from what the preparation wrote"
    with pytest.raises(PretrainingFileError, match=expected):
        load(tiny_setup, damaged_copy, tmp_path)


def test_a_dataset_without_checksums_loads_with_a_warning_and_a_truncated_file_is_still_named(tiny_setup, damaged_copy, tmp_path, caplog):
    (damaged_copy / CHECKSUM_MANIFEST).unlink()  # prepared before checksums were recorded
    caplog.set_level("WARNING")
    train, validation, _ = load(tiny_setup, damaged_copy, tmp_path)
    assert len(train) > 0 and len(validation) > 0
    assert f"has no {CHECKSUM_MANIFEST}" in caplog.text
    arrow = first_train_arrow(damaged_copy)
    os.truncate(arrow, arrow.stat().st_size - 1000)
    with pytest.raises(PretrainingFileError, match=rf"{arrow} is unreadable \(.*\): truncated or damaged"):
        load(tiny_setup, damaged_copy, tmp_path)
    with pytest.raises(PretrainingFileError, match=rf"{arrow} is unreadable"):
        load(tiny_setup, damaged_copy, tmp_path, "--streaming", "--max_train_steps", "2")


def test_unusable_datasets_and_splits_are_one_line_errors(tiny_setup, damaged_copy, tmp_path):
    with pytest.raises(PretrainingInputError, match=r"--train_split 'test': .* has no such split \(it has: train, validation\)"):
        load(tiny_setup, damaged_copy, tmp_path, "--train_split", "test")
    with pytest.raises(PretrainingFileError, match=r"--dataset_dir .*missing is not a folder"):
        load(tiny_setup, tmp_path / "missing", tmp_path)
    with pytest.raises(PretrainingInputError, match=r"has \d+ rows, fewer than one batch \(--per_device_train_batch_size 4096\)"):
        load(tiny_setup, damaged_copy, tmp_path, "--per_device_train_batch_size", "4096")


@pytest.mark.parametrize("damage", ["random_bytes", "edited_reports", "out_of_range"])
def test_a_damaged_n3s_cache_is_rebuilt_not_trained_on(tmp_path, caplog, damage):
    """The N3S cache beside the data is derived from it: damage is detected and the cache rebuilt (its documented repair)."""
    from dbeta.train.pretraining.n3s import N3SSettings, load_or_build_n3s_index

    reports = [f"report {i} sinus rhythm" for i in range(40)]
    settings = N3SSettings("tfidf", "far", 8)
    built = load_or_build_n3s_index(reports, tmp_path, settings)
    folder = tmp_path / settings.cache_name()
    if damage == "random_bytes":
        with open(folder / "candidates.npy", "r+b") as handle:
            handle.seek(200)
            handle.write(os.urandom(64))
    elif damage == "edited_reports":
        saved = json.loads((folder / "reports.json").read_text())
        (folder / "reports.json").write_text(json.dumps(saved[::-1]))
    else:  # an older cache (no checksums) whose candidates point past the reports
        config = json.loads((folder / "n3s_config.json").read_text())
        del config["files_sha256"]
        (folder / "n3s_config.json").write_text(json.dumps(config))
        np.save(folder / "candidates.npy", np.full_like(built.candidates, 10_000))
    caplog.set_level("WARNING")
    rebuilt = load_or_build_n3s_index(reports, tmp_path, settings)
    assert "Unreadable N3S cache" in caplog.text and "rebuilding it" in caplog.text
    assert rebuilt.reports == built.reports and np.array_equal(rebuilt.candidates, built.candidates)


# ---------------------------------------------------------------------------------------------
# 4. --overwrite_output_dir removes the earlier run's exported model (and only it)
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("older_export", [False, True], ids=["with_manifest", "without_manifest"])
def test_overwrite_output_dir_removes_the_earlier_export_and_nothing_else(base_run, tiny_setup, tmp_path, older_export):
    folder = tmp_path / "out"
    shutil.copytree(base_run.output_dir, folder)
    exported = json.loads((folder / EXPORT_MANIFEST).read_text())["files"]
    assert {"config.json", "model.safetensors", "README.md", "results.json", "tokenizer.json", "modeling_dbeta.py"} <= set(exported)
    if older_export:
        (folder / EXPORT_MANIFEST).unlink()
    (folder / "my_notes.txt").write_text("the user's own file")
    (folder / "my_folder").mkdir()
    # Without the flag a fresh run refuses the folder (checkpoints and exported model named).
    with pytest.raises(OutputDirInUseError, match=r"already holds checkpoints of an earlier run \(step_2, step_4\) and the model an earlier run exported"):
        run_main(common_args(tiny_setup, folder))
    # With it, the earlier run is gone before anything else happens (here the run then stops on a missing dataset).
    setup = SimpleNamespace(**{**vars(tiny_setup), "dataset": tmp_path / "no_such_dataset"})
    with pytest.raises(PretrainingFileError, match="is not a folder"):
        run_main(common_args(setup, folder, "--overwrite_output_dir"))
    left = {p.name for p in folder.iterdir()}
    assert not left & set(exported) and EXPORT_MANIFEST not in left and "checkpoints" not in left
    assert {"my_notes.txt", "my_folder"} <= left


def test_a_hostile_export_manifest_deletes_nothing_outside_the_folder(tmp_path):
    from dbeta.train.pretraining.checkpoints import previous_export_files

    folder = tmp_path / "out"
    (folder / "sub").mkdir(parents=True)
    (tmp_path / "outside.txt").write_text("keep")
    (folder / "results.json").write_text("{}")
    (folder / EXPORT_MANIFEST).write_text(json.dumps({"files": ["../outside.txt", "sub", "/etc/passwd", "results.json", 3]}))
    assert sorted(p.name for p in previous_export_files(folder)) == [EXPORT_MANIFEST, "results.json"]
    # Another model's folder without a manifest: nothing of it is an earlier export of this script.
    (folder / EXPORT_MANIFEST).unlink()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert previous_export_files(folder) == []


# ---------------------------------------------------------------------------------------------
# 5. Unclear crashes become one line: another architecture, a full disk, bad flags and files
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_resuming_another_architecture_is_refused_then_named_on_one_line(base_run, tiny_setup, tmp_path):
    folder = resumable_copy(base_run, tmp_path / "arch")
    other_model = ["--max_train_steps", "4", "--resume_from_checkpoint", "latest", "--config_overrides", "ecg_config.intermediate_size=96"]
    with pytest.raises(PretrainingInputError, match=r"model\.ecg_config\.intermediate_size 128 -> 96"):
        run_main(common_args(tiny_setup, folder, *other_model))
    with pytest.raises(PretrainingInputError) as raised:  # also without the fingerprint's help
        run_main(common_args(tiny_setup, folder, *other_model, "--allow_resume_mismatch"))
    message = str(raised.value)
    assert "\n" not in message and "step_2: its weights do not fit this run's model" in message
    assert "size mismatch" in message and "another architecture" in message


@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_save_removes_the_partial_folder_and_says_so(base_run, tiny_setup, tmp_path, monkeypatch):
    from accelerate import Accelerator

    save_state = Accelerator.save_state

    def disk_full_at_step_4(self, output_dir=None, **kwargs):
        if "step_4" in str(output_dir):
            save_state(self, output_dir, **kwargs)  # most of it written, then the disk fills up
            raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file data/3: file write failed")
        return save_state(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", disk_full_at_step_4)
    folder = tmp_path / "full"
    with pytest.raises(CheckpointWriteError) as raised:
        run_main(common_args(tiny_setup, folder, "--max_train_steps", "4"))
    monkeypatch.undo()
    message = str(raised.value)
    assert isinstance(raised.value, OSError) and "\n" not in message
    assert f"Checkpoint {folder / 'checkpoints' / 'step_4'} was not written: the disk is full" in message
    assert "partial folder was removed" in message and "--resume_from_checkpoint latest (from step_2)" in message
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["step_2"]
    assert (folder / "checkpoints" / "step_2" / FINGERPRINT_FILE).is_file()
    resumed = run_main(common_args(tiny_setup, folder, "--max_train_steps", "4", "--resume_from_checkpoint", "latest"))
    assert resumed.history == base_run.result.history[2:]


@pytest.mark.slow
def test_a_full_disk_during_the_final_export_leaves_no_half_folder(tiny_setup, tmp_path, monkeypatch):
    import errno

    from dbeta.train.pretraining import hub

    def disk_full(model, processor, folder, *args, **kwargs):
        (Path(folder) / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(folder) / "model.safetensors"))

    monkeypatch.setattr(hub, "write_hub_folder", disk_full)
    folder = tmp_path / "out"
    with pytest.raises(CheckpointWriteError) as raised:
        run_main(common_args(tiny_setup, folder, "--max_train_steps", "2"))
    message = str(raised.value)
    assert f"The Hub folder {folder} was not written: the disk is full (OSError: [Errno 28] No space left on device" in message
    assert "--resume_from_checkpoint latest" in message and "\n" not in message
    assert not (folder / "model.safetensors").exists() and not (folder / ".hub_staging").exists()
    assert (folder / "checkpoints" / "step_2" / FINGERPRINT_FILE).is_file()  # the training state is safe


def test_the_preparation_command_reports_bad_folders_on_one_line(tmp_path, capsys):
    from dbeta.train.data.prepare_mimic_iv_ecg import main as prepare_main

    (tmp_path / "a_file").write_text("")
    with pytest.raises(SystemExit) as raised:
        prepare_main(["--mimic_root", str(tmp_path), "--output_dir", str(tmp_path / "a_file")])
    assert raised.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"prepare_mimic_iv_ecg.py: error: --output_dir {tmp_path / 'a_file'} is a file, not a folder; choose another --output_dir"
    ]


HOSTILE_FLAGS = [
    (["--logging_steps", "0"], "--logging_steps 0 is outside its range [1, inf]"),
    (["--per_device_train_batch_size", "-8"], "--per_device_train_batch_size -8 is outside its range [1, inf]"),
    (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps 0 is outside"),
    (["--learning_rate", "nan"], "--learning_rate nan is outside its range [0, inf]"),
    (["--warmup_ratio", "inf"], "--warmup_ratio inf is outside"),
    (["--final_lr_scale", "0"], "--final_lr_scale 0.0 is outside its range (0, 1]"),
    (["--adam_beta2", "1"], "--adam_beta2 1.0 is outside its range [0, 1)"),
    (["--seed", "-1"], "--seed -1 is outside its range [0, 4294967295]"),
    (["--max_grad_norm", "-1"], "--max_grad_norm -1.0 is outside"),
    (["--max_eval_samples", "0"], "--max_eval_samples 0 is outside"),
    (["--text_length_buckets", "64", "0"], "--text_length_buckets 0 is outside"),
    (["--negative_fraction", "1.5"], "--negative_fraction 1.5 is outside its range [0, 1]"),
    (["--num_train_epochs", "0"], "--num_train_epochs 0 is outside"),
    (["--train_crop_seconds", "0"], "--train_crop_seconds 0.0 is outside its range (0, inf]"),
]


@pytest.mark.parametrize("flags, message", HOSTILE_FLAGS, ids=[flags[0] for flags, _ in HOSTILE_FLAGS])
def test_out_of_range_flags_are_refused_naming_the_flag(flags, message):
    with pytest.raises(PretrainingInputError) as raised:
        parse_args(["--dataset_dir", "d", *flags])
    assert message in str(raised.value)


def test_unusable_label_config_and_output_files_are_named(tiny_setup, tmp_path):
    bad_json = tmp_path / "labels.json"
    bad_json.write_text("{not json")
    with pytest.raises(PretrainingFileError, match=rf"--zero_shot_labels {bad_json}: JSONDecodeError"):
        parse_args(["--dataset_dir", "d", "--zero_shot_labels", str(bad_json)])
    bad_json.write_text(json.dumps({"af": ["atrial fibrillation", "(unclosed"]}))
    with pytest.raises(PretrainingInputError, match=r"label 'af': bad regular expression '\(unclosed'"):
        parse_args(["--dataset_dir", "d", "--zero_shot_labels", str(bad_json)])
    bad_json.write_text(json.dumps({"af": "atrial fibrillation"}))
    with pytest.raises(PretrainingInputError, match=r"label 'af' is 'atrial fibrillation', not \[prompt, regex\]"):
        parse_args(["--dataset_dir", "d", "--zero_shot_labels", str(bad_json)])
    (tmp_path / "a_file").write_text("")
    with pytest.raises(PretrainingFileError, match="--output_dir .*a_file is a file, not a folder"):
        parse_args(["--dataset_dir", "d", "--output_dir", str(tmp_path / "a_file")])
    config = tmp_path / "config.json"
    config.write_bytes(os.urandom(100))
    with pytest.raises(PretrainingFileError, match=rf"--config_name {config}: not a readable DBetaConfig JSON file"):
        run_main(common_args(SimpleNamespace(**{**vars(tiny_setup), "config": config}), tmp_path / "out"))
    with pytest.raises(PretrainingInputError, match=r"--config_overrides 'no_such_field=1': .*no_such_field"):
        run_main(common_args(tiny_setup, tmp_path / "out", "--config_overrides", "no_such_field=1"))


def test_the_command_prints_one_line_and_exits_with_status_2(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train" / "pretrain.py"), "--dataset_dir", str(tmp_path), "--logging_steps", "0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 2, completed.stderr[-2000:]
    assert completed.stderr.strip().splitlines() == ["pretrain.py: error: --logging_steps 0 is outside its range [1, inf]."]


def test_other_errors_keep_their_traceback_and_main_raises(tmp_path):
    """Only a `PretrainingInputError` becomes one line; calling `main()` gives the exception itself."""
    from dbeta.train import pretrain

    from dbeta.train.pretraining.errors import one_line

    with pytest.raises(PretrainingInputError):
        pretrain.main(["--dataset_dir", str(tmp_path), "--logging_steps", "0"])
    assert one_line(CheckpointWriteError("the disk\nis full")).endswith("error: the disk is full")
    assert sys.excepthook is sys.__excepthook__ or not getattr(sys.excepthook, "dbeta_one_line_errors", False)


# ---------------------------------------------------------------------------------------------
# 6. MIMIC preparation reads only the first 10 s of a record
# ---------------------------------------------------------------------------------------------


def test_a_long_record_is_read_only_for_its_first_10_s(tmp_path, monkeypatch):
    """A 10-minute record (the review's 6 h ones are 1.9-5.2 GB): `wfdb` is asked for 5000 samples
    only, the row holds the first 10 s, and the record is counted as trimmed."""
    import wfdb

    from dbeta.train.demo.make_demo_corpus import MIMIC_LEAD_ORDER, make_demo_corpus, simulate_ecg
    from tests.test_data_mimic_iv_ecg import _append_study

    root = make_demo_corpus(tmp_path / "mimic", num_records=4, num_subjects=2, seed=3)
    ten_seconds = simulate_ecg(np.random.default_rng(1), ["sinus_rhythm"]).signal
    long = np.tile(ten_seconds, (1, 60))  # 10 minutes, 300000 samples
    _append_study(root, 19000002, 39000002, long, MIMIC_LEAD_ORDER, 500, ["Sinus rhythm"])
    reads = []
    rdrecord = wfdb.rdrecord

    def spy(record_name, *args, **kwargs):
        reads.append((Path(record_name).name, kwargs.get("sampto")))
        return rdrecord(record_name, *args, **kwargs)

    monkeypatch.setattr(wfdb, "rdrecord", spy)
    summary = prepare_mimic_iv_ecg(root, tmp_path / "prepared", val_fraction=0.0, progress=False)
    assert ("39000002", 5000) in reads and all(sampto == 5000 for _, sampto in reads)
    assert summary.trimmed_to_num_samples == 1 and summary.records_kept == 5
    import datasets

    train = datasets.load_from_disk(str(tmp_path / "prepared"))["train"].with_format("numpy")
    row = train[list(train["study_id"]).index(39000002)]
    expected = np.round(ten_seconds.astype(np.float64) * 200) / 200  # the file's 16-bit steps at gain 200
    np.testing.assert_allclose(mimic_iv_ecg.decode_ecg(row), expected[:, :5000], atol=1e-3)


def test_a_header_without_the_record_length_is_read_whole_only_when_small(tmp_path, monkeypatch):
    from dbeta.train.demo.make_demo_corpus import MIMIC_LEAD_ORDER, make_demo_corpus, mimic_relative_path, simulate_ecg
    from tests.test_data_mimic_iv_ecg import _append_study

    root = make_demo_corpus(tmp_path / "mimic", num_records=2, num_subjects=1, seed=4)
    signal = simulate_ecg(np.random.default_rng(2), ["sinus_rhythm"]).signal
    for study, samples in ((39000010, 5000), (39000011, 6000)):
        _append_study(root, 19000010, study, np.tile(signal, (1, 2))[:, :samples], MIMIC_LEAD_ORDER, 500, ["Sinus rhythm"])
        header = root / (mimic_relative_path(19000010, study) + ".hea")
        lines = header.read_text().splitlines()
        lines[0] = " ".join(lines[0].split()[:3])  # record name, signals, rate: no length
        header.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(mimic_iv_ecg, "MAX_UNBOUNDED_SIGNAL_BYTES", 130_000)  # 5000 x 12 x 2 bytes fit, 6000 do not
    summary = prepare_mimic_iv_ecg(root, tmp_path / "prepared", val_fraction=0.0, progress=False)
    skipped = (tmp_path / "prepared" / "skipped.csv").read_text()
    assert summary.records_kept == 3 and summary.skipped_by_reason == {"unreadable": 1}
    assert "39000011" in skipped and "gives no record length" in skipped and "39000010" not in skipped


def test_a_training_crop_longer_than_the_model_input_is_refused():
    from types import SimpleNamespace

    from dbeta.train.pretraining.data import build_dataloaders
    from tests.tiny import tiny_config

    args = SimpleNamespace(negative_fraction=0.5, text_length_buckets=None, pad_to_multiple_of=None, train_crop_seconds=12.5)
    with pytest.raises(PretrainingInputError, match=r"--train_crop_seconds 12.5: longer than the model's input \(5000 samples at 500 Hz = 10 s\)"):
        build_dataloaders(args, None, tiny_config(), {}, None, None)
