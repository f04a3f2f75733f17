"""Robustness of the zero-shot pipeline (issue 10, items 7, 10, 11): inconsistent or damaged model
folders, one bad ECG in a batch, labels given as any iterable, empty inputs. Bad inputs are built here."""

import copy
import json
import shutil

import numpy as np
import pytest
import torch
from transformers import pipeline
from zero_shot_utils import LUDB_FIXTURES, copy_records, save_tiny_zero_shot_folder

from pipeline_dbeta import TASK, ZeroShotECGClassificationPipeline

LABELS = ["AFIB", "LBBB", "sinus rhythm"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_zero_shot_folder(tmp_path_factory.mktemp("dbeta-tiny"))


@pytest.fixture(scope="module")
def classifier(folder):
    return pipeline(TASK, model=str(folder), trust_remote_code=True, device="cpu")


@pytest.fixture(scope="module")
def ecg():
    return (0.3 * np.random.default_rng(0).standard_normal((12, 5000))).astype(np.float32)


def rebuilt(classifier, model=None, feature_extractor=None):
    """A pipeline over (copies of) the classifier's pieces, as a folder with those pieces would load."""
    return ZeroShotECGClassificationPipeline(
        model=model if model is not None else classifier.model,
        tokenizer=classifier.tokenizer,
        feature_extractor=feature_extractor if feature_extractor is not None else classifier.feature_extractor,
        device="cpu",
    )


def edited_copy(folder, target, edit):
    shutil.copytree(folder, target)
    for name in ("preprocessor_config.json", "processor_config.json", "config.json"):
        path = target / name
        if path.is_file():
            data = json.loads(path.read_text())
            edit(name, data)
            path.write_text(json.dumps(data))
    return target


# -- item 7: model folder inconsistencies --------------------------------------------------------


def test_folder_whose_feature_extractor_disagrees_with_the_model_config_is_refused_on_load(folder, tmp_path):
    def rate_250(name, data):
        if name != "config.json":
            data.get("feature_extractor", data)["sampling_rate"] = 250

    bad = edited_copy(folder, tmp_path / "rate", rate_250)
    with pytest.raises(ValueError, match=r"Inconsistent D-BETA model folder .*sampling_rate: feature extractor 250 "):
        pipeline(TASK, model=str(bad), trust_remote_code=True, device="cpu")


def test_lead_order_and_length_disagreements_are_named(classifier):
    swapped = copy.deepcopy(classifier.feature_extractor)
    leads = swapped.lead_names
    swapped.lead_names = [*leads[:4], leads[5], leads[4], *leads[6:]]
    with pytest.raises(ValueError, match="lead order: feature extractor"):
        rebuilt(classifier, feature_extractor=swapped)
    shorter = copy.deepcopy(classifier.feature_extractor)
    shorter.num_samples = 2500
    with pytest.raises(ValueError, match="num_samples: feature extractor 2500 != model config 5000"):
        rebuilt(classifier, feature_extractor=shorter)


def test_nan_logit_scale_is_refused_on_load(folder, classifier, tmp_path):
    def nan_scale(name, data):
        if name == "config.json":
            data["ets_logit_scale"] = float("nan")

    bad = edited_copy(folder, tmp_path / "nan-scale", nan_scale)
    with pytest.raises(ValueError, match=r"config.ets_logit_scale is not finite \(nan\)"):
        pipeline(TASK, model=str(bad), trust_remote_code=True, device="cpu")
    # A learnable scale that became NaN (a damaged checkpoint of `ets_learnable_scale_bias=True`).
    model = copy.deepcopy(classifier.model)
    model.logit_scale = torch.nn.Parameter(torch.tensor(float("nan")))
    model.logit_bias = torch.nn.Parameter(torch.tensor(0.0))
    with pytest.raises(ValueError, match="`logit_scale` weight is not finite"):
        rebuilt(classifier, model=model)


def test_nan_weights_raise_instead_of_nan_scores(classifier, ecg):
    model = copy.deepcopy(classifier.model)
    with torch.no_grad():
        model.ecg_model.encoder.layers[0].mlp.fc1.weight[0, 0] = float("nan")
    damaged = rebuilt(classifier, model=model)
    with pytest.raises(ValueError, match=r"scores of the ECG are not finite .*encoder\.layers\.0\.mlp\.fc1\.weight"):
        damaged(ecg, candidate_labels=LABELS)
    with pytest.raises(ValueError, match=r"ECGs at index \[0, 1\] are not finite"):
        damaged([ecg, ecg], candidate_labels=LABELS, batch_size=2)

    text_damaged = copy.deepcopy(classifier.model)
    with torch.no_grad():
        text_damaged.text_model.projection.weight.fill_(float("inf"))
    with pytest.raises(ValueError, match=r"text embeddings of labels .* are not finite .*text_model\.projection"):
        rebuilt(classifier, model=text_damaged)(ecg, candidate_labels=LABELS)


# -- item 10: one bad record in a batch names its index (and file) -------------------------------


@pytest.mark.parametrize("batch_size", [1, 2])
def test_nan_ecg_in_a_batch_names_its_index(classifier, ecg, batch_size):
    bad = ecg.copy()
    bad[3, 100] = np.nan
    with pytest.raises(ValueError, match=r"^ECG at index 1: .*NaN"):
        classifier([ecg, bad, ecg], candidate_labels=LABELS, batch_size=batch_size)


def test_eleven_lead_record_in_a_batch_names_its_index(classifier, ecg):
    with pytest.raises(ValueError, match=r"^ECG at index 2: .*11 leads"):
        classifier([ecg, ecg, ecg[:11]], candidate_labels=LABELS, batch_size=2)
    with pytest.raises(ValueError, match=r"^ECG at index 0: .*11 leads"):
        classifier(np.stack([ecg[:11], ecg[:11]]), candidate_labels=LABELS)  # a (B, 11, T) array
    # Per-ECG dicts and generators are named the same way.
    with pytest.raises(ValueError, match=r"^ECG at index 1: "):
        classifier([{"signal": ecg}, {"signal": ecg[:11]}], candidate_labels=LABELS)
    with pytest.raises(ValueError, match=r"^ECG at index 1: "):
        list(classifier((item for item in [ecg, ecg[:11]]), candidate_labels=LABELS))


def test_bad_file_in_a_batch_names_its_index_and_file(classifier, tmp_path):
    copy_records(LUDB_FIXTURES, tmp_path, ["1"])
    header = (LUDB_FIXTURES / "1.hea").read_text().replace("1.dat", "cut.dat").replace("1 12", "cut 12", 1)
    (tmp_path / "cut.hea").write_text(header)
    (tmp_path / "cut.dat").write_bytes((LUDB_FIXTURES / "1.dat").read_bytes()[:1000])
    paths = [str(tmp_path / "1"), str(tmp_path / "cut")]
    with pytest.raises(ValueError, match=r"^ECG at index 1 \('.*cut'\): "):
        classifier(paths, candidate_labels=LABELS)
    with pytest.raises(ValueError, match=r"^ECG at index 1 \('.*missing'\): No ECG record"):
        classifier([paths[0], str(tmp_path / "missing")], candidate_labels=LABELS)
    with pytest.raises(ValueError, match=r"^ECG \('.*cut'\): "):  # one file alone is named too
        classifier(paths[1], candidate_labels=LABELS)


# -- item 11: labels as any iterable; empty inputs -----------------------------------------------


def test_candidate_labels_as_any_iterable_of_strings(classifier, ecg):
    expected = classifier(ecg, candidate_labels=LABELS)
    assert classifier(ecg, candidate_labels=(label for label in LABELS)) == expected
    assert classifier(ecg, candidate_labels=dict.fromkeys(LABELS).keys()) == expected
    assert classifier(ecg, candidate_labels=np.array(LABELS)) == expected
    # A generator given at construction is read once and reused by every call.
    preset = pipeline(
        TASK, model=classifier.model, tokenizer=classifier.tokenizer, feature_extractor=classifier.feature_extractor,
        candidate_labels=(label for label in LABELS), device="cpu",
    )
    assert preset(ecg) == expected and preset(ecg) == expected
    batch = classifier([ecg, ecg], candidate_labels=iter(LABELS), batch_size=2)
    assert batch == [expected, expected]


@pytest.mark.parametrize(
    "labels, error, message",
    [
        ([], ValueError, "`candidate_labels` is empty"),
        (iter(()), ValueError, "`candidate_labels` is empty"),
        ((label for label in []), ValueError, "`candidate_labels` is empty"),
        (5, TypeError, "string or an iterable of strings, got int"),
        (b"AFIB", TypeError, "must be strings"),
        (["AFIB", None], TypeError, "must be strings"),
    ],
)
def test_bad_candidate_labels_are_clear_errors(classifier, ecg, labels, error, message):
    with pytest.raises(error, match=message):
        classifier(ecg, candidate_labels=labels)


def test_empty_list_of_ecgs_gives_an_empty_result(classifier):
    assert classifier([], candidate_labels=LABELS) == []
    assert classifier((), candidate_labels=LABELS, batch_size=4) == []
    assert classifier(np.zeros((0, 12, 5000), np.float32), candidate_labels=LABELS) == []
    # The labels are still checked.
    with pytest.raises(ValueError, match="empty"):
        classifier([], candidate_labels=[])
    with pytest.raises(ValueError, match="top_k"):
        classifier([], candidate_labels=LABELS, top_k=0)
