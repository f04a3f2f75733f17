"""`dbeta export-onnx --quantize int8 | int8-static` and `dbeta embed/classify --backend onnx
--onnx_dir DIR`: the same rows as PyTorch (fp32 to float rounding, int8 close), checked folders,
one-line errors."""

import csv
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from zero_shot_utils import CINC_FIXTURES, FIXTURES, LUDB_FIXTURES, copy_records, save_tiny_zero_shot_folder

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from dbeta.cli import main  # noqa: E402
from dbeta.export_onnx import MIN_CALIBRATION_RECORDS, MIN_INT8_COSINE, embedding_cosines, record_ids_sha256  # noqa: E402

LABELS = ["AFIB", "LBBB", "sinus rhythm"]


@pytest.fixture(scope="module")
def model_and_exports(tmp_path_factory):
    model = save_tiny_zero_shot_folder(tmp_path_factory.mktemp("dbeta-tiny"))
    fp32, int8 = tmp_path_factory.mktemp("onnx-fp32"), tmp_path_factory.mktemp("onnx-int8")
    assert main(["export-onnx", str(model), "--output", str(fp32)]) == 0
    assert main(["export-onnx", str(model), "--output", str(int8), "--quantize", "int8"]) == 0
    return model, fp32, int8


def calibration_folder(root):
    """Nine real records, none of them in `records` (calibrate on other records than those scored)."""
    copy_records(LUDB_FIXTURES, root / "ludb", ["4", "5", "6"])
    copy_records(CINC_FIXTURES, root / "cinc", ["E07502", "HR06002", "JS20000", "JS20001"])
    copy_records(FIXTURES / "cpsc2018", root / "cpsc", ["A1980", "A1982"])
    return root


@pytest.fixture(scope="module")
def static_export(model_and_exports, tmp_path_factory):
    model = model_and_exports[0]
    calibration = calibration_folder(tmp_path_factory.mktemp("calibration"))
    output = tmp_path_factory.mktemp("onnx-int8-static")
    status = main([
        "export-onnx", str(model), "--output", str(output), "--quantize", "int8-static",
        "--calibration_data", str(calibration), "--calibration_records", "8",
    ])
    assert status == 0
    return output, calibration


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    copy_records(LUDB_FIXTURES, root / "ludb", ["1", "2", "3"])  # 500 Hz
    copy_records(CINC_FIXTURES, root / "cinc", ["E07501", "HR06000", "JS00666"])  # 500 Hz and 257 Hz (resampled)
    return root


def embed(records, model, output, *extra):
    status = main(["embed", str(records), "--model", str(model), "--output", str(output), "--no_progress", "--batch_size", "4", *extra])
    assert status == 0
    table = pq.read_table(output)
    return table.column("record").to_pylist(), np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)


