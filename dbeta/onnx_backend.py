"""`dbeta embed/classify --backend onnx --onnx_dir DIR`: the ECG tower run by onnxruntime on the CPU.

DIR is a folder written by `dbeta export-onnx MODEL --output DIR [--quantize int8 | int8-static]`
from the same MODEL that `--model` names (a statically quantized graph is an ordinary ONNX graph
with QuantizeLinear / DequantizeLinear nodes: it runs here unchanged). Reading, resampling, windowing, sharding and writing stay those of the
PyTorch path: only the batch's forward pass changes (`dbeta.embedding.embed_ecg_batch` hands the
batch to `ONNXECGEncoder.embed_ecg_inputs`). The folder is checked before any record is read: its
preprocessing (rate, samples, lead order, normalisation) and width must be the model's, and it must
have been exported from a model folder with the same weights and config files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: Model-folder files whose content decides the ECG tower's output: an export records their
#: fingerprint, and a folder exported from other weights is refused.
MODEL_FILES_CHECKED = ("config.json", "preprocessor_config.json", "model.safetensors", "pytorch_model.bin")


class ONNXFolderError(ValueError):
    """An `--onnx_dir` that cannot be used with this `--model` (one line, exit status 2)."""


def source_model_fingerprint(model_path) -> list | None:
    """`[name, size, sampled sha256]` of the model folder's weight and config files; None for a Hub id."""
    from dbeta.sharding import _model_fingerprint

    folder = Path(model_path).expanduser()
    if not folder.is_dir():
        return None
    return [entry for entry in _model_fingerprint(str(folder)) if entry[0] in MODEL_FILES_CHECKED]


def read_export_metadata(folder) -> dict:
    """`dbeta_onnx.json` of an export folder; ONNXFolderError naming what is missing."""
    from dbeta.export_onnx import METADATA_FILE

    folder = Path(folder)
    if not folder.is_dir():
        raise ONNXFolderError(f"--onnx_dir {folder}: no such folder (write one with `dbeta export-onnx MODEL --output {folder}`)")
    path = folder / METADATA_FILE
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
        ecg_file = metadata["ecg_encoder"]["file"]
    except FileNotFoundError:
        raise ONNXFolderError(f"--onnx_dir {folder}: no {METADATA_FILE} (not a folder written by `dbeta export-onnx`)") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ONNXFolderError(f"--onnx_dir {folder}: unreadable {METADATA_FILE} ({type(error).__name__}: {error})") from None
    if not (folder / ecg_file).is_file():
        raise ONNXFolderError(f"--onnx_dir {folder}: {ecg_file} is missing (re-run `dbeta export-onnx`)")
    return metadata


def check_source_model(folder, metadata: dict, model_path) -> None:
    """ONNXFolderError when the export was made from a model folder with other weights or config
    files than `model_path` (checked when both are folders)."""
    recorded = metadata.get("source_model_fingerprint")
    current = source_model_fingerprint(model_path)
    if recorded is not None and current is not None and recorded != current:
        raise ONNXFolderError(
            f"--onnx_dir {folder} was exported from another model than --model {model_path} (its weights or config "
            f"differ); re-export it: dbeta export-onnx {model_path} --output {folder}"
        )


class ONNXECGEncoder:
    """The exported ECG tower: `(batch, leads, samples)` float32 model inputs -> `(batch, hidden)` embeddings."""

    def __init__(self, folder, threads: int | None = None):
        from dbeta.export_onnx import onnx_session

        self.folder = Path(folder)
        self.metadata = read_export_metadata(self.folder)
        self.quantization = self.metadata["ecg_encoder"].get("quantization")
        self.hidden_size = int(self.metadata["ecg_encoder"]["outputs"]["pooler_output"]["shape"][1])
        self.session = onnx_session(self.folder / self.metadata["ecg_encoder"]["file"], threads=threads)

    def check_matches(self, model_path, feature_extractor, hidden_size: int) -> None:
        """ONNXFolderError unless this export was made from `model_path` (same weights and config
        files when both are folders) with the feature extractor's preprocessing and the model's width."""
        check_source_model(self.folder, self.metadata, model_path)
        where = f"--onnx_dir {self.folder}"
        preprocessing = self.metadata.get("preprocessing", {})
        expected = {
            "sampling_rate": float(feature_extractor.sampling_rate),
            "num_samples": int(feature_extractor.num_samples),
            "lead_names": list(feature_extractor.lead_names),
            "normalize": feature_extractor.normalize,
        }
        for key, value in expected.items():
            if preprocessing.get(key) != value:
                raise ONNXFolderError(
                    f"{where} expects {key}={preprocessing.get(key)!r} but the model's feature extractor has {value!r}; "
                    f"re-export it from --model {model_path}"
                )
        if self.hidden_size != int(hidden_size):
            raise ONNXFolderError(f"{where} gives {self.hidden_size}-d embeddings, the model {hidden_size}-d; re-export it")

    def embed_ecg_inputs(self, input_values) -> np.ndarray:
        values = np.ascontiguousarray(input_values, dtype=np.float32)
        (embeddings,) = self.session.run(None, {"input_values": values})
        return embeddings

    def describe(self) -> str:
        method = f"int8 {self.quantization.get('method', '')}".strip() if self.quantization else "fp32"
        return f"onnxruntime {method} ({self.folder})"
