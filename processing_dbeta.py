# Copyright 2025 The dbeta authors. Licensed under the Apache License, Version 2.0.
"""ECG file readers, feature extractor and processor for D-BETA.

This file is Hugging Face Hub remote code: it is copied flat next to `config.json` and must stay
self-contained. At module level it imports only the standard library, numpy, scipy, torch and
transformers; the optional readers' dependencies (`wfdb`, `h5py`, `scipy.io`) are imported inside
the functions that need them, so that loading a model or processor never requires them.

Contents:

- readers: `read_wfdb_record` (WFDB `.hea` + `.dat`, PhysioNet/CinC `.hea` + `.mat`),
  `read_cpsc2018_mat` (original CPSC 2018 `.mat`), `read_code_hdf5` (CODE-test HDF5) and the
  dispatcher `read_ecg_file`. All return signals in millivolts, shaped (leads, samples). Whole
  reads and the sliding windows of `iter_ecg_windows` share one contract (`_OpenedRecord`): file
  names, header/file agreement and declared sizes (`MAX_READ_ELEMENTS`, `MAX_READ_BYTES`) are
  checked before a sample is read.
- `DBetaFeatureExtractor`: turns ECGs of any lead order, rate and length into the model input
  (B, 12, 5000) float32 millivolts at 500 Hz, in the lead order the model was trained with.
- `DBetaProcessor`: the feature extractor plus a tokenizer, for (ECG, text) inputs.
"""

from __future__ import annotations

import math
import os
import re
import warnings
import zlib
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path, PureWindowsPath
from typing import Any, Callable, Iterator, Optional, Union

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

#: A lead whose peak-to-peak amplitude over the 10 s the model reads is under this (10 uV) is flat
#: (constant, e.g. all zeros, or disconnected); data preparation rejects such leads with the same
#: threshold. The feature extractor refuses an ECG whose every lead is flat and warns about one
#: with some flat leads.
FLAT_LEAD_PEAK_TO_PEAK_MV = 0.01

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


#: Most values (leads x samples) a reader decodes into memory at once: 2**24, e.g. 46 minutes of 12
#: leads at 500 Hz. Longer reads are refused before anything is read (ValueError naming the file):
#: read a part with `max_duration`, or window the recording with `iter_ecg_windows`, which streams
#: WFDB `.dat` and MATLAB v4 `.mat` records block by block.
MAX_READ_ELEMENTS = 2**24

#: Largest MATLAB v5 variable (declared size, uncompressed) or HDF5 chunk a reader decodes, in bytes.
#: MATLAB v5 files (CPSC 2018, some CinC `.mat`) cannot be read in part, and their compressed form
#: can declare gigabytes in a few kB: the declared shapes are checked before anything is loaded.
MAX_READ_BYTES = 256 * 2**20


def _is_plain_file_name(name: str) -> bool:
    """Whether `name` names an entry directly inside a folder: not empty, `.` or `..`, and without a
    path separator (`/` or `\\`), a drive (`C:`) or a NUL byte, so it cannot leave the folder."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and not any(character in name for character in ("/", "\\", "\x00"))
        and not PureWindowsPath(name).drive
    )


def _check_regular_file(path: Path, what: str) -> None:
    """Raise a ValueError naming `path` unless it is a regular file (a symbolic link to one is fine:
    git-annex, DataLad and DVC keep records as links into their object stores)."""
    if path.is_file():
        return
    if path.is_symlink():
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        raise ValueError(
            f"{what} {path} is a broken symbolic link (to {target}); in a git-annex/DataLad/DVC dataset, "
            "fetch the file's content first"
        )
    if path.exists():
        raise ValueError(f"{what} {path} is not a regular file (a folder, device or pipe)")
    raise ValueError(f"{what} not found: {path}")


def _signal_file_inside(folder: Path, name: str, header_path: Path, role: str = "header") -> Path:
    """The path of the file `name` that `header_path` names, which must be an entry of `folder`.

    The rule is on the name the header writes: a plain file name, without a path separator, `..`,
    an absolute path, a drive or a NUL byte, so a header cannot make a reader open a file of another
    folder. The folder's own entries may be symbolic links to anywhere (git-annex, DataLad and DVC
    datasets are laid out that way): the user's links are the user's. The file must exist and be a
    regular file (or a link to one), never a device or a pipe.
    """
    if not _is_plain_file_name(name):
        raise ValueError(
            f"{header_path}: signal file {name!r} points outside the {role}'s folder {folder}: a {role} may only "
            "name a file of its own folder (no path separator, '..', absolute path, drive or NUL byte)"
        )
    path = folder / name
    _check_regular_file(path, f"Signal file (named in {header_path})")
    return path


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
#: bytes (the same as `MAX_READ_BYTES`). PhysioNet/CinC `.mat` files are MATLAB v4, read in part.
MAX_MATLAB_V5_BYTES = MAX_READ_BYTES


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


# -- MATLAB v5: the declared shape of a variable, read before anything is loaded ----------------

# Bytes per value of the MATLAB v5 data types (miINT8 ... miUTF32).
_MAT5_ITEMSIZE = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 9: 8, 12: 8, 13: 8, 16: 1, 17: 2, 18: 4}
_MAT5_MATRIX, _MAT5_COMPRESSED = 14, 15
_MAT5_CLASS_NAMES = {
    1: "cell", 2: "struct", 3: "object", 4: "char", 5: "sparse", 6: "double", 7: "single", 8: "int8",
    9: "uint8", 10: "int16", 11: "uint16", 12: "int32", 13: "uint32", 14: "int64", 15: "uint64",
}
_MAT5_NUMERIC_CLASSES = frozenset(range(6, 16))
# Bytes read from the file at a time, and most bytes inflated at a time: a compressed element
# is never inflated further than the header element being read (or skipped) needs.
_MAT5_RAW_CHUNK = 8192
_MAT5_OUT_CHUNK = 1 << 16


class _Mat5Stream:
    """The bytes of one top-level MATLAB v5 element, inflated on the fly when it is compressed and
    read in bounded chunks: a compressed element of a few kB may declare gigabytes."""

    def __init__(self, handle: Any, raw_bytes: int, compressed: bool, path: Path):
        self.handle, self.raw_left, self.path = handle, raw_bytes, path
        self.inflate = zlib.decompressobj() if compressed else None
        self.buffer = bytearray()
        self.consumed = 0

    def _damaged(self) -> ValueError:
        return ValueError(
            f"MATLAB file {self.path} is truncated or damaged: an element declares more data than the file holds"
        )

    def _more(self) -> bool:
        """Append the next bytes (at most `_MAT5_OUT_CHUNK` inflated ones); False when none are left."""
        if self.inflate is None:
            if self.raw_left <= 0:
                return False
            raw = self.handle.read(min(_MAT5_RAW_CHUNK, self.raw_left))
            self.raw_left = self.raw_left - len(raw) if raw else 0
            self.buffer += raw
            return bool(raw)
        source = self.inflate.unconsumed_tail
        if not source and self.raw_left > 0:
            source = self.handle.read(min(_MAT5_RAW_CHUNK, self.raw_left))
            self.raw_left = self.raw_left - len(source) if source else 0
        try:
            out = self.inflate.decompress(source, _MAT5_OUT_CHUNK)
        except zlib.error as error:
            raise ValueError(f"MATLAB file {self.path}: damaged compressed data ({error})") from None
        self.buffer += out
        return bool(out) or bool(source) or bool(self.inflate.unconsumed_tail)

    def read(self, count: int) -> bytes:
        while len(self.buffer) < count:
            if not self._more():
                raise self._damaged()
        data = bytes(self.buffer[:count])
        del self.buffer[:count]
        self.consumed += count
        return data

    def skip(self, count: int) -> None:
        self.consumed += count
        if count <= len(self.buffer):
            del self.buffer[:count]
            return
        count -= len(self.buffer)
        self.buffer.clear()
        if self.inflate is None:
            if count > self.raw_left:
                raise self._damaged()
            self.handle.seek(count, os.SEEK_CUR)
            self.raw_left -= count
            return
        while count:
            if not self.buffer and not self._more():
                raise self._damaged()
            step = min(count, len(self.buffer))
            del self.buffer[:step]
            count -= step


def _mat5_tag(stream: _Mat5Stream, order: str) -> tuple[int, int, Optional[bytes]]:
    """(data type, byte count, payload of a small data element or None) of the next element."""
    head = stream.read(8)
    word = int.from_bytes(head[:4], order)
    if word >> 16:  # small data element: the size in the upper 16 bits, at most 4 bytes of data
        size = word >> 16
        if size > 4:
            raise stream._damaged()
        return word & 0xFFFF, size, head[4 : 4 + size]
    return word, int.from_bytes(head[4:], order), None


def _mat5_small_element(stream: _Mat5Stream, order: str, limit: int) -> bytes:
    """The data of the next (header-sized) element: array flags, dimensions, a name, field names."""
    _, size, payload = _mat5_tag(stream, order)
    if payload is not None:
        return payload
    if size > limit:
        raise ValueError(f"MATLAB file {stream.path} is damaged: a {size}-byte array header element")
    data = stream.read(size)
    stream.skip(-size % 8)
    return data


@dataclass
class _Mat5Array:
    """What a MATLAB v5 file declares about one array, before any of its data is read."""

    class_id: int
    is_complex: bool
    dims: tuple[int, ...]
    data_type: Optional[int] = None  # of the real part, for numeric arrays
    data_bytes: Optional[int] = None
    variable_bytes: int = 0  # declared (uncompressed) size of the whole top-level variable

    def describe(self) -> str:
        kind = _MAT5_CLASS_NAMES.get(self.class_id, f"class-{self.class_id}")
        return f"{' x '.join(map(str, self.dims))} {'complex ' if self.is_complex else ''}{kind} array"


def _mat5_array_header(stream: _Mat5Stream, order: str) -> tuple[int, bool, tuple[int, ...], str]:
    """(class, complex, dimensions, name) from the start of an miMATRIX element."""
    flags = _mat5_small_element(stream, order, 8)
    if len(flags) != 8:
        raise ValueError(f"MATLAB file {stream.path} is damaged: array flags of {len(flags)} bytes")
    word = int.from_bytes(flags[:4], order)
    dims_bytes = _mat5_small_element(stream, order, 4 * 64)
    dims = tuple(int.from_bytes(dims_bytes[i : i + 4], order, signed=True) for i in range(0, len(dims_bytes) - 3, 4))
    if len(dims) < 2 or any(size < 0 for size in dims):
        raise ValueError(f"MATLAB file {stream.path} is damaged: array dimensions {dims}")
    name = _mat5_small_element(stream, order, 4096).split(b"\0")[0].decode("latin-1")
    return word & 0xFF, bool(word & 0x0800), dims, name


def _mat5_numeric_part(stream: _Mat5Stream, order: str, array: _Mat5Array) -> _Mat5Array:
    """Add the type and declared byte count of a numeric array's real part (not read)."""
    if array.class_id in _MAT5_NUMERIC_CLASSES:
        array.data_type, array.data_bytes, _ = _mat5_tag(stream, order)
    return array


