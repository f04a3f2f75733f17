# Copyright 2026 The dbeta authors. Licensed under the Apache License, Version 2.0.
"""Checkpoints of a pre-training run: the progress saved with them, where they live
(`<output_dir>/checkpoints/step_N`), saving (complete folders only, the last K kept), resuming
(also on another number of processes or batch size) and the check that a fresh run does not start
beside another run's checkpoints."""

from __future__ import annotations

import argparse
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from accelerate import Accelerator
from accelerate.logging import get_logger

if TYPE_CHECKING:
    from dbeta.train.pretraining.hub import HubUploader

logger = get_logger(__name__)

CHECKPOINTS_FOLDER = "checkpoints"
#: Where the Hub folders of intermediate checkpoints are exported before their upload.
HUB_STAGING_FOLDER = ".hub_staging"


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
        raise ValueError(f"{path} is an incomplete checkpoint (a save that did not finish); resume from a step_N folder.")
    if not path.is_dir():
        raise FileNotFoundError(f"No checkpoint folder {path}.")
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


def check_output_dir(args: argparse.Namespace) -> list[Path]:
    """Refuse to start a fresh run beside another run's checkpoints (its own would be rotated away
    and "latest" would later resume the other run). Returns the checkpoints found."""
    checkpoints = list_checkpoints(args.output_dir)
    if checkpoints and not args.resume_from_checkpoint and not args.overwrite_output_dir:
        raise FileExistsError(
            f"--output_dir {args.output_dir} already holds checkpoints of an earlier run "
            f"({', '.join(p.name for p in checkpoints)}). Pass --resume_from_checkpoint latest to continue it, "
            "--overwrite_output_dir to delete them and start afresh, or choose another --output_dir."
        )
    return checkpoints


def _delete_old_checkpoints(args: argparse.Namespace) -> None:
    for folder in (Path(args.output_dir) / CHECKPOINTS_FOLDER, Path(args.output_dir) / HUB_STAGING_FOLDER):
        if folder.exists():
            logger.info(f"--overwrite_output_dir: deleting {folder}")
            shutil.rmtree(folder)


def prepare_output_dir(args: argparse.Namespace, preparation) -> None:
    """`check_output_dir`, then with `--overwrite_output_dir` delete the old checkpoints; both as
    steps of `preparation` (a `SharedPreparation`: the main process first)."""
    existing_checkpoints = preparation.run("checking --output_dir", check_output_dir, args)
    if existing_checkpoints and args.overwrite_output_dir:
        preparation.run("deleting the old checkpoints (--overwrite_output_dir)", _delete_old_checkpoints, args)


def resume_training(accelerator: Accelerator, args: argparse.Namespace, progress: TrainingProgress, scheduler) -> Path | None:
    """`--resume_from_checkpoint`: load the checkpoint's state (model, optimizer, scheduler, RNGs,
    `progress`) and restate it for this run's layout; returns the checkpoint (None: a fresh start)."""
    checkpoint = resolve_checkpoint(args.resume_from_checkpoint, args.output_dir)
    if checkpoint is not None:
        accelerator.print(f"Resuming from {checkpoint}")
        accelerator.load_state(str(checkpoint))
        saved_layout = (progress.num_processes, progress.per_device_batch_size)
        if rescale_to_processes(progress, scheduler, accelerator.num_processes, args.per_device_train_batch_size):
            accelerator.print(
                f"The checkpoint was written by {saved_layout[0]} process(es) x batch {saved_layout[1]}; continuing on "
                f"{accelerator.num_processes} x {args.per_device_train_batch_size}: data position and learning-rate schedule restated."
            )
    elif args.resume_from_checkpoint:
        accelerator.print(f"No checkpoint in {Path(args.output_dir) / CHECKPOINTS_FOLDER}: starting from scratch.")
    return checkpoint


def save_checkpoint(accelerator: Accelerator, args, progress: TrainingProgress, uploader: HubUploader | None, export, metrics) -> None:
    """`save_state` into `checkpoints/step_N` (keeping the last K) and, when pushing, upload an
    exported Hub folder of this step in the background.

    The state is written into `step_N.tmp`, which becomes `step_N` only once every process has
    written its part: a save cut short (killed, disk full) leaves no `step_N` for "latest" to pick.
    (The checkpoints folder must be shared by all processes, as `save_state` requires.)"""
    folder = Path(args.output_dir) / CHECKPOINTS_FOLDER / f"step_{progress.completed_steps}"
    staging = folder.with_name(folder.name + ".tmp")
    if accelerator.is_main_process:
        remove_incomplete_checkpoints(args.output_dir)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
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
