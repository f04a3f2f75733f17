# Copyright 2026 The dbeta authors. Licensed under the Apache License, Version 2.0.
"""The Hub folder of a pre-training run: the processor, the model card with what the run
measured and how it was trained (`dbeta.model_card`), the folder itself (`dbeta.hub_export`), and
the background uploads of checkpoints and the final folder."""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from configuration_dbeta import DBetaConfig
from dbeta.files import staged_files
from dbeta.loading import TRAINING_RECORDS_NAME
from dbeta.hub_export import write_hub_folder
from dbeta.model_card import PretrainingReport, build_model_card
from dbeta.provenance import git_revision, package_versions
from dbeta.train.demo.recipe import demo_dataset_description, demo_notes, demo_training_records
from dbeta.train.pretraining.checkpoints import (
    CHECKPOINTS_FOLDER,
    EXPORT_MANIFEST,
    HUB_STAGING_FOLDER,
    TrainingProgress,
    is_write_failure,
    write_failure_message,
)
from dbeta.train.pretraining.errors import CheckpointWriteError
from dbeta.train.pretraining.fingerprint import card_notes, resume_notes
from dbeta.train.pretraining.model import text_encoder_source

#: Not uploaded with the final folder (checkpoints hold optimizer states; staging is transient; the
#: export manifest only serves `--overwrite_output_dir`).
HUB_IGNORE_PATTERNS = [f"{CHECKPOINTS_FOLDER}/**", f"{HUB_STAGING_FOLDER}/**", EXPORT_MANIFEST]
#: The packages whose versions the model card lists (with the git revision of the checkout).
CARD_PACKAGES = ("torch", "transformers", "accelerate", "datasets")


class HubUploader:
    """Uploads exported folders to one Hub repository, one commit each, in a background thread so
    that training does not wait (uploads run in order)."""

    def __init__(self, repo_id: str, token: str | None = None, private: bool = False):
        from huggingface_hub import HfApi

        self.api = HfApi(token=token)
        self.repo_id = self.api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-upload")
        self.futures: list[Future] = []

    def upload(self, folder: str | os.PathLike, commit_message: str, delete_after: bool = False) -> Future:
        def run():
            try:
                return self.api.upload_folder(
                    repo_id=self.repo_id,
                    folder_path=str(folder),
                    commit_message=commit_message,
                    ignore_patterns=HUB_IGNORE_PATTERNS,
                )
            finally:
                if delete_after:
                    shutil.rmtree(folder, ignore_errors=True)

        future = self.executor.submit(run)
        self.futures.append(future)
        return future

    def wait(self) -> None:
        """Block until every upload finished; re-raises the first upload error."""
        for future in self.futures:
            future.result()
        self.executor.shutdown(wait=True)


def build_processor(config: DBetaConfig, tokenizer):
    from processing_dbeta import DBetaFeatureExtractor, DBetaProcessor

    feature_extractor = DBetaFeatureExtractor(
        feature_size=config.ecg_config.num_leads,
        sampling_rate=config.sampling_rate,
        num_samples=config.num_samples,
        lead_names=list(config.lead_names),
    )
    return DBetaProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer, max_text_length=config.max_text_length - 2)


def export_hub_folder(accelerator: Accelerator, model, processor, folder: str | os.PathLike, card, extra_files: Mapping[str, str], label_descriptions=None) -> None:
    """Write the complete Hub folder: config (with auto_map), safetensors weights, the hub `.py`
    files, processor and tokenizer files, pipeline registration, label descriptions, model card."""
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        state_dict = accelerator.get_state_dict(model)  # a collective: every process gathers the shards
        if accelerator.is_main_process:
            full_model = type(unwrapped)(unwrapped.config)
            full_model.load_state_dict(state_dict)
            unwrapped = full_model
    if not accelerator.is_main_process:
        return
    # The same writer as train/conversion/convert_original_checkpoint.py, so both folders load the same way;
    # staged, so that a failed export never leaves one step's weights beside another step's card.
    try:
        with staged_files(folder, HUB_STAGING_FOLDER) as staging:
            write_hub_folder(unwrapped, processor, staging, card, extra_files, label_descriptions)
            # The names this export wrote: what --overwrite_output_dir deletes in a later run (and nothing else).
            names = sorted(entry.name for entry in staging.iterdir())
            (staging / EXPORT_MANIFEST).write_text(json.dumps({"files": names}, indent=2) + "\n", encoding="utf-8")
    except Exception as error:
        if not is_write_failure(error):
            raise
        raise CheckpointWriteError(
            write_failure_message(
                f"The Hub folder {folder}", Path(folder), error,
                "the files it held before are untouched. Free space on that disk (or fix its permissions); the training "
                "state is in the last checkpoint (--resume_from_checkpoint latest).",
            )
        ) from error  # fmt: skip


