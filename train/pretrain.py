# Copyright 2026 The dbeta authors. Licensed under the Apache License, Version 2.0.
"""Pre-train D-BETA with 🤗 Accelerate: MLM + MEM + ETM (with N3S negatives) + ETS.

With no arguments it runs the offline demo: it writes a simulated corpus in the MIMIC-IV-ECG
layout (`outputs/demo_corpus`), prepares it, builds the N3S cache, pre-trains a small D-BETA for a
few minutes on the CPU, writes the Hub folder `outputs/dbeta-demo` and prints the validation
zero-shot macro AUROC::

    python train/pretrain.py                     # or: accelerate launch train/pretrain.py

A real run reads the folder written by `train/prepare_mimic_iv_ecg.py` and starts from Flan-T5:

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
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import datasets
import numpy as np
import torch
import transformers
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedType, ProjectConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from configuration_dbeta import DBetaConfig
from dbeta.train.build_demo_tokenizer import DEMO_TOKENIZER_DIR
from dbeta.train.collator import DBetaPretrainingCollator, EpochShuffleSampler, IndexedDataset, PretrainingBatchSettings
from dbeta.train.speed_levers import build_adamw, check_fused_adamw_devices, compile_repeated_layers
from dbeta.train.hub_export import write_hub_folder
from dbeta.train.metrics import multilabel_auroc, recall_at_k
from dbeta.train.model_card import PretrainingReport, build_model_card
from dbeta.train.n3s import N3S_MODES, N3SEncoderUnavailable, N3SSettings, default_cache_dir, load_or_build_n3s_index
from dbeta.train.text import normalize_report
from modeling_dbeta import DBetaForPreTraining

logger = get_logger(__name__)

DEMO_CORPUS_DIR = Path("outputs/demo_corpus")
DEMO_DATASET_DIR = Path("outputs/demo_corpus_prepared")
DEMO_OUTPUT_DIR = Path("outputs/dbeta-demo")
DEMO_NUM_RECORDS = 3000
#: Real ECG-report pairs in the demo's training split (`--demo_real_pairs`): "none" (the simulated
#: corpus only), "ludb" (the vendored LUDB training part: 95 patients with their cardiologists'
#: diagnosis text), or a folder laid out like `../shared/data/real` (the LUDB part plus its CinC 2021
#: and CPSC 2018 records with their SNOMED-CT diagnoses as text). The vendored LUDB evaluation
#: records are never among them (`dbeta.train.real_ecg`).
DEMO_REAL_PAIRS = "none"
#: How many times each real pair is repeated in the training split (they are few next to the simulated ones).
DEMO_REAL_REPEATS = 8
#: The paper's encoders (spec section 3, DECISIONS 16): the T5 tower starts from Flan-T5-base, and
#: N3S embeds the reports with Flan-T5-small. Real (non-demo) runs default to both.
DEFAULT_TEXT_ENCODER = "google/flan-t5-base"
DEFAULT_N3S_ENCODER = "google/flan-t5-small"
CHECKPOINTS_FOLDER = "checkpoints"
HUB_STAGING_FOLDER = ".hub_staging"
#: Not uploaded with the final folder (checkpoints hold optimizer states; staging is transient).
HUB_IGNORE_PATTERNS = [f"{CHECKPOINTS_FOLDER}/**", f"{HUB_STAGING_FOLDER}/**"]
LOSS_NAMES = ("loss", "mlm_loss", "mem_loss", "etm_loss", "ets_loss")

#: Offsets the process index in the seeds of validation batches (kept apart from training's).
VALIDATION_SEED_STREAM = 1 << 20

#: Settings the demo changes; anything not listed keeps the paper's value. The small model and the
#: high learning rate let a few minutes of CPU training reach a useful zero-shot AUROC.
DEMO_DEFAULTS = {
    "learning_rate": 1e-3,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 64,
    "max_train_steps": 1500,
    "eval_steps": 500,
    "checkpointing_steps": 500,
    "logging_steps": 20,
    "lr_scheduler_type": "cosine",
    "warmup_ratio": 0.05,
}
DEMO_NOTES = [
    "The simulated corpus builds 80% of its ECGs from the median beats of 69 patients of the LUDB v1.0.1 training "
    "part (ODC-By 1.0; none of the 65 real evaluation patients), re-timed to simulated rhythms; the reports are simulated.",
    "A 2.7M-parameter model (4 ECG layers, 2 T5 layers, 2 fusion layers, width 128) instead of 321M, "
    "with a T5 trained from scratch on an 834-token tokenizer instead of Flan-T5-base.",
    "Five stride-2 convolutions (156 ECG tokens of 32 samples) instead of four (312 tokens of 16 samples).",
    "No dropout, and weights initialised with a standard deviation of 0.05 instead of 0.02: with both towers "
    "from scratch, the paper's ETS (fixed scale, no bias, unnormalised features) otherwise settles on "
    "input-independent embeddings within the few minutes of the demo.",
    "Learning rate 1e-3 with a cosine schedule (5% warm-up), batch 32, 1500 steps, instead of 5e-5 tri-stage, "
    "batch 128, 300k steps.",
    "A fixed ETS logit bias of -4 (the paper's is 0): about the log share of matched pairs in a batch of 32, so that "
    "the negative pairs do not dominate the first steps.",
]
PAPER_DEFAULTS = {
    "learning_rate": 5e-5,
    "per_device_train_batch_size": 128,
    "per_device_eval_batch_size": 128,
    "max_train_steps": None,
    "eval_steps": 5000,
    "checkpointing_steps": 5000,
    "logging_steps": 100,
    "lr_scheduler_type": "tri_stage",
    "warmup_ratio": 0.1,
}

#: Zero-shot validation labels on MIMIC-IV-ECG (DECISIONS 19): label -> (prompt in the reports'
#: phrasing, regular expression that marks a validation report as positive).
MIMIC_ZERO_SHOT_LABELS: dict[str, tuple[str, str]] = {
    "sinus rhythm": ("sinus rhythm", r"\bsinus rhythm\b"),
    "sinus bradycardia": ("sinus bradycardia", r"\bsinus bradycardia\b"),
    "sinus tachycardia": ("sinus tachycardia", r"\bsinus tachycardia\b"),
    "atrial fibrillation": ("atrial fibrillation", r"\batrial fibrillation\b"),
    "atrial flutter": ("atrial flutter", r"\batrial flutter\b"),
    "first degree av block": ("1st degree a-v block", r"\b1st degree a-?v block\b"),
    "left bundle branch block": ("left bundle branch block", r"\bleft bundle branch block\b"),
    "right bundle branch block": ("right bundle branch block", r"\bright bundle branch block\b"),
    "left ventricular hypertrophy": ("left ventricular hypertrophy", r"\bleft ventricular hypertrophy\b"),
    "left axis deviation": ("left axis deviation", r"\bleft axis deviation\b"),
    "low qrs voltages": ("low qrs voltages", r"\blow qrs voltages?\b"),
    "prolonged qt interval": ("prolonged qt interval", r"\bprolonged qt\b"),
    "ventricular premature complexes": ("ventricular premature complexes", r"\bventricular premature complex|\bpvcs?\b"),
    "inferior infarct": ("inferior infarct", r"\binferior infarct"),
    "anterior infarct": ("anterior infarct", r"\banterior infarct"),
    "paced rhythm": ("paced rhythm", r"\bpaced rhythm\b|\bpacemaker\b|\bv-paced\b|\ba-paced\b"),
    "normal ecg": ("normal ecg", r"\bnormal ecg\b"),
}


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Pre-train D-BETA (no arguments: the offline demo).")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_dir", default=None, help="DatasetDict from train/prepare_mimic_iv_ecg.py. Without it: the demo.")
    data.add_argument("--train_split", default="train")
    data.add_argument("--validation_split", default="validation")
    data.add_argument("--streaming", action="store_true", help="Stream the training split (corpora larger than RAM/disk cache); needs --max_train_steps.")
    data.add_argument("--shuffle_buffer_size", type=int, default=10_000, help="With --streaming.")
    data.add_argument("--max_eval_samples", type=int, default=None, help="Validate on the first N validation rows.")
    data.add_argument("--dataloader_num_workers", type=int, default=0)
    data.add_argument("--demo_corpus_dir", default=str(DEMO_CORPUS_DIR))
    data.add_argument("--demo_dataset_dir", default=str(DEMO_DATASET_DIR))
    data.add_argument("--demo_num_records", type=int, default=DEMO_NUM_RECORDS)
    data.add_argument(
        "--demo_real_pairs",
        default=DEMO_REAL_PAIRS,
        help='Real ECG-report pairs in the demo\'s training split: "none", "ludb" (the vendored LUDB training part) or a '
        "folder laid out like ../shared/data/real (adds its CinC 2021 / CPSC 2018 records).",
    )
    data.add_argument("--demo_real_repeats", type=int, default=DEMO_REAL_REPEATS, help="Times each real pair is repeated.")

    n3s = parser.add_argument_group("N3S negatives")
    n3s.add_argument(
        "--n3s_encoder",
        default=None,
        help=f'Embeds the reports for N3S: a text encoder id or folder, or "tfidf" (offline). Default: {DEFAULT_N3S_ENCODER} '
        '(the paper); the demo: "tfidf".',
    )
    n3s.add_argument("--n3s_mode", choices=N3S_MODES, default="far")
    n3s.add_argument("--n3s_num_candidates", type=int, default=64)
    n3s.add_argument("--n3s_hard_max_similarity", type=float, default=0.95)
    n3s.add_argument("--n3s_cache_dir", default=None, help="Default: <dataset_dir>/n3s/<split>.")
    n3s.add_argument("--negative_fraction", type=float, default=0.5, help="Share of each batch paired with an N3S negative.")

    model = parser.add_argument_group("model")
    model.add_argument("--model_name_or_path", default=None, help="Continue from a saved D-BETA folder or Hub id.")
    model.add_argument("--config_name", default=None, help="A DBetaConfig JSON; default: the published architecture (demo: a small one).")
    model.add_argument("--config_overrides", default=None, help='Config fields to change, e.g. "mlm_probability=0.15,ets_loss_weight=2" (ECG tower: "ecg_config.mask_ratio=0").')
    model.add_argument(
        "--text_encoder",
        default=None,
        help=f"Initialise the T5 tower from this checkpoint (id or folder). Default: {DEFAULT_TEXT_ENCODER} (the paper); "
        "the demo trains its small T5 from scratch.",
    )
    model.add_argument(
        "--text_encoder_from_scratch",
        action="store_true",
        help="Train the T5 tower from random weights instead of a pretrained --text_encoder (not the paper's setting).",
    )
    model.add_argument("--tokenizer_name", default=None, help="Default: --text_encoder's (demo: the packaged demo tokenizer).")
    model.add_argument("--gradient_checkpointing", action="store_true")
    model.add_argument("--attn_implementation", choices=["sdpa", "eager"], default=None)

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--learning_rate", type=float, default=None)
    optim.add_argument("--weight_decay", type=float, default=0.01)
    optim.add_argument("--adam_beta1", type=float, default=0.9)
    optim.add_argument("--adam_beta2", type=float, default=0.98)
    optim.add_argument("--adam_epsilon", type=float, default=1e-6)
    optim.add_argument("--lr_scheduler_type", choices=["tri_stage", "cosine", "constant"], default=None)
    optim.add_argument("--warmup_ratio", type=float, default=None)
    optim.add_argument("--hold_ratio", type=float, default=0.4, help="Tri-stage: share of steps at the peak rate.")
    optim.add_argument("--init_lr_scale", type=float, default=0.01, help="Tri-stage: first rate / peak rate.")
    optim.add_argument("--final_lr_scale", type=float, default=0.01, help="Tri-stage: last rate / peak rate.")
    optim.add_argument("--max_grad_norm", type=float, default=1.0, help="0 disables clipping.")
    optim.add_argument("--per_device_train_batch_size", type=int, default=None)
    optim.add_argument("--per_device_eval_batch_size", type=int, default=None)
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1)
    optim.add_argument("--max_train_steps", type=int, default=None, help="Optimiser steps; overrides --num_train_epochs.")
    optim.add_argument("--num_train_epochs", type=int, default=1)
    optim.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None, help="Default: accelerate config.")
    optim.add_argument("--cpu", action="store_true", help="Train on the CPU even when a GPU is present.")
    optim.add_argument(
        "--num_cpu_threads",
        type=int,
        default=None,
        help="Threads per process when training on the CPU. Default: the cores available, shared by the local "
        "processes (`accelerate launch` sets OMP_NUM_THREADS=1, which would leave cores idle).",
    )
    optim.add_argument("--seed", type=int, default=0)

    speed = parser.add_argument_group("speed levers (off by default; README, section Speed levers)")
    speed.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile each repeated transformer layer (ECG encoder, T5 blocks, fusion, MEM decoder), not the whole model.",
    )
    speed.add_argument("--compile_backend", default="inductor", help='With --compile: the torch.compile backend (e.g. "aot_eager" to check without inductor).')
    speed.add_argument(
        "--compile_mode",
        default=None,
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
        help="With --compile: the torch.compile mode (reduce-overhead: CUDA graphs; pair it with --text_length_buckets).",
    )
    speed.add_argument(
        "--text_length_buckets",
        type=int,
        nargs="+",
        default=None,
        help="Pad each batch's reports to the smallest of these lengths that holds them (longer: max_text_length - 2), "
        "so the model sees a few static shapes, e.g. 64 128 254.",
    )
    speed.add_argument("--pad_to_multiple_of", type=int, default=None, help="Round each batch's padded text length up to a multiple of this.")
    speed.add_argument("--fused_adamw", action="store_true", help="AdamW with PyTorch's fused kernel (fused=True).")

    run = parser.add_argument_group("logging, checkpoints, export")
    run.add_argument("--output_dir", default=None, help="The Hub folder (default outputs/dbeta-demo for the demo).")
    run.add_argument("--logging_steps", type=int, default=None)
    run.add_argument("--eval_steps", type=int, default=None, help="0: validate only at the end.")
    run.add_argument("--checkpointing_steps", type=int, default=None, help="0: no intermediate checkpoints.")
    run.add_argument("--checkpoints_total_limit", type=int, default=3)
    run.add_argument("--resume_from_checkpoint", default=None, help='"latest" or a checkpoint folder.')
    run.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="Start afresh in an --output_dir that holds checkpoints of an earlier run (they are deleted).",
    )
    run.add_argument(
        "--preparation_timeout",
        type=int,
        default=6 * 3600,
        help="Seconds the other processes wait for the main process to prepare shared files (data, N3S cache, downloads).",
    )
    run.add_argument("--report_to", default="tensorboard", help='Tracker(s) for accelerate ("all", "none", "tensorboard", "wandb", ...).')
    run.add_argument("--zero_shot_labels", default=None, help='"demo", "mimic" or a JSON {label: [prompt, regex]}.')
    run.add_argument("--recall_ks", type=int, nargs="+", default=[1, 5, 10])
    run.add_argument("--license", default=None, help="Licence id in the model card (demo: apache-2.0; else cc-by-nc-4.0).")
    run.add_argument("--push_to_hub", action="store_true")
    run.add_argument("--hub_model_id", default=None)
    run.add_argument("--hub_token", default=None)
    run.add_argument("--hub_private_repo", action="store_true")
    args = parser.parse_args(argv)
    return resolve_defaults(args)


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the settings left unset from the demo's or the paper's defaults, and check them."""
    args.is_demo = args.dataset_dir is None and args.model_name_or_path is None and args.config_name is None
    if args.dataset_dir is None and not args.is_demo:
        raise ValueError("--dataset_dir is required unless running the demo (no --model_name_or_path/--config_name).")
    if args.text_encoder_from_scratch and (args.text_encoder or args.model_name_or_path):
        raise ValueError("--text_encoder_from_scratch excludes --text_encoder and --model_name_or_path.")
    if args.text_encoder and args.model_name_or_path:
        raise ValueError("--text_encoder and --model_name_or_path exclude each other (the saved model holds its own text tower).")
    if args.text_encoder is None and not (args.is_demo or args.model_name_or_path or args.text_encoder_from_scratch):
        args.text_encoder = DEFAULT_TEXT_ENCODER
    if args.n3s_encoder is None:
        args.n3s_encoder = "tfidf" if args.is_demo else DEFAULT_N3S_ENCODER
    defaults = DEMO_DEFAULTS if args.is_demo else PAPER_DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.output_dir is None:
        args.output_dir = str(DEMO_OUTPUT_DIR) if args.is_demo else "outputs/dbeta-pretrain"
    if args.zero_shot_labels is None:
        args.zero_shot_labels = "demo" if args.is_demo else "mimic"
    if args.license is None:
        args.license = "apache-2.0" if args.is_demo else "cc-by-nc-4.0"
    if args.streaming and args.max_train_steps is None:
        raise ValueError("--streaming needs --max_train_steps (a stream has no length).")
    if args.push_to_hub and not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id.")
    if args.overwrite_output_dir and args.resume_from_checkpoint:
        raise ValueError("--overwrite_output_dir and --resume_from_checkpoint exclude each other.")
    if args.warmup_ratio + (args.hold_ratio if args.lr_scheduler_type == "tri_stage" else 0.0) > 1.0:
        raise ValueError("--warmup_ratio + --hold_ratio must not exceed 1.")
    return args


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def prepare_demo_dataset(args: argparse.Namespace) -> str:
    """Write the simulated corpus and prepare it, unless that was done before; returns the dataset dir."""
    from dbeta.train.make_demo_corpus import make_demo_corpus
    from dbeta.train.mimic_iv_ecg import prepare_mimic_iv_ecg

    corpus_dir, dataset_dir = Path(args.demo_corpus_dir), Path(args.demo_dataset_dir)
    if not (corpus_dir / "record_list.csv").is_file():
        started = time.perf_counter()
        make_demo_corpus(corpus_dir, num_records=args.demo_num_records, seed=args.seed)
        logger.info(f"Demo corpus: {args.demo_num_records} simulated studies in {corpus_dir} ({time.perf_counter() - started:.0f} s)")
    real_pairs = {"demo_real_pairs": args.demo_real_pairs, "demo_real_repeats": args.demo_real_repeats if args.demo_real_pairs != "none" else 0}
    settings_file = dataset_dir / "demo_real_pairs.json"
    if (dataset_dir / "dataset_dict.json").is_file():
        # A folder prepared before this file existed holds the simulated corpus only.
        prepared = json.loads(settings_file.read_text()) if settings_file.is_file() else {"demo_real_pairs": "none", "demo_real_repeats": 0}
        if prepared != real_pairs:
            raise ValueError(
                f"{dataset_dir} was prepared with {prepared}, not {real_pairs}: pass another --demo_dataset_dir, or delete it."
            )
    else:
        started = time.perf_counter()
        with_real = args.demo_real_pairs != "none"
        target = dataset_dir.with_name(dataset_dir.name + "_simulated") if with_real else dataset_dir
        prepare_mimic_iv_ecg(corpus_dir, target, num_proc=min(2, os.cpu_count() or 1), val_fraction=0.1, seed=args.seed, progress=False)
        if with_real:
            real_dir = None if args.demo_real_pairs == "ludb" else args.demo_real_pairs
            add_real_training_pairs(target, dataset_dir, real_dir, args.demo_real_repeats)
        settings_file.write_text(json.dumps(real_pairs))
        logger.info(f"Demo corpus prepared in {dataset_dir} ({time.perf_counter() - started:.0f} s)")
    return str(dataset_dir)


