"""Export D-BETA's two towers to ONNX, for inference without PyTorch.

    dbeta export-onnx MODEL --output DIR [--labels AFIB LBBB "sinus rhythm"] [--opset 18] [--quantize int8]
    dbeta export-onnx MODEL --output DIR --quantize int8-static --calibration_data FOLDER [--calibration_records N]
    python -m dbeta.export_onnx MODEL --output DIR ...

Writes to DIR:

- `ecg_encoder.onnx`: `input_values` float32 `(batch, 12, 5000)` (millivolts, 500 Hz, the model's
  lead order: what `DBetaFeatureExtractor` makes) -> `pooler_output` float32 `(batch, 768)`, the
  ECG embedding (`get_ecg_features(...).pooler_output`). The batch is dynamic.
- `text_encoder.onnx` (models with a text tower): `input_ids` int64 `(batch, length)` and
  `attention_mask` int64 `(batch, length)` -> `pooler_output` float32 `(batch, 768)`
  (`get_text_features(...).pooler_output`). Batch and length are dynamic.
- `tokenizer/`: the model's tokenizer (`tokenizer.json` works with the `tokenizers` library alone).
- `dbeta_onnx.json`: opset, input/output names and shapes, the preprocessing the ECG input needs
  (sampling rate, samples, lead order), the ETS logit scale and bias, versions, and the largest
  difference to PyTorch measured on the export's check inputs.
- with `--labels`: `label_embeddings.npz` (labels, texts, embeddings) and `onnx_zero_shot.py`, a
  zero-shot scorer that needs only numpy and onnxruntime:
  `python onnx_zero_shot.py DIR ecg.npy` prints the label scores of a `(12, 5000)` array.

With `--quantize int8` the ECG tower is written with int8 weights (onnxruntime's dynamic
quantization, `quantize_dynamic`: the weights of every MatMul / Gemm with a constant weight become
per-tensor int8, activations are quantized per batch at run time, so no calibration data is needed;
convolutions, attention's activation x activation products and LayerNorms stay fp32). The text
tower stays fp32 (label embeddings are computed once). `dbeta_onnx.json` records the method under
`ecg_encoder.quantization` and the smallest cosine between the int8 and the PyTorch embeddings of
the check inputs; `dbeta embed/classify --backend onnx --onnx_dir DIR` run it.

With `--quantize int8-static --calibration_data FOLDER` the ECG tower is quantized statically
(`quantize_int8_static`: onnxruntime's `quantize_static`, QDQ format): the MatMul / Gemm / Conv
weights become per-channel int8 and the activations that feed them get fixed uint8 scales,
calibrated on the records of FOLDER (the first `--calibration_records` readable ones in path order).
The records are found, read and prepared exactly as `dbeta embed FOLDER` does (`dbeta.cli`'s
`find_records` and record reader, the model's feature extractor). Calibrate on records the model
will not be evaluated on. The metadata names the calibration records (their ids and a SHA-256 of
the id list), the calibration method and the tool.

Both graphs come from the dynamo exporter (`torch.onnx.export(..., dynamo=True)`, onnxscript
translation) at opset 18 by default. The T5 text tower is traced with transformers' eager
attention (its SDPA path reshapes a transposed tensor that the exporter cannot view with symbolic
shapes); eager and SDPA attention compute the same function, and the check below compares the
ONNX graphs with the model as loaded (SDPA).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import shutil
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dbeta.files import staged_folder
from dbeta.provenance import package_versions

logger = logging.getLogger("dbeta.export_onnx")

DEFAULT_OPSET = 18
ECG_FILE = "ecg_encoder.onnx"
TEXT_FILE = "text_encoder.onnx"
METADATA_FILE = "dbeta_onnx.json"
LABELS_FILE = "label_embeddings.npz"
SCORER_FILE = "onnx_zero_shot.py"
QUANTIZATIONS = ("int8", "int8-static")
#: Ops whose constant weights `--quantize int8` stores as int8 (the transformer's projections and
#: feed-forward layers: most of the tower's multiply-adds).
INT8_OP_TYPES = ("MatMul", "Gemm")
#: Smallest cosine between int8 and PyTorch embeddings of the check inputs for an int8 export to be kept.
MIN_INT8_COSINE = 0.95
TOKENIZER_DIR = "tokenizer"
#: Ops whose inputs `--quantize int8-static` quantizes (weights per channel, activations calibrated).
STATIC_INT8_OP_TYPES = ("MatMul", "Gemm", "Conv")
#: onnxruntime's calibration methods, by the names `--calibration_method` takes.
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
DEFAULT_CALIBRATION_METHOD = "percentile"
#: Records read for calibration unless `--calibration_records` says otherwise, and the fewest accepted.
DEFAULT_CALIBRATION_RECORDS = 100
MIN_CALIBRATION_RECORDS = 8
#: Records per calibration batch (the calibration run's memory grows with it).
CALIBRATION_BATCH = 8


class ECGTower(torch.nn.Module):
    """`input_values (B, leads, samples)` -> the ECG embedding `(B, hidden)`."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        return self.model.get_ecg_features(input_values).pooler_output


