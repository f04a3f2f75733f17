"""The vendored real LUDB ECGs (`dbeta/assets/ludb_eval/*.npz`): the one reader of their format.

`dbeta.train.demo.real_ecg` builds the demo's real-ECG evaluation on it, and the web demo offers
its records as examples (the inference package imports no training code, so the reader lives here).
Format (see the folder's README): `signals_delta` int16 (N, 12, T), the first differences of
round(mV x `gain`), `gain` float32 (N, 12), `sha256` of `signals_delta`, and the record ids,
reports, rhythms, lead names and sampling rate.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from dbeta import ASSETS_DIR

LUDB_EVAL_FILE = ASSETS_DIR / "ludb_eval" / "ludb_eval.npz"


def signals_sha256(delta: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(delta, dtype="<i2").tobytes()).hexdigest()


def decode_signals(delta: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """(N, leads, T) float32 signals from their int16 first differences and per-lead gains."""
    return (np.cumsum(delta.astype(np.int32), axis=-1) / gain[..., None]).astype(np.float32)


def read_ludb_npz(path: str | Path = LUDB_EVAL_FILE, verify: bool = True) -> dict:
    """`{record_ids, signals, reports, rhythms, lead_names, sampling_rate}` of a vendored file;
    `verify` checks the samples against the stored SHA-256."""
    with np.load(path, allow_pickle=False) as data:
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
        }
