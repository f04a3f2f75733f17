# Copyright 2026 The dbeta authors. Licensed under the Apache License, Version 2.0.
"""Checkpoints of a pre-training run: the progress saved with them, where they live
(`<output_dir>/checkpoints/step_N`), saving (complete folders only, the last K kept, each with the
run's fingerprint), resuming (only the run that wrote the checkpoint, also on another number of
processes or batch size: `dbeta.train.pretraining.fingerprint`) and the check that a fresh run does
not start beside another run's checkpoints or exported model (`--overwrite_output_dir` deletes both)."""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger

from dbeta.train.pretraining.errors import (
    CheckpointNotFoundError,
    CheckpointWriteError,
    OutputDirInUseError,
    PretrainingInputError,
    first_line,
)
from dbeta.train.pretraining.fingerprint import check_resume, run_fingerprint, set_resume_step, write_fingerprint

if TYPE_CHECKING:
    from dbeta.train.pretraining.hub import HubUploader

logger = get_logger(__name__)

CHECKPOINTS_FOLDER = "checkpoints"
#: Where the Hub folders of intermediate checkpoints are exported before their upload.
HUB_STAGING_FOLDER = ".hub_staging"
#: Written by every export into the Hub folder (not uploaded): the names of the files it wrote, so
#: that `--overwrite_output_dir` deletes exactly those and leaves the user's own files alone.
EXPORT_MANIFEST = ".dbeta_export.json"
#: What `dbeta.hub_export.write_hub_folder` writes (weights, config, hub code, processor and
#: tokenizer files, label descriptions, card) and `export_run` adds: the files of an export that
#: predates `EXPORT_MANIFEST`, deleted by `--overwrite_output_dir` only beside a D-BETA `config.json`.
KNOWN_EXPORT_FILES = (
    "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
    "configuration_dbeta.py", "modeling_dbeta.py", "processing_dbeta.py", "pipeline_dbeta.py",
    "preprocessor_config.json", "processor_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "spiece.model", "chat_template.jinja", "chat_template.json",
    "label_descriptions.json", "README.md", "results.json",
)  # fmt: skip
KNOWN_EXPORT_PATTERNS = ("model-*-of-*.safetensors",)


@dataclass
class TrainingProgress:
    """Saved with every checkpoint (`accelerator.register_for_checkpointing`)."""

    completed_steps: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    samples_seen: int = 0
    train_seconds: float = 0.0
    #: The layout that wrote the checkpoint (0: unknown, an older checkpoint), to resume on another
    #: number of processes (`rescale_to_processes`).
    num_processes: int = 0
    per_device_batch_size: int = 0
    #: Per-step losses of this session (kept in memory, not in checkpoints).
    history: list = field(default_factory=list)

    def state_dict(self) -> dict:
        return {name: value for name, value in self.__dict__.items() if name != "history"}

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)


