# Copyright 2026 The dbeta authors. Licensed under the Apache License, Version 2.0.
"""The run fingerprint: what makes a pre-training run the run it is, stored with every checkpoint
(`<checkpoint>/run_fingerprint.json`) and compared when `--resume_from_checkpoint` continues one.

A resumed run must be the run that wrote the checkpoint, or the model card would state settings the
weights were not trained with. The fingerprint holds, as flat ``name: value`` settings:

- the model configuration (every field of the `DBetaConfig`, ECG and text towers included: loss
  weights, masking ratios, sizes; not the bookkeeping fields of `VOLATILE_CONFIG_KEYS`), the
  tokenizer's vocabulary (a hash) and where the text tower's initial weights came from;
- the seed, the optimiser (learning rate, betas, eps, weight decay, gradient clipping) and the
  schedule (type, warm-up and, for tri-stage, hold and end scales);
- N3S (encoder, mode, candidates, hard-negative bound, share of negatives);
- the data: the split names, their row counts and a hash of their files (their SHA-256 from the
  preparation's checksum manifest, else their names and sizes), streaming and its buffer;
- the run's length (`--max_train_steps`) and its global batch (per-device batch x processes x
  gradient accumulation).

Resuming with any setting changed is refused, naming every change, unless
`--allow_resume_mismatch`. The length and the global batch are `DECLARED_CHANGES`: a run may be
extended, or continued on another layout (`rescale_to_processes` restates the data position and
the schedule), with a warning. The number of processes alone is not a setting: on another node
count with the same global batch the run goes on quietly. Every resume that changed something is
recorded (`resumes`) in the following checkpoints' fingerprints, `results.json` and the model card.
A checkpoint without a fingerprint (written before they existed) resumes with a warning.

The parts known only as the run builds them (model config, tokenizer, data) are noted on the run's
`args` (`note_model`, `note_tokenizer`, `note_data`) by the functions that build them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dbeta.train.pretraining.errors import PretrainingInputError, first_line

FINGERPRINT_FILE = "run_fingerprint.json"
FINGERPRINT_FORMAT = 1
#: Settings a resume may change, with a warning (and a record): the run's length and its global batch.
DECLARED_CHANGES = ("schedule.max_train_steps", "batch.total")
#: Configuration fields that describe the file, not the model (never compared).
VOLATILE_CONFIG_KEYS = frozenset(
    {
        "_name_or_path", "architectures", "auto_map", "dtype", "torch_dtype", "transformers_version", "_commit_hash",
        "_attn_implementation", "_attn_implementation_autoset", "_attn_implementation_internal", "attn_implementation",
        "output_attentions", "output_hidden_states", "return_dict", "use_cache", "id2label", "label2id", "problem_type",
    }
)  # fmt: skip
#: Where the parts are noted on `args` (kept out of the tracker's configuration).
NOTES_ATTRIBUTE = "_run_fingerprint_notes"


def _notes(args: argparse.Namespace) -> dict:
    notes = getattr(args, NOTES_ATTRIBUTE, None)
    if notes is None:
        notes = {"resumes": []}
        setattr(args, NOTES_ATTRIBUTE, notes)
    return notes


def _flatten(prefix: str, value: Any, into: dict) -> None:
    if isinstance(value, Mapping):
        for key in sorted(value):
            if key not in VOLATILE_CONFIG_KEYS:
                _flatten(f"{prefix}.{key}", value[key], into)
    else:
        into[prefix] = json.loads(json.dumps(value, default=str))  # plain JSON values (tuples -> lists)


def note_model(args: argparse.Namespace, config) -> None:
    """The model configuration a run trains (called by `build_model`)."""
    flat: dict = {}
    _flatten("model", config.to_dict(), flat)
    _notes(args)["model"] = flat


def note_tokenizer(args: argparse.Namespace, tokenizer) -> None:
    """A hash of the tokenizer's vocabulary (called by `load_tokenizer`)."""
    vocabulary = sorted(tokenizer.get_vocab().items(), key=lambda item: (item[1], item[0]))
    digest = hashlib.sha256(json.dumps(vocabulary, ensure_ascii=False).encode("utf-8")).hexdigest()
    _notes(args)["tokenizer"] = {"tokenizer.vocabulary_sha256": digest[:16], "tokenizer.size": len(tokenizer)}