def _matlab_v5_array(path: Path, variable: str, field_name: Optional[str] = None):
    """What a MATLAB v5 file declares about `variable` (or the field `field_name` of the 1 x 1 struct
    `variable`), reading only element headers: `(is_v5, _Mat5Array or None, variable names seen)`.

    Compressed variables are inflated a chunk at a time and only up to the array sought (fields
    before it are skipped); other variables are skipped without inflating them. No sample is read.
    """
    names: list[str] = []
    with open(path, "rb") as handle:
        head = handle.read(128)
        if len(head) < 128 or head[126:128] not in (b"IM", b"MI"):
            return False, None, names
        order = "little" if head[126:128] == b"IM" else "big"
        file_size = os.fstat(handle.fileno()).st_size
        position = 128
        while position + 8 <= file_size:
            handle.seek(position)
            tag = handle.read(8)
            element_type = int.from_bytes(tag[:4], order)
            size = int.from_bytes(tag[4:], order)
            end = position + 8 + size
            if element_type >> 16 or end > file_size:
                raise ValueError(
                    f"MATLAB file {path} is truncated or damaged: an element of {size} bytes at byte {position}, "
                    f"the file has {file_size} bytes"
                )
            position = end
            if element_type not in (_MAT5_MATRIX, _MAT5_COMPRESSED):
                continue
            stream = _Mat5Stream(handle, size, element_type == _MAT5_COMPRESSED, path)
            variable_bytes = size
            if element_type == _MAT5_COMPRESSED:
                inner_type, variable_bytes, _ = _mat5_tag(stream, order)
                if inner_type != _MAT5_MATRIX:
                    continue
                stream.consumed = 0
            class_id, is_complex, dims, name = _mat5_array_header(stream, order)
            names.append(name)
            if name != variable:
                continue
            found = _Mat5Array(class_id, is_complex, dims, variable_bytes=variable_bytes)
            if field_name is None:
                return True, _mat5_numeric_part(stream, order, found), names
            if class_id != 2 or math.prod(dims) != 1:
                return True, None, names
            name_length = int.from_bytes(_mat5_small_element(stream, order, 4)[:4], order)
            if not 0 < name_length <= 4096:
                raise ValueError(f"MATLAB file {path} is damaged: struct field names of length {name_length}")
            packed = _mat5_small_element(stream, order, name_length * 4096)
            fields = [
                packed[i : i + name_length].split(b"\0")[0].decode("latin-1")
                for i in range(0, len(packed) - name_length + 1, name_length)
            ]
            for field in fields:
                field_type, field_bytes, _ = _mat5_tag(stream, order)
                if field_type != _MAT5_MATRIX or field_bytes > variable_bytes - stream.consumed:
                    raise ValueError(
                        f"MATLAB file {path} is damaged: field {field!r} of {variable!r} declares {field_bytes} bytes"
                    )
                if field != field_name:
                    stream.skip(field_bytes)
                    continue
                if field_bytes == 0:
                    return True, _Mat5Array(6, False, (0, 0), 9, 0, variable_bytes), names
                class_id, is_complex, dims, _ = _mat5_array_header(stream, order)
                inner = _Mat5Array(class_id, is_complex, dims, variable_bytes=variable_bytes)
                return True, _mat5_numeric_part(stream, order, inner), names
            return True, None, names
    return True, None, names


def _check_mat5_matrix(array: _Mat5Array, path: Path, what: str) -> tuple[int, int]:
    """Check a declared MATLAB v5 array is a 2-D real numeric matrix small enough to load whole:
    return its (rows, columns). Nothing has been loaded yet."""
    if array.class_id not in _MAT5_NUMERIC_CLASSES or array.is_complex or len(array.dims) != 2:
        raise ValueError(f"MATLAB file {path}: {what} must be a 2-D real numeric matrix, got a {array.describe()}")
    elements = math.prod(array.dims)
    if elements > MAX_READ_ELEMENTS or array.variable_bytes > MAX_READ_BYTES:
        raise ValueError(
            f"MATLAB file {path}: {what} is declared as a {array.describe()} ({array.variable_bytes} bytes "
            f"uncompressed), more than a MATLAB v5 file may hold here ({MAX_READ_ELEMENTS} values, "
            f"{MAX_READ_BYTES // 2**20} MiB): MATLAB v5 files are read whole. Convert the recording to WFDB "
            "(.hea + .dat) or MATLAB v4, which are read in part"
        )
    itemsize = _MAT5_ITEMSIZE.get(array.data_type)
    if itemsize is None or array.data_bytes != elements * itemsize:
        raise ValueError(
            f"MATLAB file {path} is damaged: {what} is declared as a {array.describe()} but its data element "
            f"holds {array.data_bytes} bytes of type {array.data_type}"
        )
    return array.dims[0], array.dims[1]


def _open_matlab_val(
    path: Path, expected_rows: int, header_path: Path
) -> tuple[int, Callable[[int, int], np.ndarray]]:
    """Open the `val` matrix (num_signals, num_samples) of a PhysioNet/CinC `.mat` file.

    Returns `(num_samples, read(start, stop) -> digital values)`. MATLAB v4 files (what PhysioNet's
    `wfdb2mat` writes) are read in part: only columns `start:stop` are read from disk, and a file
    shorter than its own declared matrix is an error. MATLAB v5/v7 files are loaded whole with
    `scipy.io`, once their declared shape has been checked (`MAX_READ_ELEMENTS`, `MAX_READ_BYTES`).
    """
    import scipy.io  # lazy: only file reading needs it

    try:
        file_size = path.stat().st_size
        v4 = _matlab_v4_header(path)
    except OSError as error:
        raise ValueError(f"Cannot read MATLAB file {path}: {error}") from error

    def check_rows(rows: int) -> None:
        if rows != expected_rows:  # checked before reading anything
            raise ValueError(
                f"{header_path}: header declares {expected_rows} signals, the signal files hold {rows} "
                f"(MATLAB file {path})"
            )

    if v4 is not None:
        dtype, rows, columns, offset, name = v4
        if name != "val":
            raise ValueError(f"MATLAB file {path} has no variable 'val' first (its first variable is {name!r})")
        expected = offset + rows * columns * dtype.itemsize
        if file_size < expected:
            raise ValueError(
                f"MATLAB file {path} is truncated: 'val' is declared {rows} x {columns} {dtype.name} "
                f"({expected} bytes with the header), the file has {file_size} bytes"
            )
        if rows == 0 or columns == 0:
            raise ValueError(f"MATLAB file {path}: 'val' is empty ({rows} x {columns})")
        check_rows(rows)

        def read_v4(start: int, stop: int) -> np.ndarray:
            values = np.fromfile(
                path, dtype=dtype, count=rows * (stop - start), offset=offset + rows * start * dtype.itemsize
            )
            # MATLAB stores matrices column by column: the `rows` values of each sample are adjacent.
            return values.reshape(stop - start, rows).T.astype(dtype.newbyteorder("="), copy=False)

        return columns, read_v4

    try:
        is_v5, array, names = _matlab_v5_array(path, "val")
    except OSError as error:
        raise ValueError(f"Cannot read MATLAB file {path}: {error}") from error
    if not is_v5:
        raise ValueError(f"Cannot read MATLAB file {path}: neither a MATLAB v4 nor a MATLAB v5 file")
    if array is None:
        raise ValueError(f"MATLAB file {path} has no variable 'val' (variables: {sorted(names)})")
    rows, columns = _check_mat5_matrix(array, path, "'val'")
    if rows == 0 or columns == 0:
        raise ValueError(f"MATLAB file {path}: 'val' is empty ({rows} x {columns})")
    check_rows(rows)
    loaded: list[np.ndarray] = []

    def read_v5(start: int, stop: int) -> np.ndarray:
        if not loaded:
            try:
                contents = scipy.io.loadmat(str(path), variable_names=["val"])
            except Exception as error:  # scipy raises several types for damaged files
                raise ValueError(f"Cannot read MATLAB file {path}: {error}") from error
            values = np.asarray(contents.get("val"))
            if values.shape != (rows, columns) or values.dtype.kind not in "iuf":
                raise ValueError(
                    f"MATLAB file {path}: 'val' must be a 2-D real numeric matrix, got shape {values.shape} "
                    f"of type {values.dtype}"
                )
            loaded.append(values)
        return loaded[0][:, start:stop]

    return columns, read_v5


def _max_samples(max_duration: Optional[float], sampling_rate: float, source: Any) -> Optional[int]:
    """How many samples `max_duration` seconds are at `sampling_rate` (None: no limit)."""
    if max_duration is None:
        return None
    if isinstance(max_duration, bool) or not isinstance(max_duration, (int, float, np.integer, np.floating)):
        raise TypeError(f"max_duration must be a number of seconds, got {type(max_duration).__name__}")
    if not math.isfinite(max_duration) or max_duration <= 0:
        raise ValueError(f"{source}: max_duration must be a positive number of seconds, got {max_duration}")
    return max(1, math.ceil(float(max_duration) * sampling_rate))


@dataclass
class _OpenedRecord:
    """One recording whose description has been read and checked, its samples read on request.

    This is the reader contract that whole-record reads (`read_ecg_file` and the readers behind
    it) and sliding windows (`iter_ecg_windows`) share: every check of the header against the
    files, of file names and of declared sizes happens when the record is opened, before a sample
    is read; `read(start, stop)` then reads only that part where the format allows it.
    """

    source: Any  # names the recording in messages (the header, the .mat file, "record x")
    lead_names: list[str]
    sampling_rate: float
    total_samples: int
    metadata: dict
    read_part: Callable[[int, int], np.ndarray]  # (start, stop) -> (leads, stop - start) millivolts
    from_disk: bool = True

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples `start:stop` of every lead, in millivolts; refused above `MAX_READ_ELEMENTS`."""
        stop = min(stop, self.total_samples)
        values = (stop - start) * len(self.lead_names)
        if self.from_disk and values > MAX_READ_ELEMENTS:
            raise ValueError(
                f"{self.source}: reading {stop - start} samples x {len(self.lead_names)} leads = {values} values "
                f"({(stop - start) / self.sampling_rate:.6g} s) is more than MAX_READ_ELEMENTS ({MAX_READ_ELEMENTS}); "
                "read a part (max_duration=...) or cut the recording into windows (iter_ecg_windows)"
            )
        return self.read_part(start, stop)


def _read_opened(opened: _OpenedRecord, max_duration: Optional[float]) -> ECGRecord:
    """The first `max_duration` seconds (None: all) of an opened recording, as an `ECGRecord`."""
    max_samples = _max_samples(max_duration, opened.sampling_rate, opened.source)
    stop = opened.total_samples if max_samples is None else min(max_samples, opened.total_samples)
    return ECGRecord(
        signal=opened.read(0, stop),
        lead_names=list(opened.lead_names),
        sampling_rate=opened.sampling_rate,
        metadata=dict(opened.metadata),
    )


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

    Symbolic links: the header and its signal files may be symbolic links to anywhere (git-annex,
    DataLad and DVC datasets); what a header may not do is *name* a file outside its folder.

    Raises:
        ValueError: the header is malformed (including a sampling rate outside
            `MIN_SAMPLING_RATE`-`MAX_SAMPLING_RATE` Hz, or a negative, non-finite or tiny gain),
            names a signal file outside its folder (`../x.dat`, an absolute path, a path with a
            separator), a signal file is missing, a broken link or not a regular file, is
            truncated, or its size or shape disagrees with the header; a read of more than
            `MAX_READ_ELEMENTS` values (pass `max_duration`), or a MATLAB v5 file declaring more
            than `MAX_READ_BYTES`. The message names the file.
    """
    return _read_opened(_open_wfdb_record(path), max_duration)


