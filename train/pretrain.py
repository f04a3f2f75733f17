# Copyright 2026 The dbeta authors. Licensed under the Apache License, Version 2.0.
"""Pre-train D-BETA with 🤗 Accelerate: MLM + MEM + ETM (with N3S negatives) + ETS.

With no arguments it runs the offline demo: it writes a simulated corpus in the MIMIC-IV-ECG
layout (`outputs/demo_corpus`), prepares it, builds the N3S cache, pre-trains a small D-BETA for a
few minutes on the CPU, writes the Hub folder `outputs/dbeta-demo` and prints the validation
zero-shot macro AUROC::

    python train/pretrain.py                     # or: accelerate launch train/pretrain.py

A real run reads the folder written by `train/data/prepare_mimic_iv_ecg.py` and starts from Flan-T5:

    accelerate launch --config_file train/configs/multi_gpu.yaml train/pretrain.py \\
        --dataset_dir data/mimic_prepared --text_encoder google/flan-t5-base \\
        --n3s_encoder google/flan-t5-small --per_device_train_batch_size 128 \\
        --max_train_steps 300000 --output_dir outputs/dbeta-mimic \\
        --push_to_hub --hub_model_id you/dbeta-mimic

Everything the demo does not set follows the paper: AdamW (lr 5e-5, betas (0.9, 0.98), eps 1e-6,
weight decay 0.01), tri-stage schedule 10/40/50, all loss weights 1, lead masking 0.5, MLM 0.25.
`--resume_from_checkpoint latest` continues the newest `save_state` checkpoint exactly (on CPU,
bit for bit): the batches are pure functions of (seed, epoch, sample index) and the model's
randomness (dropout, MEM masking) is re-seeded from (seed, micro-step, process) before each
forward, as fairseq does.

This file reads top to bottom as the run's phases; each piece does one job in `train/pretraining/`
(args, processes, data, model, checkpoints, loop, validation, hub) and the demo's settings, corpus and
small model are a recipe, `train/demo/recipe.py`.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from accelerate.logging import get_logger
from accelerate.utils import set_seed

from dbeta.train.demo.real_ecg import dev_protocol, load_ludb_dev_set, load_ludb_eval_set
from dbeta.train.demo.recipe import prepare_demo_dataset
from dbeta.train.pretraining.args import parse_args
from dbeta.train.pretraining.checkpoints import TrainingProgress, prepare_output_dir, resume_training, save_checkpoint
from dbeta.train.pretraining.errors import PretrainingInputError, one_line
from dbeta.train.pretraining.data import (
    build_dataloaders,
    build_n3s_indexes,
    check_prepared_data,
    data_counts,
    load_splits,
    zero_shot_label_set,
)
from dbeta.train.pretraining.hub import HubUploader, build_processor, export_run
from dbeta.train.pretraining.loop import PretrainingResult, init_trackers, train_loop
from dbeta.train.pretraining.model import (
    build_model,
    build_optimizer,
    build_scheduler,
    check_pretrained_encoders,
    load_tokenizer,
    text_encoder_source,
)
from dbeta.train.pretraining.processes import SharedPreparation, build_accelerator
from dbeta.train.pretraining.speed_levers import check_fused_adamw_devices
from dbeta.train.pretraining.validation import print_summary, run_validation

logger = get_logger(__name__)


def main(argv: Sequence[str] | None = None) -> PretrainingResult:
    # ---- 1. Settings: the flags, with the paper's defaults (the demo recipe's when no data is given)
    args = parse_args(argv)
    run_started = time.perf_counter()
    output_dir = Path(args.output_dir)

    # ---- 2. Processes: one Accelerator for all of them; shared files are written by the main process first
    accelerator = build_accelerator(args)
    set_seed(args.seed)  # model initialisation
    preparation = SharedPreparation(accelerator, args.preparation_timeout)
    prepare_output_dir(args, preparation)
    preparation.run("loading the pretrained encoders", check_pretrained_encoders, args)
    logger.info(f"Text encoder: {text_encoder_source(args)}; N3S encoder: {args.n3s_encoder}")

    # ---- 3. Data: the prepared splits (the demo recipe writes its own), tokenizer, N3S negatives
    real_eval_set = None
    if args.is_demo:  # the demo recipe: a simulated corpus to train on, real ECGs (never trained on) to validate on
        args.dataset_dir = preparation.run("writing and preparing the demo corpus", prepare_demo_dataset, args)
        # Under the dev protocol (DBETA_PROTOCOL=dev) the evaluation patients cannot be read: validate on the dev split.
        real_eval_set = load_ludb_dev_set() if dev_protocol() else load_ludb_eval_set()
    tokenizer = preparation.run("loading the tokenizer", load_tokenizer, args)
    # The prepared files' SHA-256 are checked once per machine, not by every process.
    preparation.run("checking the prepared data", check_prepared_data, args, accelerator.is_local_main_process)
    train_data, validation_data, train_reports = load_splits(args, hash_files=False)
    n3s_device = accelerator.device if args.n3s_encoder != "tfidf" else None
    indexes = preparation.run(
        "building the N3S cache", build_n3s_indexes, args, train_reports, validation_data["report"], n3s_device
    )

    # ---- 4. Model, data loaders (shaped by its config), optimiser, schedule; then accelerate wraps them
    model = preparation.run("building the model", build_model, args, tokenizer)
    preparation.close()
    config = model.config
    loaders = build_dataloaders(args, tokenizer, config, indexes, train_data, validation_data)
    optimizer = build_optimizer(args, model)
    if args.max_train_steps is None:
        batches_per_process = math.ceil(len(loaders.train_loader) / accelerator.num_processes)
        args.max_train_steps = args.num_train_epochs * math.ceil(batches_per_process / args.gradient_accumulation_steps)
    scheduler = build_scheduler(args, optimizer, args.max_train_steps, accelerator.num_processes)
    model, optimizer, loaders.train_loader, loaders.loss_loader, loaders.embedding_loader, scheduler = accelerator.prepare(
        model, optimizer, loaders.train_loader, loaders.loss_loader, loaders.embedding_loader, scheduler
    )
    if args.fused_adamw:
        check_fused_adamw_devices(model)
    progress = TrainingProgress(num_processes=accelerator.num_processes, per_device_batch_size=args.per_device_train_batch_size)
    accelerator.register_for_checkpointing(progress)
    label_set = zero_shot_label_set(args.zero_shot_labels)
    init_trackers(accelerator, args)

    # ---- 5. Resume: `--resume_from_checkpoint` continues a checkpoint exactly
    resume_training(accelerator, args, progress, scheduler)

    # ---- 6. Train, with periodic validation and checkpoints (each exported and, with --push_to_hub, uploaded)
    uploader = HubUploader(args.hub_model_id, args.hub_token, args.hub_private_repo) if args.push_to_hub and accelerator.is_main_process else None
    counts = data_counts(args, train_data, validation_data, indexes)
    export = partial(
        export_run, accelerator=accelerator, args=args, model=model, config=config, processor=build_processor(config, tokenizer),
        label_set=label_set, data_counts=counts, progress=progress,
    )  # fmt: skip
    validate = partial(run_validation, accelerator, model, loaders, label_set, tokenizer, args, real_eval_set, progress)
    checkpoint = partial(save_checkpoint, accelerator, args, progress, uploader, export)
    train_loop(accelerator, args, model, optimizer, scheduler, loaders, progress, validate, checkpoint, counts["train records"])

    # ---- 7. Final validation, Hub folder (and upload), summary
    metrics = validate()
    accelerator.wait_for_everyone()
    export(output_dir, metrics)
    if uploader is not None:
        uploader.upload(output_dir, commit_message=f"End of training (step {progress.completed_steps})")
        uploader.wait()
    accelerator.end_training()

    if accelerator.is_main_process:
        print_summary(metrics, label_set, output_dir, time.perf_counter() - run_started, progress)
    return PretrainingResult(str(output_dir), metrics, progress.completed_steps, progress.history, progress.train_seconds)


if __name__ == "__main__":
    try:
        main()
    except PretrainingInputError as error:  # bad flags, files, checkpoints, a full disk: one line, status 2
        print(one_line(error), file=sys.stderr)
        sys.exit(2)
