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
from typing import Any, Iterator, Optional, Union

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

# Bytes per sample of the uncompressed WFDB storage formats (as `wfdb` counts them).
_WFDB_BYTES_PER_SAMPLE = {
    "8": 1, "16": 2, "24": 3, "32": 4, "61": 2, "80": 1, "160": 2, "212": 1.5, "310": 4 / 3, "311": 4 / 3,
}
_WFDB_COMPRESSED_FORMATS = ("508", "516", "524")

# Largest WFDB header read (single-segment headers are a few kB, even with long comments).
_MAX_HEADER_BYTES = 1 << 20

#: Plausible ECG sampling rates in Hz. Readers and the feature extractor refuse rates outside
#: this range with a `ValueError` (a header claiming 0.02 Hz, or `sampling_rate=1e-9`, would
#: otherwise ask for gigabytes when resampled to 500 Hz).
MIN_SAMPLING_RATE = 50.0
MAX_SAMPLING_RATE = 10_000.0

#: Above this median peak-to-peak amplitude (over the leads holding data, in the 10 s the model
#: reads) an ECG is very likely not in millivolts (microvolts passed as millivolts, or raw ADC
#: counts): the feature extractor warns, naming the record. Real 12-lead ECGs are around 1-2 mV.
IMPLAUSIBLE_PEAK_TO_PEAK_MV = 20.0

#: Smallest accepted WFDB gain, in ADC units per millivolt (one ADC step of at most 1 V). Smaller,
#: negative or non-finite gains are header errors; a gain of 0 means "uncalibrated" and follows
#: the WFDB rule (200 ADC units per physical unit), with a warning.
MIN_GAIN_ADU_PER_MV = 1e-3


def _check_sampling_rate(rate: float, source: str) -> float:
    """Return `rate` as a float, or raise a ValueError naming `source` when it is implausible."""
    rate = float(rate)
    if not math.isfinite(rate) or not MIN_SAMPLING_RATE <= rate <= MAX_SAMPLING_RATE:
        raise ValueError(
            f"{source}: sampling rate {rate:g} Hz is outside the accepted ECG range "
            f"{MIN_SAMPLING_RATE:g}-{MAX_SAMPLING_RATE:g} Hz"
        )
    return rate


def _signal_file_inside(folder: Path, name: str, header_path: Path) -> Path:
    """The path of signal file `name` named in `header_path`, which must lie inside `folder`.

    Symbolic links are resolved first, so neither `../x.mat`, an absolute path, nor a link that
    points elsewhere can make a reader open a file outside the header's folder.
    """
    if not name or "\x00" in name:
        raise ValueError(f"{header_path}: invalid signal file name {name!r}")
    root = folder.resolve()
    target = (folder / name).resolve()
    if target == root or not target.is_relative_to(root):
        raise ValueError(
            f"{header_path}: signal file {name!r} resolves to {target}, outside the header's folder {root}; "
            "signal files must lie in the record's own folder"
        )
    if not target.is_file():
        raise ValueError(f"Signal file {folder / name} (named in {header_path}) not found")
    return target


@dataclass
class _WFDBSignalSpec:
    file_name: str
    fmt: str
    gain: float
    baseline: int
    units: str
    description: str
    samples_per_frame: int = 1
    byte_offset: int = 0


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
        size = header_path.stat().st_size
        if size > _MAX_HEADER_BYTES:
            raise ValueError(
                f"Bad WFDB header {header_path}: {size} bytes, more than the {_MAX_HEADER_BYTES} a "
                "single-segment header can plausibly need"
            )
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
    if num_signals < 1 or num_samples is not None and num_samples < 0:
        raise ValueError(f"Bad WFDB header {header_path}: record line {content_lines[0]!r}")
    _check_sampling_rate(sampling_rate, f"WFDB header {header_path}")
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


# "gain(baseline)/units", each part optional, e.g. "1716(6)/mV", "1000/mV", "2000".
_GAIN_FIELD = re.compile(
    r"^(?P<gain>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?i:nan|inf(?:inity)?))?"
    r"(?:\((?P<baseline>[-+]?\d+)\))?"
    r"(?:/(?P<units>\S+))?$"
)
_FORMAT_FIELD = re.compile(r"^(?P<fmt>\d+)(?:x(?P<spf>\d+))?(?::\d+)?(?:\+(?P<offset>\d+))?$")


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
        if gain_match["baseline"] is not None:
            baseline = int(gain_match["baseline"])
        if gain_match["units"] is not None:
            units = gain_match["units"]
        if gain_match["gain"] is not None:
            gain = _check_gain(float(gain_match["gain"]), units, line, header_path)
    try:
        adc_zero = int(fields[4]) if len(fields) > 4 else 0
    except ValueError as error:
        raise ValueError(f"Bad WFDB header {header_path}: signal line {line!r}") from error
    if baseline is None:  # WFDB: the baseline defaults to the ADC zero
        baseline = adc_zero
    description = fields[8].strip() if len(fields) > 8 else ""
    samples_per_frame = max(int(format_match["spf"] or 1), 1)
    return _WFDBSignalSpec(
        fields[0], format_match["fmt"], gain, baseline, units, description,
        samples_per_frame=samples_per_frame, byte_offset=int(format_match["offset"] or 0),
    )


def _check_gain(gain: float, units: str, line: str, header_path: Path) -> float:
    """Validate a WFDB gain (ADC units per physical unit); 0 becomes WFDB's default 200."""
    if gain == 0:  # WFDB: 0 means "uncalibrated"; 200 adu per physical unit may be assumed
        warnings.warn(
            f"{header_path}: gain 0 (uncalibrated) in {line!r}; using the WFDB default of "
            f"{_WFDB_DEFAULT_GAIN:g} ADC units per {units}, so amplitudes may be wrong",
            UserWarning,
            stacklevel=4,
        )
        return _WFDB_DEFAULT_GAIN
    millivolts_per_unit = _MILLIVOLTS_PER_UNIT.get(units.lower(), 1.0)
    if not math.isfinite(gain) or gain < 0 or gain / millivolts_per_unit < MIN_GAIN_ADU_PER_MV:
        raise ValueError(
            f"Bad WFDB header {header_path}: gain {gain:g} adu/{units} in {line!r}; a gain must be finite, "
            f"positive and at least {MIN_GAIN_ADU_PER_MV:g} ADC units per mV (0 means uncalibrated)"
        )
    return gain


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
    with np.errstate(over="ignore", invalid="ignore"):
        millivolts = physical.astype(np.float32)
    overflow = np.isinf(millivolts) & ~np.isnan(physical)
    if overflow.any():
        lead = int(np.flatnonzero(overflow.any(axis=1))[0])
        raise ValueError(
            f"{source}: signal {specs[lead].description!r} overflows float32 once converted to millivolts "
            f"(gain {specs[lead].gain:g}, units {specs[lead].units!r}); the header or the data is wrong"
        )
    return millivolts


# MATLAB v4 numeric classes (the P digit of the type code) -> numpy dtype (without byte order).
_MATLAB_V4_DTYPES = {0: "f8", 1: "f4", 2: "i4", 3: "i2", 4: "u2", 5: "u1"}

#: Largest `val` matrix read from a MATLAB v5/v7 `.mat` file (which cannot be read in part), in
#: bytes. PhysioNet/CinC `.mat` files are MATLAB v4, which is read in part and has no such limit.
MAX_MATLAB_V5_BYTES = 256 * 2**20