def export_run(
    folder: str | os.PathLike,
    metrics_for_card: Mapping[str, float],
    *,
    accelerator: Accelerator,
    args: argparse.Namespace,
    model,
    config: DBetaConfig,
    processor,
    label_set: Mapping[str, tuple[str, str]],
    data_counts: Mapping[str, object],
    progress: TrainingProgress,
) -> None:
    """The Hub folder of the run at its current step: weights, processor, `results.json` and a model
    card with `metrics_for_card` (the last validation's)."""
    summary = PretrainingReport(
        model_name=args.hub_model_id or args.output_dir,
        is_demo=args.is_demo,
        dataset_description=(
            demo_dataset_description(args.demo_num_records) if args.is_demo else f"Prepared MIMIC-IV-ECG from `{args.dataset_dir}`"
        ),
        data_counts=data_counts,
        hyperparameters=training_hyperparameters(args, accelerator),
        architecture=architecture_summary(config, accelerator.unwrap_model(model)),
        metrics=metrics_for_card,
        zero_shot_labels={label: prompt for label, (prompt, _) in label_set.items()},
        completed_steps=progress.completed_steps,
        samples_seen=progress.samples_seen,
        train_seconds=progress.train_seconds,
        hardware=hardware_description(accelerator),
        license=args.license,
        hub_dataset_ids=[],
        software=software_versions(),
        notes=(demo_notes() if args.is_demo else []) + card_notes(args),
        text_encoder=text_encoder_source(args),
        n3s_encoder=args.n3s_encoder,
    )
    results = {
        "completed_steps": progress.completed_steps, "samples_seen": progress.samples_seen, "train_seconds": progress.train_seconds,
        "text_encoder": text_encoder_source(args), "n3s_encoder": args.n3s_encoder, "metrics": dict(metrics_for_card),
    }  # fmt: skip
    if resume_notes(args):  # resumes that changed the run's settings, or could not check them
        results["resumes"] = resume_notes(args)
    # The demo's folder describes its own zero-shot labels (`label_descriptions.json`); others get the packaged file.
    label_descriptions = {label: prompt for label, (prompt, _) in label_set.items()} if args.is_demo else None
    extra_files = {"results.json": json.dumps(results, indent=2) + "\n"}
    if args.is_demo:  # the real records it learnt from, which evaluation must leave out
        extra_files[TRAINING_RECORDS_NAME] = json.dumps(
            {"datasets": _demo_training_records(args.demo_real_pairs)}, indent=2
        ) + "\n"
    export_hub_folder(
        accelerator, model, processor, folder, build_model_card(summary), extra_files, label_descriptions,
    )  # fmt: skip


@functools.lru_cache(maxsize=4)
def _demo_training_records(demo_real_pairs: str) -> dict:
    return demo_training_records(demo_real_pairs)  # read once per run, not at every export


def software_versions() -> dict[str, str]:
    """The model card's "Software:" line: `CARD_PACKAGES`' versions and the checkout's short git revision (`dbeta.provenance`)."""
    versions = {name: version for name, version in package_versions(CARD_PACKAGES).items() if version is not None}
    revision = git_revision()["revision"]
    if revision:
        versions["dbeta git"] = revision[:7]
    return versions


def architecture_summary(config: DBetaConfig, model: torch.nn.Module) -> dict:
    ecg, text = config.ecg_config, config.text_config
    return {
        "parameters": f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M",
        "ECG encoder": f"{ecg.num_hidden_layers} layers x {ecg.hidden_size}, conv {ecg.conv_dim}",
        "text encoder (T5)": f"{text.num_layers} layers x {text.d_model}, vocabulary {text.vocab_size}",
        "fusion": f"{config.num_fusion_layers} layers x {config.hidden_size} per modality",
        "MEM decoder": f"{config.mem_decoder_num_layers} layers x {config.mem_decoder_hidden_size}",
        "ECG tokens": f"{config.num_ecg_tokens} ({config.ecg_config.samples_per_token} samples each), {config.ecg_config.mask_ratio:.0%} masked for MEM",
        "dropout": f"ECG {ecg.hidden_dropout}, text {text.dropout_rate}, fusion {config.fusion_dropout}",
        "initializer range": config.initializer_range,
        "embedding size": config.hidden_size,
        "sampling rate": config.sampling_rate,
        "input samples": config.num_samples,
    }


def training_hyperparameters(args: argparse.Namespace, accelerator: Accelerator) -> dict:
    return {
        "optimizer": f"AdamW (betas ({args.adam_beta1}, {args.adam_beta2}), eps {args.adam_epsilon}, weight decay {args.weight_decay})",
        "learning rate": args.learning_rate,
        "schedule": args.lr_scheduler_type + (f" (warm-up {args.warmup_ratio}, hold {args.hold_ratio})" if args.lr_scheduler_type == "tri_stage" else f" (warm-up {args.warmup_ratio})"),
        "optimiser steps": args.max_train_steps,
        "batch size (total)": args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps,
        "processes": accelerator.num_processes,
        "gradient accumulation": args.gradient_accumulation_steps,
        "gradient clipping": args.max_grad_norm or "off",
        "mixed precision": accelerator.mixed_precision,
        "N3S": f"{args.n3s_encoder}, {args.n3s_mode} mode, k={args.n3s_num_candidates}, {args.negative_fraction:.0%} of each batch",
        "text encoder init": text_encoder_source(args),
        "seed": args.seed,
    }


def hardware_description(accelerator: Accelerator) -> str:
    if accelerator.device.type == "cuda":
        return f"{accelerator.num_processes} x {torch.cuda.get_device_name(accelerator.device)}"
    return f"{accelerator.num_processes} CPU process(es), {torch.get_num_threads()} threads each"