class TextTower(torch.nn.Module):
    """`input_ids, attention_mask (B, L)` -> the text embedding `(B, hidden)`."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output


def _base(model):
    return getattr(model, "dbeta", model)


def _quiet_export(module, args, path: Path, opset: int, input_names, dynamic_shapes) -> None:
    # The exporter logs every translation step and warns about constant folding; keep the first
    # error, drop the chatter.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            opset_version=opset,
            input_names=list(input_names),
            output_names=["pooler_output"],
            dynamic_shapes=dynamic_shapes,
            optimize=True,
            verbose=False,
        )
    # One self-contained file when it fits in protobuf's 2 GB, else weights beside it (`.data`).
    program.save(str(path), external_data=_parameter_bytes(module) > 1_800_000_000)


def _parameter_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def export_ecg_tower(model, path: str | Path, opset: int = DEFAULT_OPSET, num_samples: int | None = None) -> Path:
    """Export the ECG tower of `model` (`DBetaModel`, `DBetaForPreTraining` or `DBetaECGModel`) to `path`."""
    base = _base(model)
    config = base.config
    ecg_config = getattr(config, "ecg_config", config)
    num_samples = int(num_samples or getattr(config, "num_samples", 5000))
    example = torch.zeros(2, ecg_config.num_leads, num_samples, dtype=torch.float32)
    batch = torch.export.Dim("batch", min=1, max=65536)
    path = Path(path)
    was_training = base.training
    base.eval()
    try:
        _quiet_export(ECGTower(base), (example,), path, opset, ["input_values"], {"input_values": {0: batch}})
    finally:
        base.train(was_training)
    return path


@contextlib.contextmanager
def _eager_text_attention(base):
    t5 = base.text_model.t5
    previous = t5.config._attn_implementation
    t5.set_attn_implementation("eager")
    try:
        yield
    finally:
        t5.set_attn_implementation(previous)


def export_text_tower(model, path: str | Path, opset: int = DEFAULT_OPSET) -> Path:
    """Export the text tower (T5 encoder + projection + pooler) of `model` to `path`."""
    base = _base(model)
    example_ids = torch.ones(2, 8, dtype=torch.long)
    example_mask = torch.ones(2, 8, dtype=torch.long)
    example_mask[1, 6:] = 0
    batch = torch.export.Dim("batch", min=1, max=65536)
    length = torch.export.Dim("length", min=2, max=4096)
    path = Path(path)
    was_training = base.training
    base.eval()
    try:
        with _eager_text_attention(base):
            _quiet_export(
                TextTower(base),
                (example_ids, example_mask),
                path,
                opset,
                ["input_ids", "attention_mask"],
                {"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}},
            )
    finally:
        base.train(was_training)
    return path


def quantize_int8(fp32_path: str | Path, path: str | Path) -> dict:
    """Write an int8 copy of the ONNX graph `fp32_path` to `path` (dynamic quantization); what was done."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # onnxruntime logs a suggestion to pre-process first (shape inference); the dynamo graphs already
    # carry their shapes.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            str(fp32_path),
            str(path),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(INT8_OP_TYPES),
            use_external_data_format=Path(fp32_path).with_name(Path(fp32_path).name + ".data").exists(),
        )
    finally:
        root.setLevel(level)
    return {
        "method": "dynamic",
        "tool": "onnxruntime.quantization.quantize_dynamic",
        "weight_type": "int8 (QInt8, per tensor)",
        "activations": "uint8, scale and zero point computed per batch at run time",
        "op_types": list(INT8_OP_TYPES),
        "calibration": "none (dynamic quantization needs no data)",
    }


