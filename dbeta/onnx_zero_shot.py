"""Zero-shot ECG scoring with an exported D-BETA ECG tower: numpy and onnxruntime only.

`dbeta export-onnx MODEL --output DIR --labels AFIB LBBB ...` copies this file into DIR next to
`ecg_encoder.onnx`, `label_embeddings.npz` and `dbeta_onnx.json`. It imports neither torch nor
transformers, so it is all a device needs:

    python onnx_zero_shot.py DIR ecg.npy [--top_k 3] [--softmax]

    >>> scorer = ONNXZeroShotScorer("DIR")
    >>> scorer(signal)          # (12, T) millivolts at the model's rate, in the model's lead order
    [{'label': 'AFIB', 'score': 0.93}, ...]

Input: millivolts, sampled at `dbeta_onnx.json`'s `preprocessing.sampling_rate` (500 Hz), leads in
its `lead_names` order (MIMIC-IV-ECG: I, II, III, aVR, aVF, aVL, V1-V6; zeros for leads a device
lacks). The first `num_samples` samples are used, normalised as `preprocessing.normalize` says
(zscore / minmax, or none), and shorter recordings are zero-padded at the end, as
`DBetaFeatureExtractor` does. Resampling is not done here (resample with the same polyphase
filter as the package, `scipy.signal.resample_poly`, if the device records at another rate).

Scores: `sigmoid(logit_scale * ecg @ label.T + logit_bias)` per label (the pipeline's
`multi_label=True`), or a softmax across labels; the same numbers as the transformers pipeline.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime


class ONNXZeroShotScorer:
    """Scores ECGs against the labels saved at export time."""

    def __init__(self, folder: str | Path, threads: int | None = None):
        folder = Path(folder)
        self.metadata = json.loads((folder / "dbeta_onnx.json").read_text(encoding="utf-8"))
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(
            str(folder / self.metadata["ecg_encoder"]["file"]), options, providers=["CPUExecutionProvider"]
        )
        zero_shot = self.metadata.get("zero_shot")
        if zero_shot is None:
            raise ValueError(f"{folder} has no label embeddings: export with --labels.")
        saved = np.load(folder / zero_shot["labels_file"])
        self.labels = [str(label) for label in saved["labels"]]
        self.label_embeddings = saved["embeddings"].astype(np.float32)
        self.logit_scale = float(self.metadata["ets"]["logit_scale"])
        self.logit_bias = float(self.metadata["ets"]["logit_bias"])
        self.num_leads = int(self.metadata["ecg_encoder"]["inputs"]["input_values"]["shape"][1])
        self.num_samples = int(self.metadata["preprocessing"]["num_samples"])
        # The amplitude normalisation the model's feature extractor applies (None: millivolts as they are).
        self.normalize = self.metadata["preprocessing"].get("normalize")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"{folder}: unknown preprocessing.normalize {self.normalize!r} (known: {NORMALIZATIONS}).")

    def prepare(self, signal) -> np.ndarray:
        """`(B, leads, num_samples)` float32 input from `(leads, T)` or `(B, leads, T)` millivolts."""
        values = np.asarray(signal, dtype=np.float32)
        if values.ndim == 2:
            values = values[None]
        if values.ndim != 3 or values.shape[1] != self.num_leads:
            raise ValueError(f"Expected (leads={self.num_leads}, samples) or a batch of them, got {values.shape}.")
        if not np.isfinite(values).all():
            raise ValueError("The ECG contains NaN or infinite values.")
        values = values[:, :, : self.num_samples]
        if self.normalize is not None:
            values = _normalize(values, self.normalize)
        if values.shape[2] < self.num_samples:
            values = np.pad(values, ((0, 0), (0, 0), (0, self.num_samples - values.shape[2])))
        return np.ascontiguousarray(values)

    def embed(self, signal) -> np.ndarray:
        """ECG embeddings `(B, hidden)`."""
        (embeddings,) = self.session.run(None, {"input_values": self.prepare(signal)})
        return embeddings

    def logits(self, signal) -> np.ndarray:
        """ETS logits `(B, num_labels)`."""
        return self.logit_scale * self.embed(signal) @ self.label_embeddings.T + self.logit_bias

    def scores(self, signal, multi_label: bool = True) -> np.ndarray:
        """`(B, num_labels)` sigmoid scores (or softmax across labels with `multi_label=False`)."""
        return _scores(self.logits(signal), multi_label)

    def __call__(self, signal, top_k: int | None = None, multi_label: bool = True):
        """Labels and scores, best first: a list for one ECG, a list of lists for a batch."""
        batched = np.asarray(signal).ndim == 3
        logits = self.logits(signal)
        scores = _scores(logits, multi_label)
        results = []
        for row_logits, row_scores in zip(logits, scores):
            order = np.argsort(-row_logits, kind="stable")[:top_k]
            results.append([{"label": self.labels[i], "score": float(row_scores[i])} for i in order])
        return results if batched else results[0]


NORMALIZATIONS = (None, "zscore", "minmax")


def _normalize(values: np.ndarray, method: str) -> np.ndarray:
    """`DBetaFeatureExtractor`'s normalisation, before zero-padding: "zscore" per lead, "minmax" per
    recording to [0, 1], over the leads that hold data (all-zero leads, absent on the device, stay zero)."""
    values = values.astype(np.float64)
    present = np.any(values != 0, axis=2)  # (batch, leads)
    out = np.zeros_like(values)
    for row in range(values.shape[0]):
        data = values[row, present[row]]
        if data.size == 0:
            continue
        if method == "zscore":
            data = (data - data.mean(axis=-1, keepdims=True)) / np.maximum(data.std(axis=-1, keepdims=True), 1e-8)
        else:
            data = (data - data.min()) / np.maximum(data.max() - data.min(), 1e-8)
        out[row, present[row]] = data
    return out.astype(np.float32)


def _scores(logits: np.ndarray, multi_label: bool) -> np.ndarray:
    logits = logits.astype(np.float64)
    if multi_label:
        return 1.0 / (1.0 + np.exp(-logits))
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Zero-shot scores of ECGs saved as .npy arrays (leads, samples).")
    parser.add_argument("folder", help="the export folder (dbeta_onnx.json, ecg_encoder.onnx, label_embeddings.npz)")
    parser.add_argument("ecgs", nargs="+", help=".npy files: (leads, samples) millivolts at the model's rate")
    parser.add_argument("--top_k", type=int)
    parser.add_argument("--softmax", action="store_true", help="softmax across labels instead of sigmoid scores")
    args = parser.parse_args(argv)
    scorer = ONNXZeroShotScorer(args.folder)
    for path in args.ecgs:
        result = scorer(np.load(path), top_k=args.top_k, multi_label=not args.softmax)
        print(json.dumps({"ecg": path, "scores": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