def _open_wfdb_record(path: Union[str, os.PathLike]) -> _OpenedRecord:
    """Open a WFDB record (`.hea` + `.dat`, or `.hea` + PhysioNet/CinC `.mat`): every check, no sample read."""
    base = _record_base(path)
    header_path = base.with_name(base.name + ".hea")
    _check_regular_file(header_path, "WFDB header")
    header = _parse_wfdb_header(header_path)

    file_names = list(dict.fromkeys(spec.file_name for spec in header.signals))
    is_matlab = [name.lower().endswith(".mat") for name in file_names]
    if all(is_matlab):
        total_samples, read_digital = _open_matlab_signal_files(header_path, header, file_names)
    elif any(is_matlab):
        raise ValueError(f"{header_path} mixes .mat and other signal files; not supported")
    else:
        total_samples, read_digital = _open_wfdb_dat(base, header_path, header)
    if header.num_samples is not None and total_samples != header.num_samples:
        raise ValueError(
            f"{header_path}: header declares {header.num_samples} samples, the signal files hold "
            f"{total_samples} (truncated or damaged file?)"
        )
    if total_samples == 0:
        raise ValueError(f"{header_path}: the record has no samples")

    def read_part(start: int, stop: int) -> np.ndarray:
        digital = read_digital(start, stop)
        if digital.shape != (header.num_signals, stop - start):
            raise ValueError(
                f"{header_path}: header declares {header.num_signals} signals, the signal files hold "
                f"{digital.shape[0]} (samples {start}-{stop}: got {digital.shape[1]})"
            )
        return _to_millivolts(digital, header.signals, header_path)

    return _OpenedRecord(
        source=header_path,
        lead_names=[spec.description for spec in header.signals],
        sampling_rate=header.sampling_rate,
        total_samples=int(total_samples),
        metadata=_record_metadata(header, total_samples),
        read_part=read_part,
    )


def _open_matlab_signal_files(
    header_path: Path, header: _WFDBHeader, file_names: list[str]
) -> tuple[int, Callable[[int, int], np.ndarray]]:
    """Open the `.mat` signal files of a PhysioNet/CinC record: (length, read(start, stop) -> digital)."""
    readers, lengths = [], set()
    for name in file_names:
        signal_path = _signal_file_inside(header_path.parent, name, header_path)
        rows = sum(spec.file_name == name for spec in header.signals)
        columns, reader = _open_matlab_val(signal_path, rows, header_path)
        readers.append(reader)
        lengths.add(columns)
    if len(lengths) != 1:
        raise ValueError(f"Signal files of {header_path} have different lengths: {sorted(lengths)}")

    def read_digital(start: int, stop: int) -> np.ndarray:
        blocks = [reader(start, stop) for reader in readers]
        return np.concatenate(blocks, axis=0) if len(blocks) > 1 else blocks[0]

    return lengths.pop(), read_digital


def _check_dat_file_sizes(header_path: Path, header: _WFDBHeader, paths: dict[str, Path]) -> tuple[Optional[int], Optional[int]]:
    """Check each `.dat` file's size against the header; return `(length the files imply, upper bound)`.

    A file must hold exactly (byte offset) + (samples x signals in the file x bytes per sample),
    up to the padding of the bit-packed formats 212/310/311; with the length missing from the
    header, a whole number of frames. Compressed (FLAC) formats are not checked. The implied length
    is None when unknown (bit-packed or compressed formats without a length in the header); the
    upper bound (from the file sizes) is None only for compressed formats.
    """
    implied: set[int] = set()
    bounds: list[Optional[int]] = []
    for name, signal_path in paths.items():
        specs = [spec for spec in header.signals if spec.file_name == name]
        formats = {spec.fmt for spec in specs}
        if len(formats) != 1:
            raise ValueError(f"{header_path}: signals of {name} have different formats {sorted(formats)}")
        fmt = formats.pop()
        bytes_per_sample = _WFDB_BYTES_PER_SAMPLE.get(fmt)
        if bytes_per_sample is None:
            if fmt in _WFDB_COMPRESSED_FORMATS:
                bounds.append(None)
                continue
            raise ValueError(f"{header_path}: unknown WFDB storage format {fmt!r} for {name}")
        offset = specs[0].byte_offset
        samples_per_frame = sum(spec.samples_per_frame for spec in specs)
        data_bytes = signal_path.stat().st_size - offset
        packed = fmt in ("212", "310", "311")
        frame_bytes = samples_per_frame * bytes_per_sample
        bounds.append(max(0, math.ceil(data_bytes / frame_bytes)))
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
    bound = None if not bounds or None in bounds else max(bounds)
    return (implied.pop() if implied else None), bound


def _open_wfdb_dat(
    base: Path, header_path: Path, header: _WFDBHeader
) -> tuple[int, Callable[[int, int], np.ndarray]]:
    """Open the `.dat` signal files of a WFDB record: the checks every read passes, whole or window
    by window (one contract). Each signal file the header names is a plain file name of the
    header's folder, `wfdb`'s own parse of the header names the same files and signal count as ours
    (it, not we, opens them), and the file sizes agree with the header.

    Returns:
        `(record length, read(start, stop) -> digital samples (num_signals, stop - start))`;
        `wfdb` reads only samples `start:stop` from disk. A record whose length is known only once
        decoded (bit-packed formats without a length in the header) is decoded whole here, after
        its size is bounded by its files' sizes.
    """
    try:
        import wfdb  # lazy: only file reading needs it
    except ImportError as error:
        raise ImportError("Reading WFDB .dat files needs `wfdb` (pip install wfdb)") from error

    file_names = list(dict.fromkeys(spec.file_name for spec in header.signals))
    paths = {name: _signal_file_inside(header_path.parent, name, header_path) for name in file_names}
    try:
        # `wfdb` parses the header on its own: it must name the very files we checked.
        wfdb_header = wfdb.rdheader(str(base))
    except Exception as error:  # wfdb raises ValueError, IndexError, its own syntax errors...
        raise ValueError(f"Cannot read WFDB record {base} ({', '.join(file_names)}): {error}") from error
    wfdb_names = list(dict.fromkeys(wfdb_header.file_name or []))
    if wfdb_names != file_names or wfdb_header.n_sig != header.num_signals:
        raise ValueError(
            f"Cannot read WFDB record {base}: its header is ambiguous ({header_path}): `wfdb` reads "
            f"{wfdb_header.n_sig} signals from {wfdb_names}, this reader {header.num_signals} from {file_names}"
        )
    implied, bound = _check_dat_file_sizes(header_path, header, paths)

    def rdrecord(**window: int) -> np.ndarray:
        try:
            record = wfdb.rdrecord(str(base), physical=False, **window)
        except Exception as error:  # wfdb raises ValueError, IndexError, its own syntax errors...
            where = f"samples {window['sampfrom']}-{window['sampto']} of " if window else ""
            raise ValueError(f"Cannot read {where}WFDB record {base} ({', '.join(file_names)}): {error}") from error
        if record.d_signal is None:
            raise ValueError(f"WFDB record {base} has no signal data")
        return np.asarray(record.d_signal).T

    if header.num_samples is not None:
        return header.num_samples, lambda start, stop: rdrecord(sampfrom=start, sampto=stop)
    # `wfdb` (4.3) cannot take `sampfrom`/`sampto` for a header without the record length: such a
    # record is decoded whole, once its size is bounded.
    if bound is None:
        raise ValueError(
            f"{header_path}: compressed (FLAC) signal files without the record length in the header: their "
            "size cannot be bounded before decoding; write the length in the header's record line"
        )
    if bound * header.num_signals > MAX_READ_ELEMENTS:
        raise ValueError(
            f"{header_path}: the signal files hold up to {bound} samples x {header.num_signals} signals, more than "
            f"MAX_READ_ELEMENTS ({MAX_READ_ELEMENTS}) values, and without the record length in the header they "
            "can only be read whole; write the length in the header's record line"
        )
    digital = rdrecord()
    if implied is not None and digital.shape[1] != implied:
        raise ValueError(f"{header_path}: the signal files imply {implied} samples, `wfdb` decoded {digital.shape[1]}")
    return digital.shape[1], lambda start, stop: digital[:, start:stop]


