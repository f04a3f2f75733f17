"""Shared pieces of the pre-training tests: the packaged demo tokenizer, prepared-style rows and
a tiny configuration that fits that tokenizer."""

from pathlib import Path

import numpy as np

from tests.tiny import tiny_config


def demo_tokenizer():
    """The offline T5-style tokenizer that ships in `dbeta/assets/demo_tokenizer`."""
    from dbeta.train.demo.build_demo_tokenizer import load_demo_tokenizer

    return load_demo_tokenizer()


def tiny_pretraining_config(tokenizer, **overrides):
    """`tiny_config()` with the text vocabulary sized for `tokenizer`."""
    text_config = dict(
        vocab_size=len(tokenizer), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    return tiny_config(text_config=text_config, **overrides)


def write_tiny_config(tokenizer, path: Path, **overrides) -> Path:
    tiny_pretraining_config(tokenizer, **overrides).to_json_file(str(path))
    return path


REPORTS = [
    "sinus rhythm normal ecg",
    "sinus bradycardia borderline ecg",
    "atrial fibrillation with rapid ventricular response abnormal ecg",
    "sinus rhythm left bundle branch block abnormal ecg",
    "sinus tachycardia low qrs voltages inverted t waves abnormal ecg",
    "atrial fibrillation abnormal ecg",
]
MIMIC_ORDER = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]


def prepared_rows(count: int, seed: int = 0, lead_names=MIMIC_ORDER, num_samples: int = 5000):
    """Rows shaped like `train/data/prepare_mimic_iv_ecg.py` output (int16 `ecg` + per-lead `ecg_gain`),
    with their dataset `index`: random signals (about 0.5 mV) and the reports above in turn."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(count):
        signal = rng.normal(0, 0.5, size=(12, num_samples)).astype(np.float32)
        gain = np.full(12, 1000.0, dtype=np.float32)
        rows.append(
            {
                "ecg": np.round(signal * gain[:, None]).astype(np.int16),
                "ecg_gain": gain,
                "lead_names": list(lead_names),
                "report": REPORTS[index % len(REPORTS)],
                "index": index,
            }
        )
    return rows
