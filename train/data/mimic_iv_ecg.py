"""Turn a MIMIC-IV-ECG v1.0 folder (as PhysioNet distributes it) into a Hugging Face dataset.

Input layout::

    root/record_list.csv            subject_id, study_id, file_name, ecg_time, path
    root/machine_measurements.csv   subject_id, study_id, ..., report_0 ... report_17, ...
    root/files/pNNNN/pNNNNNNNN/sNNNNNNNN/NNNNNNNN.hea|.dat

Output (``datasets.load_from_disk(output_dir)`` gives a ``DatasetDict``)::

    output_dir/train/, output_dir/validation/, output_dir/dataset_dict.json
    output_dir/summary.json    counts: listed, kept, skipped by reason, per split
    output_dir/skipped.csv     every skipped study with its reason
    output_dir/README.md       dataset card
    output_dir/checksums.sha256.json   size and SHA-256 of every file of the splits (CHECKSUM_MANIFEST)

Each row holds one 10 s, 500 Hz, 12-lead ECG as ``int16`` samples plus a per-lead gain
(``ecg / ecg_gain`` = millivolts; see :func:`decode_ecg`), its lead names in file order, its
cleaned report and its identifiers. Train and validation never share a subject.

Only the first 10 s of a record are read from disk (``read_wfdb_record(max_duration=10)``), so a
record longer than MIMIC's 10 s (a 6 h recording: gigabytes) costs no more than a normal one: it is
prepared from its first 10 s and counted in ``trimmed_to_num_samples`` (DECISIONS 8). A header that
does not give the record length cannot be read in part: its signal is read whole only up to
:data:`MAX_UNBOUNDED_SIGNAL_BYTES`, larger ones are skipped as ``unreadable``.

The prepared files are checked when they are loaded for training
(:func:`verify_prepared_dataset`): their sizes and SHA-256 digests are recorded at preparation
(:data:`CHECKSUM_MANIFEST`), so a file damaged or edited since (random bytes, a truncated copy) is
an error naming it, never trained on.

Work is split in shards that worker processes write independently under ``output_dir/.shards``;
a killed run resumes from the finished shards. The final splits hard-link the shards' Arrow files,
so the signals are written once. Worker processes end with the process that started them, even
when it is killed (SIGKILL) without a chance to clean up.

Inputs are not trusted: a ``record_list.csv`` path (or a signal file named in a header) that
resolves outside ``mimic_root`` is never opened, a study listed twice is kept once, and every
study left out is counted under a named reason (:data:`SKIP_REASONS`) and listed in
``skipped.csv``. A malformed CSV (missing column, non-integer identifier) is an error naming the
file, the column and the first bad row, raised before any record is read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dbeta.files import csv_writer
from dbeta.workers import map_in_workers
from dbeta.text import MIMIC_REPORT_COLUMNS, join_report_lines, normalize_report

logger = logging.getLogger(__name__)

NUM_LEADS = 12
SAMPLING_RATE = 500.0
NUM_SAMPLES = 5000
#: Samples are stored as round(mV * gain) in int16; 1000/mV (1 uV steps) unless the lead's peak
#: needs a smaller gain to fit. MIMIC stores 5 uV steps, so 1000/mV is lossless for it.
DEFAULT_STORAGE_GAIN = 1000.0
INT16_LIMIT = 32767
#: 2: flat leads by peak-to-peak amplitude, infinite values, duplicate studies, path confinement.
PREPARATION_VERSION = 2
#: A lead whose peak-to-peak amplitude over the 10 s kept is under this many millivolts (10 uV,
#: two MIMIC ADC steps) carries no ECG: constant (at any level, zero or not) or disconnected.
FLAT_LEAD_PEAK_TO_PEAK_MV = 0.01

#: Why a study can be left out, in the order the checks run.
SKIP_REASONS: dict[str, str] = {
    "duplicate_study": "the study_id is listed again in record_list.csv (same or another subject); the first listing is kept",
    "missing_report": "no machine_measurements row, or every report_N column is empty",
    "path_outside_root": (
        "the record_list.csv `path`, after resolving symbolic links, lies outside --mimic_root, or a signal "
        "file named in its header lies outside the header's folder; such files are never opened"
    ),
    "missing_file": "the WFDB header named by record_list.csv `path` does not exist",
    "unreadable": (
        "the reader rejected the record (bad header, truncated or damaged signal file), or its header gives no record "
        "length and its signal files are too large to read whole"
    ),
    "missing_leads": "one of the 12 standard leads is absent",
    "unexpected_sampling_rate": f"sampling rate other than {SAMPLING_RATE:g} Hz (no resampling, as the original)",
    "too_short": f"fewer than {NUM_SAMPLES} samples",
    "nan_values": "a sample is NaN (WFDB invalid sample)",
    "infinite_values": "a sample is infinite, or too large for float32 (it would become infinite)",
    "flat_lead": f"a lead's peak-to-peak amplitude over the 10 s kept is under {FLAT_LEAD_PEAK_TO_PEAK_MV * 1000:g} uV (constant or disconnected)",
}
SPLITS = ("train", "validation")
SHARDS_FOLDER = ".shards"
#: Size and SHA-256 of every file of the prepared splits (and ``dataset_dict.json``), written at
#: preparation and checked by :func:`verify_prepared_dataset` before training reads them.
CHECKSUM_MANIFEST = "checksums.sha256.json"
CHECKSUM_MANIFEST_FORMAT = 1
#: A header without the record length cannot be read in part; its signal files are read whole up
#: to this size (a MIMIC record is 120 kB; this is over 30 min of 12 leads at 500 Hz).
MAX_UNBOUNDED_SIGNAL_BYTES = 64 << 20


class PreparationInputError(ValueError):
    """The inputs or settings of a preparation are unusable (malformed CSV, bad setting, leftover
    shards of another run); raised before any record is read, with a message naming the file,
    the column and the first bad row."""


class SkipRecord(Exception):
    """Raised when a record must be left out; ``reason`` is a key of :data:`SKIP_REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in SKIP_REASONS:
            raise ValueError(f"Unknown skip reason {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class StudyEntry:
    """One study to convert: identifiers, its record path (relative to the root) and its report."""

    subject_id: int
    study_id: int
    path: str
    ecg_time: str
    report: str


@dataclass
class ShardTask:
    name: str
    split: str
    root: str
    entries: list[StudyEntry]


@dataclass
class PreparationSummary:
    """Counts of a preparation run (also written to ``summary.json``)."""

    records_listed: int = 0
    records_read: int = 0
    records_kept: int = 0
    skipped_by_reason: dict[str, int] = field(default_factory=dict)
    kept_by_split: dict[str, int] = field(default_factory=dict)
    subjects_by_split: dict[str, int] = field(default_factory=dict)
    measurements_without_record: int = 0
    #: ``machine_measurements.csv`` rows repeating an earlier (subject_id, study_id): the first row's
    #: report is used, the repeats are ignored.
    duplicate_measurement_rows: int = 0
    trimmed_to_num_samples: int = 0
    seconds: float = 0.0
    output_dir: str = ""

    @property
    def records_skipped(self) -> int:
        return sum(self.skipped_by_reason.values())


# --------------------------------------------------------------------------------------------
# Signal conversion
# --------------------------------------------------------------------------------------------


def _standard_lead_indices(lead_names: list[str]) -> list[int]:
    """Indices of the 12 standard leads in file order; raises SkipRecord('missing_leads')."""
    from processing_dbeta import STANDARD_LEAD_NAMES, canonical_lead_name

    canonical = [canonical_lead_name(name) for name in lead_names]
    missing = [name for name in STANDARD_LEAD_NAMES if name not in canonical]
    if missing:
        raise SkipRecord("missing_leads", f"missing {', '.join(missing)} (file has {', '.join(lead_names)})")
    return [index for index, name in enumerate(canonical) if name in STANDARD_LEAD_NAMES and canonical.index(name) == index]


def encode_signal(signal_mv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Compact a float (leads, samples) mV signal to ``(int16 samples, float32 gain per lead)``.

    ``decoded = samples / gain[:, None]`` restores the signal to within half a step (0.5 uV at the
    default gain of 1000/mV); leads with a peak above 32.767 mV get a smaller gain.
    """
    peak = np.abs(signal_mv).max(axis=1).astype(np.float64)
    gain = np.where(peak * DEFAULT_STORAGE_GAIN <= INT16_LIMIT, DEFAULT_STORAGE_GAIN, INT16_LIMIT / np.maximum(peak, 1e-12))
    gain = gain.astype(np.float32)
    samples = np.clip(np.round(signal_mv.astype(np.float64) * gain[:, None]), -INT16_LIMIT, INT16_LIMIT)
    return samples.astype(np.int16), gain


def decode_ecg(example: Mapping[str, Any]) -> np.ndarray:
    """Float32 millivolts from a prepared row (``(12, 5000)``) or batch (``(B, 12, 5000)``).

    Works on plain rows (lists), ``with_format("numpy")`` rows and batches alike; the lead order
    is the row's ``lead_names``.
    """
    samples = np.asarray(example["ecg"], dtype=np.float32)
    gain = np.asarray(example["ecg_gain"], dtype=np.float32)
    return samples / gain[..., None]


def convert_record(record: Any) -> tuple[np.ndarray, np.ndarray, list[str], bool]:
    """Validate an ``ECGRecord`` and compact it.

    Returns ``(int16 samples (12, 5000), gain (12,), lead names in file order, trimmed)``;
    ``trimmed`` is True when a longer record was cut to its first 10 s (DECISIONS 8): its signal is
    longer, or, when only its start was read, ``metadata["total_samples"]`` says so.

    Raises:
        SkipRecord: for missing leads, another sampling rate, a short record, NaN, infinite (or
            float32-overflowing) values or a flat lead (peak-to-peak under
            :data:`FLAT_LEAD_PEAK_TO_PEAK_MV`).
    """
    indices = _standard_lead_indices(list(record.lead_names))
    if not np.isclose(float(record.sampling_rate), SAMPLING_RATE):
        raise SkipRecord("unexpected_sampling_rate", f"{record.sampling_rate:g} Hz")
    signal = np.asarray(record.signal)[indices]
    if signal.ndim != 2:
        raise SkipRecord("unreadable", f"signal of shape {signal.shape}")
    if signal.shape[1] < NUM_SAMPLES:
        raise SkipRecord("too_short", f"{signal.shape[1]} samples")
    total_samples = (getattr(record, "metadata", None) or {}).get("total_samples") or 0
    trimmed = max(signal.shape[1], int(total_samples)) > NUM_SAMPLES
    signal = signal[:, :NUM_SAMPLES]
    lead_names = [record.lead_names[index] for index in indices]
    nan_leads = [lead_names[row] for row in np.flatnonzero(np.isnan(signal).any(axis=1))]
    if nan_leads:
        raise SkipRecord("nan_values", f"NaN in {', '.join(nan_leads)}")
    # The stored row decodes to float32: a finite float64 beyond its range (1e300) becomes inf.
    with np.errstate(over="ignore"):
        infinite = ~np.isfinite(signal.astype(np.float32))
    infinite_leads = [lead_names[row] for row in np.flatnonzero(infinite.any(axis=1))]
    if infinite_leads:
        raise SkipRecord("infinite_values", f"infinite (or beyond float32) values in {', '.join(infinite_leads)}")
    signal = signal.astype(np.float64)
    peak_to_peak = np.ptp(signal, axis=1)
    # A small tolerance so that two float32 ADC steps of 5 uV (9.9999998 uV) are not called flat.
    flat_rows = np.flatnonzero(peak_to_peak < FLAT_LEAD_PEAK_TO_PEAK_MV - 1e-6)
    if flat_rows.size:
        flat_leads = [f"{lead_names[row]} ({peak_to_peak[row] * 1000:.3g} uV peak-to-peak)" for row in flat_rows]
        raise SkipRecord("flat_lead", f"flat {', '.join(flat_leads)}")
    samples, gain = encode_signal(signal)
    if not (np.isfinite(gain).all() and (gain > 0).all()):  # cannot happen after the checks above
        raise SkipRecord("infinite_values", "amplitude too large to store")
    return samples, gain, lead_names, trimmed


def dataset_features():
    """The ``datasets.Features`` of a prepared split."""
    from datasets import Array2D, Features, List, Value

    return Features(
        {
            "subject_id": Value("int64"),
            "study_id": Value("int64"),
            "ecg_time": Value("string"),
            "path": Value("string"),
            "report": Value("string"),
            "ecg": Array2D(shape=(NUM_LEADS, NUM_SAMPLES), dtype="int16"),
            "ecg_gain": List(Value("float32"), length=NUM_LEADS),
            "lead_names": List(Value("string"), length=NUM_LEADS),
            "sampling_rate": Value("float32"),
        }
    )


# --------------------------------------------------------------------------------------------
# Study index: CSV joins, report cleaning, subject-wise split
# --------------------------------------------------------------------------------------------


_INTEGER_TEXT = re.compile(r"^\s*\+?(\d{1,18})(?:\.0*)?\s*$")


def _read_index_csv(path: Path, usecols: Any = None, keep_default_na: bool = False) -> Any:
    """A CSV of the MIMIC index as text columns; clear errors naming it.

    Empty cells are ``""``, unless ``keep_default_na`` (pandas' NaN markers, as the original
    preprocessing reads the report columns).
    """
    import pandas as pd

    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (--mimic_root must hold record_list.csv and machine_measurements.csv)")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=keep_default_na, usecols=usecols)
    except Exception as error:  # pandas ParserError, UnicodeDecodeError, EmptyDataError...
        raise PreparationInputError(f"Cannot read {path}: {type(error).__name__}: {error}") from error


def _require_columns(frame: Any, path: Path, columns: list[str]) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise PreparationInputError(
            f"{path}: missing column(s) {', '.join(repr(column) for column in missing)} "
            f"(found: {', '.join(repr(str(column)) for column in frame.columns) or 'none'})"
        )


def _bad_row_message(path: Path, column: str, index: int, value: Any, expected: str) -> str:
    # Row numbers count data rows from 1; the file line assumes no line breaks inside quoted cells.
    return f"{path}: column {column!r}, row {index + 1} (line {index + 2} of the file): {value!r} is not {expected}"


def _integer_column(frame: Any, path: Path, column: str) -> np.ndarray:
    """The column as int64, or a ValueError naming the CSV, the column and the first bad row."""
    text = frame[column].fillna("").astype(str)
    parsed = text.str.extract(_INTEGER_TEXT, expand=False)
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if bad.size:
        index = int(bad[0])
        raise PreparationInputError(
            _bad_row_message(path, column, index, text.iloc[index], "an integer")
            + (f" ({bad.size} bad rows in all)" if bad.size > 1 else "")
        )
    return parsed.astype(np.int64).to_numpy()


def read_study_index(root: str | os.PathLike) -> tuple[list[StudyEntry], list[dict], int, int, int]:
    """Join ``record_list.csv`` with the reports of ``machine_measurements.csv``.

    Returns ``(entries with a report, skipped rows (duplicate_study, missing_report), studies
    listed, measurement rows without a record, duplicate measurement rows)``. The report is the
    non-empty ``report_N`` columns joined with single spaces and normalised
    (:func:`dbeta.text.normalize_report`).

    A study_id listed more than once in ``record_list.csv`` (under the same or another subject) is
    kept at its first listing; the later ones are skipped as ``duplicate_study``, so one study can
    never be in two splits. A (subject_id, study_id) with several ``machine_measurements.csv`` rows
    takes the report of the first row; the repeats are counted.

    Raises:
        FileNotFoundError: a CSV is missing.
        PreparationInputError (a ValueError): a CSV is unreadable, lacks a required column (``subject_id``, ``study_id``,
            ``path``; ``report_0``...), or holds a non-integer identifier or an empty ``path``; the
            message names the CSV, the column and the first bad row.
    """
    root = Path(root)
    records_path = root / "record_list.csv"
    measurements_path = root / "machine_measurements.csv"
    records = _read_index_csv(records_path)
    _require_columns(records, records_path, ["subject_id", "study_id", "path"])
    record_subjects = _integer_column(records, records_path, "subject_id")
    record_studies = _integer_column(records, records_path, "study_id")
    paths = records["path"].astype(str).str.strip().to_numpy(dtype=object)
    empty = np.flatnonzero(paths == "")
    if empty.size:
        raise PreparationInputError(_bad_row_message(records_path, "path", int(empty[0]), records["path"].iloc[int(empty[0])], "a record path"))
    ecg_times = records["ecg_time"].astype(str).to_numpy(dtype=object) if "ecg_time" in records.columns else [""] * len(records)

    measurements = _read_measurements(measurements_path)
    report_columns = [column for column in MIMIC_REPORT_COLUMNS if column in measurements.columns]
    measurement_subjects = _integer_column(measurements, measurements_path, "subject_id")
    measurement_studies = _integer_column(measurements, measurements_path, "study_id")
    report_matrix = measurements[report_columns].to_numpy(dtype=object)
    reports: dict[tuple[int, int], Any] = {}
    duplicate_measurements = 0
    for key, lines in zip(zip(measurement_subjects.tolist(), measurement_studies.tolist()), report_matrix):
        if key in reports:
            duplicate_measurements += 1
        else:
            reports[key] = lines
    if duplicate_measurements:
        logger.warning(
            "%s: %d rows repeat an earlier (subject_id, study_id); the first row's report is used",
            measurements_path, duplicate_measurements,
        )

    entries, skipped, seen_studies, matched = [], [], {}, set()
    for subject_id, study_id, path, ecg_time in zip(record_subjects.tolist(), record_studies.tolist(), paths, ecg_times):
        if study_id in seen_studies:
            first_subject, first_path = seen_studies[study_id]
            skipped.append(
                {
                    "subject_id": subject_id, "study_id": study_id, "path": path, "reason": "duplicate_study",
                    "detail": f"already listed (subject {first_subject}, path {first_path})",
                }
            )
            continue
        seen_studies[study_id] = (subject_id, path)
        lines = reports.get((subject_id, study_id))
        if lines is not None:
            matched.add((subject_id, study_id))
        report = normalize_report(join_report_lines(lines)) if lines is not None else ""
        if not report:
            detail = "all report columns empty" if lines is not None else "no machine_measurements row"
            skipped.append({"subject_id": subject_id, "study_id": study_id, "path": path, "reason": "missing_report", "detail": detail})
            continue
        entries.append(StudyEntry(subject_id, study_id, path, ecg_time, report))
    listed_keys = set(zip(record_subjects.tolist(), record_studies.tolist()))
    measurements_without_record = sum(1 for key in reports if key not in listed_keys)
    if len(entries) + len(skipped) != len(records):  # checked before any work, never after it
        raise RuntimeError("Internal error: the study index lost rows of record_list.csv")
    return entries, skipped, len(records), measurements_without_record, duplicate_measurements


def _read_measurements(path: Path) -> Any:
    """``machine_measurements.csv``: identifiers and report columns only, as text."""
    columns = _read_index_csv_header(path)
    missing = [column for column in ("subject_id", "study_id") if column not in columns]
    report_columns = [column for column in MIMIC_REPORT_COLUMNS if column in columns]
    if missing or not report_columns:
        wanted = [repr(column) for column in missing] + ([] if report_columns else ["'report_0' ... 'report_17' (none present)"])
        raise PreparationInputError(f"{path}: missing column(s) {', '.join(wanted)} (found: {', '.join(repr(c) for c in columns) or 'none'})")
    # Pandas' NaN markers stay on for the report columns: the original read them this way.
    return _read_index_csv(path, usecols=["subject_id", "study_id", *report_columns], keep_default_na=True)


def _read_index_csv_header(path: Path) -> list[str]:
    import pandas as pd

    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (--mimic_root must hold record_list.csv and machine_measurements.csv)")
    try:
        return [str(column) for column in pd.read_csv(path, nrows=0).columns]
    except Exception as error:
        raise PreparationInputError(f"Cannot read {path}: {type(error).__name__}: {error}") from error


def split_subjects(subject_ids: list[int], val_fraction: float, seed: int) -> set[int]:
    """The validation subjects: a seeded random ``val_fraction`` of the distinct subjects.

    At least one subject goes to validation when ``val_fraction > 0`` and there are two or more.
    """
    unique = np.array(sorted(set(subject_ids)), dtype=np.int64)
    if val_fraction <= 0 or unique.size < 2:
        return set()
    count = min(unique.size - 1, max(1, int(round(val_fraction * unique.size))))
    shuffled = np.random.default_rng(seed).permutation(unique)
    return set(int(subject) for subject in shuffled[:count])


def plan_shards(
    root: str | os.PathLike, entries: list[StudyEntry], validation_subjects: set[int], shard_size: int
) -> list[ShardTask]:
    """Group the entries per split, sorted by (subject, study), into shards of ``shard_size``."""
    tasks = []
    for split in SPLITS:
        selected = sorted(
            (entry for entry in entries if (entry.subject_id in validation_subjects) == (split == "validation")),
            key=lambda entry: (entry.subject_id, entry.study_id),
        )
        for start in range(0, len(selected), shard_size):
            name = f"{split}-{start // shard_size:05d}"
            tasks.append(ShardTask(name, split, str(root), selected[start : start + shard_size]))
    return tasks


# --------------------------------------------------------------------------------------------
# Shard workers
# --------------------------------------------------------------------------------------------


#: A WFDB header larger than this is not read (a 12-lead header is well under 2 KB).
MAX_HEADER_BYTES = 1 << 20


def _header_signal_files(header_path: Path) -> list[str]:
    """The distinct signal-file names of a WFDB header (first field of each signal line).

    Only what confinement needs: a header this cannot parse gives [] and is left to the reader to
    reject. Raises SkipRecord('unreadable') for a header over :data:`MAX_HEADER_BYTES`.
    """
    try:
        with open(header_path, "rb") as handle:
            data = handle.read(MAX_HEADER_BYTES + 1)
    except OSError:
        return []
    if len(data) > MAX_HEADER_BYTES:
        raise SkipRecord("unreadable", f"{header_path.name}: header larger than {MAX_HEADER_BYTES} bytes")
    text = data.decode("utf-8", errors="replace")
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        return []
    fields = lines[0].split()
    try:
        num_signals = int(fields[1]) if len(fields) > 1 else 0
    except ValueError:
        return []
    return list(dict.fromkeys(line.split()[0] for line in lines[1 : 1 + max(num_signals, 0)]))


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder)


def _confined_record_base(root: Path, entry: StudyEntry) -> Path:
    """``root / entry.path``, checked to stay inside ``root`` with its signal files.

    Symbolic links are resolved first. The header must resolve inside ``root``; each signal file
    its header names must resolve inside the header's folder (the readers' rule). Raises
    SkipRecord('path_outside_root') otherwise, and SkipRecord('missing_file') for a missing header.
    """
    relative = entry.path
    if "\x00" in relative:
        raise SkipRecord("path_outside_root", f"path {relative!r} holds a NUL byte")
    resolved_root = root.resolve()
    base = root / relative  # an absolute `path` replaces root here, and is then refused below
    header_path = base.with_name(base.name + ".hea")
    resolved_header = header_path.resolve()
    if not _inside(resolved_header, resolved_root):
        raise SkipRecord("path_outside_root", f"{relative}.hea resolves to {resolved_header}, outside {resolved_root}")
    if not header_path.is_file():
        raise SkipRecord("missing_file", f"{relative}.hea not found")
    folder = header_path.parent.resolve()
    for name in _header_signal_files(header_path):
        if name == "~":  # WFDB: no signal file
            continue
        if "\x00" in name:
            raise SkipRecord("path_outside_root", f"{relative}.hea names signal file {name!r}, which holds a NUL byte")
        target = (header_path.parent / name).resolve()
        if not (_inside(target, folder) and target != folder and _inside(target, resolved_root)):
            raise SkipRecord(
                "path_outside_root", f"{relative}.hea names signal file {name!r}, which resolves to {target}, outside {folder}"
            )
    return base


def _check_bounded_read(header_path: Path, relative: str) -> None:
    """Raise SkipRecord('unreadable') when the record would be read whole and is larger than
    :data:`MAX_UNBOUNDED_SIGNAL_BYTES`: its header gives no record length (WFDB's fourth field of the
    record line), so the reader cannot stop after the first 10 s."""
    try:
        with open(header_path, "rb") as handle:
            text = handle.read(MAX_HEADER_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return  # left to the reader
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    if not lines or len(lines[0].split()) >= 4:
        return
    size = 0
    for name in _header_signal_files(header_path):
        if name != "~":
            try:
                size += (header_path.parent / name).stat().st_size
            except OSError:
                pass
    if size > MAX_UNBOUNDED_SIGNAL_BYTES:
        raise SkipRecord(
            "unreadable",
            f"{relative}.hea gives no record length, so its {size / 2**20:.0f} MiB of signal would be read whole "
            f"(limit {MAX_UNBOUNDED_SIGNAL_BYTES >> 20} MiB); add the length to the header",
        )


def read_study(root: Path, entry: StudyEntry) -> dict[str, Any]:
    """Read and convert one study into a dataset row; raises SkipRecord. Only the first 10 s
    (:data:`NUM_SAMPLES` at :data:`SAMPLING_RATE`) are read from disk."""
    import processing_dbeta

    try:
        base = _confined_record_base(root, entry)
    except (OSError, ValueError) as error:  # a path the OS cannot resolve (too long, loop...)
        raise SkipRecord("missing_file", f"{entry.path}: {type(error).__name__}: {error}") from error
    _check_bounded_read(base.with_name(base.name + ".hea"), entry.path)
    try:
        record = processing_dbeta.read_wfdb_record(base, max_duration=NUM_SAMPLES / SAMPLING_RATE)
    except Exception as error:  # any reader failure is a damaged record, never a crash
        raise SkipRecord("unreadable", f"{type(error).__name__}: {error}") from error
    samples, gain, lead_names, trimmed = convert_record(record)
    return {
        "subject_id": entry.subject_id,
        "study_id": entry.study_id,
        "ecg_time": entry.ecg_time,
        "path": entry.path,
        "report": entry.report,
        "ecg": samples,
        "ecg_gain": gain,
        "lead_names": lead_names,
        "sampling_rate": float(record.sampling_rate),
        "_trimmed": trimmed,
    }


def process_shard(task: ShardTask, shards_dir: str, fingerprint: str = "") -> dict[str, Any]:
    """Convert one shard and save it to ``shards_dir/<name>`` (atomically); returns its result.
    ``fingerprint`` (the run's plan) is kept in ``result.json``: a shard folder is reused only by a
    run of the same plan, so processes of several machines can share ``.shards`` without a lock."""
    from datasets import Dataset
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()  # one bar per shard save would drown the run's own progress bar
    root = Path(task.root)
    rows, skipped, trimmed = [], [], 0
    for entry in task.entries:
        try:
            row = read_study(root, entry)
        except SkipRecord as skip:
            skipped.append(
                {"subject_id": entry.subject_id, "study_id": entry.study_id, "path": entry.path, "reason": skip.reason, "detail": skip.detail}
            )
            continue
        trimmed += row.pop("_trimmed")
        rows.append(row)

    features = dataset_features()
    columns = {name: [row[name] for row in rows] for name in features}
    if rows:
        columns["ecg"] = np.stack(columns["ecg"])
        columns["ecg_gain"] = np.stack(columns["ecg_gain"])
    result = {
        "name": task.name, "split": task.split, "read": len(task.entries), "kept": len(rows), "trimmed": trimmed,
        "skipped": skipped, "fingerprint": fingerprint,
    }

    final_dir = Path(shards_dir) / task.name
    staging_dir = Path(shards_dir) / f"{task.name}.incomplete"
    shutil.rmtree(staging_dir, ignore_errors=True)
    Dataset.from_dict(columns, features=features).save_to_disk(str(staging_dir / "data"))
    (staging_dir / "result.json").write_text(json.dumps(result))
    shutil.rmtree(final_dir, ignore_errors=True)
    os.replace(staging_dir, final_dir)
    return result


def _process_shard_star(arguments: tuple[ShardTask, str, str]) -> dict[str, Any]:
    return process_shard(*arguments)


# --------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------


def _plan_fingerprint(tasks: list[ShardTask], settings: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for task in tasks:
        digest.update(f"{task.name}:{task.split}:".encode())
        for entry in task.entries:
            digest.update(f"{entry.study_id},{entry.path},{entry.report}\n".encode())
    return digest.hexdigest()


def _assemble_split(split: str, shard_dirs: list[Path], output_dir: Path) -> int:
    """Hard-link the shards' Arrow files into ``output_dir/<split>`` as one ``datasets`` Dataset."""
    from datasets import Dataset

    split_dir = output_dir / split
    shutil.rmtree(split_dir, ignore_errors=True)
    split_dir.mkdir(parents=True)
    arrow_files = [path for shard in shard_dirs for path in sorted((shard / "data").glob("*.arrow"))]
    non_empty = [path for path in arrow_files if Dataset.from_file(str(path)).num_rows > 0]
    if not non_empty:
        # Every study of the split was skipped. `datasets` saves an empty dataset without an Arrow
        # file, which `load_from_disk` cannot read back: write one holding the schema.
        return _write_empty_split(split, output_dir)
    data_files = []
    for index, source in enumerate(non_empty):
        name = f"data-{index:05d}-of-{len(non_empty):05d}.arrow"
        try:
            os.link(source, split_dir / name)
        except OSError:
            shutil.copyfile(source, split_dir / name)
        data_files.append({"filename": name})
    # `datasets` keys its caches by `_fingerprint`: one of the content, so that another preparation
    # into the same folder (other seed, other records) never shares a cache with this one.
    content = hashlib.sha256("".join(file_sha256(split_dir / item["filename"]) for item in data_files).encode())
    template = json.loads((shard_dirs[0] / "data" / "state.json").read_text())
    template.update({"_data_files": data_files, "_fingerprint": content.hexdigest()[:16], "_split": split})
    (split_dir / "state.json").write_text(json.dumps(template, indent=2, sort_keys=True))
    shutil.copyfile(shard_dirs[0] / "data" / "dataset_info.json", split_dir / "dataset_info.json")
    return sum(Dataset.from_file(str(split_dir / item["filename"])).num_rows for item in data_files)


# --------------------------------------------------------------------------------------------
# Checksum manifest: the prepared files as they were written
# --------------------------------------------------------------------------------------------


class PreparedDatasetError(PreparationInputError):
    """A prepared dataset's files differ from what the preparation wrote (damaged, truncated,
    edited, missing); the message names the file and says to prepare the data again."""


_DIGESTS: dict[tuple[str, int, int, int], str] = {}  # (path, size, mtime_ns, inode) -> sha256, within one process


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file (hex), read in blocks; remembered for an unchanged file within a process."""
    path = Path(path)
    status = path.stat()
    key = (str(path.resolve()), status.st_size, status.st_mtime_ns, status.st_ino)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def write_checksum_manifest(dataset_dir: str | os.PathLike, splits: tuple[str, ...] | list[str] | None = None) -> Path:
    """Write :data:`CHECKSUM_MANIFEST` for a saved ``DatasetDict``: the size and SHA-256 of every
    file of each split folder and of ``dataset_dict.json`` (paths relative to ``dataset_dir``).
    Called by :func:`prepare_mimic_iv_ecg` and by every other writer of a training dataset (the
    demo's real pairs), as the last step."""
    dataset_dir = Path(dataset_dir)
    if splits is None:
        splits = json.loads((dataset_dir / "dataset_dict.json").read_text())["splits"]
    files = {}
    for relative in ["dataset_dict.json", *(f"{split}/{p.name}" for split in splits for p in sorted((dataset_dir / split).iterdir()) if p.is_file())]:
        path = dataset_dir / relative
        files[relative] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    manifest = {"format": CHECKSUM_MANIFEST_FORMAT, "algorithm": "sha256", "splits": list(splits), "files": files}
    target = dataset_dir / CHECKSUM_MANIFEST
    staging = target.with_name(target.name + ".partial")
    staging.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(staging, target)
    return target


def read_checksum_manifest(dataset_dir: str | os.PathLike) -> dict | None:
    """The dataset's checksum manifest; None when it has none (prepared before manifests existed,
    or saved by another tool). Raises PreparedDatasetError when it is unreadable."""
    path = Path(dataset_dir) / CHECKSUM_MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if manifest.get("format") != CHECKSUM_MANIFEST_FORMAT or not isinstance(manifest.get("files"), dict):
            raise ValueError(f"not a checksum manifest of format {CHECKSUM_MANIFEST_FORMAT}")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as error:
        raise PreparedDatasetError(
            f"{path} is unreadable ({type(error).__name__}: {error}); prepare the data again "
            "(train/data/prepare_mimic_iv_ecg.py; for the demo, delete the folder)."
        ) from error
    return manifest


def verify_prepared_dataset(
    dataset_dir: str | os.PathLike, splits: list[str] | tuple[str, ...], hash_files: bool = True
) -> dict | None:
    """Check the files of ``splits`` (and ``dataset_dict.json``) against the checksum manifest
    (with ``hash_files=False`` their presence and sizes only: for processes whose machine already
    hashed them).

    Returns the manifest's entries checked (``relative path: {"size", "sha256"}``), or None when the
    dataset has no manifest (nothing could be checked; the caller warns).

    It reads every checked file once: SHA-256 ran at about 1.6 GB/s on one core of the development
    machine, so about a minute for the ~100 GB of prepared MIMIC-IV-ECG; pretraining hashes once per machine.

    Raises:
        PreparedDatasetError: a file is missing, has another size (truncated) or another SHA-256
            (damaged or edited) than the preparation wrote, or a split is not in the manifest. The
            message names the file and says to prepare the data again.
    """
    dataset_dir = Path(dataset_dir)
    manifest = read_checksum_manifest(dataset_dir)
    if manifest is None:
        return None
    again = "prepare the data again (re-run train/data/prepare_mimic_iv_ecg.py; for the demo, delete the folder)"
    entries = manifest["files"]
    for split in splits:
        if not any(name.startswith(f"{split}/") for name in entries):
            raise PreparedDatasetError(
                f"{dataset_dir / split}: the split {split!r} is not in {dataset_dir / CHECKSUM_MANIFEST} (added after "
                f"preparation?), so its files cannot be checked; {again}."
            )
    checked = {name: entry for name, entry in entries.items() if name == "dataset_dict.json" or name.split("/")[0] in splits}
    for name, entry in sorted(checked.items()):
        path = dataset_dir / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            raise PreparedDatasetError(f"{dataset_dir / CHECKSUM_MANIFEST} names {name!r}, outside the dataset; {again}.")
        if not path.is_file():
            raise PreparedDatasetError(f"{path} is missing (the preparation wrote it); {again}.")
        size = path.stat().st_size
        if size != entry.get("size"):
            raise PreparedDatasetError(
                f"{path} has {size} bytes, but the preparation wrote {entry.get('size')} (truncated, damaged or edited file); {again}."
            )
        if hash_files and file_sha256(path) != entry.get("sha256"):
            raise PreparedDatasetError(
                f"{path} differs from what the preparation wrote (SHA-256 mismatch: damaged or edited file); {again}."
            )
    return checked


def prepare_mimic_iv_ecg(
    mimic_root: str | os.PathLike,
    output_dir: str | os.PathLike,
    num_proc: int = 1,
    val_fraction: float = 0.05,
    seed: int = 0,
    shard_size: int = 1000,
    overwrite: bool = False,
    keep_shards: bool = False,
    progress: bool = True,
    num_shards: int | None = None,
    shard_index: int | None = None,
    merge_timeout: float = 86400.0,
    launcher_shards: bool = False,
) -> PreparationSummary | None:
    """Prepare MIMIC-IV-ECG (or the demo corpus) as a ``datasets.DatasetDict`` saved to disk.

    Args:
        mimic_root: the folder holding ``record_list.csv``, ``machine_measurements.csv``, ``files/``.
        output_dir: where the ``DatasetDict`` (``train``, ``validation``), ``summary.json``,
            ``skipped.csv`` and ``README.md`` go. Load it with ``datasets.load_from_disk``.
        num_proc: worker processes (1 = in this process).
        val_fraction: fraction of *subjects* held out for validation.
        seed: seed of the subject split.
        shard_size: studies per shard (the unit of parallel work and of resumption).
        overwrite: discard finished shards from an earlier run with different inputs or settings
            (without it such a mismatch is an error).
        keep_shards: keep ``output_dir/.shards`` after success (they are hard links, so this
            costs no space until the final dataset is deleted).
        progress: show a tqdm progress bar.
        num_shards, shard_index: prepare only the ``shard_index``-th of ``num_shards`` contiguous
            blocks of the plan's preparation shards (``dbeta.sharding.shard_bounds``; the plan is
            sorted by subject, so a process gets a contiguous range of subjects) into the shared
            ``output_dir/.shards`` and return None; the same command without them then assembles
            the dataset from the finished shards (SLURM arrays). Without them and with
            ``launcher_shards``, ``WORLD_SIZE`` > 1 and ``RANK`` (``accelerate launch``, ``torchrun``)
            give the block, and rank 0 waits up to ``merge_timeout`` seconds for the others' shards,
            then assembles the dataset as one process would (other ranks return None). The result
            equals the one-process run's.
        launcher_shards: read the shard from ``RANK``/``WORLD_SIZE`` (the command line does; a library
            caller that prepares on one process while the others wait, as pretraining's
            `SharedPreparation` does, must not, or rank 0 would wait for shards nobody writes).

    Returns:
        The :class:`PreparationSummary` (records listed, read, kept, skipped by reason, per split),
        or None for a process that prepared its block only.

    Raises:
        FileNotFoundError: ``record_list.csv`` or ``machine_measurements.csv`` is missing.
        PreparationInputError: a malformed CSV (named with its column and first bad row), a bad
            setting, or shards of another run in ``output_dir`` without ``overwrite``. All are
            raised before any record is read.

    A study is never half-kept: each one listed is either a row of one split or a line of
    ``skipped.csv`` with its reason (:data:`SKIP_REASONS`).
    """
    if not 0 <= val_fraction < 1:
        raise PreparationInputError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if shard_size < 1:
        raise PreparationInputError(f"shard_size must be at least 1, got {shard_size}")
    if num_proc < 1:
        raise PreparationInputError(f"num_proc must be at least 1, got {num_proc}")
    from dbeta.sharding import ShardError, resolve_shard, shard_items

    try:
        shard = resolve_shard(num_shards, shard_index, environ=None if launcher_shards else {})
    except ShardError as error:
        raise PreparationInputError(str(error)) from None
    if shard is not None and shard.from_launcher and shard.index == 0 and not merge_timeout > 0:
        raise PreparationInputError(f"merge_timeout must be > 0 seconds, got {merge_timeout}")
    started = time.perf_counter()
    root, output_dir = Path(mimic_root), Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise PreparationInputError(f"--output_dir {output_dir} is a file, not a folder; choose another --output_dir")
    output_dir.mkdir(parents=True, exist_ok=True)
    shards_dir = output_dir / SHARDS_FOLDER

    entries, index_skips, records_listed, orphan_measurements, duplicate_measurements = read_study_index(root)
    validation_subjects = split_subjects([entry.subject_id for entry in entries], val_fraction, seed)
    tasks = plan_shards(root, entries, validation_subjects, shard_size)
    settings = {
        "version": PREPARATION_VERSION,
        "val_fraction": val_fraction,
        "seed": seed,
        "shard_size": shard_size,
        "num_samples": NUM_SAMPLES,
    }
    fingerprint = _plan_fingerprint(tasks, settings)

    plan_file = shards_dir / "plan.json"
    if plan_file.is_file():
        previous = json.loads(plan_file.read_text()).get("fingerprint")
        if previous != fingerprint:
            if not overwrite:
                raise PreparationInputError(
                    f"{shards_dir} holds shards of a run with other inputs or settings; pass "
                    "overwrite=True (--overwrite) to discard them, or choose another output_dir"
                )
            if shard is None:
                shutil.rmtree(shards_dir)
            # Sharded, other processes may be writing here already: the stale shard folders are
            # recomputed (their result.json has another fingerprint), not removed.
    shards_dir.mkdir(parents=True, exist_ok=True)
    _write_atomically(plan_file, json.dumps({"fingerprint": fingerprint, "settings": settings, "root": str(root)}, indent=2))

    done = {task.name for task in tasks if _finished_shard(shards_dir / task.name, fingerprint) is not None}
    mine = tasks if shard is None else shard_items(tasks, shard.count, shard.index)
    pending = [task for task in mine if task.name not in done]
    if shard is not None:
        logger.info("Process %d of %d: preparation shards %d of %d", shard.index, shard.count, len(mine), len(tasks))
    if len(pending) < len(mine):
        logger.info("Resuming: %d of %d shards already finished", len(mine) - len(pending), len(mine))
    _run_shards(pending, shards_dir, num_proc, progress, sum(len(t.entries) for t in pending), fingerprint)
    if shard is not None:
        if not shard.from_launcher or shard.index != 0:
            logger.info("Prepared %d shards in %s; the dataset is assembled by %s", len(mine), shards_dir,
                        "rank 0" if shard.from_launcher else "the same command without --num_shards/--shard_index")
            return None
        logger.info("Rank 0: waiting for the other %d processes' shards ...", shard.count - 1)
        _wait_for_shards(tasks, shards_dir, fingerprint, merge_timeout)
    unfinished = [task.name for task in tasks if _finished_shard(shards_dir / task.name, fingerprint) is None]
    if unfinished:  # the one-process run prepared every shard itself: only a broken shard folder gets here
        raise PreparationInputError(f"{shards_dir}: shards {unfinished[:5]} are not finished; re-run the same command")

    results = [_finished_shard(shards_dir / task.name, fingerprint) for task in tasks]
    summary = PreparationSummary(
        records_listed=records_listed,
        measurements_without_record=orphan_measurements,
        duplicate_measurement_rows=duplicate_measurements,
    )
    skipped_rows = list(index_skips)
    for result in results:
        summary.records_read += result["read"]
        summary.records_kept += result["kept"]
        summary.trimmed_to_num_samples += result["trimmed"]
        skipped_rows.extend(result["skipped"])
    summary.skipped_by_reason = {
        reason: count for reason, count in Counter(row["reason"] for row in skipped_rows).most_common()
    }
    if summary.records_kept + summary.records_skipped != records_listed:
        raise RuntimeError("Internal error: kept + skipped does not equal the studies listed")

    # Studies are unique across the shards (duplicates are skipped in the index), so a study_id
    # skipped by a shard worker identifies that shard entry.
    skipped_study_ids = {row["study_id"] for result in results for row in result["skipped"]}
    for split in SPLITS:
        split_tasks = [task for task in tasks if task.split == split]
        if split_tasks:
            summary.kept_by_split[split] = _assemble_split(split, [shards_dir / task.name for task in split_tasks], output_dir)
        else:
            summary.kept_by_split[split] = 0
            _write_empty_split(split, output_dir)
        summary.subjects_by_split[split] = len(
            {entry.subject_id for task in split_tasks for entry in task.entries if entry.study_id not in skipped_study_ids}
        )
    (output_dir / "dataset_dict.json").write_text(json.dumps({"splits": list(SPLITS)}))
    write_checksum_manifest(output_dir, SPLITS)
    _write_skipped_csv(output_dir / "skipped.csv", skipped_rows)
    summary.seconds = round(time.perf_counter() - started, 2)
    summary.output_dir = str(output_dir)
    (output_dir / "summary.json").write_text(json.dumps(asdict(summary), indent=2))
    (output_dir / "README.md").write_text(dataset_card(summary, root, settings))
    if not keep_shards:
        shutil.rmtree(shards_dir)
    return summary


def _write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file of this process (several may write the same file)."""
    staging = path.with_name(f"{path.name}.{os.getpid()}.partial")
    staging.write_text(text)
    os.replace(staging, path)


def _finished_shard(shard_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The result of a shard folder finished by a run of this plan, else None."""
    try:
        result = json.loads((shard_dir / "result.json").read_text())
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and result.get("fingerprint") == fingerprint else None


def _wait_for_shards(tasks: list[ShardTask], shards_dir: Path, fingerprint: str, timeout_s: float, poll_s: float = 0.5) -> None:
    """Poll until every shard of the plan is finished (by any process); PreparationInputError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    missing = list(tasks)
    while True:
        missing = [task for task in missing if _finished_shard(shards_dir / task.name, fingerprint) is None]
        if not missing:
            return
        if time.monotonic() >= deadline:
            raise PreparationInputError(
                f"{len(missing)} preparation shards (first: {missing[0].name}) were not finished within {timeout_s:g} s; "
                "the dataset was not assembled (re-run the same command to resume)"
            )
        time.sleep(poll_s)


def _run_shards(
    tasks: list[ShardTask], shards_dir: Path, num_proc: int, progress: bool, total_records: int, fingerprint: str = ""
) -> None:
    from tqdm.auto import tqdm

    bar = tqdm(total=total_records, unit="record", desc="Preparing MIMIC-IV-ECG", disable=not progress)
    try:
        for result in map_in_workers(_process_shard_star, [(task, str(shards_dir), fingerprint) for task in tasks], num_proc):
            bar.update(result["read"])
    finally:
        bar.close()


def _write_empty_split(split: str, output_dir: Path) -> int:
    """An empty split that ``datasets.load_from_disk`` reads back (one Arrow file with the schema)."""
    from datasets import DatasetInfo
    from datasets.arrow_writer import ArrowWriter

    split_dir = output_dir / split
    shutil.rmtree(split_dir, ignore_errors=True)
    split_dir.mkdir(parents=True)
    features = dataset_features()
    name = "data-00000-of-00001.arrow"
    with ArrowWriter(features=features, path=str(split_dir / name)) as writer:
        writer.finalize()
    DatasetInfo(features=features).write_to_directory(str(split_dir))
    state = {
        "_data_files": [{"filename": name}],
        "_fingerprint": hashlib.sha256(f"empty:{split}".encode()).hexdigest()[:16],
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": split,
    }
    (split_dir / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True))
    return 0


def _write_skipped_csv(path: Path, rows: list[dict]) -> None:
    """The skipped studies, as a CSV whose cells cannot become spreadsheet formulas (paths and
    details come from the data: `dbeta.files.csv_writer`)."""
    columns = ["subject_id", "study_id", "path", "reason", "detail"]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv_writer(handle, lineterminator="\n")
        writer.writerow(columns)
        for row in sorted(rows, key=lambda row: (row["subject_id"], row["study_id"])):
            writer.writerow([row.get(column, "") for column in columns])


def iter_skip_reasons() -> Iterator[tuple[str, str]]:
    """(reason, description) pairs, for documentation and the dataset card."""
    yield from SKIP_REASONS.items()


def dataset_card(summary: PreparationSummary, root: Path, settings: Mapping[str, Any]) -> str:
    """The ``README.md`` written next to the prepared dataset."""
    skipped_lines = "\n".join(
        f"| `{reason}` | {summary.skipped_by_reason.get(reason, 0)} | {description} |" for reason, description in iter_skip_reasons()
    )
    return f"""---
pretty_name: MIMIC-IV-ECG (prepared for D-BETA pre-training)
task_categories:
- feature-extraction
tags:
- ecg
- electrocardiogram
- physionet
---

# MIMIC-IV-ECG, prepared for D-BETA

Prepared by `train/data/prepare_mimic_iv_ecg.py` (dbeta) from `{root}`.

**Source.** MIMIC-IV-ECG: Diagnostic Electrocardiogram Matched Subset v1.0 (Gow et al., PhysioNet,
https://doi.org/10.13026/4nqg-sb35): 10 s, 500 Hz, 12-lead ECGs with machine-generated reports.
The data is under the PhysioNet Credentialed Health Data License 1.5.0; do not share this folder
with anyone who has not signed its data use agreement. (If `{root}` is the simulated demo corpus of
`train/demo/make_demo_corpus.py`, none of this applies: its records are synthetic.)

## Counts

| | studies |
|---|---|
| listed in `record_list.csv` | {summary.records_listed} |
| signal files read | {summary.records_read} |
| kept | {summary.records_kept} |
| kept, train split | {summary.kept_by_split.get("train", 0)} ({summary.subjects_by_split.get("train", 0)} subjects) |
| kept, validation split | {summary.kept_by_split.get("validation", 0)} ({summary.subjects_by_split.get("validation", 0)} subjects) |
| `machine_measurements.csv` rows without a record | {summary.measurements_without_record} |
| `machine_measurements.csv` rows repeating a (subject_id, study_id) (first row used) | {summary.duplicate_measurement_rows} |
| longer than {NUM_SAMPLES} samples, cut to the first {NUM_SAMPLES} | {summary.trimmed_to_num_samples} |

## Filters (skipped studies; each one is listed in `skipped.csv`)

| reason | studies | meaning |
|---|---|---|
{skipped_lines}

No filtering, resampling or amplitude normalisation is applied to the kept signals (as the original
D-BETA preprocessing).

## Columns

- `ecg`: int16 (12, {NUM_SAMPLES}); `ecg_gain`: float32 (12,). Millivolts = `ecg / ecg_gain[:, None]`
  (`dbeta.train.data.mimic_iv_ecg.decode_ecg`); the gain is {DEFAULT_STORAGE_GAIN:g}/mV unless a lead peaks above 32.767 mV.
- `lead_names`: the lead names in the order of the rows of `ecg`, as written in the file
  (MIMIC: I, II, III, aVR, aVF, aVL, V1-V6).
- `sampling_rate` ({SAMPLING_RATE:g}), `subject_id`, `study_id`, `ecg_time`, `path` (relative to the source root).
- `report`: the non-empty `report_0` ... `report_17` joined with single spaces, then lower-cased,
  trimmed, "ekg" -> "ecg", and the end characters `* `, `=-`, `=` stripped (D-BETA specification, section 3).

## Splits

Train / validation by subject (no subject in both): a seeded random {settings["val_fraction"]:g} of the subjects
(seed {settings["seed"]}) is held out for validation.

```python
import datasets
from dbeta.train.data.mimic_iv_ecg import decode_ecg
data = datasets.load_from_disk("{summary.output_dir}")
ecg_mv = decode_ecg(data["train"].with_format("numpy")[0])   # float32 (12, {NUM_SAMPLES})
```
"""
