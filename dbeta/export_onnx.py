"""Export D-BETA's two towers to ONNX, for inference without PyTorch.

    dbeta export-onnx MODEL --output DIR [--labels AFIB LBBB "sinus rhythm"] [--opset 18] [--quantize int8]
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

Both graphs come from the dynamo exporter (`torch.onnx.export(..., dynamo=True)`, onnxscript
translation) at opset 18 by default. The T5 text tower is traced with transformers' eager
attention (its SDPA path reshapes a transposed tensor that the exporter cannot view with symbolic
shapes); eager and SDPA attention compute the same function, and the check below compares the
ONNX graphs with the model as loaded (SDPA).
"""

from __future__ import annotations

import argparse
import contextlib
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
QUANTIZATIONS = ("int8",)
#: Ops whose constant weights `--quantize int8` stores as int8 (the transformer's projections and
#: feed-forward layers: most of the tower's multiply-adds).
INT8_OP_TYPES = ("MatMul", "Gemm")
#: Smallest cosine between int8 and PyTorch embeddings of the check inputs for an int8 export to be kept.
MIN_INT8_COSINE = 0.95
TOKENIZER_DIR = "tokenizer"


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
) -> dict:
    """Export the towers of the D-BETA folder `model_path` to `output_dir`; return the metadata written.

    With `check` (default) the exported graphs are run with onnxruntime on random inputs (ECG batch
    of 3; texts of batch 3 with padding, a length unlike the export's example) and the largest
    difference to PyTorch is recorded; above 1e-4 the export fails. With `quantize="int8"` the fp32
    graph is checked so, then quantized; the int8 graph's smallest embedding cosine to PyTorch on the
    same inputs is recorded, and below `MIN_INT8_COSINE` the export fails.
    """
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(f"--quantize must be one of {QUANTIZATIONS}, got {quantize!r}")
    target = Path(output_dir)
    model, processor, feature_extractor = _load(model_path)
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

        if quantize == "int8":
            fp32_path = output_dir / f"{Path(ECG_FILE).stem}.fp32.onnx"
            (output_dir / ECG_FILE).rename(fp32_path)
            logger.info(f"Quantizing the ECG tower to int8 ({', '.join(INT8_OP_TYPES)} weights)")
            metadata["ecg_encoder"]["quantization"] = quantize_int8(fp32_path, output_dir / ECG_FILE)
            fp32_path.unlink()
            if check:
                values = (0.3 * np.random.default_rng(seed).standard_normal((3, num_leads, num_samples))).astype(np.float32)
                with torch.no_grad():
                    expected = base.get_ecg_features(torch.from_numpy(values)).pooler_output.float().numpy()
                (actual,) = onnx_session(output_dir / ECG_FILE).run(None, {"input_values": values})
                cosine = float(embedding_cosines(expected, actual).min())
                quantization = metadata["ecg_encoder"]["quantization"]
                quantization["min_cosine_to_pytorch"] = cosine
                quantization["max_abs_difference_to_pytorch"] = float(np.abs(actual - expected).max())
                if not cosine >= MIN_INT8_COSINE:
                    raise RuntimeError(
                        f"The int8 ECG tower's embeddings are too far from PyTorch's (smallest cosine {cosine:.4f} < "
                        f"{MIN_INT8_COSINE}); export without --quantize"
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
        help="int8: the ECG tower with int8 MatMul/Gemm weights (onnxruntime dynamic quantization; no calibration data)",
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
    )
    parts = [f"{ECG_FILE} (max |ONNX - PyTorch| {metadata['ecg_encoder'].get('max_abs_difference_to_pytorch')})"]
    quantization = metadata["ecg_encoder"].get("quantization")
    if quantization:
        parts[0] = f"{ECG_FILE} int8 (smallest cosine to PyTorch {quantization.get('min_cosine_to_pytorch')})"
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