def _record_metadata(header: _WFDBHeader, total_samples: int) -> dict:
    """`ECGRecord.metadata` of a WFDB record (the same for a whole read and for its windows)."""
    metadata = {"name": header.record_name, "comments": list(header.comments)}
    metadata.update(_parse_header_comments(header.comments))
    metadata["units"] = [spec.units for spec in header.signals]
    metadata["total_samples"] = int(total_samples)
    return metadata


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
    v5 files cannot be read in part). Before anything is loaded, the shape that the file declares
    for `ECG.data` is checked: over `MAX_READ_ELEMENTS` values or `MAX_READ_BYTES` uncompressed
    (a compressed file of a few kB can declare gigabytes), the file is refused.

    Raises:
        ValueError: the file is unreadable, too large (on disk or as declared), or has no `ECG`
            struct with a (12, N) real `data` field.
    """
    return _read_opened(_open_cpsc2018_mat(path), max_duration)


def _open_cpsc2018_mat(path: Union[str, os.PathLike]) -> _OpenedRecord:
    import scipy.io  # lazy: only file reading needs it

    path = Path(path)
    _check_regular_file(path, "CPSC 2018 file")
    try:
        if path.stat().st_size > MAX_READ_BYTES:
            raise ValueError(f"the file is larger than {MAX_READ_BYTES // 2**20} MiB")
        is_v5, declared, names = _matlab_v5_array(path, "ECG", "data")
    except (OSError, ValueError) as error:
        detail = str(error).replace(f"MATLAB file {path}", "the file")
        raise ValueError(f"Cannot read CPSC 2018 file {path}: {detail}") from error
    if not is_v5:
        raise ValueError(f"{path} is not a CPSC 2018 file: not a MATLAB v5 file")
    if declared is None:
        raise ValueError(
            f"{path} is not a CPSC 2018 file: no 1 x 1 struct 'ECG' with a field 'data' (variables: {sorted(names)})"
        )
    if declared.class_id not in _MAT5_NUMERIC_CLASSES or declared.is_complex:
        raise ValueError(f"{path}: ECG.data must hold real numbers, got a {declared.describe()}")
    if len(declared.dims) != 2 or declared.dims[0] != len(STANDARD_LEAD_NAMES) or declared.dims[1] == 0:
        raise ValueError(f"{path}: ECG.data must be (12, N), got a {declared.describe()}")
    _check_mat5_matrix(declared, path, "ECG.data")
    try:
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
    signal = data.astype(np.float32)
    metadata = {
        "name": path.stem,
        "comments": [],
        "age": _parse_age(_matlab_scalar_text(getattr(ecg, "age", None))),
        "sex": _matlab_scalar_text(getattr(ecg, "sex", None)),
        "total_samples": int(signal.shape[1]),
    }
    return _OpenedRecord(
        source=path,
        lead_names=list(STANDARD_LEAD_NAMES),
        sampling_rate=500.0,
        total_samples=int(signal.shape[1]),
        metadata=metadata,
        read_part=lambda start, stop: signal[:, start:stop],
    )


CODE_SAMPLING_RATE = 400.0


def _exam_index(value: Any, name: str, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{path}: {name} must be an exam index (an integer), got {value!r}")
    return int(value)


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
        start, stop: the range of exams to read (rows `start:stop`, `0 <= start < stop <= N`;
            `stop=None` reads to the end), so that large files can be read in chunks. Only these
            exams are read from the file.
        dataset: the name of the dataset.
        max_duration: read at most the first `max_duration` seconds of each exam (None: all);
            only these samples are read from the file.

    Returns:
        `(signals, lead_names, sampling_rate)`: float32 (n, 12, 4096), the values as distributed
        (treated as millivolts), the distributed lead order (I, II, III, aVR, aVL, aVF, V1-V6)
        and 400.0. The 4096 samples are the 10 s traces zero-padded at both ends.

    Raises:
        ValueError (naming the file): unreadable file, no such dataset, a shape other than
            (N, samples, 12), non-numeric (e.g. string) data, a dataset stored in another file
            (external link, virtual or external storage) outside the HDF5 file's folder, an exam
            range outside `0..N`, a read of more than `MAX_READ_ELEMENTS` values (read fewer exams
            at a time, or pass `max_duration`), or chunks of more than `MAX_READ_BYTES`. All are
            checked on the declared shapes, before any data is read.
    """
    try:
        import h5py  # lazy: only file reading needs it
    except ImportError as error:
        raise ImportError("Reading CODE HDF5 files needs `h5py` (pip install h5py)") from error

    path = Path(path)
    _check_regular_file(path, "CODE HDF5 file")
    max_samples = _max_samples(max_duration, CODE_SAMPLING_RATE, path)
    start = _exam_index(start, "start", path)
    stop = None if stop is None else _exam_index(stop, "stop", path)
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
            count, samples = int(tracings.shape[0]), int(tracings.shape[1])
            last = count if stop is None else stop
            if not 0 <= start < last <= count:
                raise ValueError(
                    f"{path}: exams {start}:{stop} are not a range of the {count} exams of {dataset!r} "
                    "(0 <= start < stop <= N)"
                )
            kept = samples if max_samples is None else min(samples, max_samples)
            values = (last - start) * kept * len(STANDARD_LEAD_NAMES)
            if values > MAX_READ_ELEMENTS:
                raise ValueError(
                    f"{path}: reading exams {start}:{last} of {dataset!r} ({last - start} x {kept} samples x 12 leads "
                    f"= {values} values) is more than MAX_READ_ELEMENTS ({MAX_READ_ELEMENTS}); read fewer exams at a "
                    "time (start/stop) or pass max_duration"
                )
            if tracings.chunks is not None:
                chunk_bytes = math.prod(tracings.chunks) * tracings.dtype.itemsize
                if chunk_bytes > MAX_READ_BYTES:
                    raise ValueError(
                        f"{path}: {dataset!r} is stored in chunks of {tracings.chunks} ({chunk_bytes} bytes), more "
                        f"than the {MAX_READ_BYTES // 2**20} MiB a reader decodes at once"
                    )
            signals = np.asarray(tracings[start:last, :kept], dtype=np.float32)
    except (OSError, KeyError, TypeError) as error:
        raise ValueError(f"Cannot read CODE HDF5 file {path}: {error}") from error
    return np.ascontiguousarray(signals.transpose(0, 2, 1)), list(STANDARD_LEAD_NAMES), CODE_SAMPLING_RATE


def _check_hdf5_storage_inside(handle: Any, dataset: str, path: Path) -> None:
    """Refuse an HDF5 dataset whose data lives in a file that the HDF5 file names outside its folder."""
    try:
        import h5py  # lazy and optional (a bare import would make loading the model require it)
    except ImportError as error:
        raise ImportError("Reading CODE HDF5 files needs `h5py` (pip install h5py)") from error

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
        _signal_file_inside(folder, target, path, role="HDF5 file")
    except ValueError as error:
        detail = str(error).removeprefix(f"{path}: ")
        raise ValueError(f"{path}: dataset {dataset!r} is stored in another file: {detail}") from None


# --------------------------------------------------------------------------------------------
# Clinical export formats: DICOM waveform, GE MUSE XML, Philips XML, HL7 aECG, SCP-ECG, EDF, ISHNE
# --------------------------------------------------------------------------------------------

#: Largest clinical-format file a reader parses (bytes), checked before anything is decoded. XML,
#: SCP-ECG, DICOM and ISHNE files are decoded whole by their libraries (a 10 s 12-lead XML export is
#: about 0.1-1 MB); EDF is read in parts and is bounded by `MAX_READ_ELEMENTS` per read instead.
MAX_CLINICAL_FILE_BYTES = 64 * 2**20

# Bytes read from the start of a file to recognise its format (an XML prolog with comments and a
# DOCTYPE fits easily).
_SNIFF_BYTES = 64 * 1024

_CLINICAL_EXTRA_HINT = "pip install 'dbeta[clinical]'"

#: Formats recognised by content: internal name -> (name shown to users, the library that reads it).
CLINICAL_FORMATS = {
    "dicom": ("DICOM waveform", "pydicom"),
    "ge_muse_xml": ("GE MUSE XML", "ecgdatakit"),
    "philips_xml": ("Philips (Sierra) XML", "ecgdatakit"),
    "hl7_aecg": ("HL7 aECG", "ecgdatakit"),
    "scp_ecg": ("SCP-ECG", "ecgdatakit"),
    "edf": ("EDF/EDF+", "edfio"),
    "ishne": ("ISHNE Holter", "ecgdatakit"),
}

# XML root element (lower-cased, without namespace prefix) -> format.
_XML_ROOTS = {"restingecg": "ge_muse_xml", "restingecgdata": "philips_xml", "annotatedecg": "hl7_aecg"}

# Prefixes that files put before a lead's name ("Lead I (Einthoven)", "ECG V1", "MDC_ECG_LEAD_AVR").
_LEAD_LABEL_PREFIX = re.compile(r"^(?:mdc_ecg_lead_|lead\b|ecg\b|ekg\b)[\s:_-]*", re.IGNORECASE)


def _file_lead_name(label: Any) -> str:
    """The standard spelling of a lead label written in a clinical file, or the label unchanged when it
    names no standard lead (a respiration or EEG channel, "V3R", "ECG" alone)."""
    original = str(label).strip()
    text = re.sub(r"\([^)]*\)", "", original).strip()  # "Lead I (Einthoven)" -> "Lead I"
    previous = None
    while text != previous:
        previous, text = text, _LEAD_LABEL_PREFIX.sub("", text).strip()
    name = canonical_lead_name(text)
    return name if name in STANDARD_LEAD_NAMES else original


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _package_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return f"{name} {version(name)}"
    except Exception:  # noqa: BLE001 - a version is informative only
        return name