def note_data(args: argparse.Namespace, data: Mapping[str, Any]) -> None:
    """The data's identity (called by `load_splits`): split names, row counts, file hashes."""
    _notes(args)["data"] = {f"data.{key}": value for key, value in data.items()}


def run_settings(args: argparse.Namespace, num_processes: int) -> dict:
    """The compared settings of this run (flat `name: value`)."""
    from dbeta.train.pretraining.model import text_encoder_source

    settings = {
        "seed": args.seed,
        "optimizer.learning_rate": args.learning_rate,
        "optimizer.adam_beta1": args.adam_beta1,
        "optimizer.adam_beta2": args.adam_beta2,
        "optimizer.adam_epsilon": args.adam_epsilon,
        "optimizer.weight_decay": args.weight_decay,
        "optimizer.max_grad_norm": args.max_grad_norm,
        "schedule.type": args.lr_scheduler_type,
        "schedule.warmup_ratio": args.warmup_ratio,
        "schedule.max_train_steps": args.max_train_steps,
        "batch.total": args.per_device_train_batch_size * num_processes * args.gradient_accumulation_steps,
        "n3s.encoder": args.n3s_encoder,
        "n3s.mode": args.n3s_mode,
        "n3s.num_candidates": args.n3s_num_candidates,
        "n3s.hard_max_similarity": args.n3s_hard_max_similarity,
        "n3s.negative_fraction": args.negative_fraction,
        "text_encoder_init": text_encoder_source(args),
    }
    if getattr(args, "train_crop_seconds", None):  # only when set: fingerprints written before the flag still match
        settings["batch.train_crop_seconds"] = args.train_crop_seconds
    if args.lr_scheduler_type == "tri_stage":
        settings.update({"schedule.hold_ratio": args.hold_ratio, "schedule.init_lr_scale": args.init_lr_scale,
                         "schedule.final_lr_scale": args.final_lr_scale})  # fmt: skip
    notes = _notes(args)
    for part in ("tokenizer", "data", "model"):
        settings.update(notes.get(part, {}))
    return settings


def run_fingerprint(args: argparse.Namespace, num_processes: int, mixed_precision: str | None = None) -> dict:
    """The fingerprint written with a checkpoint: settings, layout (not compared) and past resumes."""
    return {
        "format": FINGERPRINT_FORMAT,
        "settings": run_settings(args, num_processes),
        "layout": {
            "processes": num_processes,
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "mixed_precision": mixed_precision,
        },
        "resumes": list(_notes(args)["resumes"]),
    }