def add_real_training_pairs(simulated_dir: Path, dataset_dir: Path, real_dir: str | os.PathLike | None, repeats: int) -> None:
    """Write `dataset_dir`: the prepared simulated corpus with the real ECG-report pairs (the
    vendored LUDB training part, plus `real_dir`'s CinC/CPSC records; never an evaluation record)
    appended `repeats` times to its training split; the validation split stays simulated. The pairs
    are listed in `real_pairs.csv`."""
    from dbeta.train.mimic_iv_ecg import SkipRecord, convert_record, dataset_features
    from dbeta.train.real_ecg import real_training_pairs

    simulated = datasets.load_from_disk(str(simulated_dir))
    rows, listed = [], []
    for number, pair in enumerate(real_training_pairs(real_dir)):
        try:
            samples, gain, lead_names, _ = convert_record(pair["record"])
        except SkipRecord as skip:
            logger.info(f"Real pair {pair['source']}/{pair['record_id']} skipped: {skip}")
            continue
        subject_id = 90_000_000 + number  # apart from the simulated subjects (10M-19M)
        rows.append({"subject_id": subject_id, "study_id": subject_id, "ecg_time": "", "path": f"real/{pair['source']}/{pair['record_id']}",
                     "report": normalize_report(pair["report"]), "ecg": samples, "ecg_gain": gain, "lead_names": lead_names,
                     "sampling_rate": float(pair["record"].sampling_rate)})
        listed.append(f"{pair['source']},{pair['record_id']}")
    real = datasets.Dataset.from_list(rows, features=dataset_features())
    train = datasets.concatenate_datasets([simulated["train"].cast(dataset_features()), *([real] * repeats)])
    datasets.DatasetDict({"train": train, "validation": simulated["validation"]}).save_to_disk(str(dataset_dir))
    (dataset_dir / "real_pairs.csv").write_text("source,record_id\n" + "\n".join(listed) + "\n", encoding="utf-8")
    logger.info(f"Added {len(rows)} real ECG-report pairs x {repeats} to the demo's training split")


