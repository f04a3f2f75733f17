# Copyright 2026 The dbeta authors. Licensed under the Apache License, Version 2.0.
"""Pre-training data: the prepared splits (map-style or streamed), the N3S negative indexes, the
training and validation data loaders, and the zero-shot validation labels found in the reports."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader

from dbeta.text import normalize_report
from dbeta.train.demo.recipe import demo_zero_shot_label_set
from dbeta.train.pretraining.collator import DBetaPretrainingCollator, EpochShuffleSampler, IndexedDataset, PretrainingBatchSettings
from dbeta.train.pretraining.n3s import N3SEncoderUnavailable, N3SSettings, default_cache_dir, load_or_build_n3s_index


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
        return demo_zero_shot_label_set()
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


def n3s_cache_dir(args: argparse.Namespace, split: str) -> Path:
    return Path(args.n3s_cache_dir) / split if args.n3s_cache_dir else default_cache_dir(args.dataset_dir, split)


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
class PretrainingLoaders:
    """The training rows, collator and loader (both re-seeded per epoch) and the two fixed
    validation loaders: losses (with the validation split's own N3S negatives) and embeddings."""

    train_rows: torch.utils.data.Dataset
    train_collator: DBetaPretrainingCollator
    train_loader: DataLoader
    loss_loader: DataLoader
    embedding_loader: DataLoader
    validation_reports: list


def build_dataloaders(args: argparse.Namespace, tokenizer, config, indexes: Mapping, train_data, validation_data) -> PretrainingLoaders:
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
    return PretrainingLoaders(train_rows, train_collator, train_loader, loss_loader, embedding_loader, validation_reports)


def data_counts(args: argparse.Namespace, train_data, validation_data, indexes: Mapping) -> dict:
    """The sizes logged at the start and listed in the model card."""
    return {
        "train records": len(train_data) if not args.streaming else "streamed",
        "validation records": len(validation_data),
        "unique train reports (N3S)": len(indexes[args.train_split]),
        "unique validation reports": len(indexes[args.validation_split]),
    }