def rescale_to_processes(progress: TrainingProgress, scheduler, num_processes: int, per_device_batch_size: int) -> bool:
    """After resuming a checkpoint written by another number of processes (another node count) or
    per-device batch size, restate the two positions that are counted per process: the batches
    each process has read in the current epoch (the epoch's order is one global permutation that
    accelerate deals out batch by batch, so the samples read so far are the first
    `batches_in_epoch x processes x batch` of it), and the learning-rate schedule, which an
    accelerate-prepared scheduler advances `num_processes` times per optimiser step
    (`build_scheduler`). Returns whether anything changed. When the samples read so far are not a
    whole number of the new global batches, the remainder is skipped (fewer than one global batch)."""
    old_processes = progress.num_processes or num_processes
    old_batch = progress.per_device_batch_size or per_device_batch_size
    progress.num_processes, progress.per_device_batch_size = num_processes, per_device_batch_size
    if (old_processes, old_batch) == (num_processes, per_device_batch_size):
        return False
    samples_in_epoch = progress.batches_in_epoch * old_processes * old_batch
    progress.batches_in_epoch = -(-samples_in_epoch // (num_processes * per_device_batch_size))
    inner = getattr(scheduler, "scheduler", scheduler)  # the LambdaLR inside accelerate's wrapper
    inner.last_epoch = progress.completed_steps * num_processes
    rates = [base * multiplier(inner.last_epoch) for multiplier, base in zip(inner.lr_lambdas, inner.base_lrs)]
    for group, rate in zip(inner.optimizer.param_groups, rates):
        group["lr"] = rate
    inner._last_lr = rates
    return True


#: `save_state` writes `step_N.tmp` and renames it to `step_N` once every process has written its
#: part, so a `step_N` folder is always complete; stale copies are renamed to `*.deleting` before
#: they are removed. Only `step_N` folders count as checkpoints (for "latest" and for rotation).
INCOMPLETE_SUFFIXES = (".tmp", ".deleting")


def checkpoint_step(path: Path) -> int:
    match = re.fullmatch(r"step_(\d+)", path.name)
    return int(match.group(1)) if match else -1


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The complete checkpoints of `output_dir`, oldest first (partial `*.tmp` folders are not listed)."""
    folder = Path(output_dir) / CHECKPOINTS_FOLDER
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir() and checkpoint_step(p) >= 0), key=checkpoint_step)


def resolve_checkpoint(resume_from_checkpoint: str | None, output_dir: str) -> Path | None:
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume_from_checkpoint)
    if path.name.endswith(INCOMPLETE_SUFFIXES):
        raise PretrainingInputError(f"{path} is an incomplete checkpoint (a save that did not finish); resume from a step_N folder.")
    if not path.is_dir():
        raise CheckpointNotFoundError(
            f"No checkpoint folder {path}; pass --resume_from_checkpoint latest or a checkpoints/step_N folder of a run."
        )
    return path


def _remove_folder(folder: Path) -> None:
    """Rename, then delete: a removal cut short leaves a `*.deleting` folder, never a partial `step_N`."""
    doomed = folder.with_name(folder.name + ".deleting") if not folder.name.endswith(".deleting") else folder
    if doomed != folder:
        shutil.rmtree(doomed, ignore_errors=True)
        os.replace(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def remove_incomplete_checkpoints(output_dir: str | os.PathLike, keep: Sequence[Path] = ()) -> None:
    """Delete what interrupted saves and removals left behind (`*.tmp`, `*.deleting`)."""
    folder = Path(output_dir) / CHECKPOINTS_FOLDER
    if folder.is_dir():
        for path in folder.iterdir():
            if path.is_dir() and path.name.endswith(INCOMPLETE_SUFFIXES) and path not in keep:
                shutil.rmtree(path, ignore_errors=True)


def publish_checkpoint(staging: Path, final: Path) -> None:
    """Make a fully written `step_N.tmp` the checkpoint `step_N` (replacing an older `step_N`)."""
    if final.exists():
        _remove_folder(final)
    os.replace(staging, final)


def rotate_checkpoints(output_dir: str, keep: int) -> None:
    for stale in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
        _remove_folder(stale)


def previous_export_files(output_dir: str | os.PathLike) -> list[Path]:
    """The files an earlier export wrote into `output_dir`: those its `EXPORT_MANIFEST` names, or,
    for an export older than the manifest, `KNOWN_EXPORT_FILES` beside a D-BETA `config.json`."""
    folder = Path(output_dir)
    manifest = folder / EXPORT_MANIFEST
    if manifest.is_file():
        try:
            names = json.loads(manifest.read_text(encoding="utf-8")).get("files", [])
        except (OSError, UnicodeDecodeError, ValueError, AttributeError) as error:
            raise PretrainingInputError(
                f"{manifest} is unreadable ({first_line(error)}); delete the previous run's files from {folder} by hand "
                "or choose another --output_dir."
            ) from error
        # Plain file names only: a manifest never makes this delete outside the folder, or a folder.
        files = [folder / name for name in names if isinstance(name, str) and name and "/" not in name and "\\" not in name
                 and name not in (".", "..") and name != EXPORT_MANIFEST]
        return [path for path in files if path.is_file() or path.is_symlink()] + [manifest]
    config = folder / "config.json"
    try:
        is_dbeta = config.is_file() and json.loads(config.read_text(encoding="utf-8")).get("model_type") == "dbeta"
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        is_dbeta = False
    if not is_dbeta:
        return []
    files = [folder / name for name in KNOWN_EXPORT_FILES] + [p for pattern in KNOWN_EXPORT_PATTERNS for p in folder.glob(pattern)]
    return [path for path in files if path.is_file() or path.is_symlink()]


def check_output_dir(args: argparse.Namespace) -> list[Path]:
    """Refuse to start a fresh run beside another run's checkpoints (its own would be rotated away
    and "latest" would later resume the other run) or its exported model (it would stand there,
    with the other run's card, until this run's export replaces it). Returns what an
    `--overwrite_output_dir` deletes: the checkpoints and the exported files found."""
    checkpoints = list_checkpoints(args.output_dir)
    exported = previous_export_files(args.output_dir)
    model_files = sorted(p.name for p in exported if p.name != EXPORT_MANIFEST)
    if (checkpoints or model_files) and not args.resume_from_checkpoint and not args.overwrite_output_dir:
        found = [f"checkpoints of an earlier run ({', '.join(p.name for p in checkpoints)})"] if checkpoints else []
        found += [f"the model an earlier run exported ({', '.join(model_files[:4])}{', ...' if len(model_files) > 4 else ''})"] if model_files else []
        raise OutputDirInUseError(
            f"--output_dir {args.output_dir} already holds {' and '.join(found)}. Pass --resume_from_checkpoint latest to "
            "continue it, --overwrite_output_dir to delete them and start afresh, or choose another --output_dir."
        )
    return checkpoints + exported


def _delete_previous_run(args: argparse.Namespace) -> None:
    """`--overwrite_output_dir`: the earlier run's checkpoints, Hub staging and exported files (only those)."""
    exported = previous_export_files(args.output_dir)
    for folder in (Path(args.output_dir) / CHECKPOINTS_FOLDER, Path(args.output_dir) / HUB_STAGING_FOLDER):
        if folder.exists():
            logger.info(f"--overwrite_output_dir: deleting {folder}")
            shutil.rmtree(folder)
    if exported:
        logger.info(f"--overwrite_output_dir: deleting the earlier run's exported files ({', '.join(sorted(p.name for p in exported))})")
        for path in exported:
            path.unlink(missing_ok=True)