def load_splits(args: argparse.Namespace):
    """(train dataset, validation dataset, train reports); the training split may be a stream."""
    if args.streaming:
        data_files = {
            split: sorted(str(path) for path in (Path(args.dataset_dir) / split).glob("*.arrow"))
            for split in (args.train_split, args.validation_split)
        }
        train = datasets.load_dataset("arrow", data_files={"train": data_files[args.train_split]}, split="train", streaming=True)
        validation = datasets.load_from_disk(str(Path(args.dataset_dir) / args.validation_split))
        train_reports = (row["report"] for row in train.select_columns(["report"]))
    else:
        data = datasets.load_from_disk(args.dataset_dir)
        train, validation = data[args.train_split], data[args.validation_split]
        train_reports = train["report"]
    if args.max_eval_samples is not None:
        validation = validation.select(range(min(args.max_eval_samples, len(validation))))
    return train, validation, train_reports


def zero_shot_label_set(name: str) -> dict[str, tuple[str, str]]:
    """label -> (prompt, keyword regex). "demo" uses the demo corpus's own report statements."""
    if name == "demo":
        from dbeta.train.make_demo_corpus import DEMO_CONDITIONS

        return {key: (normalize_report(phrase), re.escape(normalize_report(phrase))) for key, phrase in DEMO_CONDITIONS.items()}
    if name == "mimic":
        return dict(MIMIC_ZERO_SHOT_LABELS)
    with open(name, encoding="utf-8") as handle:
        return {label: (prompt, pattern) for label, (prompt, pattern) in json.load(handle).items()}


