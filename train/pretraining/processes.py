# Copyright 2026 The dbeta authors. Licensed under the Apache License, Version 2.0.
"""The processes of a pre-training run: the `Accelerator` that joins them (with per-process
logging and CPU threads), and `SharedPreparation`, which runs the steps that write shared files
(corpus, N3S cache, downloads) on one process first and lets the others read the result."""

from __future__ import annotations

import argparse
import logging
import os
import warnings
from datetime import timedelta
from pathlib import Path

import datasets
import torch
import transformers
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedType, ProjectConfiguration

logger = get_logger(__name__)


def _accelerator_available() -> bool:
    """Whether torch sees a GPU (or another accelerator)."""
    if hasattr(torch, "accelerator"):
        return torch.accelerator.is_available()
    return torch.cuda.is_available()


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one, e.g. under taskset
    or a container's cpuset), not the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_threads_per_process(requested: int | None, num_processes: int) -> int:
    """`requested`, or the cores this process may use divided among the processes of this machine."""
    if requested:
        return requested
    cores = usable_cores()
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", num_processes))
    return max(1, cores // max(1, local_processes))


def build_accelerator(args: argparse.Namespace) -> Accelerator:
    """The run's `Accelerator` (trackers logging to `<output_dir>/runs`), checked to hold every
    launched process; sets up logging and, on the CPU, the threads of each process."""
    output_dir = Path(args.output_dir)
    report_to = None if args.report_to == "none" else args.report_to
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        # Without a GPU, `accelerate launch` with several processes (train/configs/cpu_2_processes.yaml)
        # needs cpu=True for accelerate to join them (gloo); otherwise each would train alone.
        cpu=args.cpu or not _accelerator_available(),
        log_with=report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "runs")),
    )
    launched = max(int(os.environ.get(name, "1")) for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"))
    if launched > accelerator.num_processes:  # each process would train alone on the whole data
        raise RuntimeError(
            f"The launcher started {launched} processes but accelerate joined {accelerator.num_processes} "
            f"({accelerator.distributed_type}); check the accelerate config (distributed_type, use_cpu) or pass --cpu."
        )
    # Logs, progress bar and summary from the main process; the others report warnings and errors only.
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S",
        level=logging.INFO if accelerator.is_main_process else logging.WARNING,
    )  # fmt: skip
    if accelerator.is_main_process:
        datasets.utils.logging.set_verbosity_warning()
        transformers.utils.logging.set_verbosity_warning()
    else:
        datasets.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
        datasets.disable_progress_bars()
        # The main process shows library deprecation notices once; the others would repeat them.
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
    if accelerator.device.type == "cpu":
        torch.set_num_threads(cpu_threads_per_process(args.num_cpu_threads, accelerator.num_processes))
    logger.info(accelerator.state)
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and accelerator.distributed_type != DistributedType.FSDP:
        logger.warning(
            f"The accelerate config asks for FSDP, which accelerate runs on GPUs only: these {accelerator.num_processes} "
            f"process(es) train as plain data parallel ({accelerator.distributed_type}), each holding the whole model."
        )
    return accelerator


class PreparationFailed(RuntimeError):
    """Raised on the processes that waited for a preparation step which failed on another process."""


class SharedPreparation:
    """Runs the steps that write shared files before training (demo corpus, dataset preparation,
    downloads, N3S cache) once, and lets every other process read the result.

    A step runs first on the main process; then on the first process of every other machine
    (files written to a machine-local path exist there only; where the folder is shared the step
    finds them and does nothing); then on the remaining processes, which read what was written.
    The processes agree after each turn: when the step raised anywhere, the failing process
    re-raises its error and every other one raises `PreparationFailed` with that error, instead of
    waiting in a collective until the backend's timeout. The waiting happens on a gloo group of its
    own, so a long preparation is bounded by `--preparation_timeout`, not by the training backend's
    timeout (10 minutes for NCCL). A process killed outright is handled by the launcher, which then
    stops the others.
    """

    def __init__(self, accelerator: Accelerator, timeout_seconds: float = 6 * 3600):
        self.accelerator = accelerator
        self.group = None
        if accelerator.num_processes > 1:
            self.group = torch.distributed.new_group(backend="gloo", timeout=timedelta(seconds=timeout_seconds))
        local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
        self.several_machines = local_world_size < accelerator.num_processes

    def _turns(self) -> list[bool]:
        """Whether this process works in each turn: main, [first of each other machine], the rest."""
        accelerator = self.accelerator
        turns = [accelerator.is_main_process]
        if self.several_machines:
            turns.append(accelerator.is_local_main_process and not accelerator.is_main_process)
        turns.append(not accelerator.is_local_main_process)
        return turns

    def _first_error(self, error: str | None) -> str | None:
        """Every process's error (None: succeeded) exchanged; the first one, or None."""
        if self.group is None:
            return error
        failed = torch.tensor([int(error is not None)], dtype=torch.int64)
        torch.distributed.all_reduce(failed, op=torch.distributed.ReduceOp.MAX, group=self.group)
        if not failed.item():
            return None
        errors: list = [None] * self.accelerator.num_processes
        torch.distributed.all_gather_object(errors, error, group=self.group)
        return next((f"process {rank}: {text}" for rank, text in enumerate(errors) if text is not None), None)

    def run(self, description: str, function, *args, **kwargs):
        """`function(*args, **kwargs)` on every process, one turn after another; returns its result."""
        result = None
        for works in self._turns():
            error = None
            if works:
                try:
                    result = function(*args, **kwargs)
                except BaseException as exception:  # noqa: BLE001 - re-raised below, after telling the others
                    error = exception
            first_error = self._first_error(None if error is None else f"{type(error).__name__}: {error}")
            if error is not None:
                raise error
            if first_error is not None:
                raise PreparationFailed(
                    f"Process {self.accelerator.process_index} stops: {description} failed on {first_error} "
                    "(see that process's traceback)."
                )
        return result

    def close(self) -> None:
        if self.group is not None:
            torch.distributed.destroy_process_group(self.group)
            self.group = None