def prepare_output_dir(args: argparse.Namespace, preparation) -> None:
    """`check_output_dir`, then with `--overwrite_output_dir` delete the earlier run's checkpoints
    and exported files; both as steps of `preparation` (a `SharedPreparation`: the main process first)."""
    found = preparation.run("checking --output_dir", check_output_dir, args)
    if found and args.overwrite_output_dir:
        preparation.run("deleting the earlier run (--overwrite_output_dir)", _delete_previous_run, args)


def _load_failure_message(checkpoint: Path, error: BaseException) -> str:
    """Why `load_state` could not load `checkpoint` into this run, and what to do, on one line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    mismatch = next((line for line in lines if line.startswith(("size mismatch", "Missing key", "Unexpected key"))), None)
    if mismatch is not None or "parameter group" in str(error):
        detail = mismatch or first_line(error)
        return (
            f"Cannot resume from {checkpoint}: its weights do not fit this run's model ({detail[:300]}); it was written by "
            "a model of another architecture. Resume with the run's own --config_name/--model_name_or_path/--config_overrides, "
            "or start afresh in another --output_dir."
        )
    if isinstance(error, FileNotFoundError):
        missing = Path(error.filename).name if getattr(error, "filename", None) else first_line(error)
        return (
            f"Cannot resume from {checkpoint}: it lacks {missing}, so it is not a complete checkpoint of train/pretrain.py "
            "(a checkpoints/step_N folder); pass one of those, or start afresh."
        )
    return (
        f"Cannot resume from {checkpoint}: its files are damaged or unreadable ({first_line(error)}). Resume from an "
        "earlier checkpoint (--resume_from_checkpoint <output_dir>/checkpoints/step_N), or start afresh."
    )


def resume_training(accelerator: Accelerator, args: argparse.Namespace, progress: TrainingProgress, scheduler) -> Path | None:
    """`--resume_from_checkpoint`: load the checkpoint's state (model, optimizer, scheduler, RNGs,
    `progress`) and restate it for this run's layout; returns the checkpoint (None: a fresh start)."""
    checkpoint = resolve_checkpoint(args.resume_from_checkpoint, args.output_dir)
    if checkpoint is not None:
        # The checkpoint must come from this run (same model, seed, optimiser, data ...): checked before loading it.
        for warning in check_resume(args, checkpoint, accelerator.num_processes):
            logger.warning(warning)
        accelerator.print(f"Resuming from {checkpoint}")
        try:
            accelerator.load_state(str(checkpoint))
        except Exception as error:  # size mismatch, missing or damaged files: one line naming the checkpoint
            raise PretrainingInputError(_load_failure_message(checkpoint, error)) from error
        set_resume_step(args, progress.completed_steps)
        saved_layout = (progress.num_processes, progress.per_device_batch_size)
        if rescale_to_processes(progress, scheduler, accelerator.num_processes, args.per_device_train_batch_size):
            accelerator.print(
                f"The checkpoint was written by {saved_layout[0]} process(es) x batch {saved_layout[1]}; continuing on "
                f"{accelerator.num_processes} x {args.per_device_train_batch_size}: data position and learning-rate schedule restated."
            )
    elif args.resume_from_checkpoint:
        accelerator.print(f"No checkpoint in {Path(args.output_dir) / CHECKPOINTS_FOLDER}: starting from scratch.")
    return checkpoint