def keyword_labels(reports: Sequence[str], label_set: Mapping[str, tuple[str, str]]) -> np.ndarray:
    """(num_reports, num_labels) 0/1: report i mentions label j (its regex matches the normalised report)."""
    patterns = [re.compile(pattern) for _, pattern in label_set.values()]
    return np.array([[int(bool(p.search(normalize_report(r)))) for p in patterns] for r in reports], dtype=np.int64)


class _StreamingRows(torch.utils.data.IterableDataset):
    """A `datasets` stream whose rows carry their position in the (shuffled) epoch stream."""

    def __init__(self, stream, seed: int, buffer_size: int):
        self.stream = stream.select_columns(["ecg", "ecg_gain", "lead_names", "report"]).shuffle(seed=seed, buffer_size=buffer_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.stream.set_epoch(epoch)

    def __iter__(self):
        for position, row in enumerate(self.stream):
            yield {**row, "index": position}


# --------------------------------------------------------------------------------------------
# Model, optimiser, schedule
# --------------------------------------------------------------------------------------------


def demo_model_config(tokenizer) -> DBetaConfig:
    """The demo's small D-BETA (2.7M parameters): every module of the real one, narrower and shallower."""
    return DBetaConfig(
        ecg_config=dict(
            # Five stride-2 convolutions: one token per 32 samples (64 ms), 156 tokens per ECG.
            conv_dim=[64] * 5,
            conv_kernel=[2] * 5,
            conv_stride=[2] * 5,
            hidden_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=512,
            num_conv_pos_embeddings=32,
            num_conv_pos_embedding_groups=16,
            projection_dim=128,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            feat_proj_dropout=0.0,
        ),
        text_config=dict(
            vocab_size=len(tokenizer),
            d_model=128,
            d_kv=32,
            d_ff=256,
            num_layers=2,
            num_heads=4,
            dropout_rate=0.0,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        ),
        hidden_size=128,
        num_fusion_layers=2,
        fusion_num_attention_heads=4,
        fusion_intermediate_size=512,
        fusion_dropout=0.0,
        mem_decoder_hidden_size=64,
        mem_decoder_num_layers=2,
        mem_decoder_num_attention_heads=4,
        mem_fusion_layer=1,
        # From-scratch towers start with almost input-independent pooled embeddings at the usual
        # 0.02; ETS (no bias, unnormalised features) then settles in the constant "all pairs
        # negative" solution. A wider initialisation lets the demo leave it within minutes.
        initializer_range=0.05,
        # A fixed prior on the ETS logits (the paper's is 0): about log(16 / 1024), the share of
        # matched pairs among the 32 x 32 of a demo batch (half the texts are N3S negatives). At 0
        # the many negative pairs dominate the first steps and some seeds collapse to
        # input-independent embeddings; -4 raised seed 1's real macro AUROC from 0.57 to 0.73.
        ets_logit_bias=-4.0,
    )


def apply_config_overrides(config: DBetaConfig, overrides: str) -> None:
    """`--config_overrides`: "key=value,..." for top-level fields; "ecg_config.key=value" for the ECG tower's."""
    top_level, ecg = [], []
    for item in filter(None, (part.strip() for part in overrides.split(","))):
        (ecg if item.startswith("ecg_config.") else top_level).append(item.removeprefix("ecg_config."))
    if top_level:
        config.update_from_string(",".join(top_level))
    if ecg:
        config.ecg_config.update_from_string(",".join(ecg))


def build_model(args: argparse.Namespace, tokenizer) -> DBetaForPreTraining:
    if args.model_name_or_path:
        model = DBetaForPreTraining.from_pretrained(args.model_name_or_path)
    else:
        if args.config_name:
            config = DBetaConfig.from_json_file(args.config_name)
        elif args.is_demo:
            config = demo_model_config(tokenizer)
        else:
            config = DBetaConfig()
        if args.config_overrides:
            apply_config_overrides(config, args.config_overrides)
        if args.text_encoder:
            try:
                model = DBetaForPreTraining.from_text_encoder_pretrained(args.text_encoder, config=config)
            except OSError as error:
                raise OSError(
                    f"--text_encoder {args.text_encoder!r} could not be loaded ({error}); pass a reachable checkpoint, "
                    "or --text_encoder_from_scratch to train the text tower from random weights."
                ) from error
        else:
            model = DBetaForPreTraining(config)
    if len(tokenizer) > model.config.text_config.vocab_size:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the text encoder only {model.config.text_config.vocab_size} embeddings."
        )
    if args.attn_implementation:
        model.config._attn_implementation = args.attn_implementation
    if args.gradient_checkpointing:
        # transformers 5 renamed the API; the old name warns that it goes in v6.
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    if getattr(args, "compile", False):
        count = compile_repeated_layers(model, backend=args.compile_backend, mode=args.compile_mode)
        logger.info(f"--compile: {count} transformer layers compiled with torch.compile (backend {args.compile_backend}, mode {args.compile_mode})")
    return model