def _matlab_v4_header(path: Path) -> Optional[tuple[np.dtype, int, int, int, str]]:
    """(dtype, rows, columns, data offset, name) of the first variable of a MATLAB v4 file, else None."""
    with open(path, "rb") as handle:
        head = handle.read(20)
        if len(head) < 20:
            return None
        for order, machine in (("<", 0), (">", 1)):
            type_code, rows, columns, imaginary, name_length = np.frombuffer(head, dtype=f"{order}i4").tolist()
            if not 0 <= type_code < 5000 or type_code // 1000 != machine or (type_code // 100) % 10 != 0:
                continue
            precision, matrix_type = (type_code // 10) % 10, type_code % 10
            if precision not in _MATLAB_V4_DTYPES or matrix_type != 0 or not 0 < name_length <= 64:
                return None
            if rows < 0 or columns < 0 or imaginary not in (0, 1):
                return None
            name = handle.read(name_length).split(b"\0")[0].decode("latin-1")
            if imaginary:
                raise ValueError(f"MATLAB file {path}: variable {name!r} is complex; ECG samples must be real")
            return np.dtype(order + _MATLAB_V4_DTYPES[precision]), rows, columns, 20 + name_length, name
    return None


def _read_matlab_val(
    path: Path, max_samples: Optional[int] = None, expected_rows: Optional[int] = None, header_path: Any = None
) -> tuple[np.ndarray, int]:
    """The (num_signals, num_samples) matrix `val` of a PhysioNet/CinC `.mat` file, and its full length.

    MATLAB v4 files (what PhysioNet's `wfdb2mat` writes) are read directly: only the first
    `max_samples` columns are read from disk, and a file shorter than its own declared matrix is
    an error. Other MATLAB versions are read whole with `scipy.io` (up to `MAX_MATLAB_V5_BYTES`).
    """
    import scipy.io  # lazy: only file reading needs it

    try:
        file_size = path.stat().st_size
        v4 = _matlab_v4_header(path)
    except OSError as error:
        raise ValueError(f"Cannot read MATLAB file {path}: {error}") from error
    if v4 is not None and v4[4] == "val":
        dtype, rows, columns, offset, _ = v4
        expected = offset + rows * columns * dtype.itemsize
        if file_size < expected:
            raise ValueError(
                f"MATLAB file {path} is truncated: 'val' is declared {rows} x {columns} {dtype.name} "
                f"({expected} bytes with the header), the file has {file_size} bytes"
            )
        if rows == 0 or columns == 0:
            raise ValueError(f"MATLAB file {path}: 'val' is empty ({rows} x {columns})")
        if expected_rows is not None and rows != expected_rows:  # checked before reading anything
            raise ValueError(
                f"{header_path}: header declares {expected_rows} signals, the signal files hold {rows} "
                f"(MATLAB file {path})"
            )
        kept = columns if max_samples is None else min(columns, max_samples)
        values = np.fromfile(path, dtype=dtype, count=rows * kept, offset=offset)
        # MATLAB stores matrices column by column: the `rows` values of each sample are adjacent.
        return values.reshape(kept, rows).T.astype(dtype.newbyteorder("="), copy=False), columns

    try:
        variables = {name: (shape, kind) for name, shape, kind in scipy.io.whosmat(str(path))}
    except Exception as error:  # scipy raises several types for damaged files
        raise ValueError(f"Cannot read MATLAB file {path}: {error}") from error
    if "val" not in variables:
        raise ValueError(f"MATLAB file {path} has no variable 'val' (variables: {sorted(variables)})")
    shape, kind = variables["val"]
    declared_bytes = math.prod(shape) * 8
    if declared_bytes > MAX_MATLAB_V5_BYTES:
        raise ValueError(
            f"MATLAB file {path}: 'val' is declared {' x '.join(map(str, shape))} ({kind}), more than the "
            f"{MAX_MATLAB_V5_BYTES // 2**20} MiB read whole from a MATLAB v5/v7 file; convert it to WFDB "
            "(.hea + .dat) or a MATLAB v4 .mat, which are read in part"
        )
    try:
        contents = scipy.io.loadmat(str(path), variable_names=["val"])
    except Exception as error:  # scipy raises several types for damaged files
        raise ValueError(f"Cannot read MATLAB file {path}: {error}") from error
    if "val" not in contents:
        raise ValueError(f"MATLAB file {path} has no variable 'val' (keys: {sorted(contents)})")
    values = np.asarray(contents["val"])
    if values.ndim != 2 or not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)):
        raise ValueError(
            f"MATLAB file {path}: 'val' must be a 2-D real numeric matrix, got shape {values.shape} "
            f"of type {values.dtype}"
        )
    columns = values.shape[1]
    if max_samples is not None:
        values = values[:, :max_samples]
    return values, columns


def _max_samples(max_duration: Optional[float], sampling_rate: float, source: Any) -> Optional[int]:
    """How many samples `max_duration` seconds are at `sampling_rate` (None: no limit)."""
    if max_duration is None:
        return None
    if isinstance(max_duration, bool) or not isinstance(max_duration, (int, float, np.integer, np.floating)):
        raise TypeError(f"max_duration must be a number of seconds, got {type(max_duration).__name__}")
    if not math.isfinite(max_duration) or max_duration <= 0:
        raise ValueError(f"{source}: max_duration must be a positive number of seconds, got {max_duration}")
    return max(1, math.ceil(float(max_duration) * sampling_rate))


def read_wfdb_record(path: Union[str, os.PathLike], max_duration: Optional[float] = None) -> ECGRecord:
    """Read a WFDB record: `.hea` + `.dat`, or a PhysioNet/CinC `.hea` + `.mat` (MATLAB `val`).

    Args:
        path: the record path with or without extension (`"ludb/1"`, `"ludb/1.hea"`,
            `"cinc/E07501.mat"`).
        max_duration: read at most the first `max_duration` seconds (None: the whole record).
            Only that part is read from disk for `.dat` files whose header gives the record
            length and for MATLAB v4 `.mat` files (PhysioNet's format), so a 24-hour Holter
            costs no more than its first seconds.

    Returns:
        An `ECGRecord` in millivolts: `(digital - baseline) / gain`, scaled from the header's
        units (`uV` headers are divided by 1000). `.dat` files are decoded with `wfdb`, so every
        WFDB storage format is supported; `.mat` files directly (v4) or with `scipy.io`.
        `metadata["total_samples"]` is the length of the whole recording.

    Raises:
        ValueError: the header is malformed (including a sampling rate outside
            `MIN_SAMPLING_RATE`-`MAX_SAMPLING_RATE` Hz, or a negative, non-finite or tiny gain),
            a signal file is missing, lies outside the header's folder (`../x.dat`, an absolute
            path, a symbolic link pointing elsewhere), is truncated, or its size or shape
            disagrees with the header. The message names the file.
    """
    base = _record_base(path)
    header_path = base.with_name(base.name + ".hea")
    if not header_path.is_file():
        raise ValueError(f"WFDB header not found: {header_path}")
    header = _parse_wfdb_header(header_path)
    max_samples = _max_samples(max_duration, header.sampling_rate, header_path)

    file_names = list(dict.fromkeys(spec.file_name for spec in header.signals))
    is_matlab = [name.lower().endswith(".mat") for name in file_names]
    if all(is_matlab):
        blocks, lengths = [], set()
        for name in file_names:
            signal_path = _signal_file_inside(header_path.parent, name, header_path)
            rows = sum(spec.file_name == name for spec in header.signals)
            block, total = _read_matlab_val(signal_path, max_samples, rows, header_path)
            blocks.append(block)
            lengths.add(total)
        if len(lengths) != 1:
            raise ValueError(f"Signal files of {header_path} have different lengths: {sorted(lengths)}")
        total_samples = lengths.pop()
        digital = np.concatenate(blocks, axis=0) if len(blocks) > 1 else blocks[0]
    elif any(is_matlab):
        raise ValueError(f"{header_path} mixes .mat and other signal files; not supported")
    else:
        digital, total_samples = _read_wfdb_dat(base, header_path, header, max_samples)

    if digital.shape[0] != header.num_signals:
        raise ValueError(
            f"{header_path}: header declares {header.num_signals} signals, the signal files hold "
            f"{digital.shape[0]}"
        )
    if header.num_samples is not None and total_samples != header.num_samples:
        raise ValueError(
            f"{header_path}: header declares {header.num_samples} samples, the signal files hold "
            f"{total_samples} (truncated or damaged file?)"
        )
    if digital.shape[1] == 0:
        raise ValueError(f"{header_path}: the record has no samples")

    metadata = _record_metadata(header, total_samples)
    return ECGRecord(
        signal=_to_millivolts(digital, header.signals, header_path),
        lead_names=[spec.description for spec in header.signals],
        sampling_rate=header.sampling_rate,
        metadata=metadata,
    )


