"""One zero-shot score, whoever computes it.

The pipeline (Hub file, its own copy), `dbeta classify` and the evaluation script (through
`dbeta.zero_shot`), and the demo's real-ECG validation (`real_ecg.zero_shot_logits`, also through
`dbeta.zero_shot`) must give the same scores for the same real records and labels.
"""

import csv

import numpy as np
import pytest
import torch
from zero_shot_utils import LUDB_FIXTURES, copy_records, save_tiny_zero_shot_folder

from dbeta.cli import main as cli_main
from dbeta.embedding import embed_ecgs
from dbeta.loading import load_model_and_processor
from processing_dbeta import read_ecg_file

RECORDS = ["1", "2", "3", "4"]
LABELS = ["sinus rhythm", "atrial fibrillation", "left bundle branch block"]
# Batches of different sizes round differently in float32; the scores agree to this.
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    # A large ETS scale spreads the random model's scores, so that agreement is a strong check.
    folder = save_tiny_zero_shot_folder(tmp_path_factory.mktemp("model"), seed=3, ets_logit_scale=2000.0, ets_logit_bias=-1.0)
    records = tmp_path_factory.mktemp("records")
    copy_records(LUDB_FIXTURES, records, RECORDS)
    model, processor = load_model_and_processor(folder)
    return folder, records, model, processor


def pipeline_scores(folder, records, model, processor) -> np.ndarray:
    from pipeline_dbeta import ZeroShotECGClassificationPipeline

    pipe = ZeroShotECGClassificationPipeline(
        model=model, tokenizer=processor.tokenizer, feature_extractor=processor.feature_extractor, device=model.device
    )
    rows = []
    for name in RECORDS:
        result = pipe(str(records / name), candidate_labels=LABELS)
        by_label = {item["label"]: item["score"] for item in result}
        rows.append([by_label[label] for label in LABELS])
    return np.array(rows)


def cli_scores(folder, records, tmp_path) -> np.ndarray:
    output = tmp_path / "scores.csv"
    status = cli_main(
        ["classify", str(records), "--model", str(folder), "--labels", *LABELS, "--output", str(output), "--no_progress"]
    )
    assert status == 0
    with open(output, newline="") as handle:
        rows = {row["record"]: [float(row[label]) for label in LABELS] for row in csv.DictReader(handle)}
    return np.array([rows[name] for name in RECORDS])


def evaluation_scores(model, processor, records) -> np.ndarray:
    from dbeta.train.evaluation.evaluate import zero_shot_scores

    ecg_embeds, failures = embed_ecgs(model, processor.feature_extractor, [str(records / name) for name in RECORDS])
    assert not failures
    logits = zero_shot_scores(model, processor.tokenizer, ecg_embeds, LABELS, protocol="package")
    return torch.from_numpy(logits).sigmoid().numpy()


def demo_validation_scores(model, processor, records) -> np.ndarray:
    from dbeta.train.demo.real_ecg import RealEvalSet, zero_shot_logits

    loaded = [read_ecg_file(str(records / name)) for name in RECORDS]
    assert all(record.sampling_rate == 500 for record in loaded)
    eval_set = RealEvalSet(
        record_ids=RECORDS,
        signals=np.stack([record.signal for record in loaded]),
        reports=[""] * len(RECORDS),
        rhythms=[""] * len(RECORDS),
        lead_names=tuple(loaded[0].lead_names),
        sampling_rate=500,
    )
    logits = zero_shot_logits(model, processor, eval_set, LABELS)
    return 1.0 / (1.0 + np.exp(-logits))


def test_pipeline_cli_evaluation_and_demo_validation_agree(setting, tmp_path):
    folder, records, model, processor = setting
    reference = pipeline_scores(folder, records, model, processor)
    assert reference.shape == (len(RECORDS), len(LABELS))
    # A random tiny model still separates the records: the comparison is not between constants.
    assert np.ptp(reference, axis=0).max() > 0.01
    for name, scores in {
        "dbeta classify": cli_scores(folder, records, tmp_path),
        "evaluate.py": evaluation_scores(model, processor, records),
        "demo validation": demo_validation_scores(model, processor, records),
    }.items():
        np.testing.assert_allclose(scores, reference, atol=TOLERANCE, rtol=0, err_msg=name)