def optimizer_parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices only; biases, norms, embeddings' 1-D tensors are not decayed."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim < 2 or name.endswith("class_embedding") else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def tri_stage_lambda(total_steps: int, warmup_ratio: float, hold_ratio: float, init_lr_scale: float, final_lr_scale: float):
    """fairseq's tri-stage schedule as a multiplier of the peak rate: linear warm-up from
    `init_lr_scale`, a hold at 1, then exponential decay to `final_lr_scale` (and constant after)."""
    warmup_steps = int(total_steps * warmup_ratio)
    hold_steps = int(total_steps * hold_ratio)
    decay_steps = max(1, total_steps - warmup_steps - hold_steps)
    decay_factor = -math.log(final_lr_scale) / decay_steps

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return init_lr_scale + (1.0 - init_lr_scale) * step / warmup_steps
        step -= warmup_steps
        if step < hold_steps:
            return 1.0
        step -= hold_steps
        return math.exp(-decay_factor * min(step, decay_steps))

    return multiplier


def build_scheduler(args: argparse.Namespace, optimizer, total_steps: int, num_processes: int):
    # An accelerate-prepared scheduler advances `num_processes` times per optimiser step (the
    # accelerate examples' convention), so its step counts are scaled likewise.
    total = total_steps * num_processes
    if args.lr_scheduler_type == "tri_stage":
        multiplier = tri_stage_lambda(total, args.warmup_ratio, args.hold_ratio, args.init_lr_scale, args.final_lr_scale)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
    return transformers.get_scheduler(
        "cosine" if args.lr_scheduler_type == "cosine" else "constant_with_warmup",
        optimizer,
        num_warmup_steps=int(total * args.warmup_ratio),
        num_training_steps=total,
    )


def cpu_threads_per_process(requested: int | None, num_processes: int) -> int:
    """`requested`, or the cores this process may use divided among the processes of this machine."""
    if requested:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", num_processes))
    return max(1, cores // max(1, local_processes))


def step_seed(seed: int, micro_step: int, process_index: int) -> int:
    """The seed of one forward pass: a function of (seed, micro-step, process) only."""
    return int(np.random.SeedSequence([seed, micro_step, process_index]).generate_state(1, dtype=np.uint64)[0] >> 1)


# --------------------------------------------------------------------------------------------
# Checkpoint bookkeeping
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Hub export and upload
# --------------------------------------------------------------------------------------------


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
    # The same writer as train/convert_original_checkpoint.py, so both folders load the same way.
    write_hub_folder(unwrapped, processor, folder, card, extra_files, label_descriptions)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


@contextmanager
def full_parameters(accelerator: Accelerator, model):
    """Under FSDP, make the root module's own (sharded) parameters whole, so that its sub-modules
    (`get_ecg_features`, `get_text_features`) can be called outside its `forward`."""
    if accelerator.distributed_type != DistributedType.FSDP:
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):  # FSDP2: wrapped blocks unshard themselves when called
        model.unshard()
        try:
            yield
        finally:
            model.reshard()
    else:
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(model, writeback=False):
            yield


def stack_losses(outputs) -> torch.Tensor:
    """The LOSS_NAMES values of a forward pass, detached; 0 for an objective it did not compute
    (MEM when the ECG is not masked: `ecg_config.mask_ratio=0`)."""
    zero = outputs["loss"].detach().new_zeros(())
    return torch.stack([outputs[name].detach() if outputs.get(name) is not None else zero for name in LOSS_NAMES])