def _check_dat_file_sizes(header_path: Path, header: _WFDBHeader, paths: dict[str, Path]) -> Optional[int]:
    """Check each `.dat` file's size against the header; return the record length the files imply.

    A file must hold exactly (byte offset) + (samples x signals in the file x bytes per sample),
    up to the padding of the bit-packed formats 212/310/311; with the length missing from the
    header, a whole number of frames. Compressed (FLAC) formats are not checked. The length is
    None when unknown (bit-packed or compressed formats without a length in the header).
    """
    implied: set[int] = set()
    for name, signal_path in paths.items():
        specs = [spec for spec in header.signals if spec.file_name == name]
        formats = {spec.fmt for spec in specs}
        if len(formats) != 1:
            raise ValueError(f"{header_path}: signals of {name} have different formats {sorted(formats)}")
        fmt = formats.pop()
        bytes_per_sample = _WFDB_BYTES_PER_SAMPLE.get(fmt)
        if bytes_per_sample is None:
            if fmt in _WFDB_COMPRESSED_FORMATS:
                continue
            raise ValueError(f"{header_path}: unknown WFDB storage format {fmt!r} for {name}")
        offset = specs[0].byte_offset
        samples_per_frame = sum(spec.samples_per_frame for spec in specs)
        data_bytes = signal_path.stat().st_size - offset
        packed = fmt in ("212", "310", "311")
        if header.num_samples is not None:
            expected = math.ceil(header.num_samples * samples_per_frame * bytes_per_sample)
            if data_bytes < expected or data_bytes > expected + (3 if packed else 0):
                raise ValueError(
                    f"{header_path}: {name} has {data_bytes + offset} bytes, but the header describes "
                    f"{len(specs)} signal(s) x {header.num_samples} samples in format {fmt} "
                    f"({bytes_per_sample:g} bytes per sample{f', after a {offset}-byte offset' if offset else ''}) "
                    f"= {expected + offset} bytes; the header disagrees with the data (wrong signal count, "
                    "length or format, or a truncated file)"
                )
            implied.add(header.num_samples)
        else:
            frame_bytes = samples_per_frame * bytes_per_sample
            frames = data_bytes / frame_bytes
            if data_bytes < 0 or (not packed and not float(frames).is_integer()):
                raise ValueError(
                    f"{header_path}: {name} has {data_bytes + offset} bytes, not a whole number of "
                    f"{len(specs)}-signal frames of format {fmt}; the header disagrees with the data"
                )
            if not packed:  # the padding of packed formats leaves the exact length to `wfdb`
                implied.add(int(frames))
    if len(implied) > 1:
        raise ValueError(f"{header_path}: the signal files hold different lengths {sorted(implied)}")
    return implied.pop() if implied else None


def _open_wfdb_dat(base: Path, header_path: Path, header: _WFDBHeader):
    """The checks every read of a WFDB `.dat` record passes, whole or window by window (one contract):
    each signal file lies inside the header's folder, `wfdb`'s own parse of the header names the same
    files and signal count as ours (it, not we, opens them), and the file sizes agree with the header.

    Returns:
        `(wfdb module, length the files imply or None)`.
    """
    try:
        import wfdb  # lazy: only file reading needs it
    except ImportError as error:
        raise ImportError("Reading WFDB .dat files needs `wfdb` (pip install wfdb)") from error

    file_names = list(dict.fromkeys(spec.file_name for spec in header.signals))
    paths = {name: _signal_file_inside(header_path.parent, name, header_path) for name in file_names}
    try:
        # `wfdb` parses the header on its own: check the files it will open, not only ours.
        wfdb_header = wfdb.rdheader(str(base))
    except Exception as error:  # wfdb raises ValueError, IndexError, its own syntax errors...
        raise ValueError(f"Cannot read WFDB record {base} ({', '.join(file_names)}): {error}") from error
    for name in dict.fromkeys(wfdb_header.file_name or []):
        if name not in paths:
            paths[name] = _signal_file_inside(header_path.parent, name, header_path)
    if list(dict.fromkeys(wfdb_header.file_name or [])) != file_names or wfdb_header.n_sig != header.num_signals:
        raise ValueError(f"Cannot read WFDB record {base}: its header is ambiguous ({header_path})")
    return wfdb, _check_dat_file_sizes(header_path, header, paths)


def _record_metadata(header: _WFDBHeader, total_samples: int) -> dict:
    """`ECGRecord.metadata` of a WFDB record (the same for a whole read and for its windows)."""
    metadata = {"name": header.record_name, "comments": list(header.comments)}
    metadata.update(_parse_header_comments(header.comments))
    metadata["units"] = [spec.units for spec in header.signals]
    metadata["total_samples"] = int(total_samples)
    return metadata


def _read_wfdb_dat(
    base: Path, header_path: Path, header: _WFDBHeader, max_samples: Optional[int]
) -> tuple[np.ndarray, int]:
    """Digital samples (num_signals, samples read) of a WFDB record, decoded by `wfdb`, and its length."""
    wfdb, total_samples = _open_wfdb_dat(base, header_path, header)
    file_names = list(dict.fromkeys(spec.file_name for spec in header.signals))
    sampto = None
    # Read only the start from disk. `wfdb` (4.3) cannot take `sampto` for a header without the
    # record length: such records are read whole.
    if max_samples is not None and header.num_samples is not None and max_samples < header.num_samples:
        sampto = max_samples
    try:
        record = wfdb.rdrecord(str(base), physical=False, sampto=sampto)
    except Exception as error:  # wfdb raises ValueError, IndexError, its own syntax errors...
        raise ValueError(f"Cannot read WFDB record {base} ({', '.join(file_names)}): {error}") from error
    if record.d_signal is None:
        raise ValueError(f"WFDB record {base} has no signal data")
    digital = np.asarray(record.d_signal).T
    if total_samples is None:
        total_samples = digital.shape[1]
    if max_samples is not None:
        digital = digital[:, :max_samples]
    return digital, int(total_samples)


def _matlab_scalar_text(value: Any) -> Optional[str]:
    """A MATLAB scalar or string field as text (None when empty)."""
    if value is None:
        return None
    array = np.asarray(value).ravel()
    return str(array[0]).strip() if array.size else None


def read_cpsc2018_mat(path: Union[str, os.PathLike], max_duration: Optional[float] = None) -> ECGRecord:
    """Read a recording in the original CPSC 2018 format.

    The `.mat` file (MATLAB v5) holds a struct `ECG` with fields `sex` (`'Male'`/`'Female'`),
    `age` and `data` (float64, 12 x N, millivolts); the leads are I, II, III, aVR, aVL, aVF,
    V1-V6 at 500 Hz. The labels are not in the file (they are in `REFERENCE.csv`).
    `max_duration` keeps at most the first `max_duration` seconds (the file is read whole: MATLAB
    v5 files cannot be read in part; files over `MAX_MATLAB_V5_BYTES` are refused).

    Raises:
        ValueError: the file is unreadable, too large, or has no `ECG` struct with a (12, N)
            real `data` field.
    """
    import scipy.io  # lazy: only file reading needs it

    path = Path(path)
    try:
        if path.stat().st_size > MAX_MATLAB_V5_BYTES:
            raise ValueError(f"the file is larger than {MAX_MATLAB_V5_BYTES // 2**20} MiB")
        contents = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False, variable_names=["ECG"])
    except Exception as error:
        raise ValueError(f"Cannot read CPSC 2018 file {path}: {error}") from error
    ecg = contents.get("ECG")
    if ecg is None or not hasattr(ecg, "data"):
        raise ValueError(f"{path} is not a CPSC 2018 file: no struct 'ECG' with a field 'data'")
    raw = np.asarray(ecg.data)
    if not (np.issubdtype(raw.dtype, np.integer) or np.issubdtype(raw.dtype, np.floating)):
        raise ValueError(f"{path}: ECG.data must hold real numbers, got values of type {raw.dtype}")
    data = raw.astype(np.float64, copy=False)
    if data.ndim != 2 or data.shape[0] != len(STANDARD_LEAD_NAMES) or data.shape[1] == 0:
        raise ValueError(f"{path}: ECG.data must be (12, N), got {data.shape}")
    total_samples = data.shape[1]
    max_samples = _max_samples(max_duration, 500.0, path)
    if max_samples is not None:
        data = data[:, :max_samples]
    metadata = {
        "name": path.stem,
        "comments": [],
        "age": _parse_age(_matlab_scalar_text(getattr(ecg, "age", None))),
        "sex": _matlab_scalar_text(getattr(ecg, "sex", None)),
        "total_samples": int(total_samples),
    }
    return ECGRecord(
        signal=data.astype(np.float32),
        lead_names=list(STANDARD_LEAD_NAMES),
        sampling_rate=500.0,
        metadata=metadata,
    )


