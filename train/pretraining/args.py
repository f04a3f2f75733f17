# Copyright 2026 The dbeta authors. Licensed under the Apache License, Version 2.0.
"""The command line of `train/pretrain.py`: its flags, and the paper's or the demo recipe's
defaults for those left unset (`resolve_defaults`)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

from dbeta.train.demo.recipe import (
    DEMO_CORPUS_DIR,
    DEMO_DATASET_DIR,
    DEMO_DEFAULTS,
    DEMO_NUM_RECORDS,
    DEMO_REAL_PAIRS,
    DEMO_REAL_REPEATS,
)
from dbeta.train.pretraining.errors import PretrainingFileError, PretrainingInputError
from dbeta.train.pretraining.n3s import N3S_MODES

#: The paper's encoders (spec section 3, DECISIONS 16): the T5 tower starts from Flan-T5-base, and
#: N3S embeds the reports with Flan-T5-small. Real (non-demo) runs default to both.
DEFAULT_TEXT_ENCODER = "google/flan-t5-base"
DEFAULT_N3S_ENCODER = "google/flan-t5-small"

#: The paper's settings for the flags a run leaves unset (the demo's: `DEMO_DEFAULTS`).
#: `tokenizer_name` defaults to the text encoder's (or the continued checkpoint's) first.
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
    "n3s_encoder": DEFAULT_N3S_ENCODER,
    "tokenizer_name": DEFAULT_TEXT_ENCODER,
    "output_dir": "outputs/dbeta-pretrain",
    "zero_shot_labels": "mimic",
    "license": "cc-by-nc-4.0",
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Pre-train D-BETA (no arguments: the offline demo).")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset_dir", default=None, help="DatasetDict from train/data/prepare_mimic_iv_ecg.py. Without it: the demo.")
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
    data.add_argument(
        "--train_crop_seconds",
        type=float,
        default=None,
        help="Train on a random window of this many seconds of each ECG (cheaper steps); validation and zero-shot "
        "scoring read the whole input. Default: the whole input.",
    )

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
    run.add_argument(
        "--resume_from_checkpoint",
        default=None,
        help='"latest" or a checkpoint folder. The checkpoint must come from a run with the same settings '
        "(model, seed, optimiser, schedule, N3S, data; its run_fingerprint.json); the run's length "
        "(--max_train_steps) and global batch may change, with a warning.",
    )
    run.add_argument(
        "--allow_resume_mismatch",
        action="store_true",
        help="Resume even from a checkpoint written with other settings (warns, and records the changes in the "
        "checkpoints, results.json and the model card).",
    )
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


#: The numeric flags' ranges, checked once the defaults are filled in: (flag, low, high, low
#: included, high included); None: no bound. Non-finite values (nan, inf) are always refused.
NUMERIC_RANGES: tuple[tuple[str, float | None, float | None, bool, bool], ...] = (
    ("per_device_train_batch_size", 1, None, True, True),
    ("per_device_eval_batch_size", 1, None, True, True),
    ("gradient_accumulation_steps", 1, None, True, True),
    ("max_train_steps", 1, None, True, True),
    ("num_train_epochs", 1, None, True, True),
    ("logging_steps", 1, None, True, True),
    ("eval_steps", 0, None, True, True),
    ("checkpointing_steps", 0, None, True, True),
    ("checkpoints_total_limit", 0, None, True, True),
    ("max_eval_samples", 1, None, True, True),
    ("shuffle_buffer_size", 1, None, True, True),
    ("dataloader_num_workers", 0, None, True, True),
    ("num_cpu_threads", 1, None, True, True),
    ("preparation_timeout", 1, None, True, True),
    ("seed", 0, 2**32 - 1, True, True),  # numpy's seeds
    ("demo_num_records", 1, None, True, True),
    ("demo_real_repeats", 0, None, True, True),
    ("n3s_num_candidates", 1, None, True, True),
    ("n3s_hard_max_similarity", -1.0, 1.0, True, True),
    ("negative_fraction", 0.0, 1.0, True, True),
    ("train_crop_seconds", 0.0, None, False, True),
    ("learning_rate", 0.0, None, True, True),
    ("weight_decay", 0.0, None, True, True),
    ("adam_beta1", 0.0, 1.0, True, False),
    ("adam_beta2", 0.0, 1.0, True, False),
    ("adam_epsilon", 0.0, None, True, True),
    ("warmup_ratio", 0.0, 1.0, True, True),
    ("hold_ratio", 0.0, 1.0, True, True),
    ("init_lr_scale", 0.0, 1.0, True, True),
    ("final_lr_scale", 0.0, 1.0, False, True),  # the decay is exponential: it cannot reach 0
    ("max_grad_norm", 0.0, None, True, True),
    ("pad_to_multiple_of", 1, None, True, True),
    ("text_length_buckets", 1, None, True, True),
    ("recall_ks", 1, None, True, True),
)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def check_numeric_flags(args: argparse.Namespace) -> None:
    """Refuse a numeric flag outside its range (`NUMERIC_RANGES`), naming the flag and the range."""
    for name, low, high, low_included, high_included in NUMERIC_RANGES:
        value = getattr(args, name, None)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is None:
                continue
            inside = math.isfinite(item)
            if inside and low is not None:
                inside = item >= low if low_included else item > low
            if inside and high is not None:
                inside = item <= high if high_included else item < high
            if not inside:
                bounds = (
                    ("[" if low_included else "(") + ("-inf" if low is None else _number(low)) + ", "
                    + ("inf" if high is None else _number(high)) + ("]" if high_included else ")")
                )  # fmt: skip
                raise PretrainingInputError(f"--{name} {item!r} is outside its range {bounds}.")


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the settings left unset from the demo recipe's (`DEMO_DEFAULTS`) or the paper's defaults, and check them."""
    args.is_demo = args.dataset_dir is None and args.model_name_or_path is None and args.config_name is None
    if args.dataset_dir is None and not args.is_demo:
        raise PretrainingInputError("--dataset_dir is required unless running the demo (no --model_name_or_path/--config_name).")
    if args.text_encoder_from_scratch and (args.text_encoder or args.model_name_or_path):
        raise PretrainingInputError("--text_encoder_from_scratch excludes --text_encoder and --model_name_or_path.")
    if args.text_encoder and args.model_name_or_path:
        raise PretrainingInputError("--text_encoder and --model_name_or_path exclude each other (the saved model holds its own text tower).")
    if args.text_encoder is None and not (args.is_demo or args.model_name_or_path or args.text_encoder_from_scratch):
        args.text_encoder = DEFAULT_TEXT_ENCODER
    if args.tokenizer_name is None:
        args.tokenizer_name = args.text_encoder or args.model_name_or_path  # else the defaults' below
    defaults = DEMO_DEFAULTS if args.is_demo else PAPER_DEFAULTS
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.streaming and args.max_train_steps is None:
        raise PretrainingInputError("--streaming needs --max_train_steps (a stream has no length).")
    if args.push_to_hub and not args.hub_model_id:
        raise PretrainingInputError("--push_to_hub needs --hub_model_id.")
    if args.overwrite_output_dir and args.resume_from_checkpoint:
        raise PretrainingInputError("--overwrite_output_dir and --resume_from_checkpoint exclude each other.")
    check_numeric_flags(args)
    if args.warmup_ratio + (args.hold_ratio if args.lr_scheduler_type == "tri_stage" else 0.0) > 1.0:
        raise PretrainingInputError("--warmup_ratio + --hold_ratio must not exceed 1.")
    if args.allow_resume_mismatch and not args.resume_from_checkpoint:
        raise PretrainingInputError("--allow_resume_mismatch only applies with --resume_from_checkpoint.")
    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        raise PretrainingFileError(f"--output_dir {args.output_dir} is a file, not a folder; choose another --output_dir.")
    if args.zero_shot_labels not in ("demo", "mimic"):
        from dbeta.train.pretraining.data import zero_shot_label_set

        zero_shot_label_set(args.zero_shot_labels)  # a label file that cannot be used stops the run now, not after training
    return args