def _sniff_clinical_format(path: Path) -> Optional[str]:
    """The clinical format of the file at `path` from its content (None: not one of them).

    Raises a ValueError naming the file for recognisable but unsupported variants (an XML file that
    declares entities, an XML root that is no ECG export, a BDF or ISHNE annotation file)."""
    with open(path, "rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    if head.startswith(b"ISHNE1.0"):
        return "ishne"
    if head.startswith(b"ANN  1.0"):
        raise ValueError(f"{path} is an ISHNE annotation file, not an ECG: read the ISHNE ECG file it annotates")
    if head.startswith(b"\xffBIOSEMI"):
        raise ValueError(f"{path} is a BDF (24-bit BioSemi) file; only EDF/EDF+ (16-bit) files are read")
    if head.startswith(b"0       ") and len(head) >= 256 and head[252:256].strip().isdigit():
        return "edf"
    if len(head) >= 16 and int.from_bytes(head[2:6], "little") == path.stat().st_size:
        if int.from_bytes(head[8:10], "little") == 0:  # SCP-ECG: record length, then section 0 (pointers)
            return "scp_ecg"
    return _sniff_xml_root(path, head)


def _sniff_xml_root(path: Path, head: bytes) -> Optional[str]:
    """The ECG format of an XML file from its root element's name (None: not XML)."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = head.decode("utf-16", errors="ignore")
    else:
        text = head.removeprefix(b"\xef\xbb\xbf").decode("latin-1")
    text = text.lstrip()
    if not text.startswith("<"):
        return None
    if "<!ENTITY" in text.upper():
        # Entity definitions are the vector of "billion laughs" and external-entity attacks; ECG
        # exports never need them. The libraries refuse them too (defusedxml); this says it first.
        raise ValueError(f"{path}: XML that declares entities (<!ENTITY ...>) is refused: entity expansion is unsafe")
    # Skip the declaration, comments, processing instructions and the DOCTYPE to reach the root.
    prolog = re.compile(r"\s*(?:<\?.*?\?>|<!--.*?-->|<!DOCTYPE[^>\[]*(?:\[.*?\])?\s*>)", re.DOTALL | re.IGNORECASE)
    position = 0
    while True:
        match = prolog.match(text, position)
        if not match:
            break
        position = match.end()
    root = re.match(r"\s*<([A-Za-z_][\w.:-]*)", text[position:])
    if root is None:
        return None
    name = root.group(1).split(":")[-1]
    found = _XML_ROOTS.get(name.lower())
    if found is None:
        raise ValueError(
            f"Unsupported XML file {path}: its root element <{name}> is not a GE MUSE <RestingECG>, Philips "
            "<restingecgdata> or HL7 aECG <AnnotatedECG> export"
        )
    return found


def _check_clinical_file_size(path: Path, format_name: str) -> None:
    size = path.stat().st_size
    if size > MAX_CLINICAL_FILE_BYTES:
        raise ValueError(
            f"{path}: {format_name} file of {size} bytes, more than the {MAX_CLINICAL_FILE_BYTES // 2**20} MiB "
            "decoded at once (MAX_CLINICAL_FILE_BYTES); convert it to WFDB or EDF, which are read in parts"
        )


def _derived_leads_note(lead_names: list[str]) -> Optional[list[str]]:
    """The limb leads the feature extractor derives from I and II for this file (None: none)."""
    present = {canonical_lead_name(name) for name in lead_names}
    missing = [name for name in ("III", "aVR", "aVL", "aVF") if name not in present]
    if missing and all(name in present for name in INDEPENDENT_LEAD_NAMES):
        return missing
    return None


def _clinical_metadata(
    path: Path,
    format_key: str,
    library: str,
    lead_names: list[str],
    sampling_rate: float,
    total_samples: int,
    **fields: Any,
) -> dict:
    """The metadata of a record read from a clinical file (documented in `read_ecg_file`)."""
    metadata = {
        "name": path.stem,
        "comments": [],
        "format": CLINICAL_FORMATS[format_key][0],
        "reader": _package_version(library),
        "total_samples": int(total_samples),
        "duration_s": round(total_samples / sampling_rate, 6),
        "units": ["mV"] * len(lead_names),
    }
    derived = _derived_leads_note(lead_names)
    if derived:
        metadata["derived_leads"] = derived
    for key, value in fields.items():
        if value not in (None, "", [], {}):
            metadata[key] = value
    return metadata


def _in_memory_record(
    path: Path, signal: np.ndarray, lead_names: list[str], sampling_rate: float, metadata: dict
) -> _OpenedRecord:
    """An `_OpenedRecord` of a file its library decodes whole (already bounded by the file size)."""
    signal = np.ascontiguousarray(signal, dtype=np.float32)
    if signal.ndim != 2 or signal.shape[0] != len(lead_names) or signal.shape[1] == 0:
        raise ValueError(f"{path}: the file holds no samples (shape {signal.shape} for leads {lead_names})")
    if not np.isfinite(signal).all():
        raise ValueError(f"{path}: the decoded signal holds NaN or infinite values (a damaged file?)")
    return _OpenedRecord(
        source=path,
        lead_names=list(lead_names),
        sampling_rate=sampling_rate,
        total_samples=int(signal.shape[1]),
        metadata=metadata,
        read_part=lambda start, stop: signal[:, start:stop],
    )


def _dicom_text(dataset: Any, keyword: str) -> Optional[str]:
    value = dataset.get(keyword)
    return None if value in (None, "") else str(value).strip() or None


def _dicom_datetime(value: Optional[str]) -> Optional[str]:
    """A DICOM DA/DT/TM value as ISO 8601 ("20130125105919" -> "2013-01-25T10:59:19"); kept as written
    when it is not one."""
    if not value:
        return None
    match = re.fullmatch(r"(\d{4})(\d{2})(\d{2})\s*(?:(\d{2})(\d{2})?(\d{2})?(\.\d+)?)?([+-]\d{4})?", value.strip())
    if not match:
        return value
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    text = f"{year}-{month}-{day}"
    if hour:
        text += f"T{hour}:{minute or '00'}:{second or '00'}{fraction or ''}"
        if zone:
            text += f"{zone[:3]}:{zone[3:]}"
    return text


def _dicom_age(value: Optional[str]) -> Optional[Union[int, str]]:
    """DICOM age strings: "042Y" -> 42; months, weeks or days are kept as written."""
    if value and re.fullmatch(r"\d{3}Y", value):
        return int(value[:3])
    return value or None


def _open_dicom(path: Path) -> _OpenedRecord:
    """A DICOM ECG waveform object (12-lead, general ECG, ambulatory...), read with pydicom."""
    try:
        import pydicom
    except ImportError as error:
        raise ImportError(f"Reading DICOM waveform files ({path}) needs pydicom: {_CLINICAL_EXTRA_HINT}") from error
    _check_clinical_file_size(path, "DICOM")
    try:
        dataset = pydicom.dcmread(path)
    except Exception as error:  # noqa: BLE001 - pydicom raises many types for damaged files
        raise ValueError(f"Cannot read DICOM file {path}: {_one_line(error)}") from error
    groups = list(dataset.get("WaveformSequence") or [])
    if not groups:
        sop = getattr(dataset.get("SOPClassUID"), "name", None) or dataset.get("SOPClassUID") or "unknown"
        raise ValueError(f"{path}: DICOM file without a waveform (SOP class {sop}); it holds no ECG to read")

    def describe(index: int, group: Any) -> str:
        label = str(group.get("MultiplexGroupLabel") or f"group {index}")
        return (
            f"{label} ({group.get('NumberOfWaveformChannels')} channels x {group.get('NumberOfWaveformSamples')} "
            f"samples at {group.get('SamplingFrequency')} Hz)"
        )

    def is_beat(group: Any) -> bool:
        return re.search(r"median|beat|average", str(group.get("MultiplexGroupLabel") or ""), re.IGNORECASE) is not None

    def seconds(group: Any) -> float:
        try:
            return float(group.NumberOfWaveformSamples) / float(group.SamplingFrequency)
        except (AttributeError, TypeError, ValueError, ZeroDivisionError):
            return -1.0

    rhythm = [index for index, group in enumerate(groups) if not is_beat(group)]
    if not rhythm:
        raise ValueError(
            f"{path}: the DICOM file holds only median/average beats ({'; '.join(describe(i, g) for i, g in enumerate(groups))}), "
            "no rhythm waveform"
        )
    chosen = max(rhythm, key=lambda index: (seconds(groups[index]), -index))  # the longest rhythm, first if tied
    group = groups[chosen]
    skipped = [describe(index, other) for index, other in enumerate(groups) if index != chosen]
    try:
        channels, samples = int(group.NumberOfWaveformChannels), int(group.NumberOfWaveformSamples)
        rate = _check_sampling_rate(float(group.SamplingFrequency), str(path))
        definitions = list(group.ChannelDefinitionSequence)
    except AttributeError as error:
        raise ValueError(f"{path}: DICOM waveform {describe(chosen, group)} lacks {error}") from error
    if len(definitions) != channels or channels == 0 or samples == 0:
        raise ValueError(f"{path}: DICOM waveform {describe(chosen, group)} has {len(definitions)} channel definitions")
    if channels * samples > MAX_READ_ELEMENTS:
        raise ValueError(
            f"{path}: DICOM waveform of {channels} channels x {samples} samples is more than MAX_READ_ELEMENTS "
            f"({MAX_READ_ELEMENTS})"
        )
    names, scales = [], []
    for number, channel in enumerate(definitions, start=1):
        source = (channel.get("ChannelSourceSequence") or [None])[0]
        label = channel.get("ChannelLabel") or (source.get("CodeMeaning") if source is not None else None) or f"channel {number}"
        names.append(_file_lead_name(label))
        units = (channel.get("ChannelSensitivityUnitsSequence") or [None])[0]
        unit = str(units.get("CodeValue") if units is not None else "").strip().lower()
        if channel.get("ChannelSensitivity") in (None, "") or unit not in _MILLIVOLTS_PER_UNIT:
            raise ValueError(
                f"{path}: DICOM channel {number} ({label}) has no usable sensitivity and units "
                f"(sensitivity {channel.get('ChannelSensitivity')!r}, units {unit or 'none'!r}): the samples cannot be "
                "converted to millivolts"
            )
        scales.append(_MILLIVOLTS_PER_UNIT[unit])
    try:
        # pydicom applies each channel's sensitivity, correction factor and baseline (PS3.3 C.10.9.1.4).
        values = np.asarray(dataset.waveform_array(chosen), dtype=np.float64)
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"Cannot decode the DICOM waveform of {path}: {_one_line(error)}") from error
    if values.shape != (samples, channels):
        raise ValueError(f"{path}: DICOM waveform data has shape {values.shape}, the header declares {(samples, channels)}")
    signal = values.T * np.asarray(scales)[:, None]
    device = " ".join(filter(None, (_dicom_text(dataset, "Manufacturer"), _dicom_text(dataset, "ManufacturerModelName"))))
    acquired = _dicom_text(dataset, "AcquisitionDateTime") or "".join(
        filter(None, (_dicom_text(dataset, "ContentDate"), _dicom_text(dataset, "ContentTime")))
    )
    metadata = _clinical_metadata(
        path, "dicom", "pydicom", names, rate, samples,
        device=device or None,
        acquisition_time=_dicom_datetime(acquired),
        age=_dicom_age(_dicom_text(dataset, "PatientAge")),
        sex=_dicom_text(dataset, "PatientSex"),
        waveform=str(group.get("MultiplexGroupLabel") or f"group {chosen}"),
        skipped=skipped,
    )
    return _in_memory_record(path, signal, names, rate, metadata)


def _open_edf(path: Path) -> _OpenedRecord:
    """An EDF/EDF+ recording (Holter, polysomnography), read in parts with edfio: the ECG channels are
    those whose label names a standard lead; the others are skipped and listed."""
    try:
        import edfio
    except ImportError as error:
        raise ImportError(f"Reading EDF files ({path}) needs edfio: {_CLINICAL_EXTRA_HINT}") from error
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a truncated file is refused below, from the header's own count
            edf = edfio.read_edf(path, lazy_load_data=True)
        signals = list(edf.signals)
        with open(path, "rb") as handle:
            declared_records = int(handle.read(244)[236:244].decode("ascii").strip())
    except Exception as error:  # noqa: BLE001 - edfio raises ValueError and others for damaged headers
        raise ValueError(f"Cannot read EDF file {path}: {_one_line(error)}") from error
    if declared_records not in (-1, edf.num_data_records):  # -1: "unknown", allowed while recording
        raise ValueError(
            f"{path}: EDF header declares {declared_records} data records, the file holds {edf.num_data_records}: "
            "a truncated file"
        )
    if str(edf.reserved).strip().upper().startswith("EDF+D"):
        raise ValueError(f"{path}: EDF+D (discontinuous) recordings are not read: their samples have gaps in time")
    leads = [(signal, _file_lead_name(signal.label)) for signal in signals]
    ecg = [(signal, name) for signal, name in leads if name in STANDARD_LEAD_NAMES]
    if not ecg:
        labels = [signal.label for signal in signals]
        raise ValueError(
            f"{path}: EDF file with no ECG channel: none of its channel labels {labels} names a standard lead "
            "(I, II, III, aVR, aVL, aVF, V1-V6, e.g. 'ECG II')"
        )
    rates = sorted({float(signal.sampling_frequency) for signal, _ in ecg})
    if len(rates) != 1:
        raise ValueError(f"{path}: the EDF ECG channels have different sampling rates {rates}; not supported")
    rate = _check_sampling_rate(rates[0], str(path))
    scales = []
    for signal, name in ecg:
        unit = str(signal.physical_dimension).strip().lower()
        if unit not in _MILLIVOLTS_PER_UNIT:
            raise ValueError(
                f"{path}: EDF channel {signal.label!r} has physical dimension {signal.physical_dimension!r}, not a "
                "voltage (uV, mV or V): it cannot be converted to millivolts"
            )
        scales.append(_MILLIVOLTS_PER_UNIT[unit])
    total = int(ecg[0][0].samples_per_data_record) * int(edf.num_data_records)
    if total <= 0:
        raise ValueError(f"{path}: the EDF file holds no samples")
    # The data records the header declares must be in the file (a truncated download reads as garbage).

    def read_part(start: int, stop: int) -> np.ndarray:
        try:
            parts = [signal.get_data_slice(start / rate, stop / rate) * scale for (signal, _), scale in zip(ecg, scales)]
        except Exception as error:  # noqa: BLE001
            raise ValueError(f"Cannot read samples {start}-{stop} of EDF file {path}: {_one_line(error)}") from error
        if any(len(part) != stop - start for part in parts):
            raise ValueError(f"{path}: EDF samples {start}-{stop} could not all be read (a truncated file?)")
        return np.stack(parts).astype(np.float32)

    names = [name for _, name in ecg]
    try:
        started = edf.startdatetime.isoformat()
    except Exception:  # noqa: BLE001 - an anonymised or malformed start date
        started = None
    try:  # EDF+ fields; a plain EDF's identification fields are free text (edfio refuses to split them)
        equipment, sex = edf.recording.equipment_code, edf.patient.sex
    except Exception:  # noqa: BLE001
        equipment = sex = None
    metadata = _clinical_metadata(
        path, "edf", "edfio", names, rate, total,
        device=None if equipment in (None, "X") else str(equipment),
        acquisition_time=started,
        sex=None if sex in (None, "X") else str(sex),
        skipped=[f"channel {signal.label!r} (not an ECG lead)" for signal, name in leads if name not in STANDARD_LEAD_NAMES],
    )
    return _OpenedRecord(source=path, lead_names=names, sampling_rate=rate, total_samples=total, metadata=metadata, read_part=read_part)


def _ecgdatakit_parser(format_key: str):
    """The ecgdatakit parser class of a format (imported lazily: it is an optional dependency)."""
    try:
        if format_key == "ge_muse_xml":
            from ecgdatakit.parsing.parsers.ge_muse_xml import GEMuseXMLParser as parser
        elif format_key == "philips_xml":
            from ecgdatakit.parsing.parsers.sierra_xml import SierraXMLParser as parser
        elif format_key == "hl7_aecg":
            from ecgdatakit.parsing.parsers.hl7_aecg import HL7aECGParser as parser
        elif format_key == "scp_ecg":
            from ecgdatakit.parsing.parsers.scp_ecg import SCPECGParser as parser
        else:
            from ecgdatakit.parsing.parsers.ishne_holter import ISHNEHolterParser as parser
    except ImportError as error:
        raise ImportError(
            f"Reading {CLINICAL_FORMATS[format_key][0]} files needs ecgdatakit: {_CLINICAL_EXTRA_HINT}"
        ) from error
    return parser


def _check_ishne_length(path: Path, parsed: Any, notes: list[str]) -> None:
    """Refuse an ISHNE file holding fewer samples than its header declares (a truncated download or copy).

    The standard declares samples per lead; some writers store the total over all leads, which is
    accepted. ecgdatakit reads what is there and leaves the check to its caller."""
    raw = getattr(parsed, "raw_metadata", None) or {}
    declared, held, leads = raw.get("ecg_size"), raw.get("samples_per_lead"), len(parsed.leads or [])
    if isinstance(declared, int) and isinstance(held, int) and held < declared and declared != held * leads:
        raise ValueError(
            f"{path}: ISHNE header declares {declared} samples per lead, the file holds {held}: a truncated file"
        )
    if any("truncated" in note for note in notes):
        raise ValueError(f"{path}: ISHNE file ends inside a sample frame: a truncated file")


def _open_with_ecgdatakit(path: Path, format_key: str) -> _OpenedRecord:
    """A GE MUSE XML, Philips XML, HL7 aECG, SCP-ECG or ISHNE file, decoded by ecgdatakit (MUSE base64,
    Philips XLI, aECG digits and scale, SCP Huffman and difference encodings); its XML is parsed with
    defusedxml. The rhythm (full-length) waveform is read; median beats are skipped and listed."""
    format_name = CLINICAL_FORMATS[format_key][0]
    parser = _ecgdatakit_parser(format_key)
    _check_clinical_file_size(path, format_name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            parsed = parser().parse(path).to_physical()
        except ImportError:
            raise
        except Exception as error:  # noqa: BLE001 - the library raises its own and Python's errors
            raise ValueError(f"Cannot read {format_name} file {path}: {_one_line(error)}") from error
    notes = list(dict.fromkeys(_one_line(warning.message) for warning in caught))
    if format_key == "ishne":
        _check_ishne_length(path, parsed, notes)
    leads = list(parsed.leads or [])
    if not leads:
        raise ValueError(f"{path}: the {format_name} file holds no rhythm waveform")
    raw = [lead.label for lead in leads if lead.is_raw]
    if raw:
        raise ValueError(f"{path}: {format_name} leads {raw} carry no gain or units: they cannot be converted to millivolts")
    rates = sorted({float(lead.sampling_rate) for lead in leads})
    if len(rates) != 1:
        raise ValueError(f"{path}: the {format_name} leads have different sampling rates {rates}; not supported")
    rate = _check_sampling_rate(rates[0], str(path))
    try:
        arrays = [np.asarray(lead.convert_units("mV").samples, dtype=np.float64) for lead in leads]
    except Exception as error:  # noqa: BLE001 - a unit that is no voltage
        raise ValueError(f"{path}: {format_name} samples cannot be converted to millivolts: {_one_line(error)}") from error
    lengths = sorted({len(array) for array in arrays})
    if lengths[0] == 0:
        raise ValueError(f"{path}: the {format_name} file holds an empty lead")
    if len(lengths) > 1:
        notes.append(f"leads of different lengths {lengths}: all cut to the shortest, {lengths[0]} samples")
    names = [_file_lead_name(lead.label) for lead in leads]
    signal = np.stack([array[: lengths[0]] for array in arrays])
    median = list(parsed.median_beats or [])
    skipped = (
        [f"median beats ({len(median)} leads x {max(len(lead.samples) for lead in median)} samples)"] if median else []
    )
    recording, patient = parsed.recording, parsed.patient
    device_info = getattr(recording, "device", None)
    device = " ".join(
        str(part) for part in (getattr(device_info, "manufacturer", None), getattr(device_info, "model", None)) if part
    )
    acquired = getattr(recording, "date", None)
    metadata = _clinical_metadata(
        path, format_key, "ecgdatakit", names, rate, signal.shape[1],
        device=device or None,
        acquisition_time=acquired.isoformat() if hasattr(acquired, "isoformat") else acquired,
        age=getattr(patient, "age", None),
        sex=getattr(patient, "sex", None) or None,
        skipped=skipped,
        notes=notes,
    )
    return _in_memory_record(path, signal, names, rate, metadata)


def ecg_file_format(path: Union[str, os.PathLike]) -> Optional[str]:
    """The clinical format of an ECG file recognised by its content, as a key of `CLINICAL_FORMATS`
    (`"dicom"`, `"ge_muse_xml"`, `"philips_xml"`, `"hl7_aecg"`, `"scp_ecg"`, `"edf"`, `"ishne"`), or
    None when the content is none of them (WFDB and MATLAB files are recognised by their names).

    Raises:
        ValueError (naming the file): a recognisable but refused variant: XML declaring entities, an
            XML root that is no ECG export, BDF, an ISHNE annotation file; or not a regular file.
    """
    path = Path(path)
    _check_regular_file(path, "ECG file")
    return _sniff_clinical_format(path)


def _open_clinical_file(path: Path, format_key: str) -> _OpenedRecord:
    if format_key == "dicom":
        return _open_dicom(path)
    if format_key == "edf":
        return _open_edf(path)
    return _open_with_ecgdatakit(path, format_key)


def _open_ecg_file(path: Union[str, os.PathLike]) -> _OpenedRecord:
    """Open one ECG file with the reader its name calls for (see `read_ecg_file`)."""
    path = Path(path)
    suffix = path.suffix.lower()
    base = _record_base(path)
    header = base.with_name(base.name + ".hea")
    has_header = header.is_file() or header.is_symlink()  # a broken link is reported by the WFDB reader
    if suffix in (".hea", ".dat") or (suffix not in _SIGNAL_FILE_EXTENSIONS and has_header):
        return _open_wfdb_record(path)
    if suffix == ".mat" and has_header:
        return _open_wfdb_record(path)
    if not (path.exists() or path.is_symlink()) and suffix != ".mat":
        raise ValueError(f"Unsupported ECG file {path}: no such file, and no WFDB header {header.name} beside it")
    if suffix != ".mat" or path.is_file():
        # Clinical exports are recognised by content, whatever their name (".xml", ".XML", ".dcm", none).
        _check_regular_file(path, "ECG file")
        clinical = _sniff_clinical_format(path)
        if clinical is not None:
            return _open_clinical_file(path, clinical)
    if suffix == ".mat":
        return _open_cpsc2018_mat(path)
    if suffix in (".h5", ".hdf5"):
        raise ValueError(f"{path} is an HDF5 file of many ECGs: use read_code_hdf5")
    raise ValueError(
        f"Unsupported ECG file {path}: not a WFDB record (.hea/.dat), a .mat file, nor by its content a DICOM "
        "waveform, GE MUSE / Philips / HL7 aECG XML, SCP-ECG, EDF or ISHNE file"
    )


def read_ecg_file(path: Union[str, os.PathLike], max_duration: Optional[float] = None) -> ECGRecord:
    """Read one ECG, choosing the reader from the file name or, for clinical exports, its content.

    - `.hea`, `.dat`, or a path without extension that has a `.hea` beside it: `read_wfdb_record`;
    - `.mat`: `read_wfdb_record` if a `.hea` of the same name sits beside it (PhysioNet/CinC),
      otherwise `read_cpsc2018_mat` (original CPSC 2018 struct);
    - any other file (and a `.mat` that is none) by its content, whatever its name (`ecg_file_format`):
      DICOM waveform ("DICM" at byte 128; pydicom), GE MUSE XML (`<RestingECG>`), Philips XML
      (`<restingecgdata>`, XLI-compressed or not), HL7 aECG (`<AnnotatedECG>`), SCP-ECG (record
      length and section 0 at its head), ISHNE Holter ("ISHNE1.0") - these five with ecgdatakit,
      whose XML parser is defusedxml - and EDF/EDF+ ("0       " header; edfio, read in parts). These
      need the `clinical` extra (`pip install 'dbeta[clinical]'`); see docs/processor.md.

    Clinical exports give the same contract: millivolts from the file's own gains, units and
    baselines; lead names mapped to the standard spellings ("Lead I (Einthoven)", "ECG V1",
    "MDC_ECG_LEAD_AVR" -> "I", "V1", "aVR"); the file's sampling rate; the rhythm (full-length)
    waveform, never median beats. Their `metadata` holds `name`, `comments` (empty), `format`,
    `reader` (library and version), `total_samples`, `duration_s`, `units`, and where the file says
    so `device`, `acquisition_time` (ISO 8601), `age`, `sex`, `waveform` (DICOM multiplex group);
    `derived_leads` (III, aVR, aVL, aVF when the file stores only I, II, V1-V6: the feature extractor
    derives them from I and II), `skipped` (median beats, other waveform groups, non-ECG channels)
    and `notes` (what the library reported). Files are refused with one line naming them when
    damaged (truncated, no rhythm waveform, no ECG channel, no gain), unsafe (XML declaring
    entities) or larger than `MAX_CLINICAL_FILE_BYTES` (except EDF, read in parts).

    HDF5 files hold many ECGs: read them with `read_code_hdf5`. `max_duration` (seconds) reads
    only the start of long recordings (see the readers); a whole read of more than
    `MAX_READ_ELEMENTS` values is refused before anything is read.
    """
    return _read_opened(_open_ecg_file(path), max_duration)


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
# Input rules shared by the feature extractor and the sliding windows
# --------------------------------------------------------------------------------------------


def _is_record(value: Any) -> bool:
    """Whether `value` is an `ECGRecord` (duck-typed: a model folder's copy of this module, loaded as
    remote code, has its own class)."""
    return isinstance(value, ECGRecord) or (
        not isinstance(value, (np.ndarray, torch.Tensor, str, os.PathLike, list, tuple, dict))
        and all(hasattr(value, name) for name in ("signal", "lead_names", "sampling_rate"))
    )


def _sampling_rate_argument(sampling_rate: Any) -> float:
    """A `sampling_rate` argument as a float: a real number of Hz in the accepted ECG range."""
    if isinstance(sampling_rate, bool) or not isinstance(sampling_rate, (int, float, np.integer, np.floating)):
        raise TypeError(f"sampling_rate must be a number, got {type(sampling_rate).__name__}")
    rate = float(sampling_rate)
    if not math.isfinite(rate) or not MIN_SAMPLING_RATE <= rate <= MAX_SAMPLING_RATE:
        raise ValueError(
            f"sampling_rate={sampling_rate!r} is not a plausible ECG sampling rate: it must be a positive "
            f"number of Hz from {MIN_SAMPLING_RATE:g} to {MAX_SAMPLING_RATE:g}"
        )
    return rate


def _check_input_leads(num_leads: int, lead_names: Optional[list[str]]) -> list[str]:
    """The names of an input's `num_leads` leads, by the lead rules of the feature extractor.

    Unnamed input must hold the 12 standard leads in the standard order; named leads must be as
    many as the input's, unique (case-insensitively) and standard, except that with all 12
    standard leads present extra leads (e.g. Frank leads vx/vy/vz) are allowed and dropped.
    """
    if lead_names is None:
        if num_leads != len(STANDARD_LEAD_NAMES):
            raise ValueError(
                f"Got {num_leads} leads without `lead_names`; unnamed input must have the 12 standard "
                f"leads in the order {list(STANDARD_LEAD_NAMES)}. Pass `lead_names` for other lead sets."
            )
        return list(STANDARD_LEAD_NAMES)
    if isinstance(lead_names, str) or len(lead_names) != num_leads:
        raise ValueError(f"lead_names has {len(lead_names)} entries but the ECG has {num_leads} leads")
    canonical = [canonical_lead_name(name) for name in lead_names]
    standard = {name for name in canonical if name in STANDARD_LEAD_NAMES}
    duplicates = sorted({name for name in canonical if canonical.count(name) > 1})
    if duplicates:
        raise ValueError(f"Repeated lead names {duplicates} in {list(lead_names)}")
    unknown = [name for name in lead_names if canonical_lead_name(name) not in STANDARD_LEAD_NAMES]
    # With all 12 standard leads present, extra leads are simply dropped; with a reduced set an
    # unknown name is more likely a typo that would silently zero-fill a lead, so it is an error.
    if unknown and len(standard) < len(STANDARD_LEAD_NAMES):
        raise ValueError(
            f"Unknown lead names {unknown}; expected names among {list(STANDARD_LEAD_NAMES)} (case-insensitive)"
        )
    if not standard:
        raise ValueError(f"None of the leads {list(lead_names)} is a standard ECG lead")
    return list(lead_names)


def _check_record_arguments(
    label: str, record_rate: float, record_leads: list[str], sampling_rate: Any, lead_names: Any
) -> None:
    """A record (or file) describes itself: explicit `sampling_rate` / `lead_names` may only confirm it."""
    if sampling_rate is not None:
        rate = _sampling_rate_argument(sampling_rate)
        if not math.isclose(rate, float(record_rate)):
            raise ValueError(f"{label}: sampling_rate={sampling_rate} contradicts the record's rate {record_rate}")
    lead_names = _lead_names_argument(lead_names)
    if lead_names is not None and [canonical_lead_name(n) for n in lead_names] != [
        canonical_lead_name(n) for n in record_leads
    ]:
        raise ValueError(f"{label}: lead_names={lead_names} contradicts the record's leads {list(record_leads)}")


def _units_scale(units: Any) -> float:
    """The factor that brings `units` ("mV", "uV", "V") to millivolts."""
    scale = _INPUT_UNITS_TO_MILLIVOLTS.get(str(units).strip().lower())
    if scale is None:
        raise ValueError(f"units must be one of 'mV', 'uV', 'V', got {units!r}")
    return scale


def _check_record_units(label: str, units: Any) -> None:
    """A record's (or file's) signal is in millivolts: any other `units` contradicts it."""
    if _units_scale(units) != 1.0:
        raise ValueError(
            f"{label}: units={units!r} contradicts the record, whose signal is in millivolts (readers convert "
            "with the file's own gains and units)"
        )


# --------------------------------------------------------------------------------------------
# Long recordings: sliding windows
# --------------------------------------------------------------------------------------------


#: Seconds of signal `iter_ecg_windows` reads from a file at a time (bounds its memory).
_WINDOW_READ_SECONDS = 300.0

#: Most windows `iter_ecg_windows` cuts from one recording (a 24-hour Holter with a 1 s stride is
#: 86,400). More, e.g. from a stride of a nanosecond, is refused before anything is read.
MAX_WINDOWS = 100_000


def _seconds_argument(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _window_starts(total_samples: int, window: int, stride: int, source: Any) -> list[int]:
    """Start samples of the windows of a recording: every `stride` samples while a full window fits,
    plus one last window ending with the recording when the tail after the last full window is not
    covered; a recording shorter than one window is one window. More than `MAX_WINDOWS` is an error."""
    if total_samples <= window:
        return [0]
    full = (total_samples - window) // stride + 1
    tail = (full - 1) * stride + window < total_samples
    if full + tail > MAX_WINDOWS:
        raise ValueError(
            f"{source}: {full + tail} windows of {window} samples every {stride} samples, more than MAX_WINDOWS "
            f"({MAX_WINDOWS}); use a longer stride"
        )
    return list(range(0, full * stride, stride)) + ([total_samples - window] if tail else [])


def _open_window_source(source: Any, sampling_rate: Any, lead_names: Any, units: Any) -> _OpenedRecord:
    """Open what `iter_ecg_windows` cuts, by the rules of the feature extractor: a file or a record
    describes itself (arguments may only confirm it); an array follows the extractor's lead rules."""
    if isinstance(source, (str, os.PathLike)):
        opened = _open_ecg_file(source)
        _check_record_arguments(str(source), opened.sampling_rate, opened.lead_names, sampling_rate, lead_names)
        _check_record_units(str(source), units)
        return opened
    if _is_record(source):
        name = (getattr(source, "metadata", None) or {}).get("name")
        label = f"record {name or 'without a name'}"
        _check_record_arguments(label, source.sampling_rate, list(source.lead_names), sampling_rate, lead_names)
        _check_record_units(label, units)
        signal = _as_numeric_array(source.signal)
        if signal.ndim != 2:
            raise ValueError(f"{label}: the record's signal must be 2-D (leads, samples), got shape {signal.shape}")
        names, rate = list(source.lead_names), float(source.sampling_rate)
        metadata = dict(getattr(source, "metadata", None) or {})
    else:
        if sampling_rate is None:
            raise ValueError("An array needs `sampling_rate` to be cut into windows.")
        _units_scale(units)  # converted by the feature extractor, window by window
        rate = _sampling_rate_argument(sampling_rate)
        signal = _as_numeric_array(source)
        if signal.ndim != 2:
            raise ValueError(f"An ECG must be 2-D (leads, samples), got shape {signal.shape}.")
        names = _check_input_leads(signal.shape[0], _lead_names_argument(lead_names))
        label, metadata = "The ECG", {"name": "array", "comments": []}
    if signal.shape[1] == 0:
        raise ValueError(f"Empty ECG input: shape {signal.shape}")
    if len(names) != signal.shape[0]:
        raise ValueError(f"{label}: {len(names)} lead names for {signal.shape[0]} leads")
    return _OpenedRecord(
        source=label,
        lead_names=names,
        sampling_rate=rate,
        total_samples=int(signal.shape[1]),
        metadata=metadata,
        read_part=lambda start, stop: signal[:, start:stop],
        from_disk=False,
    )