def read_calibration_inputs(
    folder: str | Path, feature_extractor, max_records: int = DEFAULT_CALIBRATION_RECORDS
) -> tuple[np.ndarray, list[str], int]:
    """`(input_values (N, leads, samples) float32, record ids, number skipped)`: the first
    `max_records` readable records of `folder` in path order, found, read and prepared as
    `dbeta embed FOLDER` does (`dbeta.cli.find_records`, its record reader, the model's feature
    extractor). A record that cannot be read or prepared is skipped; fewer than
    `MIN_CALIBRATION_RECORDS` readable records is a ValueError."""
    from dbeta.cli import _RecordDataset, find_records

    folder = Path(folder)
    where = f"--calibration_data {folder}"
    if not folder.is_dir():
        raise ValueError(f"{where}: no such folder (give a folder of ECG records to calibrate int8-static on)")
    if max_records < MIN_CALIBRATION_RECORDS:
        raise ValueError(f"--calibration_records {max_records}: int8-static needs at least {MIN_CALIBRATION_RECORDS}")
    records = find_records(folder)
    dataset = _RecordDataset(records, feature_extractor)
    values, ids, skipped = [], [], 0
    for index in range(len(dataset)):
        if len(ids) == max_records:
            break
        item = dataset[index]
        if "error" in item or not np.isfinite(item["input_values"]).all():
            logger.warning(f"calibration: skipped {item['record']}: {item.get('error', 'non-finite values')}")
            skipped += 1
            continue
        values.append(item["input_values"])
        ids.append(item["record"])
    if len(ids) < MIN_CALIBRATION_RECORDS:
        found = "no ECG record found" if not records else f"{len(ids)} readable ECG record(s) of {len(records)}"
        raise ValueError(f"{where}: {found}; int8-static needs at least {MIN_CALIBRATION_RECORDS} to calibrate on")
    return np.stack(values).astype(np.float32), ids, skipped


def _graph(path: str | Path):
    """The graph of the ONNX file `path`, without its external weights (names and structure only)."""
    import onnx

    return onnx.load(str(path), load_external_data=False).graph


def activation_matmuls(graph) -> list[str]:
    """Names of the MatMul nodes of the ONNX `graph` whose second input is not a weight (an
    initializer or a Constant): attention's QK^T and softmax x V."""
    constants = {initializer.name for initializer in graph.initializer}
    constants |= {output for node in graph.node if node.op_type == "Constant" for output in node.output}
    return [node.name for node in graph.node if node.op_type == "MatMul" and node.input[1] not in constants]


def feature_encoder_nodes(graph) -> list[str]:
    """Names of the MatMul / Gemm / Conv nodes of the ECG tower's ONNX `graph` that come before its
    first LayerNormalization: the convolutional feature encoder (its strided convolutions export
    as MatMuls on unfolded windows), which reads the raw millivolt signal."""
    nodes = graph.node  # topologically sorted
    first = next((i for i, node in enumerate(nodes) if node.op_type == "LayerNormalization"), 0)
    return [node.name for node in nodes[:first] if node.op_type in STATIC_INT8_OP_TYPES]


def record_ids_sha256(record_ids: Sequence[str]) -> str:
    """SHA-256 of the record ids joined by newlines (UTF-8): what `ecg_encoder.quantization` records."""
    import hashlib

    return hashlib.sha256("\n".join(record_ids).encode("utf-8")).hexdigest()


