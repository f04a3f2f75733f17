# Copyright 2026 The dbeta authors. Licensed under the Apache License, Version 2.0.
"""The model side of pre-training: the tokenizer and the D-BETA to train (with the pretrained
encoders it starts from), the AdamW parameter groups, the learning-rate schedules, and the seed of
each forward pass."""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
import transformers
from accelerate.logging import get_logger
from transformers import AutoTokenizer

from configuration_dbeta import DBetaConfig
from dbeta.train.demo.recipe import demo_model_config
from dbeta.train.pretraining.args import DEFAULT_N3S_ENCODER, DEFAULT_TEXT_ENCODER
from dbeta.train.pretraining.data import n3s_cache_dir
from dbeta.train.pretraining.errors import PretrainingFileError, PretrainingInputError, first_line
from dbeta.train.pretraining.fingerprint import note_model, note_tokenizer
from dbeta.train.pretraining.n3s import N3SSettings
from dbeta.train.pretraining.speed_levers import build_adamw, compile_repeated_layers
from modeling_dbeta import DBetaForPreTraining

logger = get_logger(__name__)


# --------------------------------------------------------------------------------------------
# Tokenizer and model
# --------------------------------------------------------------------------------------------


def load_tokenizer(args: argparse.Namespace):
    try:
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name)
    except (OSError, ValueError) as error:
        raise PretrainingFileError(
            f"The tokenizer {args.tokenizer_name!r} could not be loaded ({error}); pass a reachable one with --tokenizer_name."
        ) from error
    note_tokenizer(args, tokenizer)  # part of the run's fingerprint
    return tokenizer


def apply_config_overrides(config: DBetaConfig, overrides: str) -> None:
    """`--config_overrides`: "key=value,..." for top-level fields; "ecg_config.key=value" for the ECG tower's."""
    top_level, ecg = [], []
    for item in filter(None, (part.strip() for part in overrides.split(","))):
        if "=" not in item:
            raise PretrainingInputError(f"--config_overrides: {item!r} is not key=value (e.g. \"mlm_probability=0.15,ecg_config.mask_ratio=0.5\").")
        (ecg if item.startswith("ecg_config.") else top_level).append(item.removeprefix("ecg_config."))
    try:
        if top_level:
            config.update_from_string(",".join(top_level))
        if ecg:
            config.ecg_config.update_from_string(",".join(ecg))
    except (ValueError, TypeError, AttributeError) as error:
        raise PretrainingInputError(f"--config_overrides {overrides!r}: {first_line(error)}.") from error


def load_config_file(path: str) -> DBetaConfig:
    """`--config_name`: a DBetaConfig JSON file, or a one-line error naming it."""
    try:
        return DBetaConfig.from_json_file(path)
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as error:
        raise PretrainingFileError(
            f"--config_name {path}: not a readable DBetaConfig JSON file ({first_line(error)}); pass the config.json of a "
            "D-BETA model or one written by DBetaConfig.to_json_file."
        ) from error


def build_model(args: argparse.Namespace, tokenizer) -> DBetaForPreTraining:
    if args.model_name_or_path:
        model = DBetaForPreTraining.from_pretrained(args.model_name_or_path)
    else:
        if args.config_name:
            config = load_config_file(args.config_name)
        elif args.is_demo:  # the demo recipe's small model
            config = demo_model_config(tokenizer)
        else:
            config = DBetaConfig()
        if args.config_overrides:
            apply_config_overrides(config, args.config_overrides)
        if args.text_encoder:
            try:
                model = DBetaForPreTraining.from_text_encoder_pretrained(args.text_encoder, config=config)
            except OSError as error:
                raise PretrainingFileError(
                    f"--text_encoder {args.text_encoder!r} could not be loaded ({error}); pass a reachable checkpoint, "
                    "or --text_encoder_from_scratch to train the text tower from random weights."
                ) from error
        else:
            model = DBetaForPreTraining(config)
    if len(tokenizer) > model.config.text_config.vocab_size:
        raise PretrainingInputError(
            f"The tokenizer ({args.tokenizer_name}) has {len(tokenizer)} tokens but the text encoder only "
            f"{model.config.text_config.vocab_size} embeddings; pass the model's own --tokenizer_name."
        )
    note_model(args, model.config)  # part of the run's fingerprint
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


# --------------------------------------------------------------------------------------------
# Pretrained encoders
# --------------------------------------------------------------------------------------------


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
            raise PretrainingFileError(
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
        raise PretrainingFileError(
            f"--n3s_encoder {name!r} could not be loaded ({error}). N3S embeds the reports with {DEFAULT_N3S_ENCODER} "
            "(the paper). Make it reachable (online, in the Hugging Face cache, or as a local folder passed to "
            "--n3s_encoder), or pass --n3s_encoder tfidf for TF-IDF negatives (offline; not the paper's setting)."
        ) from error


# --------------------------------------------------------------------------------------------
# Optimiser, schedule, seeds
# --------------------------------------------------------------------------------------------


def optimizer_parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices only; biases, norms, embeddings' 1-D tensors are not decayed."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (no_decay if parameter.ndim < 2 or name.endswith("class_embedding") else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(args: argparse.Namespace, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The paper's AdamW (`--fused_adamw`: PyTorch's fused kernel)."""
    return build_adamw(
        optimizer_parameter_groups(model, args.weight_decay),
        learning_rate=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        fused=args.fused_adamw,
    )


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


def step_seed(seed: int, micro_step: int, process_index: int) -> int:
    """The seed of one forward pass: a function of (seed, micro-step, process) only."""
    return int(np.random.SeedSequence([seed, micro_step, process_index]).generate_state(1, dtype=np.uint64)[0] >> 1)