CODE_SAMPLING_RATE = 400.0


def read_code_hdf5(
    path: Union[str, os.PathLike],
    start: int = 0,
    stop: Optional[int] = None,
    dataset: str = "tracings",
    max_duration: Optional[float] = None,
) -> tuple[np.ndarray, list[str], float]:
    """Read CODE-test tracings (`ecg_tracings.hdf5`: dataset `tracings`, (N, 4096, 12) at 400 Hz).

    Args:
        path: the HDF5 file.
        start, stop: the range of exams to read (rows `start:stop`), so that large files can be
            read in chunks.
        dataset: the name of the dataset.
        max_duration: read at most the first `max_duration` seconds of each exam (None: all).

    Returns:
        `(signals, lead_names, sampling_rate)`: float32 (n, 12, 4096), the values as distributed
        (treated as millivolts), the distributed lead order (I, II, III, aVR, aVL, aVF, V1-V6)
        and 400.0. The 4096 samples are the 10 s traces zero-padded at both ends.

    Raises:
        ValueError (naming the file): unreadable file, no such dataset, a shape other than
            (N, samples, 12), non-numeric (e.g. string) data, or a dataset stored in another file
            (external link, virtual or external storage) outside the HDF5 file's folder.
    """
    try:
        import h5py  # lazy: only file reading needs it
    except ImportError as error:
        raise ImportError("Reading CODE HDF5 files needs `h5py` (pip install h5py)") from error

    path = Path(path)
    max_samples = _max_samples(max_duration, CODE_SAMPLING_RATE, path)
    try:
        with h5py.File(path, "r") as handle:
            _check_hdf5_storage_inside(handle, dataset, path)
            tracings = handle[dataset]
            if not isinstance(tracings, h5py.Dataset):
                raise ValueError(f"{path}: {dataset!r} is a {type(tracings).__name__}, not a dataset")
            if tracings.ndim != 3 or tracings.shape[2] != len(STANDARD_LEAD_NAMES):
                raise ValueError(f"{path}: {dataset!r} must be (N, samples, 12), got {tracings.shape}")
            if tracings.dtype.kind not in "iuf":
                raise ValueError(
                    f"{path}: {dataset!r} must hold real numbers (integers or floats), got values of type "
                    f"{tracings.dtype}"
                )
            signals = np.asarray(tracings[start:stop, :max_samples], dtype=np.float32)
    except (OSError, KeyError, TypeError) as error:
        raise ValueError(f"Cannot read CODE HDF5 file {path}: {error}") from error
    return np.ascontiguousarray(signals.transpose(0, 2, 1)), list(STANDARD_LEAD_NAMES), CODE_SAMPLING_RATE


def _check_hdf5_storage_inside(handle: Any, dataset: str, path: Path) -> None:
    """Refuse an HDF5 dataset whose data lives in a file outside `path`'s folder."""
    import h5py

    folder = path.parent
    targets: list[str] = []
    parts = [part for part in dataset.split("/") if part]
    for depth in range(1, len(parts) + 1):  # links first: `in` and `[]` would follow them
        link = handle.get("/".join(parts[:depth]), getlink=True)
        if isinstance(link, h5py.ExternalLink):
            _check_external_target(folder, link.filename, dataset, path)
    if dataset not in handle:
        raise ValueError(f"{path} has no dataset {dataset!r} (keys: {list(handle.keys())})")
    item = handle[dataset]
    if isinstance(item, h5py.Dataset):
        if item.is_virtual:
            targets.extend(source.file_name for source in item.virtual_sources() if source.file_name != ".")
        plist = item.id.get_create_plist()
        targets.extend(plist.get_external(index)[0].decode() for index in range(plist.get_external_count()))
    for target in targets:
        _check_external_target(folder, target, dataset, path)


def _check_external_target(folder: Path, target: str, dataset: str, path: Path) -> None:
    try:
        _signal_file_inside(folder, target, path)
    except ValueError as error:
        detail = str(error).removeprefix(f"{path}: ")
        raise ValueError(f"{path}: dataset {dataset!r} is stored in another file: {detail}") from None