def write_fingerprint(folder: str | os.PathLike, fingerprint: Mapping) -> Path:
    path = Path(folder) / FINGERPRINT_FILE
    path.write_text(json.dumps(fingerprint, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def read_fingerprint(checkpoint: str | os.PathLike) -> dict | None:
    """The checkpoint's fingerprint; None when it has none (written before fingerprints existed).

    Raises:
        ValueError: the file is unreadable, not a fingerprint, or of a newer format.
    """
    path = Path(checkpoint) / FINGERPRINT_FILE
    if not path.is_file():
        return None
    try:
        fingerprint = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is unreadable ({first_line(error)})") from error
    if not isinstance(fingerprint, dict) or not isinstance(fingerprint.get("settings"), dict):
        raise ValueError(f"{path} is not a run fingerprint (no 'settings' object)")
    if fingerprint.get("format") != FINGERPRINT_FORMAT:
        raise ValueError(f"{path} has format {fingerprint.get('format')!r}; this version reads format {FINGERPRINT_FORMAT}")
    return fingerprint


_ABSENT = "<absent>"


def differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """`name: (saved, current)` for every setting that differs (absent on one side included)."""
    changed = {}
    for name in sorted(set(saved) | set(current)):
        old, new = saved.get(name, _ABSENT), current.get(name, _ABSENT)
        if old != new:
            changed[name] = (old, new)
    return changed


def describe(changed: Mapping[str, tuple[Any, Any]]) -> str:
    return ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in changed.items())


def check_resume(args: argparse.Namespace, checkpoint: Path, num_processes: int, completed_steps: int | None = None) -> list[str]:
    """Compare this run with the checkpoint's fingerprint, before its state is loaded.

    Returns the warnings to log (declared changes, changes allowed by `--allow_resume_mismatch`, a
    checkpoint without a fingerprint); each change is also recorded for the following checkpoints,
    `results.json` and the model card.

    Raises:
        PretrainingInputError: a setting other than `DECLARED_CHANGES` changed (each one listed,
            saved -> current) or the fingerprint is unreadable, without `--allow_resume_mismatch`.
    """
    notes = _notes(args)
    allow = getattr(args, "allow_resume_mismatch", False)
    try:
        saved = read_fingerprint(checkpoint)
    except ValueError as error:
        if not allow:
            raise PretrainingInputError(
                f"Cannot check that {checkpoint} belongs to this run: {error}. Pass --allow_resume_mismatch to resume "
                "without the check, or start afresh in another --output_dir."
            ) from error
        notes["resumes"].append({"checkpoint": checkpoint.name, "changed": "unknown (unreadable fingerprint)", "allowed_by": "--allow_resume_mismatch"})
        return [f"--allow_resume_mismatch: {error}; resuming {checkpoint} without checking its settings."]
    if saved is None:
        notes["resumes"].append({"checkpoint": checkpoint.name, "changed": "unknown (no fingerprint)", "allowed_by": "older checkpoint"})
        return [
            f"{checkpoint} has no {FINGERPRINT_FILE} (written before run fingerprints were recorded): its settings "
            "cannot be checked against this run's; resuming on the assumption that they are the same."
        ]
    notes["resumes"].extend(saved.get("resumes", []) if isinstance(saved.get("resumes"), list) else [])
    changed = differences(saved["settings"], run_settings(args, num_processes))
    declared = {name: change for name, change in changed.items() if name in DECLARED_CHANGES}
    refused = {name: change for name, change in changed.items() if name not in DECLARED_CHANGES}
    if refused and not allow:
        raise PretrainingInputError(
            f"Refusing to resume from {checkpoint}: it was written by a run with other settings ({describe(refused)}). "
            "Resume with that run's settings, start afresh in another --output_dir (or with --overwrite_output_dir), "
            "or pass --allow_resume_mismatch to continue anyway (the change is then recorded in the model card)."
        )
    warnings = []
    if declared:
        warnings.append(
            f"Continuing {checkpoint} with {describe(declared)}: the learning-rate schedule follows the new length "
            "and global batch from here on (recorded in results.json and the model card)."
        )
    if refused:
        warnings.append(f"--allow_resume_mismatch: resuming from {checkpoint}, written with other settings: {describe(refused)}.")
    if changed:
        notes["resumes"].append(
            {
                "checkpoint": checkpoint.name,
                "step": completed_steps,
                "changed": {name: [old, new] for name, (old, new) in changed.items()},
                "allowed_by": "--allow_resume_mismatch" if refused else "declared (run length / global batch)",
            }
        )
    return warnings


def resume_notes(args: argparse.Namespace) -> list[dict]:
    """The recorded resumes that changed something (for results.json and the model card)."""
    return list(_notes(args)["resumes"])


def set_resume_step(args: argparse.Namespace, step: int) -> None:
    """Fill in the step of the resume just recorded (known once the checkpoint's state is loaded)."""
    resumes = _notes(args)["resumes"]
    if resumes and resumes[-1].get("step") is None:
        resumes[-1]["step"] = step


def card_notes(args: argparse.Namespace) -> list[str]:
    """One model-card note per recorded resume."""
    notes = []
    for resume in resume_notes(args):
        changed, step = resume.get("changed"), resume.get("step")
        where = f"Resumed from checkpoint {resume.get('checkpoint')}" + (f" at step {step}" if step is not None else "")
        if isinstance(changed, dict):
            text = ", ".join(
                f"{name} {values[0]!r} -> {values[1]!r}" for name, values in changed.items() if isinstance(values, list) and len(values) == 2
            )
            notes.append(f"{where} with changed settings ({resume.get('allowed_by')}): {text}. The settings above are the last part's.")
        else:
            notes.append(f"{where}, whose settings could not be checked ({changed}).")
    return notes