def iter_ecg_windows(
    source: Any,
    window_seconds: float = 10.0,
    stride_seconds: Optional[float] = None,
    sampling_rate: Optional[float] = None,
    lead_names: Optional[list[str]] = None,
    units: str = "mV",
) -> Iterator[tuple[float, ECGRecord]]:
    """Sliding windows of a long ECG: yields `(start time in seconds, ECGRecord of the window)`.

    Windows are `window_seconds` long and start every `stride_seconds` (default: the window
    length, i.e. no overlap), both rounded to whole samples. When the tail after the last full
    window is not covered, one more window is cut, aligned to the end of the recording (it starts
    at `duration - window_seconds` and overlaps the one before): every sample is in a window. A
    recording shorter than one window is one window. Each window's start time (also in its
    `metadata["window_start_s"]`) is its real start, `start sample / sampling_rate`.

    Everything is checked when this function is called, before any sample is read: the file
    (the same reader contract as `read_ecg_file`), a `sampling_rate` or `lead_names` that
    contradicts a file or record (an error, as in `DBetaFeatureExtractor`), an array's leads (the
    extractor's lead rules: unnamed input must have the 12 standard leads), a stride of less than
    one sample, and more than `MAX_WINDOWS` windows.

    WFDB records (`.dat` files, and PhysioNet/CinC MATLAB v4 `.mat` files) are streamed: windows
    are read from disk a block of about five minutes at a time, so memory stays that of one block
    whatever the recording's length (a 24-hour Holter included). MATLAB v5 and CPSC files are read
    whole (they are bounded by `MAX_READ_ELEMENTS`). An `ECGRecord`, or a `(leads, samples)` array
    in millivolts (with `sampling_rate`, and `lead_names` when not the 12 standard leads in the
    standard order), is cut in memory. `units` is that of an array (the feature extractor converts
    each window); a file or record is in millivolts, so any other `units` contradicts it.

    Raises:
        ValueError: a non-positive or non-finite window or stride, a stride of less than one sample,
            more than `MAX_WINDOWS` windows, an unreadable file, a contradicting `sampling_rate` or
            `lead_names`, or leads that break the lead rules.
    """
    window_seconds = _seconds_argument(window_seconds, "window_seconds")
    stride_seconds = window_seconds if stride_seconds is None else _seconds_argument(stride_seconds, "stride_seconds")
    opened = _open_window_source(source, sampling_rate, lead_names, units)
    rate = opened.sampling_rate
    for name, seconds in (("window_seconds", window_seconds), ("stride_seconds", stride_seconds)):
        if seconds * rate < 1 - 1e-9:
            raise ValueError(
                f"{opened.source}: {name}={seconds!r} is less than one sample at {rate:g} Hz ({1 / rate:.3g} s)"
            )
    window = max(1, int(round(window_seconds * rate)))
    stride = max(1, int(round(stride_seconds * rate)))
    starts = _window_starts(opened.total_samples, window, stride, opened.source)
    # Windows are read a block at a time: the span of `per_read` windows, about
    # `_WINDOW_READ_SECONDS` of signal and at most `MAX_READ_ELEMENTS` values.
    budget = min(int(_WINDOW_READ_SECONDS * rate), MAX_READ_ELEMENTS // max(1, len(opened.lead_names)))
    per_read = max(1, (budget - window) // stride + 1)
    return _iter_windows(opened, starts, window, per_read)


def _iter_windows(opened: _OpenedRecord, starts: list[int], window: int, per_read: int):
    rate = opened.sampling_rate
    for first in range(0, len(starts), per_read):
        group = starts[first : first + per_read]
        low, high = group[0], min(group[-1] + window, opened.total_samples)
        block = opened.read(low, high)
        for start in group:
            metadata = dict(opened.metadata, window_start_s=start / rate)
            signal = block[:, start - low : start - low + window]
            yield start / rate, ECGRecord(signal, list(opened.lead_names), rate, metadata)


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
                trace per lead. Records and files bring their own lead names, sampling rate and
                units (millivolts): `sampling_rate`, `lead_names` and `units` given with them may
                only confirm them, a contradiction is an error.
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
                `min_duration`, a sampling rate outside 50-10000 Hz, a missing sampling rate
                that cannot be assumed, an ECG whose every lead is flat (peak-to-peak under
                `FLAT_LEAD_PEAK_TO_PEAK_MV` in the part the model reads; zero-filled absent leads
                do not count), or a `sampling_rate`, `lead_names` or `units` contradicting a file
                or record. In a batch the message names the bad ECG's index (and
                its file or record name).
            TypeError: non-numeric input (strings, booleans, complex numbers, objects).

        Warns:
            UserWarning: an ECG whose median peak-to-peak amplitude over its leads exceeds
                `IMPLAUSIBLE_PEAK_TO_PEAK_MV` (20 mV) after conversion to millivolts: most likely
                microvolts passed as millivolts or raw ADC counts. The values are not rescaled.
            UserWarning: an ECG with some (not all) flat leads, once per ECG, naming the leads.
        """
        if kwargs:
            logger.warning_once(f"DBetaFeatureExtractor ignores unknown arguments: {sorted(kwargs)}")
        normalize = self.normalize if normalize == "default" else normalize
        if normalize not in _NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {_NORMALIZATIONS}, got {normalize!r}")
        scale = _units_scale(units)
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
        if _is_record(ecg) or isinstance(ecg, (str, os.PathLike)):
            return [self._record_input(ecg, sampling_rate, lead_names, index=None)]
        if isinstance(ecg, (list, tuple)):
            if len(ecg) == 0:
                raise ValueError("Empty ECG input: got an empty list")
            is_record = [_is_record(item) or isinstance(item, (str, os.PathLike)) for item in ecg]
            if all(is_record):
                return [self._record_input(item, sampling_rate, lead_names, index=i) for i, item in enumerate(ecg)]
            if any(is_record):
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

    def read_file(self, path: Union[str, os.PathLike]) -> ECGRecord:
        """Read an ECG file the way this extractor prepares it: only the part the model's input needs
        (its `num_samples` at `sampling_rate`, plus a margin for resampling), whatever the recording's
        length; `metadata["total_samples"]` keeps the full length. The check of the rate against the
        needed window is repeated, exactly, when the record is processed."""
        return read_ecg_file(path, max_duration=self.num_samples / float(self.sampling_rate) + _READ_MARGIN_SECONDS)

    def _record_input(
        self,
        record: Union[ECGRecord, str, os.PathLike],
        sampling_rate: Optional[float],
        lead_names: Optional[list[str]],
        index: Optional[int],
    ) -> _ECGGroup:
        position = None if index is None else f"ECG {index} of the batch"
        origin = None
        if not _is_record(record):
            origin = str(record)
            try:
                record = self.read_file(record)
            except (ValueError, TypeError) as error:
                if position is None:
                    raise
                raise type(error)(f"{position}: {error}") from error
        origin = origin or f"record {record.metadata.get('name') or 'without a name'}"
        label = origin if position is None else f"{position} ({origin})"
        # The file's own description wins; explicit arguments may only confirm it (one rule, shared
        # with `iter_ecg_windows`).
        _check_record_arguments(label, record.sampling_rate, list(record.lead_names), sampling_rate, lead_names)
        signal = _as_numeric_array(record.signal)
        if signal.ndim != 2:
            raise ValueError(f"{label}: the record's signal must be 2-D (leads, samples), got shape {signal.shape}")
        metadata = getattr(record, "metadata", None) or {}
        total = int(metadata.get("total_samples") or signal.shape[-1])
        return _ECGGroup(
            signal[None], float(record.sampling_rate), list(record.lead_names), total, label, from_record=True
        )

    # -- processing ------------------------------------------------------------------------------

    def _process_batch(self, group: _ECGGroup, scale: float, normalize: Optional[str], units: str) -> np.ndarray:
        """(batch, leads, samples) input -> (batch, 12, num_samples) float32 model input."""
        signals = group.signals
        if signals.size == 0:
            raise ValueError(f"Empty ECG input: shape {signals.shape}")
        if group.from_record:
            _check_record_units(group.label or "The record", units)
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
        self._check_flat_leads(leads, present, group)
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

    def _check_flat_leads(self, millivolts: np.ndarray, present: np.ndarray, group: _ECGGroup) -> None:
        """Refuse ECGs whose every lead is flat; warn (once per ECG) about ECGs with some flat leads.

        A lead is flat when its peak-to-peak amplitude over the part the model reads is under
        `FLAT_LEAD_PEAK_TO_PEAK_MV` (constant, e.g. all zeros, or disconnected): the threshold with
        which data preparation rejects flat leads. Leads the input does not have (zero-filled on
        purpose, `present` False) are not input and never count as flat.
        """
        if not present.any():
            return
        peak_to_peak = np.ptp(millivolts[:, present], axis=-1)  # (batch, present leads)
        flat = peak_to_peak < FLAT_LEAD_PEAK_TO_PEAK_MV - 1e-9
        names = [name for name, kept in zip(self.lead_names, present) if kept]
        dead = np.flatnonzero(flat.all(axis=-1))
        if dead.size:
            raise ValueError(
                f"{group.describe(dead)}: every lead is flat (peak-to-peak under {FLAT_LEAD_PEAK_TO_PEAK_MV * 1000:g} uV "
                f"in the {self.num_samples / self.sampling_rate:g} s the model reads): there is no ECG to score "
                "(an empty or disconnected recording, or values far smaller than the stated units)"
            )
        for row in np.flatnonzero(flat.any(axis=-1)):
            flat_leads = [name for name, is_flat in zip(names, flat[row]) if is_flat]
            warnings.warn(
                f"{group.describe(np.array([row]))}: flat lead(s) {flat_leads} (peak-to-peak under "
                f"{FLAT_LEAD_PEAK_TO_PEAK_MV * 1000:g} uV in the {self.num_samples / self.sampling_rate:g} s the model "
                "reads: constant or disconnected); scored as given, but the scores may be unreliable",
                UserWarning,
                stacklevel=5,
            )

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
        lead_names = _check_input_leads(signals.shape[1], lead_names)
        canonical = [canonical_lead_name(name) for name in lead_names]
        standard_positions = {name: index for index, name in enumerate(canonical) if name in STANDARD_LEAD_NAMES}

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
        return _sampling_rate_argument(sampling_rate)

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
    from_record: bool = False  # a file or an ECGRecord: in millivolts, with its own rate and leads

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
    "FLAT_LEAD_PEAK_TO_PEAK_MV",
    "INDEPENDENT_LEAD_NAMES",
    "MAX_READ_BYTES",
    "MAX_READ_ELEMENTS",
    "MAX_WINDOWS",
    "MIMIC_LEAD_NAMES",
    "STANDARD_LEAD_NAMES",
    "CLINICAL_FORMATS",
    "MAX_CLINICAL_FILE_BYTES",
    "canonical_lead_name",
    "ecg_file_format",
    "iter_ecg_windows",
    "read_code_hdf5",
    "read_cpsc2018_mat",
    "read_ecg_file",
    "read_wfdb_record",
]