@torch.no_grad()
def evaluate(
    accelerator: Accelerator,
    model,
    loss_loader: DataLoader,
    embedding_loader: DataLoader,
    validation_reports: Sequence[str],
    label_set: Mapping[str, tuple[str, str]],
    tokenizer,
    seed: int,
    recall_ks: Sequence[int],
    real_eval_set=None,
) -> dict[str, float]:
    """Validation losses (fixed negatives and masks), zero-shot AUROC and retrieval recall@k; with
    `real_eval_set` (a `dbeta.train.real_ecg.RealEvalSet`), also the zero-shot AUROC on those real
    ECGs with plain-text rhythm prompts, computed as the public pipeline does."""
    was_training = model.training
    model.eval()
    unwrapped = accelerator.unwrap_model(model)
    generator = torch.Generator(device=accelerator.device)

    # Sums over samples: the five losses, correct ETM decisions, number of samples.
    totals = torch.zeros(len(LOSS_NAMES) + 2, dtype=torch.float64, device=accelerator.device)
    for batch_index, batch in enumerate(loss_loader):
        generator.manual_seed(step_seed(seed, batch_index, VALIDATION_SEED_STREAM + accelerator.process_index))
        batch_size = batch.pop("sample_index").shape[0]
        outputs = model(**batch, mask_generator=generator)
        losses = stack_losses(outputs).double()
        correct = (outputs.etm_logits.argmax(-1) == batch["is_aligned"]).sum().double()
        totals += torch.cat([losses * batch_size, correct[None], totals.new_tensor([batch_size])])
    totals = accelerator.reduce(totals, "sum")
    metrics = {name: float(totals[i] / totals[-1]) for i, name in enumerate(LOSS_NAMES)}
    metrics["etm_accuracy"] = float(totals[-2] / totals[-1])

    ecg_embeds, text_embeds, indices = [], [], []
    for batch in embedding_loader:
        with full_parameters(accelerator, model):
            ecg = unwrapped.get_ecg_features(batch["input_values"]).pooler_output
            text = unwrapped.get_text_features(batch["input_ids"], batch["attention_mask"]).pooler_output
        gathered = accelerator.gather_for_metrics((ecg.float(), text.float(), batch["sample_index"]))
        ecg_embeds.append(gathered[0].cpu())
        text_embeds.append(gathered[1].cpu())
        indices.append(gathered[2].cpu())
    ecg_embeds, text_embeds, indices = torch.cat(ecg_embeds), torch.cat(text_embeds), torch.cat(indices).numpy()
    # Spread of the embeddings over the validation set: near 0 means a tower collapsed to a constant.
    metrics["ecg_embedding_std"] = float(ecg_embeds.std(dim=0).mean())
    metrics["text_embedding_std"] = float(text_embeds.std(dim=0).mean())
    reports = [normalize_report(validation_reports[i]) for i in indices]

    prompts = [prompt for prompt, _ in label_set.values()]
    encoded = tokenizer([normalize_report(p) for p in prompts], padding=True, return_tensors="pt").to(accelerator.device)
    with full_parameters(accelerator, model):
        prompt_embeds = unwrapped.get_text_features(encoded["input_ids"], encoded["attention_mask"]).pooler_output
        # The ETS logits (scale and bias live on the model's device, possibly learnable).
        scores = unwrapped.dbeta.ets_logits(ecg_embeds.to(prompt_embeds), prompt_embeds).float().cpu()
    auroc = multilabel_auroc(keyword_labels(reports, label_set), scores.numpy(), list(label_set))
    metrics["zero_shot_macro_auroc"] = auroc.macro
    metrics["zero_shot_num_labels"] = len(auroc.per_label)
    metrics.update({f"zero_shot_auroc/{label}": value for label, value in auroc.per_label.items()})

    # Retrieval over the distinct reports: an ECG finds its report among the unique validation
    # reports, and a report finds any ECG that carries it (identical reports count as one).
    unique_reports, first_row = np.unique(np.array(reports, dtype=object), return_index=True)
    unique_text_embeds = text_embeds[torch.as_tensor(first_row)].numpy()
    similarity = ecg_embeds.numpy() @ unique_text_embeds.T
    ks = [k for k in recall_ks if k <= len(unique_reports)] or [1]
    recall = {
        "ecg_to_text": recall_at_k(similarity, ks, query_groups=reports, gallery_groups=list(unique_reports)),
        "text_to_ecg": recall_at_k(similarity.T, ks, query_groups=list(unique_reports), gallery_groups=reports),
    }
    for direction, values in recall.items():
        metrics.update({f"{direction}_recall@{k}": value for k, value in values.items()})
    if real_eval_set is not None:
        from dbeta.train.real_ecg import evaluate_real_zero_shot

        with full_parameters(accelerator, model):
            metrics.update(evaluate_real_zero_shot(unwrapped, build_processor(unwrapped.config, tokenizer), real_eval_set))
    if was_training:
        model.train()
    return metrics


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Multi-process preparation and pretrained encoders
# --------------------------------------------------------------------------------------------


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


def _accelerator_available() -> bool:
    """Whether torch sees a GPU (or another accelerator)."""
    if hasattr(torch, "accelerator"):
        return torch.accelerator.is_available()
    return torch.cuda.is_available()


def _delete_old_checkpoints(args: argparse.Namespace) -> None:
    for folder in (Path(args.output_dir) / CHECKPOINTS_FOLDER, Path(args.output_dir) / HUB_STAGING_FOLDER):
        if folder.exists():
            logger.info(f"--overwrite_output_dir: deleting {folder}")
            shutil.rmtree(folder)


def n3s_cache_dir(args: argparse.Namespace, split: str) -> Path:
    return Path(args.n3s_cache_dir) / split if args.n3s_cache_dir else default_cache_dir(args.dataset_dir, split)


def text_encoder_source(args: argparse.Namespace) -> str:
    """Where the T5 tower's weights come from (logged, in results.json and in the model card)."""
    if args.model_name_or_path:
        return f"{args.model_name_or_path} (the D-BETA checkpoint's own text tower)"
    if args.text_encoder:
        return f"{args.text_encoder} (pretrained)"
    return "random initialisation (" + ("demo: trained from scratch" if args.is_demo else "--text_encoder_from_scratch") + ")"


def check_pretrained_encoders(args: argparse.Namespace) -> None:
    """Fail before any data work when a pretrained encoder the run needs cannot be loaded, naming the
    flag (a real run must not fall back to a random text tower or to TF-IDF negatives)."""
    if args.text_encoder:
        try:
            transformers.AutoConfig.from_pretrained(args.text_encoder)
        except (OSError, ValueError) as error:
            raise OSError(
                f"--text_encoder {args.text_encoder!r} could not be loaded ({error}). Real pre-training starts the text "
                f"tower from the pretrained {DEFAULT_TEXT_ENCODER} (the paper). Make it reachable (online, in the Hugging Face "
                "cache, e.g. `huggingface-cli download google/flan-t5-base`, or as a local folder passed to --text_encoder), "
                "or pass --text_encoder_from_scratch to train the text tower from random weights."
            ) from error
    if args.n3s_encoder != "tfidf" and args.n3s_mode != "random" and args.dataset_dir is not None:
        settings = N3SSettings(args.n3s_encoder, args.n3s_mode, args.n3s_num_candidates, args.n3s_hard_max_similarity)
        cached = all(
            (n3s_cache_dir(args, split) / settings.cache_name() / "n3s_config.json").is_file()
            for split in (args.train_split, args.validation_split)
        )
        if not cached:
            check_n3s_encoder(args.n3s_encoder)