def test_int8_export_records_its_quantization(model_and_exports):
    import onnx

    _, fp32, int8 = model_and_exports
    metadata = json.loads((int8 / "dbeta_onnx.json").read_text())
    quantization = metadata["ecg_encoder"]["quantization"]
    assert quantization["method"] == "dynamic" and quantization["op_types"] == ["MatMul", "Gemm"]
    assert MIN_INT8_COSINE <= quantization["min_cosine_to_pytorch"] <= 1.0 + 1e-6
    assert "quantization" not in json.loads((fp32 / "dbeta_onnx.json").read_text())["ecg_encoder"]
    assert metadata["source_model_fingerprint"]  # the model's weights, checked by --backend onnx
    operators = {node.op_type for node in onnx.load(str(int8 / "ecg_encoder.onnx")).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= operators
    assert not list(int8.glob("*.fp32.onnx"))  # the intermediate graph is not left behind
    assert (int8 / "text_encoder.onnx").is_file()  # the text tower stays fp32


def test_int8_static_export_names_its_calibration_records(static_export):
    import onnx

    from dbeta.cli import find_records

    output, calibration = static_export
    quantization = json.loads((output / "dbeta_onnx.json").read_text())["ecg_encoder"]["quantization"]
    assert quantization["method"] == "static" and quantization["tool"] == "onnxruntime.quantization.quantize_static"
    expected_ids = [ref.record_id for ref in find_records(calibration)][:8]  # the first 8 of 9, in path order
    assert len(expected_ids) == 8 and "ludb/6" not in expected_ids
    recorded = quantization["calibration"]
    assert recorded["method"] == "percentile" and recorded["num_records"] == 8
    assert recorded["record_ids"] == expected_ids
    assert recorded["record_ids_sha256"] == record_ids_sha256(expected_ids)
    assert MIN_INT8_COSINE <= quantization["min_cosine_to_pytorch"] <= 1.0 + 1e-6
    assert set(quantization["min_cosine_to_pytorch_by_inputs"]) == {"check inputs", "calibration records"}
    graph = onnx.load(str(output / "ecg_encoder.onnx")).graph
    operators = {node.op_type for node in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= operators and "DynamicQuantizeLinear" not in operators
    # The feature encoder's MatMuls read float activations (kept float); the transformer's are quantized.
    kept = set(quantization["feature_encoder_nodes_kept_float"])
    assert kept and kept <= {node.name for node in graph.node if node.op_type == "MatMul"}
    assert not list(output.glob("*.fp32.onnx"))


def test_embed_with_int8_static_backend_matches_pytorch(model_and_exports, static_export, records, tmp_path):
    model = model_and_exports[0]
    ids, reference = embed(records, model, tmp_path / "torch.parquet")
    static_ids, values = embed(records, model, tmp_path / "static.parquet", "--backend", "onnx", "--onnx_dir", str(static_export[0]))
    assert ids == static_ids and len(ids) == 6
    cosine = embedding_cosines(reference, values).min()
    print(f"int8-static vs PyTorch on real records: smallest cosine {cosine:.5f}")
    assert cosine > 0.99


def test_calibration_errors_are_one_line(model_and_exports, tmp_path, capsys):
    model = model_and_exports[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    few = tmp_path / "few"
    copy_records(LUDB_FIXTURES, few, ["1", "2"])
    (few / "broken.hea").write_text("broken 12 500 5000\n")  # a header without its signal file
    base = ["export-onnx", str(model), "--output", str(tmp_path / "out")]
    static = ["--quantize", "int8-static", "--calibration_data"]
    at_least = f"int8-static needs at least {MIN_CALIBRATION_RECORDS}"
    cases = [
        (["--quantize", "int8-static"], "--quantize int8-static needs --calibration_data"),
        (["--calibration_data", str(few)], "--calibration_data only applies with --quantize int8-static"),
        (["--quantize", "int8", "--calibration_data", str(few)], "--calibration_data only applies with --quantize int8-static"),
        ([*static, str(tmp_path / "missing")], "no such folder"),
        ([*static, str(empty)], f"no ECG record found; {at_least}"),
        ([*static, str(few)], f"2 readable ECG record(s) of 3; {at_least}"),
        ([*static, str(few), "--calibration_records", "2"], f"--calibration_records 2: {at_least}"),
    ]
    for options, message in cases:
        capsys.readouterr()
        assert main([*base, *options]) == 2, options
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dbeta: error")]
        assert len(errors) == 1 and message in errors[0], (options, errors)
        assert not (tmp_path / "out").exists()


def test_embed_with_onnx_backends_matches_pytorch(model_and_exports, records, tmp_path):
    model, fp32, int8 = model_and_exports
    ids, reference = embed(records, model, tmp_path / "torch.parquet")
    onnx_ids, onnx_fp32 = embed(records, model, tmp_path / "fp32.parquet", "--backend", "onnx", "--onnx_dir", str(fp32))
    int8_ids, onnx_int8 = embed(records, model, tmp_path / "int8.parquet", "--backend", "onnx", "--onnx_dir", str(int8))
    assert ids == onnx_ids == int8_ids and len(ids) == 6
    assert embedding_cosines(reference, onnx_fp32).min() > 0.99999
    assert np.abs(reference - onnx_fp32).max() < 1e-4
    cosine = embedding_cosines(reference, onnx_int8).min()
    print(f"int8 vs PyTorch on real records: smallest cosine {cosine:.5f}")
    assert cosine > 0.95


def test_windowed_embed_with_onnx_backend(model_and_exports, records, tmp_path):
    model, fp32, _ = model_and_exports
    args = ["--windows", "--window_stride", "5"]
    ids, reference = embed(records / "ludb", model, tmp_path / "torch.parquet", *args)
    onnx_ids, values = embed(records / "ludb", model, tmp_path / "onnx.parquet", *args, "--backend", "onnx", "--onnx_dir", str(fp32))
    assert ids == onnx_ids and np.abs(reference - values).max() < 1e-4


def read_scores(path):
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return rows[0], [row[0] for row in rows[1:]], np.array([[float(x) for x in row[1:]] for row in rows[1:]])


@pytest.mark.parametrize("export", ["fp32", "int8", "int8-static"])
def test_classify_with_onnx_backend(model_and_exports, static_export, records, tmp_path, export):
    model, fp32, int8 = model_and_exports
    folder = {"fp32": fp32, "int8": int8, "int8-static": static_export[0]}[export]
    base = ["classify", str(records), "--model", str(model), "--labels", *LABELS, "--no_progress"]
    assert main([*base, "--output", str(tmp_path / "torch.csv")]) == 0
    assert main([*base, "--output", str(tmp_path / "onnx.csv"), "--backend", "onnx", "--onnx_dir", str(folder)]) == 0
    header, ids, reference = read_scores(tmp_path / "torch.csv")
    onnx_header, onnx_ids, scores = read_scores(tmp_path / "onnx.csv")
    assert header == onnx_header and ids == onnx_ids
    assert np.abs(reference - scores).max() < (1e-4 if export == "fp32" else 0.05)


def test_onnx_folder_errors_are_one_line(model_and_exports, records, tmp_path, capsys):
    model, fp32, _ = model_and_exports
    other = save_tiny_zero_shot_folder(tmp_path / "other-model", seed=1)
    not_export = tmp_path / "empty"
    not_export.mkdir()
    capsys.readouterr()  # saving the other model's weights prints a progress bar
    base = ["embed", str(records), "--model", str(model), "--output", str(tmp_path / "e.parquet"), "--no_progress"]
    cases = [
        (["--backend", "onnx"], "--backend onnx needs --onnx_dir"),
        (["--onnx_dir", str(fp32)], "--onnx_dir only applies with --backend onnx"),
        (["--backend", "onnx", "--onnx_dir", str(tmp_path / "missing")], "no such folder"),
        (["--backend", "onnx", "--onnx_dir", str(not_export)], "no dbeta_onnx.json"),
    ]
    for options, message in cases:
        assert main([*base, *options]) == 2
        error = capsys.readouterr().err
        assert message in error and error.count("\n") == 1, error
    # An export of other weights: refused before any record is read.
    other_args = ["embed", str(records), "--model", str(other), "--output", str(tmp_path / "e.parquet"), "--no_progress"]
    assert main([*other_args, "--backend", "onnx", "--onnx_dir", str(fp32)]) == 2
    error = capsys.readouterr().err
    assert "was exported from another model" in error and error.count("\n") == 1
    assert not (tmp_path / "e.parquet").exists()
    # A folder whose tower file is gone.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "dbeta_onnx.json").write_text((fp32 / "dbeta_onnx.json").read_text())
    assert main([*base, "--backend", "onnx", "--onnx_dir", str(broken)]) == 2
    assert "ecg_encoder.onnx is missing" in capsys.readouterr().err
    window = ["classify", str(records), "--model", str(model), "--labels", "AFIB", "--output", str(tmp_path / "s.csv")]
    assert main([*window, "--window", "sliding", "--backend", "onnx", "--onnx_dir", str(fp32)]) == 2
    assert "--window sliding" in capsys.readouterr().err