def quantize_int8_static(
    fp32_path: str | Path,
    path: str | Path,
    input_values: np.ndarray,
    record_ids: Sequence[str],
    method: str = DEFAULT_CALIBRATION_METHOD,
    per_channel: bool = True,
    quantize_feature_encoder: bool = False,
    nodes_to_exclude: Sequence[str] = (),
) -> dict:
    """Write a statically quantized (QDQ) copy of the ONNX graph `fp32_path` to `path`, its
    activation ranges calibrated on `input_values` (the model inputs of the records `record_ids`);
    what was done.

    The inputs of the transformer's MatMul / Gemm / Conv nodes are quantized: weights int8 per
    channel (symmetric), activations uint8 with the scale and zero point that the calibration fixed
    (the uint8 x int8 pairing onnxruntime recommends for x86 CPUs); onnxruntime runs them as
    MatMulIntegerToFloat / QGemm / QLinearConv. Left in float:

    - the convolutional feature encoder (`feature_encoder_nodes`; `quantize_feature_encoder=True`
      quantizes it too). Its activations follow the signal's amplitude (no normalisation after the
      first block), which varies from record to record, so one fixed scale fits them badly: on the
      demo model, quantizing it with the rest left a 10-20x larger mean cosine deficit on held-out
      training-part records (4e-3 to 8e-3 vs 4e-4), while it is ~2% of the published-size tower's
      multiply-adds. Behind its LayerNorm the transformer's activations have stable ranges;
    - the attention's activation x activation products (QK^T, softmax x V), as with dynamic
      quantization: the softmax output spans orders of magnitude that one 8-bit scale cannot keep;
    - LayerNorms, softmax, GELU and the residual adds compute in float (a LayerNorm output that
      feeds quantized MatMuls reaches its other readers rounded to the same uint8 grid); the
      MatMul / Gemm outputs are not re-quantized (the int8 product is rescaled to float).

    Calibration `method`: "percentile" (default; onnxruntime's 99.999th percentile of each
    tensor's absolute values) sets each range from the bulk of the calibration values, so one
    record with an artefact (a spike, a saturated lead) does not widen a scale for every input;
    "minmax" takes the extreme values (exact on the calibration records, at the mercy of their
    outliers); "entropy" (KL divergence of the quantized histogram) clips most but was the least
    accurate here. On held-out LUDB training-part records of the demo model: percentile 3.8e-4,
    minmax 3.9e-4, entropy 4.6e-4 mean cosine deficit (largest 6.4e-4, 7.4e-4, 2.7e-3).
    """
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"--calibration_method must be one of {CALIBRATION_METHODS}, got {method!r}")
    values = np.ascontiguousarray(input_values, dtype=np.float32)

    class Reader(CalibrationDataReader):
        """The calibration batches; `set_range` lets onnxruntime collect one batch at a time."""

        def __init__(self):
            self.batches = [values[start : start + CALIBRATION_BATCH] for start in range(0, len(values), CALIBRATION_BATCH)]
            self.set_range(0, len(self.batches))

        def __len__(self):
            return len(self.batches)

        def set_range(self, start_index, end_index):
            self.pending = iter(self.batches[start_index:end_index])

        def get_next(self):
            batch = next(self.pending, None)
            return None if batch is None else {"input_values": batch}

    # onnxruntime's `MatMulConstBOnly` is honoured in QOperator mode only: the attention's
    # activation x activation products are excluded by name.
    graph = _graph(fp32_path)
    excluded = [*activation_matmuls(graph), *nodes_to_exclude]
    feature_encoder = [] if quantize_feature_encoder else feature_encoder_nodes(graph)
    excluded += [name for name in feature_encoder if name not in excluded]
    calibrate_method = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[method]
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        # The histogram calibrators print their progress: kept off stdout (scripts read it).
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(fp32_path),
                str(path),
                Reader(),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(STATIC_INT8_OP_TYPES),
                per_channel=per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                calibrate_method=calibrate_method,
                use_external_data_format=Path(fp32_path).with_name(Path(fp32_path).name + ".data").exists(),
                extra_options={
                    # One calibration batch in memory at a time (ranges and histograms are merged as they come).
                    "CalibStridedMinMax": 1,
                    # The products stay float (onnxruntime fuses them into MatMulIntegerToFloat): no
                    # second rounding of every projection's output.
                    "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"],
                },
            )
    finally:
        root.setLevel(level)
    record_ids = [str(record_id) for record_id in record_ids]
    return {
        "method": "static",
        "tool": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "weight_type": f"int8 (QInt8, {'per channel' if per_channel else 'per tensor'}, symmetric)",
        "activations": "uint8 (QUInt8), scale and zero point fixed by calibration",
        "op_types": list(STATIC_INT8_OP_TYPES),
        "not_quantized": "attention's activation x activation MatMuls, LayerNorm, softmax, GELU, adds"
        + ("; the convolutional feature encoder" if feature_encoder else "")
        + (f"; nodes {list(nodes_to_exclude)}" if nodes_to_exclude else ""),
        "feature_encoder_nodes_kept_float": feature_encoder,
        "outputs_quantized": "Conv only (MatMul / Gemm products stay float)",
        "calibration": {
            "method": method,
            "num_records": len(record_ids),
            "record_ids": record_ids,
            "record_ids_sha256": record_ids_sha256(record_ids),
            "record_ids_sha256_of": "the record ids joined by newlines, UTF-8",
        },
    }


