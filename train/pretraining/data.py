# Copyright 2026 The dbeta authors. Licensed under the Apache License, Version 2.0.
"""Pre-training data: the prepared splits (map-style or streamed), the N3S negative indexes, the
training and validation data loaders, and the zero-shot validation labels found in the reports."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate.logging import get_logger
from torch.utils.data import DataLoader

from dbeta.text import normalize_report
from dbeta.train.data.mimic_iv_ecg import CHECKSUM_MANIFEST, PreparationInputError, verify_prepared_dataset
from dbeta.train.demo.recipe import demo_zero_shot_label_set
from dbeta.train.pretraining.collator import DBetaPretrainingCollator, EpochShuffleSampler, IndexedDataset, PretrainingBatchSettings
from dbeta.train.pretraining.errors import PretrainingFileError, PretrainingInputError, first_line
from dbeta.train.pretraining.fingerprint import note_data
from dbeta.train.pretraining.n3s import N3SEncoderUnavailable, N3SSettings, default_cache_dir, load_or_build_n3s_index

logger = get_logger(__name__)

#: The columns of a prepared split that training reads.
REQUIRED_COLUMNS = ("ecg", "ecg_gain", "lead_names", "report")
PREPARE_AGAIN = "prepare it again (train/data/prepare_mimic_iv_ecg.py; for the demo, delete the folder)"


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


def split_data_files(dataset_dir: str | Path, split: str) -> list[Path]:
    """The Arrow files of a saved split, as its `state.json` lists them (what `load_from_disk` reads;
    cache files `datasets` may have left in the folder are not data)."""
    state_file = Path(dataset_dir) / split / "state.json"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        names = [item["filename"] for item in state["_data_files"]]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise PretrainingFileError(f"{state_file} is missing or unreadable ({first_line(error)}); {PREPARE_AGAIN}.") from error
    outside = [name for name in names if not isinstance(name, str) or "/" in name or "\\" in name or name in ("", ".", "..")]
    if outside:
        raise PretrainingFileError(f"{state_file} names data files outside its folder ({outside[0]!r}); {PREPARE_AGAIN}.")
    return [state_file.parent / name for name in names]


def _check_arrow_readable(path: Path) -> None:
    """Read the framing of an Arrow stream file (as `datasets` does): a truncated or overwritten file fails here."""
    import pyarrow as pa

    try:
        with pa.memory_map(str(path)) as source:
            pa.ipc.open_stream(source).read_all()
    except (pa.ArrowException, OSError, ValueError) as error:
        raise PretrainingFileError(f"{path} is unreadable ({first_line(error)}): truncated or damaged; {PREPARE_AGAIN}.") from error


def _arrow_columns(path: Path) -> list[str]:
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        return list(pa.ipc.open_stream(source).schema.names)


def _check_dataset_layout(dataset_dir: Path, splits: Sequence[str]) -> None:
    if not dataset_dir.is_dir():
        raise PretrainingFileError(f"--dataset_dir {dataset_dir} is not a folder; pass the --output_dir of train/data/prepare_mimic_iv_ecg.py.")
    dict_file = dataset_dir / "dataset_dict.json"
    try:
        available = json.loads(dict_file.read_text(encoding="utf-8"))["splits"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as error:
        raise PretrainingFileError(
            f"--dataset_dir {dataset_dir} is not a prepared dataset ({dict_file}: {first_line(error)}); pass the --output_dir "
            "of train/data/prepare_mimic_iv_ecg.py (a datasets.DatasetDict saved with save_to_disk)."
        ) from error
    for flag, split in zip(("--train_split", "--validation_split"), splits):
        if split not in available or not (dataset_dir / split).is_dir():
            raise PretrainingInputError(f"{flag} {split!r}: {dataset_dir} has no such split (it has: {', '.join(map(str, available))}).")


def _split_files_identity(dataset_dir: Path, split: str, checked: Mapping | None) -> str:
    """A hash of a split's files: of their SHA-256 (checksum manifest), else of their names and sizes."""
    if checked is not None:
        items = sorted(f"{name}:{entry['size']}:{entry['sha256']}" for name, entry in checked.items() if name.startswith(f"{split}/"))
        return "sha256:" + hashlib.sha256("\n".join(items).encode()).hexdigest()[:16]
    paths = [*split_data_files(dataset_dir, split), dataset_dir / split / "state.json"]
    items = sorted(f"{path.name}:{path.stat().st_size}" for path in paths)
    return "size:" + hashlib.sha256("\n".join(items).encode()).hexdigest()[:16]


def check_prepared_data(args: argparse.Namespace, hash_files: bool) -> None:
    """The prepared folder's layout and files against its checksum manifest (SHA-256 with
    `hash_files`, sizes otherwise). `train/pretrain.py` runs it through `SharedPreparation`, hashing
    on the first process of each machine only, so a failure stops every process with one message."""
    dataset_dir = Path(args.dataset_dir)
    splits = (args.train_split, args.validation_split)
    _check_dataset_layout(dataset_dir, splits)
    try:
        verify_prepared_dataset(dataset_dir, splits, hash_files=hash_files)
    except PreparationInputError as error:
        raise PretrainingFileError(str(error)) from error


