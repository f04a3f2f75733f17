# Copyright 2026 The dbeta authors. Licensed under the Apache License, Version 2.0.
"""The training loop: optimiser steps from `progress` (a fresh run or a resumed checkpoint) to
`--max_train_steps`, with per-step seeds (exact resume), loss logging, periodic validation and
checkpoints."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from dbeta.train.pretraining.checkpoints import TrainingProgress
from dbeta.train.pretraining.data import PretrainingLoaders
from dbeta.train.pretraining.model import step_seed, text_encoder_source
from dbeta.train.pretraining.validation import LOSS_NAMES, stack_losses

logger = get_logger(__name__)


@dataclass
class PretrainingResult:
    output_dir: str
    metrics: dict
    completed_steps: int
    history: list
    train_seconds: float


def init_trackers(accelerator: Accelerator, args: argparse.Namespace) -> None:
    """Start the `--report_to` trackers with the run's settings (and where its text tower comes from)."""
    if args.report_to == "none":
        return
    hyperparameters = {
        k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in vars(args).items() if not k.startswith("_")
    }  # `_...`: what the run notes on args for itself (the fingerprint's parts), not settings
    hyperparameters["text_encoder_source"] = text_encoder_source(args)
    accelerator.init_trackers("dbeta-pretrain", config=hyperparameters)


def train_loop(
    accelerator: Accelerator,
    args: argparse.Namespace,
    model,
    optimizer,
    scheduler,
    loaders: PretrainingLoaders,
    progress: TrainingProgress,
    validate: Callable[[], Mapping[str, float]],
    save_checkpoint: Callable[[Mapping[str, float]], None],
    num_examples,
) -> None:
    """Train until `progress.completed_steps` reaches `args.max_train_steps`. Each forward pass is
    seeded from (seed, micro-step, process) and a resumed epoch skips the batches already read, so
    a resumed run repeats the uninterrupted one. `validate()` runs every `--eval_steps` (not at the
    last step: the caller validates at the end) and `save_checkpoint(last validation metrics)` every
    `--checkpointing_steps`."""
    train_loader = loaders.train_loader
    if not args.streaming:
        steps_per_epoch = max(1, math.ceil(len(train_loader) / args.gradient_accumulation_steps))
        num_epochs = math.ceil(args.max_train_steps / steps_per_epoch)
    else:
        num_epochs = sys.maxsize
    metrics: dict[str, float] = {}  # the last validation's, for the checkpoints' model cards
    total_batch_size = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info("***** Pre-training *****")
    logger.info(f"  Examples = {num_examples}, steps = {args.max_train_steps}, batch = {total_batch_size} "
                f"({args.per_device_train_batch_size} x {accelerator.num_processes} processes x {args.gradient_accumulation_steps} accumulation)")
    progress_bar = tqdm(range(args.max_train_steps), initial=progress.completed_steps, disable=not accelerator.is_main_process, desc="pre-training")
    mask_generator = torch.Generator(device=accelerator.device)
    step_loss_sum, micro_batches = torch.zeros(len(LOSS_NAMES), device=accelerator.device), 0
    window_started, window_samples = time.perf_counter(), 0
    model.train()
    done = progress.completed_steps >= args.max_train_steps
    for epoch in range(progress.epoch, num_epochs):
        if done:
            break
        loaders.train_collator.set_epoch(epoch)
        train_loader.set_epoch(epoch)
        if args.streaming:
            loaders.train_rows.set_epoch(epoch)
        skip = progress.batches_in_epoch if epoch == progress.epoch else 0
        epoch_loader = accelerator.skip_first_batches(train_loader, skip) if skip else train_loader
        if skip:
            epoch_loader.set_epoch(epoch)
        for batch in epoch_loader:
            step_started = time.perf_counter()
            micro_step = progress.completed_steps * args.gradient_accumulation_steps + progress.batches_in_epoch % args.gradient_accumulation_steps
            seed = step_seed(args.seed, micro_step, accelerator.process_index)
            torch.manual_seed(seed)  # dropout
            mask_generator.manual_seed(seed + 1)  # MEM masking
            batch.pop("sample_index")
            with accelerator.accumulate(model):
                outputs = model(**batch, mask_generator=mask_generator)
                accelerator.backward(outputs.loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            progress.batches_in_epoch += 1
            batch_samples = batch["input_ids"].shape[0] * accelerator.num_processes
            progress.samples_seen += batch_samples
            window_samples += batch_samples
            step_loss_sum += stack_losses(outputs).float()
            micro_batches += 1
            progress.train_seconds += time.perf_counter() - step_started
            if not accelerator.sync_gradients:
                continue

            progress.completed_steps += 1
            progress_bar.update(1)
            mean_losses = accelerator.reduce(step_loss_sum / micro_batches, "mean").tolist()
            step_losses = dict(zip(LOSS_NAMES, mean_losses))
            step_loss_sum, micro_batches = torch.zeros(len(LOSS_NAMES), device=accelerator.device), 0
            progress.history.append({"step": progress.completed_steps, **step_losses})
            progress_bar.set_postfix(loss=f"{step_losses['loss']:.3f}")
            if progress.completed_steps % args.logging_steps == 0 or progress.completed_steps == args.max_train_steps:
                elapsed = time.perf_counter() - window_started
                accelerator.log(
                    {**{f"train/{name}": value for name, value in step_losses.items()},
                     "train/learning_rate": scheduler.get_last_lr()[0],
                     "train/samples_per_second": window_samples / max(elapsed, 1e-9),
                     "train/epoch": epoch},
                    step=progress.completed_steps,
                )
                window_started, window_samples = time.perf_counter(), 0
            if args.eval_steps and progress.completed_steps % args.eval_steps == 0 and progress.completed_steps < args.max_train_steps:
                metrics = validate()
            if args.checkpointing_steps and progress.completed_steps % args.checkpointing_steps == 0:
                save_checkpoint(metrics)
            if progress.completed_steps >= args.max_train_steps:
                done = True
                break
        if not done:
            progress.epoch, progress.batches_in_epoch = epoch + 1, 0
    progress_bar.close()