def embedding_cosines(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two `(batch, hidden)` arrays."""
    expected, actual = np.asarray(expected, np.float64), np.asarray(actual, np.float64)
    norms = np.linalg.norm(expected, axis=1) * np.linalg.norm(actual, axis=1)
    return (expected * actual).sum(axis=1) / np.maximum(norms, 1e-30)


def onnx_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session for an exported tower."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@torch.no_grad()
def compare_ecg(model, session, input_values) -> float:
    """Largest |ONNX - PyTorch| of the ECG embeddings of `input_values` (B, 12, samples)."""
    values = np.ascontiguousarray(input_values, dtype=np.float32)
    expected = _base(model).get_ecg_features(torch.from_numpy(values)).pooler_output.float().numpy()
    (actual,) = session.run(None, {"input_values": values})
    return float(np.abs(actual - expected).max())


@torch.no_grad()
def compare_text(model, session, input_ids, attention_mask) -> float:
    """Largest |ONNX - PyTorch| of the text embeddings of a tokenised batch."""
    input_ids = np.asarray(input_ids, dtype=np.int64)
    attention_mask = np.asarray(attention_mask, dtype=np.int64)
    expected = (
        _base(model)
        .get_text_features(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(attention_mask))
        .pooler_output.float()
        .numpy()
    )
    (actual,) = session.run(None, {"input_ids": input_ids, "attention_mask": attention_mask})
    return float(np.abs(actual - expected).max())


def graph_opset(path: str | Path) -> int:
    """The default-domain opset an exported ONNX file declares (what runtimes will use)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(int(entry.version) for entry in model.opset_import if entry.domain in ("", "ai.onnx"))


def is_onnx_export(folder: Path) -> bool:
    """A folder this exporter wrote (it has the metadata file): the only kind a re-export replaces."""
    return (Path(folder) / METADATA_FILE).is_file()


def _load(model_path: str):
    """`(model, processor_or_None, feature_extractor)` through the checked loader (`dbeta.loading`)."""
    from dbeta.loading import load_any_model

    return load_any_model(model_path)


def export_onnx(
    model_path: str,
    output_dir: str | Path,
    opset: int = DEFAULT_OPSET,
    labels: Sequence[str] | None = None,
    hypothesis_template: str = "{}",
    labels_are_codes: bool | None = None,
    check: bool = True,
    seed: int = 0,
    quantize: str | None = None,
    calibration_data: str | Path | None = None,
    calibration_records: int = DEFAULT_CALIBRATION_RECORDS,
    calibration_method: str = DEFAULT_CALIBRATION_METHOD,
) -> dict:
    """Export the towers of the D-BETA folder `model_path` to `output_dir`; return the metadata written.

    With `check` (default) the exported graphs are run with onnxruntime on random inputs (ECG batch
    of 3; texts of batch 3 with padding, a length unlike the export's example) and the largest
    difference to PyTorch is recorded; above 1e-4 the export fails. With `quantize="int8"` the fp32
    graph is checked so, then quantized; the int8 graph's smallest embedding cosine to PyTorch on the
    same inputs is recorded, and below `MIN_INT8_COSINE` the export fails. `quantize="int8-static"`
    calibrates on the records of the folder `calibration_data` (`read_calibration_inputs`,
    `quantize_int8_static`); its cosine check runs on the same random inputs and on the first
    calibration records.
    """
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(f"--quantize must be one of {QUANTIZATIONS}, got {quantize!r}")
    if quantize == "int8-static" and calibration_data is None:
        raise ValueError("--quantize int8-static needs --calibration_data FOLDER (ECG records to calibrate the activation ranges on)")
    if quantize != "int8-static" and calibration_data is not None:
        raise ValueError("--calibration_data only applies with --quantize int8-static")
    if calibration_method not in CALIBRATION_METHODS:
        raise ValueError(f"--calibration_method must be one of {CALIBRATION_METHODS}, got {calibration_method!r}")
    target = Path(output_dir)
    model, processor, feature_extractor = _load(model_path)
    if quantize == "int8-static":  # read before anything is exported: a bad folder fails at once
        calibration_values, calibration_ids, calibration_skipped = read_calibration_inputs(
            calibration_data, feature_extractor, calibration_records
        )
    base = _base(model)
    has_text = hasattr(base, "get_text_features")
    config = base.config
    num_samples = int(feature_extractor.num_samples)
    num_leads = int(getattr(config, "ecg_config", config).num_leads)

    # Built in a staging folder and renamed into place: a failed or interrupted re-export leaves the
    # previous export whole (never one model's towers beside another's metadata and labels).
    with staged_folder(target, overwrite=True, replaceable=is_onnx_export) as output_dir:
        logger.info(f"Exporting the ECG tower to {target / ECG_FILE} (opset {opset})")
        export_ecg_tower(model, output_dir / ECG_FILE, opset, num_samples)
        from dbeta.onnx_backend import source_model_fingerprint

        metadata: dict = {
            "format": "dbeta-onnx",
            "opset": opset,
            "exporter": "torch.onnx.export(dynamo=True)",
            "source_model": str(model_path),
            # Which weights this is: `dbeta embed --backend onnx` refuses a folder made from another model.
            "source_model_fingerprint": source_model_fingerprint(model_path),
            "versions": package_versions(("dbeta", "torch", "transformers", "onnx", "onnxscript", "onnxruntime")),
            "ecg_encoder": {
                "file": ECG_FILE,
                "inputs": {"input_values": {"dtype": "float32", "shape": ["batch", num_leads, num_samples]}},
                "outputs": {"pooler_output": {"dtype": "float32", "shape": ["batch", int(config.hidden_size)]}},
            },
            "preprocessing": {
                "sampling_rate": float(feature_extractor.sampling_rate),
                "num_samples": num_samples,
                "lead_names": list(feature_extractor.lead_names),
                "units": "mV",
                "normalize": feature_extractor.normalize,
                "crop": "first num_samples samples; shorter recordings zero-padded at the end",
            },
        }
        # The exporter may build the graph at another opset than asked (it has a minimum): record the real one.
        written_opset = graph_opset(output_dir / ECG_FILE)
        if written_opset != opset:
            logger.warning(f"Asked for opset {opset}; the exporter wrote opset {written_opset} (recorded as such).")
            metadata["requested_opset"] = opset
        metadata["opset"] = written_opset
        if has_text:
            logger.info(f"Exporting the text tower to {target / TEXT_FILE}")
            export_text_tower(model, output_dir / TEXT_FILE, opset)
            processor.tokenizer.save_pretrained(output_dir / TOKENIZER_DIR)
            scale, bias = base.ets_scale_and_bias()  # a learnt scale is stored as its log
            metadata["text_encoder"] = {
                "file": TEXT_FILE,
                "inputs": {
                    "input_ids": {"dtype": "int64", "shape": ["batch", "length"]},
                    "attention_mask": {"dtype": "int64", "shape": ["batch", "length"]},
                },
                "outputs": {"pooler_output": {"dtype": "float32", "shape": ["batch", int(config.hidden_size)]}},
                "tokenizer": TOKENIZER_DIR,
                "max_length": int(getattr(config, "max_text_length", 256) - 2),
            }
            metadata["ets"] = {
                "logit_scale": float(scale),
                "logit_bias": float(bias),
                "score": "sigmoid(logit_scale * ecg_embedding @ text_embedding.T + logit_bias)",
            }

        if check:
            rng = np.random.default_rng(seed)
            ecg_error = compare_ecg(
                model, onnx_session(output_dir / ECG_FILE), 0.3 * rng.standard_normal((3, num_leads, num_samples))
            )
            metadata["ecg_encoder"]["max_abs_difference_to_pytorch"] = ecg_error
            errors = {"ECG": ecg_error}
            if has_text:
                vocab = int(config.text_config.vocab_size)
                ids = rng.integers(1, vocab, size=(3, 13))
                mask = np.ones_like(ids)
                mask[1, 9:] = 0
                mask[2, 4:] = 0
                text_error = compare_text(model, onnx_session(output_dir / TEXT_FILE), ids, mask)
                metadata["text_encoder"]["max_abs_difference_to_pytorch"] = text_error
                errors["text"] = text_error
            bad = {name: error for name, error in errors.items() if not error <= 1e-4}
            if bad:
                raise RuntimeError(f"The ONNX export differs from PyTorch by more than 1e-4: {bad}")

        if quantize is not None:
            fp32_path = output_dir / f"{Path(ECG_FILE).stem}.fp32.onnx"
            (output_dir / ECG_FILE).rename(fp32_path)
            if quantize == "int8":
                logger.info(f"Quantizing the ECG tower to int8 ({', '.join(INT8_OP_TYPES)} weights)")
                quantization = quantize_int8(fp32_path, output_dir / ECG_FILE)
            else:
                logger.info(
                    f"Quantizing the ECG tower to int8 (static, {calibration_method} calibration on "
                    f"{len(calibration_ids)} records of {calibration_data})"
                )
                quantization = quantize_int8_static(
                    fp32_path, output_dir / ECG_FILE, calibration_values, calibration_ids, calibration_method
                )
                quantization["calibration"]["data"] = str(calibration_data)
                quantization["calibration"]["skipped_unreadable"] = calibration_skipped
            metadata["ecg_encoder"]["quantization"] = quantization
            fp32_path.unlink()
            if check:
                values = (0.3 * np.random.default_rng(seed).standard_normal((3, num_leads, num_samples))).astype(np.float32)
                checks = {"check inputs": values}
                if quantize == "int8-static":
                    checks["calibration records"] = calibration_values[:CALIBRATION_BATCH]
                session = onnx_session(output_dir / ECG_FILE)
                cosines, differences = {}, {}
                for name, inputs in checks.items():
                    with torch.no_grad():
                        expected = base.get_ecg_features(torch.from_numpy(inputs)).pooler_output.float().numpy()
                    (actual,) = session.run(None, {"input_values": inputs})
                    cosines[name] = float(embedding_cosines(expected, actual).min())
                    differences[name] = float(np.abs(actual - expected).max())
                cosine = min(cosines.values())
                quantization["min_cosine_to_pytorch"] = cosine
                quantization["max_abs_difference_to_pytorch"] = max(differences.values())
                if len(checks) > 1:
                    quantization["min_cosine_to_pytorch_by_inputs"] = cosines
                if not cosine >= MIN_INT8_COSINE:
                    raise RuntimeError(
                        f"The {quantize} ECG tower's embeddings are too far from PyTorch's (smallest cosine {cosine:.4f} < "
                        f"{MIN_INT8_COSINE}: {cosines}); export without --quantize"
                    )

        if labels:
            if not has_text:
                raise ValueError("--labels needs a model with a text tower (this folder is ECG-only).")
            metadata["zero_shot"] = write_label_embeddings(
                model, processor, output_dir, labels, hypothesis_template, labels_are_codes, model_path
            )
        (output_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    return metadata


def write_label_embeddings(
    model, processor, output_dir: Path, labels, hypothesis_template="{}", labels_are_codes=None, model_path=None
) -> dict:
    """Embed the labels as the zero-shot pipeline does, save them and the numpy-only scorer."""
    from pipeline_dbeta import ZeroShotECGClassificationPipeline

    from dbeta.loading import model_label_descriptions

    pipe = ZeroShotECGClassificationPipeline(
        model=model,
        tokenizer=processor.tokenizer,
        feature_extractor=processor.feature_extractor,
        device=model.device,
        label_descriptions=model_label_descriptions(model_path if model_path and Path(model_path).exists() else None),
    )
    labels = list(labels)
    texts = pipe.label_texts(labels, hypothesis_template, labels_are_codes)
    embeddings = pipe.embed_texts(texts).float().cpu().numpy()
    np.savez(
        output_dir / LABELS_FILE,
        labels=np.array(labels, dtype=str),
        texts=np.array(texts, dtype=str),
        embeddings=embeddings.astype(np.float32),
    )
    shutil.copyfile(Path(__file__).with_name(SCORER_FILE), output_dir / SCORER_FILE)
    return {"labels_file": LABELS_FILE, "scorer": SCORER_FILE, "labels": labels, "texts": texts}


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("model", help="D-BETA model folder (full, or ECG-only)")
    parser.add_argument("--output", required=True, help="folder to write the ONNX files to")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument(
        "--labels", nargs="+", help="also save these labels' text embeddings and the numpy-only zero-shot scorer"
    )
    parser.add_argument("--hypothesis_template", default="{}", help='e.g. "ECG showing {}."')
    parser.add_argument(
        "--labels_are_codes",
        choices=("auto", "yes", "no"),
        default="auto",
        help="auto: known codes expand to their descriptions; yes: all must be codes; no: never expand",
    )
    parser.add_argument("--no_check", action="store_true", help="skip the onnxruntime-vs-PyTorch check")
    parser.add_argument(
        "--quantize",
        choices=QUANTIZATIONS,
        help="int8: the ECG tower with int8 MatMul/Gemm weights (onnxruntime dynamic quantization; no calibration "
        "data); int8-static: int8 weights and calibrated activation scales (needs --calibration_data)",
    )
    parser.add_argument(
        "--calibration_data",
        help="with --quantize int8-static: a folder of ECG records (read as `dbeta embed` reads them) to calibrate "
        "on; use records the model will not be evaluated on",
    )
    parser.add_argument(
        "--calibration_records",
        type=int,
        default=DEFAULT_CALIBRATION_RECORDS,
        help=f"with int8-static: calibrate on the first N readable records in path order (default "
        f"{DEFAULT_CALIBRATION_RECORDS}, at least {MIN_CALIBRATION_RECORDS})",
    )
    parser.add_argument(
        "--calibration_method",
        choices=CALIBRATION_METHODS,
        default=DEFAULT_CALIBRATION_METHOD,
        help=f"with int8-static: how activation ranges are set from the calibration records (default "
        f"{DEFAULT_CALIBRATION_METHOD})",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    metadata = export_onnx(
        args.model,
        args.output,
        opset=args.opset,
        labels=args.labels,
        hypothesis_template=args.hypothesis_template,
        labels_are_codes={"auto": None, "yes": True, "no": False}[args.labels_are_codes],
        check=not args.no_check,
        quantize=args.quantize,
        calibration_data=args.calibration_data,
        calibration_records=args.calibration_records,
        calibration_method=args.calibration_method,
    )
    parts = [f"{ECG_FILE} (max |ONNX - PyTorch| {metadata['ecg_encoder'].get('max_abs_difference_to_pytorch')})"]
    quantization = metadata["ecg_encoder"].get("quantization")
    if quantization:
        parts[0] = f"{ECG_FILE} {args.quantize} (smallest cosine to PyTorch {quantization.get('min_cosine_to_pytorch')})"
    if "text_encoder" in metadata:
        parts.append(
            f"{TEXT_FILE} (max |ONNX - PyTorch| {metadata['text_encoder'].get('max_abs_difference_to_pytorch')})"
        )
    if "zero_shot" in metadata:
        parts.append(f"{LABELS_FILE} + {SCORER_FILE} ({len(metadata['zero_shot']['labels'])} labels)")
    print(f"dbeta: wrote {', '.join(parts)} to {args.output} (opset {metadata['opset']})", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dbeta.export_onnx", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
