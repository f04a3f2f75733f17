"""The vendored real LUDB ECGs (`dbeta/assets/ludb_eval/*.npz`): the one reader of their format.

`dbeta.train.demo.real_ecg` builds the demo's real-ECG evaluation on it, and the web demo offers
its records as examples (the inference package imports no training code, so the reader lives here).
Format (see the folder's README): `signals_delta` int16 (N, 12, T), the first differences of
round(mV x `gain`), `gain` float32 (N, 12), `sha256` of `signals_delta`, and the record ids,
reports, rhythms, lead names and sampling rate.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from dbeta import ASSETS_DIR

LUDB_EVAL_FILE = ASSETS_DIR / "ludb_eval" / "ludb_eval.npz"


def signals_sha256(delta: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(delta, dtype="<i2").tobytes()).hexdigest()


def decode_signals(delta: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """(N, leads, T) float32 signals from their int16 first differences and per-lead gains."""
    return (np.cumsum(delta.astype(np.int32), axis=-1) / gain[..., None]).astype(np.float32)


#: The demo's protocol (docs/demo.md): recipe choices are made on a dev split of the training part
#: and the evaluation patients are read once per reported run. With this environment variable set to
#: "dev" (`benchmarks/sim_to_real.py --protocol dev` sets it for itself and its children), no reader
#: here opens an evaluation file: `EvaluationSetLocked` is raised instead.
PROTOCOL_ENV = "DBETA_PROTOCOL"


class EvaluationSetLocked(RuntimeError):
    """Raised when an evaluation file is opened under the dev protocol."""


def dev_protocol() -> bool:
    """Whether this process runs under the dev protocol (`DBETA_PROTOCOL=dev`)."""
    value = os.environ.get(PROTOCOL_ENV, "").strip().lower()
    if value not in ("", "dev", "eval"):
        raise ValueError(f"{PROTOCOL_ENV}={value!r}: expected 'dev' or 'eval' (or unset)")
    return value == "dev"


def _open_part(path: str | Path):
    """The opened `.npz`, refused under the dev protocol when it is an evaluation part (recognised
    by its content: the evaluation file lists the training ids beside its own, the training file
    the reverse), whatever its name."""
    data = np.load(path, allow_pickle=False)
    if "training_record_ids" in data.files and dev_protocol():
        data.close()
        raise EvaluationSetLocked(
            f"{path}: the evaluation set may not be read under the dev protocol ({PROTOCOL_ENV}=dev); "
            "judge choices on the dev split"
        )
    return data


def read_recorded_ids(path: str | Path, key: str) -> list[str]:
    """One id list of a vendored file (`record_ids`, `training_record_ids` or `evaluation_record_ids`)."""
    with _open_part(path) as data:
        return [str(value) for value in data[key]]


def read_ludb_npz(path: str | Path = LUDB_EVAL_FILE, verify: bool = True) -> dict:
    """`{record_ids, signals, reports, rhythms, lead_names, sampling_rate, split}` of a vendored file
    (`split`: "evaluation" or "training"); `verify` checks the samples against the stored SHA-256.
    Refused under the dev protocol for an evaluation file (`EvaluationSetLocked`)."""
    with _open_part(path) as data:
        delta, gain = data["signals_delta"], data["gain"]
        if verify and signals_sha256(delta) != str(data["sha256"]):
            raise ValueError(f"{path}: the signals do not match their SHA-256; the file is damaged.")
        return {
            "record_ids": [str(value) for value in data["record_ids"]],
            "signals": decode_signals(delta, gain),
            "reports": [str(value) for value in data["reports"]],
            "rhythms": [str(value) for value in data["rhythms"]],
            "lead_names": tuple(str(value) for value in data["lead_names"]),
            "sampling_rate": int(data["sampling_rate"]),
            "split": "evaluation" if "training_record_ids" in data.files else "training",
        }