#: Errors that mean "the disk is full" when they carry no errno (torch.save, safetensors).
DISK_FULL_MARKERS = ("no space left", "enforce fail at inline_container", "file write failed", "storagefull", "disk quota")


def is_disk_full(error: BaseException) -> bool:
    while error is not None:
        if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(marker in str(error).lower() for marker in DISK_FULL_MARKERS):
            return True
        error = error.__cause__ or error.__context__
    return False


def is_write_failure(error: BaseException) -> bool:
    """A failure of the storage, not of the code: a full disk or quota, no permission, a read-only or failing disk."""
    if is_disk_full(error) or isinstance(error, PermissionError):
        return True
    return getattr(error, "errno", None) in (errno.EROFS, errno.EIO, errno.EACCES)


def write_failure_message(what: str, folder: Path, error: BaseException | None, after: str) -> str:
    """One line: `what` was not written into `folder`, why (disk full, with the space left), and what to do."""
    if error is None:
        return f"{what} was not written: saving it failed on another process (see its error); {after}"
    try:
        free = f"; {shutil.disk_usage(next(p for p in (folder, *folder.parents) if p.exists())).free / 2**20:.0f} MiB free there"
    except (OSError, StopIteration):
        free = ""
    cause = "the disk is full" if is_disk_full(error) else "it could not be written"
    return f"{what} was not written: {cause} ({first_line(error)}{free}); {after}"


def _any_process(accelerator: Accelerator, flag: bool) -> bool:
    """Whether `flag` is true on any process (every process must call this)."""
    if accelerator.num_processes == 1:
        return flag
    return bool(accelerator.reduce(torch.tensor([int(flag)], device=accelerator.device), "sum").item())


def save_checkpoint(accelerator: Accelerator, args, progress: TrainingProgress, uploader: HubUploader | None, export, metrics) -> None:
    """`save_state` into `checkpoints/step_N` (keeping the last K), with the run's fingerprint
    (`run_fingerprint.json`) and, when pushing, upload an exported Hub folder of this step in the
    background.

    The state is written into `step_N.tmp`, which becomes `step_N` only once every process has
    written its part: a save cut short (killed) leaves no `step_N` for "latest" to pick, and a save
    that fails (disk full: "enforce fail at inline_container.cc", ENOSPC) removes `step_N.tmp` and
    stops the run with a `CheckpointWriteError` on every process. (The checkpoints folder must be
    shared by all processes, as `save_state` requires.)"""
    folder = Path(args.output_dir) / CHECKPOINTS_FOLDER / f"step_{progress.completed_steps}"
    staging = folder.with_name(folder.name + ".tmp")
    if accelerator.is_main_process:
        remove_incomplete_checkpoints(args.output_dir)
    accelerator.wait_for_everyone()
    error = None
    try:
        accelerator.save_state(str(staging))
        if accelerator.is_main_process:  # inside the folder before it is published
            write_fingerprint(staging, run_fingerprint(args, accelerator.num_processes, accelerator.mixed_precision))
    except Exception as exception:  # noqa: BLE001 - every process learns of it below, then it is raised
        error = exception
    if _any_process(accelerator, error is not None):
        if accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
        if error is not None and not is_write_failure(error):
            raise error  # not a storage failure (a bug): its own traceback
        previous = [p.name for p in list_checkpoints(args.output_dir)]
        raise CheckpointWriteError(
            write_failure_message(
                f"Checkpoint {folder}", staging, error,
                "its partial folder was removed. Free space on that disk (or fix its permissions), then continue with "
                f"--resume_from_checkpoint latest ({'from ' + previous[-1] if previous else 'no earlier checkpoint: the run starts again'}).",
            )
        ) from error  # fmt: skip
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        publish_checkpoint(staging, folder)
        rotate_checkpoints(args.output_dir, args.checkpoints_total_limit)
    if uploader is not None or args.push_to_hub:
        staging = Path(args.output_dir) / HUB_STAGING_FOLDER / f"step_{progress.completed_steps}"
        export(staging, metrics)
        if uploader is not None:
            uploader.upload(staging, commit_message=f"Training in progress, step {progress.completed_steps}", delete_after=True)
    accelerator.wait_for_everyone()