def read_ecg_file(path: Union[str, os.PathLike], max_duration: Optional[float] = None) -> ECGRecord:
    """Read one ECG, choosing the reader from the file name.

    - `.hea`, `.dat`, or a path without extension that has a `.hea` beside it: `read_wfdb_record`;
    - `.mat`: `read_wfdb_record` if a `.hea` of the same name sits beside it (PhysioNet/CinC),
      otherwise `read_cpsc2018_mat` (original CPSC 2018 struct).

    HDF5 files hold many ECGs: read them with `read_code_hdf5`. `max_duration` (seconds) reads
    only the start of long recordings (see the readers).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    base = _record_base(path)
    has_header = base.with_name(base.name + ".hea").is_file()
    if suffix in (".hea", ".dat") or (suffix not in _SIGNAL_FILE_EXTENSIONS and has_header):
        return read_wfdb_record(path, max_duration=max_duration)
    if suffix == ".mat":
        if has_header:
            return read_wfdb_record(path, max_duration=max_duration)
        return read_cpsc2018_mat(path, max_duration=max_duration)
    if suffix in (".h5", ".hdf5"):
        raise ValueError(f"{path} is an HDF5 file of many ECGs: use read_code_hdf5")
    raise ValueError(f"Unsupported ECG file {path}: expected .hea, .dat or .mat")


# --------------------------------------------------------------------------------------------
# Feature extractor
# --------------------------------------------------------------------------------------------

# Multipliers that bring each accepted `units` value to millivolts.
_INPUT_UNITS_TO_MILLIVOLTS = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3}

_NORMALIZATIONS = (None, "zscore", "minmax")

# Limb leads that Einthoven's and Goldberger's relations give from leads I and II.
_DERIVED_LIMB_LEADS = {
    "III": lambda lead_i, lead_ii: lead_ii - lead_i,
    "aVR": lambda lead_i, lead_ii: -(lead_i + lead_ii) / 2,
    "aVL": lambda lead_i, lead_ii: lead_i - lead_ii / 2,
    "aVF": lambda lead_i, lead_ii: lead_ii - lead_i / 2,
}

#: What the feature extractor accepts: arrays/tensors/nested lists, records, paths, or lists of them.
ECGInput = Union[np.ndarray, torch.Tensor, list, tuple, ECGRecord, str, os.PathLike]



# --------------------------------------------------------------------------------------------
# Long recordings: sliding windows
# --------------------------------------------------------------------------------------------


#: Seconds of signal `iter_ecg_windows` reads from a WFDB `.dat` file at a time (bounds its memory).
_WINDOW_READ_SECONDS = 300.0


def _window_starts(total_samples: int, window: int, stride: int) -> range:
    """Start samples of the full windows of a recording (one window when it is shorter than one)."""
    if total_samples <= window:
        return range(0, 1)
    return range(0, total_samples - window + 1, stride)


def iter_ecg_windows(
    source: Any,
    window_seconds: float = 10.0,
    stride_seconds: Optional[float] = None,
    sampling_rate: Optional[float] = None,
    lead_names: Optional[list[str]] = None,
) -> Iterator[tuple[float, ECGRecord]]:
    """Sliding windows of a long ECG: yields `(start time in seconds, ECGRecord of the window)`.

    Windows are `window_seconds` long and start every `stride_seconds` (default: the window
    length, i.e. no overlap); only full windows are yielded (a tail shorter than a window is left
    out), except that a recording shorter than one window is one window.

    WFDB records with `.dat` signal files (and the record length in the header) are streamed:
    every window is read from disk on its own (`wfdb.rdrecord(sampfrom=..., sampto=...)`), so
    memory stays that of one window whatever the recording's length (a 24-hour Holter included).
    Other sources are read whole first: MATLAB `.mat` and CPSC files, HDF5, an `ECGRecord`, or a
    `(leads, samples)` array in millivolts (with `sampling_rate`, and `lead_names` when not in the
    standard order).
    """
    if not (isinstance(window_seconds, (int, float)) and math.isfinite(window_seconds) and window_seconds > 0):
        raise ValueError(f"window_seconds must be a positive number, got {window_seconds!r}")
    stride_seconds = window_seconds if stride_seconds is None else stride_seconds
    if not (isinstance(stride_seconds, (int, float)) and math.isfinite(stride_seconds) and stride_seconds > 0):
        raise ValueError(f"stride_seconds must be a positive number, got {stride_seconds!r}")

    if isinstance(source, (str, os.PathLike)):
        streamed = _iter_wfdb_dat_windows(source, window_seconds, stride_seconds)
        if streamed is not None:
            yield from streamed
            return
        record = read_ecg_file(source)
    elif all(hasattr(source, name) for name in ("signal", "lead_names", "sampling_rate")):
        record = source  # an ECGRecord (duck-typed: a model folder's copy of this module has its own class)
    else:
        if sampling_rate is None:
            raise ValueError("An array needs `sampling_rate` to be cut into windows.")
        signal = np.asarray(source, dtype=np.float32)
        if signal.ndim != 2:
            raise ValueError(f"An ECG must be 2-D (leads, samples), got shape {signal.shape}.")
        names = list(lead_names) if lead_names is not None else list(STANDARD_LEAD_NAMES[: signal.shape[0]])
        record = ECGRecord(signal, names, float(sampling_rate), {"name": "array", "comments": []})
    rate = float(record.sampling_rate)
    window = max(1, int(round(window_seconds * rate)))
    stride = max(1, int(round(stride_seconds * rate)))
    for start in _window_starts(record.num_samples, window, stride):
        metadata = dict(record.metadata, window_start_s=start / rate)
        signal = record.signal[:, start : start + window]
        yield start / rate, ECGRecord(signal, list(record.lead_names), rate, metadata)


def _iter_wfdb_dat_windows(path, window_seconds: float, stride_seconds: float):
    """The windows of a WFDB `.dat` record read one at a time from disk, or None when the record
    cannot be streamed (not WFDB, `.mat` signal files, no record length in the header)."""
    base = _record_base(path)
    header_path = base.with_name(base.name + ".hea")
    if not header_path.is_file():
        return None
    header = _parse_wfdb_header(header_path)
    file_names = list(dict.fromkeys(spec.file_name for spec in header.signals))
    if header.num_samples is None or any(name.lower().endswith(".mat") for name in file_names):
        return None
    # The same checks as a whole read (`read_wfdb_record`): files inside the folder, wfdb's header
    # parse agreeing with ours, file sizes agreeing with the header.
    wfdb, total_samples = _open_wfdb_dat(base, header_path, header)
    if total_samples is not None and total_samples != header.num_samples:
        raise ValueError(
            f"{header_path}: header declares {header.num_samples} samples, the files hold {total_samples}"
        )

    rate = float(header.sampling_rate)
    window = max(1, int(round(window_seconds * rate)))
    stride = max(1, int(round(stride_seconds * rate)))
    metadata = _record_metadata(header, header.num_samples)
    names = [spec.description for spec in header.signals]

    starts = _window_starts(header.num_samples, window, stride)
    # Windows are read from disk a block at a time: the span of `per_read` windows (about
    # `_WINDOW_READ_SECONDS` of signal), so memory is bounded by that block, not by the record.
    per_read = max(1, int(_WINDOW_READ_SECONDS * rate) // stride)

    def windows():
        for first in range(0, len(starts), per_read):
            group = starts[first : first + per_read]
            low, high = group[0], min(group[-1] + window, header.num_samples)
            try:
                part = wfdb.rdrecord(str(base), physical=False, sampfrom=low, sampto=high)
            except Exception as error:  # wfdb raises ValueError, IndexError, its own syntax errors...
                raise ValueError(f"Cannot read samples {low}-{high} of WFDB record {base}: {error}") from error
            block = _to_millivolts(np.asarray(part.d_signal).T, header.signals, header_path)
            for start in group:
                signal = block[:, start - low : start - low + window]
                yield start / rate, ECGRecord(signal, list(names), rate, dict(metadata, window_start_s=start / rate))

    return windows()


class DBetaFeatureExtractor(SequenceFeatureExtractor):
    r"""Prepares 12-lead ECGs for D-BETA: (B, 12, 5000) float32 millivolts at 500 Hz.

    D-BETA was pretrained on MIMIC-IV-ECG: 10 s at 500 Hz, in millivolts, without amplitude
    normalisation, in the MIMIC lead order (I, II, III, aVR, **aVF, aVL**, V1-V6). For each ECG
    this extractor:

    1. puts the leads in `self.lead_names` order. Input leads are taken to be in the standard
       order (I, II, III, aVR, aVL, aVF, V1-V6) unless `lead_names` says otherwise (matched
       case-insensitively). Given more than 12 named leads (e.g. PTB-DB's 15), the 12 standard
       ones are kept. Given exactly the 8 independent leads (I, II, V1-V6), III, aVR, aVL and aVF
       are derived from I and II. Given another subset (the paper's 6/3/2/1-lead settings), the
       missing leads are filled with zeros;
    2. converts to millivolts (`units="uV"` divides by 1000);
    3. resamples to `sampling_rate` with a polyphase filter (`scipy.signal.resample_poly`);
    4. keeps the first `num_samples` samples, or zero-pads at the end (with a warning) when the
       recording is shorter. Recordings shorter than `min_duration` seconds are rejected;
    5. optionally normalises amplitudes (`normalize`; off by default, as in pretraining).

    Args:
        feature_size (`int`, defaults to 12): number of leads the model reads.
        sampling_rate (`int`, defaults to 500): the model's sampling rate in Hz.
        num_samples (`int`, defaults to 5000): the model's input length (10 s at 500 Hz).
        lead_names (`list[str]`, *optional*): the lead order the model expects; defaults to
            `MIMIC_LEAD_NAMES`.
        padding_value (`float`, defaults to 0.0): value used to pad short recordings.
        normalize (`str`, *optional*): `None` (default, millivolts as in pretraining),
            `"zscore"` (per lead) or `"minmax"` (per recording, to [0, 1], as MERL's probes).
        min_duration (`float`, defaults to 1.0): shortest accepted recording, in seconds.
    """

    model_input_names = ["input_values"]

    def __init__(
        self,
        feature_size: int = 12,
        sampling_rate: int = 500,
        num_samples: int = 5000,
        lead_names: Optional[list[str]] = None,
        padding_value: float = 0.0,
        normalize: Optional[str] = None,
        min_duration: float = 1.0,
        **kwargs,
    ):
        kwargs.setdefault("return_attention_mask", False)
        super().__init__(feature_size=feature_size, sampling_rate=sampling_rate, padding_value=padding_value, **kwargs)
        lead_names = list(MIMIC_LEAD_NAMES if lead_names is None else lead_names)
        canonical = [canonical_lead_name(name) for name in lead_names]
        if sorted(canonical) != sorted(STANDARD_LEAD_NAMES) or len(canonical) != feature_size:
            raise ValueError(
                f"lead_names must name each of the 12 standard leads once (feature_size={feature_size}), "
                f"got {lead_names}"
            )
        if normalize not in _NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {_NORMALIZATIONS}, got {normalize!r}")
        if num_samples < 1 or sampling_rate <= 0:
            raise ValueError(f"num_samples and sampling_rate must be positive, got {num_samples}, {sampling_rate}")
        self.num_samples = int(num_samples)
        self.lead_names = canonical
        self.normalize = normalize
        self.min_duration = float(min_duration)

    def __call__(
        self,
        ecg: ECGInput,
        sampling_rate: Optional[float] = None,
        lead_names: Optional[list[str]] = None,
        units: str = "mV",
        return_tensors: Optional[str] = None,
        normalize: Optional[str] = "default",
        **kwargs,
    ) -> BatchFeature:
        """Turn one ECG or a batch of ECGs into the model input.

        Args:
            ecg: one ECG `(leads, samples)` or a batch `(batch, leads, samples)`, as a numpy
                array, a torch tensor or nested lists of numbers; or a list of such 2-D ECGs
                (they may differ in length); or an `ECGRecord`, a file path (read with
                `read_ecg_file`), or a list of those. A list of 1-D arrays is one ECG, one
                trace per lead. Records and files bring their own lead
                names and sampling rate.
            sampling_rate: the input's rate in Hz, between `MIN_SAMPLING_RATE` (50) and
                `MAX_SAMPLING_RATE` (10000). Required unless the input is a record/file, or
                already exactly `num_samples` long (then the model's rate is assumed).
            lead_names: names of the input leads, in input order (case-insensitive), as a list or
                tuple; a single string is an error (write `["II"]` for one lead). Default: the
                12 standard leads, I, II, III, aVR, aVL, aVF, V1-V6.
            units: `"mV"` (default), `"uV"` or `"V"`.
            return_tensors: `"pt"` or `"np"`; `None` gives numpy arrays.
            normalize: `None`, `"zscore"` or `"minmax"` for this call; the default `"default"`
                uses the extractor's own `normalize` setting.

        Only the start of a long recording is used, and only that part is converted, checked,
        resampled (and, for files, read from disk): the first `num_samples / sampling_rate`
        seconds plus the resampling filter's margin. Memory is bounded by the output, not by
        the input's length: a 24-hour Holter costs what a 10 s ECG costs.

        Returns:
            `BatchFeature` with `input_values`: float32 `(batch, 12, num_samples)` in the order
            `self.lead_names`, always batched.

        Raises:
            ValueError: empty input, NaN/inf values (or values that overflow float32 once in
                millivolts), an unknown or repeated lead name, a lead count that does not match
                `lead_names` (or is not 12 without names), a recording shorter than
                `min_duration`, a sampling rate outside 50-10000 Hz, or a missing sampling rate
                that cannot be assumed. In a batch the message names the bad ECG's index (and
                its file or record name).
            TypeError: non-numeric input (strings, booleans, complex numbers, objects).

        Warns:
            UserWarning: an ECG whose median peak-to-peak amplitude over its leads exceeds
                `IMPLAUSIBLE_PEAK_TO_PEAK_MV` (20 mV) after conversion to millivolts: most likely
                microvolts passed as millivolts or raw ADC counts. The values are not rescaled.
        """
        if kwargs:
            logger.warning_once(f"DBetaFeatureExtractor ignores unknown arguments: {sorted(kwargs)}")
        normalize = self.normalize if normalize == "default" else normalize
        if normalize not in _NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {_NORMALIZATIONS}, got {normalize!r}")
        scale = _INPUT_UNITS_TO_MILLIVOLTS.get(str(units).strip().lower())
        if scale is None:
            raise ValueError(f"units must be one of 'mV', 'uV', 'V', got {units!r}")
        lead_names = _lead_names_argument(lead_names)

        processed = []
        for group in self._split_inputs(ecg, sampling_rate, lead_names):
            try:
                processed.append(self._process_batch(group, scale, normalize, units))
            except (ValueError, TypeError) as error:
                if group.label is None or str(error).startswith(group.label):
                    raise
                raise type(error)(f"{group.label}: {error}") from error
        input_values = np.concatenate(processed, axis=0)
        return BatchFeature({"input_values": input_values}, tensor_type=return_tensors)

    # -- input parsing --------------------------------------------------------------------------

    def _split_inputs(
        self, ecg: ECGInput, sampling_rate: Optional[float], lead_names: Optional[list[str]]
    ) -> list[_ECGGroup]:
        """Split the input into groups of (batch, leads, samples) arrays that share rate and leads."""
        needed = self._needed_or_none(sampling_rate)
        if isinstance(ecg, (ECGRecord, str, os.PathLike)):
            return [self._record_input(ecg, sampling_rate, lead_names, index=None)]
        if isinstance(ecg, (list, tuple)):
            if len(ecg) == 0:
                raise ValueError("Empty ECG input: got an empty list")
            if all(isinstance(item, (ECGRecord, str, os.PathLike)) for item in ecg):
                return [self._record_input(item, sampling_rate, lead_names, index=i) for i, item in enumerate(ecg)]
            if any(isinstance(item, (ECGRecord, str, os.PathLike)) for item in ecg):
                raise TypeError("Do not mix records/paths with arrays in one ECG batch")
            if all(isinstance(item, (np.ndarray, torch.Tensor)) and item.ndim == 1 for item in ecg):
                # One ECG given as a list of 1-D lead traces.
                lengths = sorted({int(item.shape[0]) for item in ecg})
                if len(lengths) > 1:
                    raise ValueError(f"The lead traces of the ECG have different lengths {lengths}")
                traces = [_as_numeric_array(item, needed) for item in ecg]
                return [_ECGGroup(np.stack(traces)[None], sampling_rate, lead_names, lengths[0])]
            if all(isinstance(item, (np.ndarray, torch.Tensor)) for item in ecg) or not _is_rectangular(ecg):
                # A list of separate ECGs, possibly of different lengths.
                groups = []
                for index, item in enumerate(ecg):
                    label = f"ECG {index} of the batch"
                    try:
                        total = int(np.shape(item)[-1]) if np.ndim(item) else 0
                        array = _as_numeric_array(item, needed)
                    except (ValueError, TypeError) as error:
                        raise type(error)(f"{label}: {error}") from error
                    if array.ndim != 2:
                        raise ValueError(
                            f"{label}: each ECG of a list must be 2-D (leads, samples), got shape {array.shape}"
                        )
                    groups.append(_ECGGroup(array[None], sampling_rate, lead_names, total, label))
                return groups
        total = int(np.shape(ecg)[-1]) if isinstance(ecg, (np.ndarray, torch.Tensor)) and ecg.ndim else None
        array = _as_numeric_array(ecg, needed if total is not None else None)
        if array.ndim == 2:
            array = array[None]
        elif array.ndim != 3:
            raise ValueError(
                f"Expected an ECG of shape (leads, samples) or a batch (batch, leads, samples), got shape "
                f"{array.shape}. A single lead must be passed as (1, samples) with `lead_names`."
            )
        total = array.shape[-1] if total is None else total
        item_labels = [f"ECG {index} of the batch" for index in range(array.shape[0])] if array.shape[0] > 1 else None
        return [_ECGGroup(array, sampling_rate, lead_names, total, None, item_labels)]

    def _record_input(
        self,
        record: Union[ECGRecord, str, os.PathLike],
        sampling_rate: Optional[float],
        lead_names: Optional[list[str]],
        index: Optional[int],
    ) -> _ECGGroup:
        position = None if index is None else f"ECG {index} of the batch"
        origin = None
        if not isinstance(record, ECGRecord):
            origin = str(record)
            # Read only what the model's window needs (plus margin); the check of the rate
            # against the needed window is repeated, exactly, when the record is processed.
            max_duration = self.num_samples / float(self.sampling_rate) + _READ_MARGIN_SECONDS
            try:
                record = read_ecg_file(record, max_duration=max_duration)
            except (ValueError, TypeError) as error:
                if position is None:
                    raise
                raise type(error)(f"{position}: {error}") from error
        origin = origin or f"record {record.metadata.get('name') or 'without a name'}"
        label = origin if position is None else f"{position} ({origin})"
        # The file's own description wins; explicit arguments may only confirm it.
        if sampling_rate is not None and not math.isclose(float(sampling_rate), record.sampling_rate):
            raise ValueError(
                f"{label}: sampling_rate={sampling_rate} contradicts the record's rate {record.sampling_rate}"
            )
        if lead_names is not None and [canonical_lead_name(n) for n in lead_names] != [
            canonical_lead_name(n) for n in record.lead_names
        ]:
            raise ValueError(f"{label}: lead_names={lead_names} contradicts the record's leads {record.lead_names}")
        signal = _as_numeric_array(record.signal)
        if signal.ndim != 2:
            raise ValueError(f"{label}: the record's signal must be 2-D (leads, samples), got shape {signal.shape}")
        total = int(record.metadata.get("total_samples") or signal.shape[-1])
        return _ECGGroup(signal[None], record.sampling_rate, list(record.lead_names), total, label)

    # -- processing ------------------------------------------------------------------------------

    def _process_batch(self, group: _ECGGroup, scale: float, normalize: Optional[str], units: str) -> np.ndarray:
        """(batch, leads, samples) input -> (batch, 12, num_samples) float32 model input."""
        signals = group.signals
        if signals.size == 0:
            raise ValueError(f"Empty ECG input: shape {signals.shape}")
        rate = self._resolve_sampling_rate(group.sampling_rate, group.total_length)
        duration = group.total_length / rate
        if duration < self.min_duration:
            raise ValueError(
                f"The ECG is {duration:.3g} s long ({group.total_length} samples at {rate:g} Hz); at least "
                f"{self.min_duration:g} s is required"
            )
        # Cut to what the model's window needs BEFORE any copy or resampling: memory and time
        # are bounded by the output, whatever the input's length.
        signals = signals[..., : self._input_samples_needed(rate)]

        leads, present = self._arrange_leads(signals, group.lead_names)
        bad = np.flatnonzero(~np.isfinite(leads).all(axis=(1, 2)))
        if bad.size:
            raise ValueError(
                f"{group.describe(bad)} contains NaN or infinite values (missing samples?); "
                "clean or impute them first"
            )
        leads *= scale
        millivolts = self._resample(leads, rate)[..., : self.num_samples]
        with np.errstate(over="ignore", invalid="ignore"):
            as_float32 = millivolts.astype(np.float32)
        # Finite input can still overflow once scaled, resampled and cast to float32 (1e300).
        bad = np.flatnonzero(~np.isfinite(as_float32).all(axis=(1, 2)))
        if bad.size:
            largest = float(np.abs(signals[bad[0]]).max())
            raise ValueError(
                f"{group.describe(bad)} overflows after conversion to float32 millivolts "
                f"(largest input value {largest:.3g} {units}); values must be physical ECG amplitudes"
            )
        self._warn_implausible_amplitudes(as_float32, present, group, units)

        valid_length = as_float32.shape[-1]
        leads = as_float32 if normalize is None else _normalize(millivolts, present, normalize)
        if valid_length < self.num_samples:
            warnings.warn(
                f"{group.label or 'ECG'} shorter than the model input ({valid_length / self.sampling_rate:.2f} s < "
                f"{self.num_samples / self.sampling_rate:.2f} s): zero-padded at the end",
                UserWarning,
                stacklevel=4,
            )
            padding = np.full(
                leads.shape[:-1] + (self.num_samples - valid_length,), self.padding_value, dtype=leads.dtype
            )
            leads = np.concatenate([leads, padding], axis=-1)
        return np.ascontiguousarray(leads, dtype=np.float32)

    def _warn_implausible_amplitudes(
        self, millivolts: np.ndarray, present: np.ndarray, group: _ECGGroup, units: str
    ) -> None:
        """Warn (never rescale) when an ECG's amplitudes are far beyond those of real ECGs."""
        peak_to_peak = np.median(np.ptp(millivolts[:, present], axis=-1), axis=-1)
        bad = np.flatnonzero(peak_to_peak > IMPLAUSIBLE_PEAK_TO_PEAK_MV)
        if bad.size:
            warnings.warn(
                f"{group.describe(bad)}: implausible amplitude, a median peak-to-peak of "
                f"{float(peak_to_peak[bad[0]]):.4g} mV over the leads (real ECGs: about 1-2 mV; warning above "
                f"{IMPLAUSIBLE_PEAK_TO_PEAK_MV:g} mV). The values were read as {units}: likely microvolts "
                "passed as millivolts (pass units='uV') or raw ADC counts (divide by the gain). Not rescaled.",
                UserWarning,
                stacklevel=5,
            )

    def _arrange_leads(self, signals: np.ndarray, lead_names: Optional[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Reorder/select/derive/zero-fill leads into `self.lead_names` order.

        Returns the (batch, 12, samples) float64 array and a boolean (12,) mask of the leads that
        hold data (False for zero-filled ones).
        """
        num_leads = signals.shape[1]
        if lead_names is None:
            if num_leads != len(STANDARD_LEAD_NAMES):
                raise ValueError(
                    f"Got {num_leads} leads without `lead_names`; unnamed input must have the 12 standard "
                    f"leads in the order {list(STANDARD_LEAD_NAMES)}. Pass `lead_names` for other lead sets."
                )
            lead_names = list(STANDARD_LEAD_NAMES)
        if isinstance(lead_names, str) or len(lead_names) != num_leads:
            raise ValueError(f"lead_names has {len(lead_names)} entries but the ECG has {num_leads} leads")

        canonical = [canonical_lead_name(name) for name in lead_names]
        standard_positions = {name: index for index, name in enumerate(canonical) if name in STANDARD_LEAD_NAMES}
        duplicates = sorted({name for name in canonical if canonical.count(name) > 1})
        if duplicates:
            raise ValueError(f"Repeated lead names {duplicates} in {list(lead_names)}")
        unknown = [name for name in lead_names if canonical_lead_name(name) not in STANDARD_LEAD_NAMES]
        # With all 12 standard leads present, extra leads (e.g. Frank leads vx/vy/vz) are simply
        # dropped; with a reduced set an unknown name is more likely a typo that would silently
        # zero-fill a lead, so it is an error.
        if unknown and len(standard_positions) < len(STANDARD_LEAD_NAMES):
            raise ValueError(
                f"Unknown lead names {unknown}; expected names among {list(STANDARD_LEAD_NAMES)} (case-insensitive)"
            )
        if not standard_positions:
            raise ValueError(f"None of the leads {list(lead_names)} is a standard ECG lead")

        derive_limb_leads = len(standard_positions) < len(STANDARD_LEAD_NAMES) and all(
            name in standard_positions for name in INDEPENDENT_LEAD_NAMES
        )
        if len(standard_positions) < len(STANDARD_LEAD_NAMES) and not derive_limb_leads:
            missing = [name for name in self.lead_names if name not in standard_positions]
            logger.warning_once(f"Reduced lead set: missing leads {missing} are zero-filled (the paper's setting)")

        batch_size, _, length = signals.shape
        arranged = np.zeros((batch_size, len(self.lead_names), length), dtype=np.float64)
        present = np.zeros(len(self.lead_names), dtype=bool)
        for target_index, name in enumerate(self.lead_names):
            if name in standard_positions:
                arranged[:, target_index] = signals[:, standard_positions[name]]
                present[target_index] = True
            elif derive_limb_leads:
                lead_i = signals[:, standard_positions["I"]].astype(np.float64)
                lead_ii = signals[:, standard_positions["II"]].astype(np.float64)
                arranged[:, target_index] = _DERIVED_LIMB_LEADS[name](lead_i, lead_ii)
                present[target_index] = True
        return arranged, present

    def _resolve_sampling_rate(self, sampling_rate: Optional[float], length: int) -> float:
        if sampling_rate is None:
            # Only an input already of the model's exact length can safely be assumed to be at the
            # model's rate; anything else would be silently stretched or squeezed.
            if length == self.num_samples:
                return float(self.sampling_rate)
            raise ValueError(
                f"sampling_rate is required: the ECG has {length} samples, not the model's "
                f"{self.num_samples} at {self.sampling_rate} Hz, so its rate cannot be assumed"
            )
        if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, (int, float, np.integer, np.floating)):
            raise TypeError(f"sampling_rate must be a number, got {type(sampling_rate).__name__}")
        rate = float(sampling_rate)
        if not math.isfinite(rate) or not MIN_SAMPLING_RATE <= rate <= MAX_SAMPLING_RATE:
            raise ValueError(
                f"sampling_rate={sampling_rate!r} is not a plausible ECG sampling rate: it must be a positive "
                f"number of Hz from {MIN_SAMPLING_RATE:g} to {MAX_SAMPLING_RATE:g}"
            )
        return rate

    def _needed_or_none(self, sampling_rate: Any) -> Optional[int]:
        """`_input_samples_needed` for a valid rate argument, else None (the error comes later)."""
        try:
            return self._input_samples_needed(self._resolve_sampling_rate(sampling_rate, self.num_samples))
        except (TypeError, ValueError):
            return None

    def _resampling_ratio(self, rate: float) -> Fraction:
        return (Fraction(self.sampling_rate) / Fraction(rate)).limit_denominator(10_000)

    def _input_samples_needed(self, rate: float) -> int:
        """Input samples that determine the first `num_samples` output samples at `rate` Hz.

        `scipy.signal.resample_poly(x, up, down)` computes output sample n from the input
        samples up to (n * down + half_len) / up, where half_len = 10 * max(up, down) is the
        half-length of its default filter; a couple more are kept for rounding. Cutting there
        gives the same first `num_samples` outputs as resampling the whole recording.
        """
        ratio = self._resampling_ratio(rate)
        if ratio == 1:
            return self.num_samples
        up, down = ratio.numerator, ratio.denominator
        half_len = 10 * max(up, down)
        return math.ceil((self.num_samples * down + half_len) / up) + 2

    def _resample(self, leads: np.ndarray, rate: float) -> np.ndarray:
        """Polyphase resampling from `rate` to `self.sampling_rate` along the last axis."""
        ratio = self._resampling_ratio(rate)
        if ratio == 1:
            return leads
        if abs(float(ratio) - self.sampling_rate / rate) > 1e-6 * (self.sampling_rate / rate):
            logger.warning_once(
                f"Resampling {rate} Hz -> {self.sampling_rate} Hz approximated by the ratio {ratio}"
            )
        return scipy.signal.resample_poly(leads, ratio.numerator, ratio.denominator, axis=-1)


# Extra seconds read from files beyond the model's window: the resampling filter's margin (at
# most 10 input samples at the lowest accepted rate, 0.2 s) with room to spare.
_READ_MARGIN_SECONDS = 0.5


@dataclass
class _ECGGroup:
    """Inputs that share rate and leads: (batch, leads, samples), possibly already cut."""

    signals: np.ndarray
    sampling_rate: Optional[float]
    lead_names: Optional[list[str]]
    total_length: int  # samples of the whole recording, before any cut
    label: Optional[str] = None  # names the input in messages ("ECG 2 of the batch (path)")
    item_labels: Optional[list[str]] = None  # one per batch row when the group is a 3-D batch

    def describe(self, rows: np.ndarray) -> str:
        """Name the batch rows `rows` in a message."""
        if self.item_labels is None:
            return self.label or "The ECG"
        named = [self.item_labels[row] for row in rows[:5]]
        more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
        return ", ".join(named) + more


def _lead_names_argument(lead_names: Any) -> Optional[list[str]]:
    """Validate the `lead_names` argument: None or a sequence of strings."""
    if lead_names is None:
        return None
    if isinstance(lead_names, str):
        raise ValueError(
            f"lead_names must be a list of lead names, one per input lead, got the string {lead_names!r}; "
            f"for a single lead write [{lead_names!r}]"
        )
    if isinstance(lead_names, np.ndarray):
        lead_names = lead_names.tolist()
    if not isinstance(lead_names, (list, tuple)):
        raise TypeError(f"lead_names must be a list of strings, got {type(lead_names).__name__}")
    for name in lead_names:
        if not isinstance(name, str):
            raise TypeError(f"lead_names must be strings, got {type(name).__name__} {name!r} in {list(lead_names)}")
    return list(lead_names)


def _normalize(leads: np.ndarray, present: np.ndarray, method: str) -> np.ndarray:
    """Amplitude normalisation of the leads that hold data; zero-filled leads stay zero."""
    leads = leads.copy()
    data = leads[:, present]
    if method == "zscore":  # per lead
        mean = data.mean(axis=-1, keepdims=True)
        std = data.std(axis=-1, keepdims=True)
        data = (data - mean) / np.maximum(std, 1e-8)
    elif method == "minmax":  # per recording, to [0, 1]
        low = data.min(axis=(1, 2), keepdims=True)
        high = data.max(axis=(1, 2), keepdims=True)
        data = (data - low) / np.maximum(high - low, 1e-8)
    leads[:, present] = data
    return leads


def _is_rectangular(nested: Union[list, tuple]) -> bool:
    """Whether nested lists form a regular (non-ragged) array."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            array = np.asarray(nested)
    except ValueError:
        return False
    return array.dtype != object


def _as_numeric_array(values: Any, max_samples: Optional[int] = None) -> np.ndarray:
    """Convert an ECG to a real-valued numpy array, rejecting non-numeric dtypes with a clear error.

    `max_samples` cuts the last axis of an array or tensor before any conversion copies it.
    """
    if max_samples is not None and isinstance(values, (np.ndarray, torch.Tensor)) and values.ndim:
        values = values[..., :max_samples]
    if isinstance(values, torch.Tensor):
        if values.is_complex() or values.dtype == torch.bool:
            raise TypeError(f"ECG values must be real numbers, got a tensor of dtype {values.dtype}")
        values = values.detach().to("cpu")
        if values.dtype in (torch.bfloat16, torch.float16):
            values = values.float()
        values = values.numpy()
    try:
        array = np.asarray(values)
    except ValueError as error:  # ragged nested lists
        raise ValueError(f"Could not read the ECG as an array: {error}") from error
    if array.dtype == bool or np.issubdtype(array.dtype, np.complexfloating):
        raise TypeError(f"ECG values must be real numbers, got dtype {array.dtype}")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise TypeError(
            f"ECG values must be real numbers, got dtype {array.dtype} "
            f"(strings, objects or ragged nested lists are not accepted)"
        )
    return array


# --------------------------------------------------------------------------------------------
# Processor
# --------------------------------------------------------------------------------------------


class DBetaProcessor(ProcessorMixin):
    r"""D-BETA processor: a `DBetaFeatureExtractor` for ECGs and a tokenizer for report text.

    Text is passed to the tokenizer as given (no lower-casing), padded to the longest text of the
    batch and truncated to `max_text_length` tokens (254 = the original's 256 - 2).

    Args:
        feature_extractor (`DBetaFeatureExtractor`): the ECG feature extractor.
        tokenizer (`PreTrainedTokenizerBase`): the text tokenizer (Flan-T5's for the released
            weights).
        max_text_length (`int`, defaults to 254): default truncation length for text.
    """

    def __init__(self, feature_extractor, tokenizer, max_text_length: int = 254):
        self.max_text_length = int(max_text_length)
        super().__init__(feature_extractor, tokenizer)

    def __call__(
        self,
        ecg: Optional[ECGInput] = None,
        text: Optional[Union[str, list[str]]] = None,
        sampling_rate: Optional[float] = None,
        lead_names: Optional[list[str]] = None,
        units: str = "mV",
        return_tensors: Optional[str] = None,
        padding: Union[bool, str] = "longest",
        truncation: bool = True,
        max_length: Optional[int] = None,
        **kwargs,
    ) -> BatchFeature:
        """Prepare ECGs and/or texts.

        Args:
            ecg: anything `DBetaFeatureExtractor.__call__` accepts.
            text: a string or a list of strings.
            sampling_rate, lead_names, units: describe the ECG input (see the feature extractor).
            return_tensors: `"pt"`, `"np"` or `None` (numpy arrays for the ECG, lists for text).
            padding, truncation, max_length: tokenizer options; `max_length` defaults to
                `max_text_length`.
            kwargs: further feature extractor options (e.g. `normalize`).

        Returns:
            `BatchFeature` with `input_values` (when `ecg` is given) and `input_ids`,
            `attention_mask` (when `text` is given).
        """
        if ecg is None and text is None:
            raise ValueError("Provide `ecg`, `text` or both")
        data: dict[str, Any] = {}
        if ecg is not None:
            data.update(
                self.feature_extractor(
                    ecg, sampling_rate=sampling_rate, lead_names=lead_names, units=units, **kwargs
                )
            )
        if text is not None:
            if not isinstance(text, str) and not (
                isinstance(text, (list, tuple)) and all(isinstance(item, str) for item in text)
            ):
                raise TypeError("`text` must be a string or a list of strings")
            encoding = self.tokenizer(
                text,
                padding=padding,
                truncation=truncation,
                max_length=self.max_text_length if max_length is None else max_length,
            )
            data.update(encoding)
        return BatchFeature(data, tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        return list(dict.fromkeys(self.feature_extractor.model_input_names + self.tokenizer.model_input_names))


# Saving writes `auto_map` entries and copies this file, so that `AutoProcessor` and
# `AutoFeatureExtractor` load these classes from a model folder with `trust_remote_code=True`.
DBetaFeatureExtractor.register_for_auto_class("AutoFeatureExtractor")
DBetaProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "CODE_SAMPLING_RATE",
    "DBetaFeatureExtractor",
    "DBetaProcessor",
    "ECGRecord",
    "INDEPENDENT_LEAD_NAMES",
    "MIMIC_LEAD_NAMES",
    "STANDARD_LEAD_NAMES",
    "canonical_lead_name",
    "read_code_hdf5",
    "read_cpsc2018_mat",
    "read_ecg_file",
    "read_wfdb_record",
]