def check_n3s_encoder(name: str) -> None:
    try:
        transformers.AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as error:
        raise OSError(
            f"--n3s_encoder {name!r} could not be loaded ({error}). N3S embeds the reports with {DEFAULT_N3S_ENCODER} "
            "(the paper). Make it reachable (online, in the Hugging Face cache, or as a local folder passed to "
            "--n3s_encoder), or pass --n3s_encoder tfidf for TF-IDF negatives (offline; not the paper's setting)."
        ) from error


def load_tokenizer(args: argparse.Namespace):
    try:
        return AutoTokenizer.from_pretrained(args.tokenizer_name)
    except (OSError, ValueError) as error:
        raise OSError(
            f"The tokenizer {args.tokenizer_name!r} could not be loaded ({error}); pass a reachable one with --tokenizer_name."
        ) from error


def build_n3s_indexes(args: argparse.Namespace, train_reports, validation_reports, device) -> dict:
    settings = N3SSettings(args.n3s_encoder, args.n3s_mode, args.n3s_num_candidates, args.n3s_hard_max_similarity)
    indexes = {}
    for split, reports in ((args.train_split, train_reports), (args.validation_split, validation_reports)):
        try:
            indexes[split] = load_or_build_n3s_index(reports, n3s_cache_dir(args, split), settings, device=device)
        except N3SEncoderUnavailable as error:
            raise OSError(f"--n3s_encoder {args.n3s_encoder!r}: {error}") from error
    return indexes


@dataclass
class PretrainingResult:
    output_dir: str
    metrics: dict
    completed_steps: int
    history: list
    train_seconds: float


def software_versions() -> dict[str, str]:
    import accelerate

    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "accelerate": accelerate.__version__, "datasets": datasets.__version__}
    try:
        revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10)
        if revision.returncode == 0:
            versions["dbeta git"] = revision.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
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


