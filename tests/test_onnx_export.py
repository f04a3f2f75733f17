"""ONNX export of the ECG and text towers: onnxruntime equals PyTorch (tiny model, real records)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import pipeline
from zero_shot_utils import CINC_FIXTURES, FIXTURES, LUDB_FIXTURES, save_tiny_zero_shot_folder

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from dbeta.cli import main as cli_main  # noqa: E402
from dbeta.export_onnx import DEFAULT_OPSET, compare_ecg, compare_text, onnx_session  # noqa: E402
from dbeta.loading import load_model_and_processor  # noqa: E402
from pipeline_dbeta import TASK  # noqa: E402

LABELS = ["AFIB", "LBBB", "sinus rhythm"]
REAL_RECORDS = [
    LUDB_FIXTURES / "1",
    LUDB_FIXTURES / "4",
    CINC_FIXTURES / "HR06000",
    CINC_FIXTURES / "JS00666",
    FIXTURES / "cpsc2018" / "A1980.mat",
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model_folder = save_tiny_zero_shot_folder(tmp_path_factory.mktemp("dbeta-tiny"))
    output = tmp_path_factory.mktemp("onnx")
    status = cli_main(["export-onnx", str(model_folder), "--output", str(output), "--labels", *LABELS])
    assert status == 0
    return model_folder, output


def test_export_writes_both_towers_with_metadata(exported):
    _, output = exported
    metadata = json.loads((output / "dbeta_onnx.json").read_text())
    assert metadata["opset"] == DEFAULT_OPSET
    assert metadata["ecg_encoder"]["inputs"]["input_values"]["shape"] == ["batch", 12, 5000]
    assert metadata["text_encoder"]["inputs"]["input_ids"]["shape"] == ["batch", "length"]
    assert metadata["ecg_encoder"]["max_abs_difference_to_pytorch"] <= 1e-4
    assert metadata["text_encoder"]["max_abs_difference_to_pytorch"] <= 1e-4
    assert (output / "tokenizer" / "tokenizer_config.json").is_file()

    import onnx

    graph = onnx.load(str(output / "ecg_encoder.onnx"))
    assert [entry.version for entry in graph.opset_import if entry.domain in ("", "ai.onnx")] == [DEFAULT_OPSET]
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [12, 5000]  # dynamic batch


def test_onnxruntime_equals_pytorch_on_real_records_and_batches(exported):
    model_folder, output = exported
    model, processor = load_model_and_processor(model_folder)
    ecg_session = onnx_session(output / "ecg_encoder.onnx")
    real = processor.feature_extractor([str(path) for path in REAL_RECORDS], return_tensors="np")["input_values"]
    assert real.shape == (len(REAL_RECORDS), 12, 5000)
    for batch in (real[:1], real):  # batch 1 and 5, other sizes than the export's example (2)
        assert compare_ecg(model, ecg_session, batch) <= 1e-4

    text_session = onnx_session(output / "text_encoder.onnx")
    for texts in (["atrial fibrillation"], ["sinus rhythm", "left bundle branch block with a long description", "x"]):
        tokens = processor.tokenizer(texts, padding=True, return_tensors="np")
        assert compare_text(model, text_session, tokens["input_ids"], tokens["attention_mask"]) <= 1e-4


def test_numpy_only_scorer_matches_the_pipeline(exported, tmp_path):
    model_folder, output = exported
    model, processor = load_model_and_processor(model_folder)
    record = str(CINC_FIXTURES / "HR06000")
    values = processor.feature_extractor(record, return_tensors="np")["input_values"][0]
    np.save(tmp_path / "ecg.npy", values)

    # The scorer runs where torch cannot be imported at all.
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None; "
        f"sys.path.insert(0, {str(output)!r}); import onnx_zero_shot; "
        f"sys.exit(onnx_zero_shot.main([{str(output)!r}, {str(tmp_path / 'ecg.npy')!r}]))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    scores = {item["label"]: item["score"] for item in json.loads(completed.stdout)["scores"]}

    classifier = pipeline(TASK, model=str(model_folder), trust_remote_code=True, device="cpu")
    expected = {item["label"]: item["score"] for item in classifier(record, candidate_labels=LABELS)}
    assert set(scores) == set(LABELS)
    for label in LABELS:
        assert scores[label] == pytest.approx(expected[label], abs=1e-5)


def test_ecg_only_folder_exports_the_ecg_tower(tmp_path):
    from modeling_dbeta import DBetaECGModel
    from tiny import tiny_config

    from dbeta.export_onnx import export_onnx

    torch.manual_seed(0)
    ecg_model = DBetaECGModel(tiny_config().ecg_config).eval()
    ecg_model.save_pretrained(tmp_path / "ecg-only")
    metadata = export_onnx(str(tmp_path / "ecg-only"), tmp_path / "out")
    assert "text_encoder" not in metadata and (tmp_path / "out" / "ecg_encoder.onnx").is_file()
    assert metadata["ecg_encoder"]["max_abs_difference_to_pytorch"] <= 1e-4


def test_recorded_opset_is_the_graphs_own(tmp_path):
    """An opset below the exporter's minimum is built at the minimum: the metadata says what the
    graph declares, and what was asked."""
    import onnx

    model_folder = save_tiny_zero_shot_folder(tmp_path / "model")
    output = tmp_path / "onnx"
    assert cli_main(["export-onnx", str(model_folder), "--output", str(output), "--opset", "7", "--no_check"]) == 0
    metadata = json.loads((output / "dbeta_onnx.json").read_text())
    graph = onnx.load(str(output / "ecg_encoder.onnx"))
    declared = [entry.version for entry in graph.opset_import if entry.domain in ("", "ai.onnx")]
    assert declared == [metadata["opset"]]
    if metadata["opset"] != 7:
        assert metadata["requested_opset"] == 7


def test_numpy_scorer_applies_the_recorded_normalisation(tmp_path):
    """A model whose feature extractor z-scores each lead: the numpy-only scorer scores the same
    real record as the pipeline does (it used to skip the normalisation)."""
    model_folder = save_tiny_zero_shot_folder(tmp_path / "model", ets_logit_scale=500.0)
    # transformers 5 keeps the feature extractor's settings in both files.
    for name in ("preprocessor_config.json", "processor_config.json"):
        config_file = model_folder / name
        config = json.loads(config_file.read_text())
        (config["feature_extractor"] if "feature_extractor" in config else config)["normalize"] = "zscore"
        config_file.write_text(json.dumps(config))
    output = tmp_path / "onnx"
    assert cli_main(["export-onnx", str(model_folder), "--output", str(output), "--labels", *LABELS]) == 0
    assert json.loads((output / "dbeta_onnx.json").read_text())["preprocessing"]["normalize"] == "zscore"

    sys.path.insert(0, str(output))
    try:
        import importlib

        onnx_zero_shot = importlib.import_module("onnx_zero_shot")
        onnx_zero_shot = importlib.reload(onnx_zero_shot)
    finally:
        sys.path.remove(str(output))
    scorer = onnx_zero_shot.ONNXZeroShotScorer(output)
    model, processor = load_model_and_processor(model_folder)
    assert processor.feature_extractor.normalize == "zscore"
    record = LUDB_FIXTURES / "1"
    # The record in the model's lead order at its rate, in millivolts (what a device would pass).
    inputs = processor.feature_extractor(str(record), normalize=None)["input_values"][0]
    classifier = pipeline(TASK, model=str(model_folder), trust_remote_code=True)
    expected = {item["label"]: item["score"] for item in classifier(str(record), candidate_labels=LABELS)}
    got = {item["label"]: item["score"] for item in scorer(np.asarray(inputs))}
    assert np.ptp(list(expected.values())) > 0.01
    for label in LABELS:
        assert got[label] == pytest.approx(expected[label], abs=1e-4)
