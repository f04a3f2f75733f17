# Copyright 2025 The dbeta authors. Licensed under the Apache License, Version 2.0.
"""ECG file readers, feature extractor and processor for D-BETA.

This file is Hugging Face Hub remote code: it is copied flat next to `config.json` and must stay
self-contained. At module level it imports only numpy, scipy, torch and transformers; the optional
readers' dependencies (`wfdb`, `h5py`, `scipy.io`) are imported inside the functions that need
them, so that loading a model or processor never requires them.

Contents:

- readers: `read_wfdb_record` (WFDB `.hea` + `.dat`, PhysioNet/CinC `.hea` + `.mat`),
  `read_cpsc2018_mat` (original CPSC 2018 `.mat`), `read_code_hdf5` (CODE-test HDF5) and the
  dispatcher `read_ecg_file`. All return signals in millivolts, shaped (leads, samples).
- `DBetaFeatureExtractor`: turns ECGs of any lead order, rate and length into the model input
  (B, 12, 5000) float32 millivolts at 500 Hz, in the lead order the model was trained with.
- `DBetaProcessor`: the feature extractor plus a tokenizer, for (ECG, text) inputs.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import scipy.signal
import torch
from transformers import BatchFeature, ProcessorMixin, SequenceFeatureExtractor
from transformers.utils import logging


logger = logging.get_logger(__name__)

# --------------------------------------------------------------------------------------------
# Lead names
# --------------------------------------------------------------------------------------------

#: The conventional 12-lead order (PTB-XL, CinC, CPSC, LUDB, CODE): aVL before aVF.
STANDARD_LEAD_NAMES = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")

#: The order of MIMIC-IV-ECG, on which D-BETA was pretrained: aVF before aVL.
MIMIC_LEAD_NAMES = ("I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6")

#: The 8 leads that are linearly independent; the other 4 limb leads follow from I and II.
INDEPENDENT_LEAD_NAMES = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")

_CANONICAL_BY_LOWER = {name.lower(): name for name in STANDARD_LEAD_NAMES}


def canonical_lead_name(name: str) -> str:
    """Return the standard spelling of a 12-lead ECG lead name, matched case-insensitively.

    `"avl"` -> `"aVL"`, `"i"` -> `"I"`, `"v1"` -> `"V1"`; surrounding whitespace is ignored.
    Names that are not one of the 12 standard leads (e.g. `"MLII"`, `"vx"`) are returned unchanged.
    """
    if not isinstance(name, str):
        raise TypeError(f"Lead names must be strings, got {type(name).__name__}: {name!r}")
    return _CANONICAL_BY_LOWER.get(name.strip().lower(), name)


# --------------------------------------------------------------------------------------------
# File readers
# --------------------------------------------------------------------------------------------


@dataclass
class ECGRecord:
    """One ECG read from a file.

    Attributes:
        signal: float32 array (num_leads, num_samples) in millivolts (converted with the header's
            gain, baseline and units). Samples the file marks as missing are NaN.
        lead_names: lead names as written in the file (e.g. `["i", "ii", ..., "v6"]` for LUDB).
        sampling_rate: samples per second.
        metadata: what the file says about the recording. Always has `"name"` (the record name)
            and `"comments"` (header comment lines, without `#`). Depending on the source also
            `"age"` (int, or the raw string such as `">89"`, or None when unknown), `"sex"`,
            `"dx"` (CinC: list of SNOMED-CT code strings), `"diagnoses"` (LUDB: the diagnosis
            lines after `#<diagnoses>:`), `"fields"` (every `key: value` comment, keys
            lower-cased) and `"units"` (the units written in the file, per lead).
    """

    signal: np.ndarray
    lead_names: list[str]
    sampling_rate: float
    metadata: dict = field(default_factory=dict)

    @property
    def num_leads(self) -> int:
        return int(self.signal.shape[0])

    @property
    def num_samples(self) -> int:
        return int(self.signal.shape[1])

    @property
    def duration(self) -> float:
        """Length of the recording in seconds."""
        return self.num_samples / float(self.sampling_rate)


# Scale factors from a WFDB unit string (lower-cased) to millivolts.
_MILLIVOLTS_PER_UNIT = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3, "nv": 1e-6}

# WFDB's default ADC gain (adu per physical unit) when the header gives none or 0.
_WFDB_DEFAULT_GAIN = 200.0

# Digital value that WFDB reserves for "sample missing", per storage format.
_WFDB_INVALID_SAMPLE = {
    "8": -128,
    "16": -32768,
    "61": -32768,
    "80": -128,
    "160": -32768,
    "212": -2048,
    "310": -512,
    "311": -512,
    "24": -(2**23),
    "32": -(2**31),
}

_SIGNAL_FILE_EXTENSIONS = (".hea", ".dat", ".mat")


@dataclass
class _WFDBSignalSpec:
    file_name: str
    fmt: str
    gain: float
    baseline: int
    units: str
    description: str


@dataclass
class _WFDBHeader:
    record_name: str
    num_signals: int
    sampling_rate: float
    num_samples: Optional[int]
    signals: list[_WFDBSignalSpec]
    comments: list[str]


def _record_base(path: Union[str, os.PathLike]) -> Path:
    """Strip a known WFDB/CinC extension (`.hea`, `.dat`, `.mat`) from a record path."""
    path = Path(path)
    if path.suffix.lower() in _SIGNAL_FILE_EXTENSIONS:
        return path.with_suffix("")
    return path


def _parse_wfdb_header(header_path: Path) -> _WFDBHeader:
    """Parse a single-segment WFDB header, including the CinC-2020 variant.

    The CinC-2020 headers write the record line as `E00666.mat 12 500 5000 <date>` (the name
    carries the signal file's extension), which `wfdb` rejects; here the extension is dropped.
    """
    try:
        text = header_path.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        raise ValueError(f"Cannot read WFDB header {header_path}: {error}") from error

    comments: list[str] = []
    content_lines: list[str] = []
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line:
            continue
        if line.startswith("#"):
            comments.append(line.lstrip("#").strip())
        else:
            content_lines.append(line)
    if not content_lines:
        raise ValueError(f"Bad WFDB header {header_path}: no record line")

    record_fields = content_lines[0].split()
    if len(record_fields) < 2:
        raise ValueError(f"Bad WFDB header {header_path}: record line {content_lines[0]!r}")
    record_name = record_fields[0]
    if "/" in record_name:
        raise ValueError(f"Multi-segment WFDB records are not supported: {header_path}")
    if Path(record_name).suffix.lower() in _SIGNAL_FILE_EXTENSIONS:
        record_name = Path(record_name).stem
    try:
        num_signals = int(record_fields[1])
        # The rate may be written "500/1(0)" (sampling/counter frequency); keep the first part.
        sampling_rate = float(record_fields[2].split("/")[0]) if len(record_fields) > 2 else 250.0
        num_samples = int(record_fields[3]) if len(record_fields) > 3 else None
    except ValueError as error:
        raise ValueError(f"Bad WFDB header {header_path}: record line {content_lines[0]!r}") from error
    if num_signals < 1 or sampling_rate <= 0 or not math.isfinite(sampling_rate):
        raise ValueError(f"Bad WFDB header {header_path}: record line {content_lines[0]!r}")
    if num_samples == 0:  # WFDB writes 0 for "unknown length"
        num_samples = None

    signal_lines = content_lines[1:]
    if len(signal_lines) < num_signals:
        raise ValueError(
            f"Bad WFDB header {header_path}: {num_signals} signals declared, "
            f"{len(signal_lines)} signal lines found"
        )
    signals = [_parse_wfdb_signal_line(line, header_path) for line in signal_lines[:num_signals]]
    return _WFDBHeader(record_name, num_signals, sampling_rate, num_samples, signals, comments)


_GAIN_FIELD = re.compile(r"^(?P<gain>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)?(?:\((?P<baseline>[-+]?\d+)\))?(?:/(?P<units>\S+))?$")
_FORMAT_FIELD = re.compile(r"^(?P<fmt>\d+)(?:x\d+)?(?::\d+)?(?:\+\d+)?$")


def _parse_wfdb_signal_line(line: str, header_path: Path) -> _WFDBSignalSpec:
    # file format [gain[(baseline)][/units] [adc_res [adc_zero [init [checksum [block [description...]]]]]]]
    fields = line.split(maxsplit=8)
    if len(fields) < 2:
        raise ValueError(f"Bad WFDB header {header_path}: signal line {line!r}")
    format_match = _FORMAT_FIELD.match(fields[1])
    if format_match is None:
        raise ValueError(f"Bad WFDB header {header_path}: signal format {fields[1]!r} in {line!r}")

    gain, baseline, units = _WFDB_DEFAULT_GAIN, None, "mV"
    if len(fields) > 2:
        gain_match = _GAIN_FIELD.match(fields[2])
        if gain_match is None:
            raise ValueError(f"Bad WFDB header {header_path}: gain field {fields[2]!r} in {line!r}")
        if gain_match["gain"] is not None:
            gain = float(gain_match["gain"]) or _WFDB_DEFAULT_GAIN  # 0 means "uncalibrated"
        if gain_match["baseline"] is not None:
            baseline = int(gain_match["baseline"])
        if gain_match["units"] is not None:
            units = gain_match["units"]
    try:
        adc_zero = int(fields[4]) if len(fields) > 4 else 0
    except ValueError as error:
        raise ValueError(f"Bad WFDB header {header_path}: signal line {line!r}") from error
    if baseline is None:  # WFDB: the baseline defaults to the ADC zero
        baseline = adc_zero
    description = fields[8].strip() if len(fields) > 8 else ""
    return _WFDBSignalSpec(fields[0], format_match["fmt"], gain, baseline, units, description)


def _parse_age(value: Optional[str]) -> Union[int, float, str, None]:
    if value is None:
        return None
    value = value.strip()
    if not value or value.lower() in {"nan", "unknown", "n/a", "na", "none", "-"}:
        return None
    try:
        number = float(value)
    except ValueError:
        return value  # e.g. LUDB's ">89"
    if not math.isfinite(number):
        return None
    return int(number) if number.is_integer() else number


_COMMENT_FIELD = re.compile(r"^<?\s*(?P<key>[A-Za-z][^:<>]*?)\s*>?\s*:\s*(?P<value>.*)$")


def _parse_header_comments(comments: list[str]) -> dict:
    """Extract age, sex, CinC `Dx` codes and LUDB diagnosis lines from header comments."""
    fields: dict[str, str] = {}
    diagnoses: list[str] = []
    in_ludb_diagnoses = False
    for comment in comments:
        is_ludb_key = comment.startswith("<")
        if in_ludb_diagnoses and not is_ludb_key:
            diagnoses.append(comment)
            continue
        in_ludb_diagnoses = False
        match = _COMMENT_FIELD.match(comment)
        if match is None:
            continue
        key = match["key"].strip().lower()
        fields.setdefault(key, match["value"].strip())
        # LUDB lists one diagnosis per comment line after "#<diagnoses>:".
        if is_ludb_key and key == "diagnoses":
            in_ludb_diagnoses = True

    metadata: dict[str, Any] = {"fields": fields}
    if "age" in fields:
        metadata["age"] = _parse_age(fields["age"])
    if "sex" in fields:
        metadata["sex"] = fields["sex"] or None
    if "dx" in fields:
        metadata["dx"] = [code.strip() for code in fields["dx"].split(",") if code.strip()]
    if diagnoses or "diagnoses" in fields:
        metadata["diagnoses"] = diagnoses
    return metadata


def _to_millivolts(
    digital: np.ndarray, specs: list[_WFDBSignalSpec], source: Path
) -> np.ndarray:
    """(digital - baseline) / gain, scaled from each signal's units to mV; missing samples -> NaN."""
    physical = np.empty(digital.shape, dtype=np.float64)
    for index, spec in enumerate(specs):
        row = digital[index].astype(np.float64)
        invalid = _WFDB_INVALID_SAMPLE.get(spec.fmt)
        if invalid is not None:
            row[digital[index] == invalid] = np.nan
        scale = _MILLIVOLTS_PER_UNIT.get(spec.units.lower())
        if scale is None:
            logger.warning(
                f"{source}: signal {spec.description!r} has units {spec.units!r}; kept unscaled"
            )
            scale = 1.0
        physical[index] = (row - spec.baseline) / spec.gain * scale
    return physical.astype(np.float32)


def _read_matlab_val(path: Path) -> np.ndarray:
    """Read the (num_signals, num_samples) integer matrix `val` of a PhysioNet/CinC `.mat` file."""
    import scipy.io  # lazy: only file reading needs it

    try:
        contents = scipy.io.loadmat(str(path))
    except Exception as error:  # scipy raises several types for damaged files
        raise ValueError(f"Cannot read MATLAB file {path}: {error}") from error
    if "val" not in contents:
        raise ValueError(f"MATLAB file {path} has no variable 'val' (keys: {sorted(contents)})")
    values = np.asarray(contents["val"])
    if values.ndim != 2 or not np.issubdtype(values.dtype, np.number):
        raise ValueError(f"MATLAB file {path}: 'val' must be a 2-D numeric matrix, got {values.shape}")
    return values


def read_wfdb_record(path: Union[str, os.PathLike]) -> ECGRecord:
    """Read a WFDB record: `.hea` + `.dat`, or a PhysioNet/CinC `.hea` + `.mat` (MATLAB `val`).

    Args:
        path: the record path with or without extension (`"ludb/1"`, `"ludb/1.hea"`,
            `"cinc/E07501.mat"`).

    Returns:
        An `ECGRecord` in millivolts: `(digital - baseline) / gain`, scaled from the header's
        units (`uV` headers are divided by 1000). `.dat` files are decoded with `wfdb`, so every
        WFDB storage format is supported; `.mat` files with `scipy.io`.

    Raises:
        ValueError: the header is malformed, a signal file is missing or truncated, or its shape
            disagrees with the header. The message names the file.
    """
    base = _record_base(path)
    header_path = base.with_name(base.name + ".hea")
    if not header_path.is_file():
        raise ValueError(f"WFDB header not found: {header_path}")
    header = _parse_wfdb_header(header_path)

    file_names = list(dict.fromkeys(spec.file_name for spec in header.signals))
    is_matlab = [name.lower().endswith(".mat") for name in file_names]
    if all(is_matlab):
        blocks = []
        for name in file_names:
            signal_path = header_path.parent / name
            if not signal_path.is_file():
                raise ValueError(f"Signal file {signal_path} (named in {header_path}) not found")
            blocks.append(_read_matlab_val(signal_path))
        lengths = {block.shape[1] for block in blocks}
        if len(lengths) != 1:
            raise ValueError(f"Signal files of {header_path} have different lengths: {sorted(lengths)}")
        digital = np.concatenate(blocks, axis=0)
    elif any(is_matlab):
        raise ValueError(f"{header_path} mixes .mat and other signal files; not supported")
    else:
        digital = _read_wfdb_dat(base, header_path, file_names)

    if digital.shape[0] != header.num_signals:
        raise ValueError(
            f"{header_path}: header declares {header.num_signals} signals, the signal files hold "
            f"{digital.shape[0]}"
        )
    if header.num_samples is not None and digital.shape[1] != header.num_samples:
        raise ValueError(
            f"{header_path}: header declares {header.num_samples} samples, the signal files hold "
            f"{digital.shape[1]} (truncated or damaged file?)"
        )
    if digital.shape[1] == 0:
        raise ValueError(f"{header_path}: the record has no samples")

    metadata = {"name": header.record_name, "comments": list(header.comments)}
    metadata.update(_parse_header_comments(header.comments))
    metadata["units"] = [spec.units for spec in header.signals]
    return ECGRecord(
        signal=_to_millivolts(digital, header.signals, header_path),
        lead_names=[spec.description for spec in header.signals],
        sampling_rate=header.sampling_rate,
        metadata=metadata,
    )


def _read_wfdb_dat(base: Path, header_path: Path, file_names: list[str]) -> np.ndarray:
    """Digital samples (num_signals, num_samples) of a WFDB record, decoded by `wfdb`."""
    try:
        import wfdb  # lazy: only file reading needs it
    except ImportError as error:
        raise ImportError("Reading WFDB .dat files needs `wfdb` (pip install wfdb)") from error

    for name in file_names:
        if not (header_path.parent / name).is_file():
            raise ValueError(f"Signal file {header_path.parent / name} (named in {header_path}) not found")
    try:
        record = wfdb.rdrecord(str(base), physical=False)
    except Exception as error:  # wfdb raises ValueError, IndexError, its own syntax errors...
        raise ValueError(f"Cannot read WFDB record {base} ({', '.join(file_names)}): {error}") from error
    if record.d_signal is None:
        raise ValueError(f"WFDB record {base} has no signal data")
    return np.asarray(record.d_signal).T


def _matlab_scalar_text(value: Any) -> Optional[str]:
    """A MATLAB scalar or string field as text (None when empty)."""
    if value is None:
        return None
    array = np.asarray(value).ravel()
    return str(array[0]).strip() if array.size else None


def read_cpsc2018_mat(path: Union[str, os.PathLike]) -> ECGRecord:
    """Read a recording in the original CPSC 2018 format.

    The `.mat` file (MATLAB v5) holds a struct `ECG` with fields `sex` (`'Male'`/`'Female'`),
    `age` and `data` (float64, 12 x N, millivolts); the leads are I, II, III, aVR, aVL, aVF,
    V1-V6 at 500 Hz. The labels are not in the file (they are in `REFERENCE.csv`).

    Raises:
        ValueError: the file is unreadable or has no `ECG` struct with a (12, N) `data` field.
    """
    import scipy.io  # lazy: only file reading needs it

    path = Path(path)
    try:
        contents = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except Exception as error:
        raise ValueError(f"Cannot read CPSC 2018 file {path}: {error}") from error
    ecg = contents.get("ECG")
    if ecg is None or not hasattr(ecg, "data"):
        raise ValueError(f"{path} is not a CPSC 2018 file: no struct 'ECG' with a field 'data'")
    data = np.asarray(ecg.data, dtype=np.float64)
    if data.ndim != 2 or data.shape[0] != len(STANDARD_LEAD_NAMES) or data.shape[1] == 0:
        raise ValueError(f"{path}: ECG.data must be (12, N), got {data.shape}")
    metadata = {
        "name": path.stem,
        "comments": [],
        "age": _parse_age(_matlab_scalar_text(getattr(ecg, "age", None))),
        "sex": _matlab_scalar_text(getattr(ecg, "sex", None)),
    }
    return ECGRecord(
        signal=data.astype(np.float32),
        lead_names=list(STANDARD_LEAD_NAMES),
        sampling_rate=500.0,
        metadata=metadata,
    )


CODE_SAMPLING_RATE = 400.0


def read_code_hdf5(
    path: Union[str, os.PathLike], start: int = 0, stop: Optional[int] = None, dataset: str = "tracings"
) -> tuple[np.ndarray, list[str], float]:
    """Read CODE-test tracings (`ecg_tracings.hdf5`: dataset `tracings`, (N, 4096, 12) at 400 Hz).

    Args:
        path: the HDF5 file.
        start, stop: the range of exams to read (rows `start:stop`), so that large files can be
            read in chunks.
        dataset: the name of the dataset.

    Returns:
        `(signals, lead_names, sampling_rate)`: float32 (n, 12, 4096), the values as distributed
        (treated as millivolts), the distributed lead order (I, II, III, aVR, aVL, aVF, V1-V6)
        and 400.0. The 4096 samples are the 10 s traces zero-padded at both ends.
    """
    try:
        import h5py  # lazy: only file reading needs it
    except ImportError as error:
        raise ImportError("Reading CODE HDF5 files needs `h5py` (pip install h5py)") from error

    path = Path(path)
    try:
        with h5py.File(path, "r") as handle:
            if dataset not in handle:
                raise ValueError(f"{path} has no dataset {dataset!r} (keys: {list(handle.keys())})")
            tracings = handle[dataset]
            if tracings.ndim != 3 or tracings.shape[2] != len(STANDARD_LEAD_NAMES):
                raise ValueError(f"{path}: {dataset!r} must be (N, samples, 12), got {tracings.shape}")
            signals = np.asarray(tracings[start:stop], dtype=np.float32)
    except (OSError, KeyError) as error:
        raise ValueError(f"Cannot read CODE HDF5 file {path}: {error}") from error
    return np.ascontiguousarray(signals.transpose(0, 2, 1)), list(STANDARD_LEAD_NAMES), CODE_SAMPLING_RATE


def read_ecg_file(path: Union[str, os.PathLike]) -> ECGRecord:
    """Read one ECG, choosing the reader from the file name.

    - `.hea`, `.dat`, or a path without extension that has a `.hea` beside it: `read_wfdb_record`;
    - `.mat`: `read_wfdb_record` if a `.hea` of the same name sits beside it (PhysioNet/CinC),
      otherwise `read_cpsc2018_mat` (original CPSC 2018 struct).

    HDF5 files hold many ECGs: read them with `read_code_hdf5`.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    base = _record_base(path)
    has_header = base.with_name(base.name + ".hea").is_file()
    if suffix in (".hea", ".dat") or (suffix not in _SIGNAL_FILE_EXTENSIONS and has_header):
        return read_wfdb_record(path)
    if suffix == ".mat":
        return read_wfdb_record(path) if has_header else read_cpsc2018_mat(path)
    if suffix in (".h5", ".hdf5"):
        raise ValueError(f"{path} is an HDF5 file of many ECGs: use read_code_hdf5")
    raise ValueError(f"Unsupported ECG file {path}: expected .hea, .dat or .mat")