def main(argv: Sequence[str] | None = None) -> PretrainingResult:
    args = parse_args(argv)
    run_started = time.perf_counter()
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
    set_seed(args.seed)  # model initialisation
    # Everything below that writes shared files before training runs on the main process first.
    preparation = SharedPreparation(accelerator, args.preparation_timeout)
    existing_checkpoints = preparation.run("checking --output_dir", check_output_dir, args)
    if existing_checkpoints and args.overwrite_output_dir:
        preparation.run("deleting the old checkpoints (--overwrite_output_dir)", _delete_old_checkpoints, args)
    preparation.run("loading the pretrained encoders", check_pretrained_encoders, args)
    logger.info(f"Text encoder: {text_encoder_source(args)}; N3S encoder: {args.n3s_encoder}")

    # ---- data ----------------------------------------------------------------------------
    if args.is_demo:
        args.dataset_dir = preparation.run("writing and preparing the demo corpus", prepare_demo_dataset, args)
    if args.tokenizer_name is None:
        args.tokenizer_name = args.text_encoder or args.model_name_or_path or (str(DEMO_TOKENIZER_DIR) if args.is_demo else DEFAULT_TEXT_ENCODER)
    tokenizer = preparation.run("loading the tokenizer", load_tokenizer, args)
    train_data, validation_data, train_reports = load_splits(args)

    n3s_device = accelerator.device if args.n3s_encoder != "tfidf" else None
    indexes = preparation.run(
        "building the N3S cache", build_n3s_indexes, args, train_reports, validation_data["report"], n3s_device
    )
    model = preparation.run("building the model", build_model, args, tokenizer)
    preparation.close()
    config = model.config
    batch_settings = PretrainingBatchSettings.from_config(
        config, negative_fraction=args.negative_fraction, text_length_buckets=args.text_length_buckets, pad_to_multiple_of=args.pad_to_multiple_of
    )
    train_collator = DBetaPretrainingCollator(tokenizer, batch_settings, indexes[args.train_split], seed=args.seed)
    # Validation batches are fixed: epoch 0 of a collator with the validation split's own negatives.
    loss_collator = DBetaPretrainingCollator(tokenizer, batch_settings, indexes[args.validation_split], seed=args.seed)
    embedding_collator = DBetaPretrainingCollator(tokenizer, batch_settings, None, seed=args.seed, augment=False)

    if args.streaming:
        train_rows = _StreamingRows(train_data, args.seed, args.shuffle_buffer_size)
        train_loader = DataLoader(train_rows, batch_size=args.per_device_train_batch_size, collate_fn=train_collator, num_workers=args.dataloader_num_workers, drop_last=True)
    else:
        train_rows = IndexedDataset(train_data)
        train_loader = DataLoader(
            train_rows,
            batch_size=args.per_device_train_batch_size,
            sampler=EpochShuffleSampler(len(train_rows), seed=args.seed),
            collate_fn=train_collator,
            num_workers=args.dataloader_num_workers,
            drop_last=True,
        )
    validation_rows = IndexedDataset(validation_data)
    validation_reports = list(validation_data["report"])
    loss_loader = DataLoader(validation_rows, batch_size=args.per_device_eval_batch_size, collate_fn=loss_collator)
    embedding_loader = DataLoader(validation_rows, batch_size=args.per_device_eval_batch_size, collate_fn=embedding_collator)

    # ---- optimisation ----------------------------------------------------------------------
    optimizer = build_adamw(
        optimizer_parameter_groups(model, args.weight_decay),
        learning_rate=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        fused=args.fused_adamw,
    )
    if args.max_train_steps is None:
        batches_per_process = math.ceil(len(train_loader) / accelerator.num_processes)
        args.max_train_steps = args.num_train_epochs * math.ceil(batches_per_process / args.gradient_accumulation_steps)
    scheduler = build_scheduler(args, optimizer, args.max_train_steps, accelerator.num_processes)
    model, optimizer, train_loader, loss_loader, embedding_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, loss_loader, embedding_loader, scheduler
    )
    if args.fused_adamw:
        check_fused_adamw_devices(model)
    if not args.streaming:
        steps_per_epoch = max(1, math.ceil(len(train_loader) / args.gradient_accumulation_steps))
        num_epochs = math.ceil(args.max_train_steps / steps_per_epoch)
    else:
        num_epochs = sys.maxsize
    progress = TrainingProgress(num_processes=accelerator.num_processes, per_device_batch_size=args.per_device_train_batch_size)
    accelerator.register_for_checkpointing(progress)

    label_set = zero_shot_label_set(args.zero_shot_labels)
    if report_to:
        hyperparameters = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in vars(args).items()}
        hyperparameters["text_encoder_source"] = text_encoder_source(args)
        accelerator.init_trackers("dbeta-pretrain", config=hyperparameters)

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
        accelerator.print(f"No checkpoint in {output_dir / CHECKPOINTS_FOLDER}: starting from scratch.")

    uploader = HubUploader(args.hub_model_id, args.hub_token, args.hub_private_repo) if args.push_to_hub and accelerator.is_main_process else None
    processor = build_processor(config, tokenizer)
    label_descriptions = {label: prompt for label, (prompt, _) in label_set.items()} if args.is_demo else None
    data_counts = {
        "train records": len(train_data) if not args.streaming else "streamed",
        "validation records": len(validation_data),
        "unique train reports (N3S)": len(indexes[args.train_split]),
        "unique validation reports": len(indexes[args.validation_split]),
    }
    metrics: dict[str, float] = {}

    def export(folder: Path, metrics_for_card: Mapping[str, float]) -> None:
        summary = PretrainingReport(
            model_name=args.hub_model_id or args.output_dir,
            is_demo=args.is_demo,
            dataset_description=(
                f"Simulated demo corpus ({args.demo_num_records} studies, MIMIC-IV-ECG layout)" if args.is_demo else f"Prepared MIMIC-IV-ECG from `{args.dataset_dir}`"
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
            notes=DEMO_NOTES if args.is_demo else [],
            text_encoder=text_encoder_source(args),
            n3s_encoder=args.n3s_encoder,
        )
        results = {
            "completed_steps": progress.completed_steps, "samples_seen": progress.samples_seen, "train_seconds": progress.train_seconds,
            "text_encoder": text_encoder_source(args), "n3s_encoder": args.n3s_encoder, "metrics": dict(metrics_for_card),
        }  # fmt: skip
        export_hub_folder(
            accelerator, model, processor, folder, build_model_card(summary),
            {"results.json": json.dumps(results, indent=2) + "\n"}, label_descriptions,
        )

    if args.is_demo:
        from dbeta.train.real_ecg import load_ludb_eval_set

        real_eval_set = load_ludb_eval_set()  # the vendored real ECGs, never used in training
    else:
        real_eval_set = None

    def run_validation() -> dict[str, float]:
        values = evaluate(accelerator, model, loss_loader, embedding_loader, validation_reports, label_set, tokenizer, args.seed, args.recall_ks, real_eval_set)
        accelerator.log({f"validation/{name}": value for name, value in values.items()}, step=progress.completed_steps)
        accelerator.print(
            f"step {progress.completed_steps}: validation loss {values['loss']:.4f}, zero-shot macro AUROC "
            f"{values['zero_shot_macro_auroc']:.4f}, ECG->report recall@1 {values.get('ecg_to_text_recall@1', float('nan')):.3f}, "
            f"ETM accuracy {values['etm_accuracy']:.3f}"
            + (f", real-ECG zero-shot macro AUROC {values['real_zero_shot_macro_auroc']:.4f}" if "real_zero_shot_macro_auroc" in values else "")
        )
        return values

    # ---- training loop ---------------------------------------------------------------------
    total_batch_size = args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info("***** Pre-training *****")
    logger.info(f"  Examples = {data_counts['train records']}, steps = {args.max_train_steps}, batch = {total_batch_size} "
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
        train_collator.set_epoch(epoch)
        train_loader.set_epoch(epoch)
        if args.streaming:
            train_rows.set_epoch(epoch)
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
                metrics = run_validation()
            if args.checkpointing_steps and progress.completed_steps % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, args, progress, uploader, export, metrics)
            if progress.completed_steps >= args.max_train_steps:
                done = True
                break
        if not done:
            progress.epoch, progress.batches_in_epoch = epoch + 1, 0
    progress_bar.close()

    metrics = run_validation()
    accelerator.wait_for_everyone()
    export(output_dir, metrics)
    if uploader is not None:
        uploader.upload(output_dir, commit_message=f"End of training (step {progress.completed_steps})")
        uploader.wait()
    accelerator.end_training()

    if accelerator.is_main_process:
        print_summary(metrics, label_set, output_dir, time.perf_counter() - run_started, progress)
    return PretrainingResult(str(output_dir), metrics, progress.completed_steps, progress.history, progress.train_seconds)


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


def print_summary(metrics: Mapping[str, float], label_set, output_dir: Path, wall_seconds: float, progress: TrainingProgress) -> None:
    print(f"\nPre-training finished: {progress.completed_steps} steps, {progress.samples_seen} samples, "
          f"{progress.train_seconds / 60:.1f} min training, {wall_seconds / 60:.1f} min in total.")
    for label in label_set:
        value = metrics.get(f"zero_shot_auroc/{label}")
        if value is not None:
            print(f"  zero-shot AUROC {label:<28} {value:.4f}")
    print(f"  retrieval ECG->report recall@1/5/10: " + " / ".join(f"{metrics.get(f'ecg_to_text_recall@{k}', float('nan')):.3f}" for k in (1, 5, 10)))
    print(f"Validation zero-shot macro AUROC: {metrics['zero_shot_macro_auroc']:.4f} ({int(metrics['zero_shot_num_labels'])} labels)")
    if "real_zero_shot_macro_auroc" in metrics:
        print(f"Real ECGs (vendored LUDB evaluation set, {int(metrics['real_zero_shot_num_records'])} patients never used in training), "
              "plain-text prompts:")
        for name, value in metrics.items():
            if name.startswith("real_zero_shot_auroc/"):
                print(f"  zero-shot AUROC {name.split('/', 1)[1]:<28} {value:.4f}")
        print(f"Real-ECG zero-shot macro AUROC: {metrics['real_zero_shot_macro_auroc']:.4f} ({int(metrics['real_zero_shot_num_labels'])} labels)")
    print(f"Hub folder: {output_dir.resolve()}")


if __name__ == "__main__":
    main()