def load_splits(args: argparse.Namespace, hash_files: bool = True):
    """(train dataset, validation dataset, train reports); the training split may be a stream.

    The prepared files are checked first against the checksum manifest of their preparation
    (`dbeta.train.data.mimic_iv_ecg.verify_prepared_dataset`): a damaged, truncated or edited file is
    a `PretrainingFileError` naming it; a dataset without a manifest loads with a warning, its Arrow
    files' framing checked (`hash_files=False`: sizes only, after `check_prepared_data` hashed them).
    Then the splits must hold the columns training reads, a validation
    row and (map-style) one training batch. The data's identity goes into the run fingerprint."""
    dataset_dir = Path(args.dataset_dir)
    splits = (args.train_split, args.validation_split)
    _check_dataset_layout(dataset_dir, splits)
    try:
        checked = verify_prepared_dataset(dataset_dir, splits, hash_files=hash_files)
    except PreparationInputError as error:
        raise PretrainingFileError(str(error)) from error
    data_files = {split: split_data_files(dataset_dir, split) for split in splits}
    if checked is None:
        logger.warning(
            f"{dataset_dir} has no {CHECKSUM_MANIFEST} (prepared before checksums were recorded, or by another tool): "
            f"damaged files cannot be told from good ones; {PREPARE_AGAIN} to have them checked."
        )
        for path in (path for files in data_files.values() for path in files):
            _check_arrow_readable(path)
    try:
        if args.streaming:
            train = datasets.load_dataset(
                "arrow", data_files={"train": [str(path) for path in data_files[args.train_split]]}, split="train", streaming=True
            )
            validation = datasets.load_from_disk(str(dataset_dir / args.validation_split))
            train_columns = _arrow_columns(data_files[args.train_split][0]) if data_files[args.train_split] else []
        else:
            data = datasets.load_from_disk(str(dataset_dir))
            train, validation = data[args.train_split], data[args.validation_split]
            train_columns = train.column_names
    except (OSError, ValueError, KeyError, TypeError) as error:  # pyarrow's errors are OSError / ValueError
        raise PretrainingFileError(f"--dataset_dir {dataset_dir} could not be loaded ({first_line(error)}); {PREPARE_AGAIN}.") from error
    for split, columns in ((args.train_split, train_columns), (args.validation_split, validation.column_names)):
        missing = [column for column in REQUIRED_COLUMNS if column not in columns]
        if missing:
            raise PretrainingInputError(
                f"{dataset_dir / split} lacks the column(s) {', '.join(missing)} that training reads; pass a dataset written by "
                "train/data/prepare_mimic_iv_ecg.py."
            )
    if len(validation) == 0:
        raise PretrainingInputError(
            f"{dataset_dir / args.validation_split} has no rows: validation needs at least one; prepare the data with "
            "--val_fraction > 0, or pass another --validation_split."
        )
    if not args.streaming and len(train) < args.per_device_train_batch_size:
        raise PretrainingInputError(
            f"{dataset_dir / args.train_split} has {len(train)} rows, fewer than one batch (--per_device_train_batch_size "
            f"{args.per_device_train_batch_size}): no optimiser step would run. Use a smaller batch or more data."
        )
    note_data(
        args,
        {
            "train_split": args.train_split,
            "validation_split": args.validation_split,
            "train_rows": None if args.streaming else len(train),
            "validation_rows": len(validation),
            "train_files": _split_files_identity(dataset_dir, args.train_split, checked),
            "validation_files": _split_files_identity(dataset_dir, args.validation_split, checked),
            "streaming": bool(args.streaming),
            **({"shuffle_buffer_size": args.shuffle_buffer_size} if args.streaming else {}),
        },
    )
    if args.streaming:
        train_reports = (row["report"] for row in train.select_columns(["report"]))
    else:
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
    usage = 'pass "demo", "mimic" or a JSON file {"label": ["prompt", "regular expression"], ...}'
    try:
        with open(name, encoding="utf-8") as handle:
            raw = json.load(handle)
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise PretrainingFileError(f"--zero_shot_labels {name}: {first_line(error)}; {usage}.") from error
    if not isinstance(raw, dict) or not raw:
        raise PretrainingInputError(f"--zero_shot_labels {name}: not a non-empty JSON object; {usage}.")
    labels = {}
    for label, value in raw.items():
        if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(item, str) and item for item in value)):
            raise PretrainingInputError(f"--zero_shot_labels {name}: label {label!r} is {value!r}, not [prompt, regex]; {usage}.")
        try:
            re.compile(value[1])
        except re.error as error:
            raise PretrainingInputError(f"--zero_shot_labels {name}: label {label!r}: bad regular expression {value[1]!r} ({error}).") from error
        labels[label] = (value[0], value[1])
    return labels


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
            raise PretrainingFileError(f"--n3s_encoder {args.n3s_encoder!r}: {error}") from error
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
    crop_samples = round(args.train_crop_seconds * config.sampling_rate) if args.train_crop_seconds else None
    if crop_samples is not None and crop_samples > config.num_samples:
        raise PretrainingInputError(
            f"--train_crop_seconds {args.train_crop_seconds:g}: longer than the model's input "
            f"({config.num_samples} samples at {config.sampling_rate} Hz = {config.num_samples / config.sampling_rate:g} s)."
        )
    train_collator = DBetaPretrainingCollator(tokenizer, batch_settings, indexes[args.train_split], seed=args.seed, crop_samples=crop_samples)
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
