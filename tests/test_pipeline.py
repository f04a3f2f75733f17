"""Zero-shot ECG classification pipeline: saved folder in a fresh process, scores, batching, labels, errors."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import pipeline
from zero_shot_utils import LUDB_FIXTURES, save_tiny_zero_shot_folder

from configuration_dbeta import DBetaECGConfig
from modeling_dbeta import DBetaECGModel
from pipeline_dbeta import TASK, ZeroShotECGClassificationPipeline, normalize_label_text
from processing_dbeta import read_wfdb_record

LABELS = ["AFIB", "LBBB", "sinus rhythm with normal axis"]


def make_ecgs(count=3, num_samples=5000, seed=0):
    rng = np.random.default_rng(seed)
    return [(0.3 * rng.standard_normal((12, num_samples))).astype(np.float32) for _ in range(count)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_tiny_zero_shot_folder(tmp_path_factory.mktemp("dbeta-tiny"))


@pytest.fixture(scope="module")
def classifier(folder):
    return pipeline(TASK, model=str(folder), trust_remote_code=True, device="cpu")


def test_saved_folder_is_complete(folder):
    config = json.loads((folder / "config.json").read_text())
    assert config["custom_pipelines"][TASK]["impl"] == "pipeline_dbeta.ZeroShotECGClassificationPipeline"
    assert config["custom_pipelines"][TASK]["pt"] == ["AutoModel"]
    for name in (
        "pipeline_dbeta.py",
        "processing_dbeta.py",
        "modeling_dbeta.py",
        "configuration_dbeta.py",
        "processor_config.json",
        "preprocessor_config.json",
        "tokenizer.json",
        "label_descriptions.json",
    ):
        assert (folder / name).is_file(), name
    shipped = json.loads((folder / "label_descriptions.json").read_text())
    packaged = json.loads((Path(__file__).resolve().parents[1] / "dbeta" / "label_descriptions.json").read_text())
    assert shipped == packaged and len(shipped) == 131


def test_pipeline_and_classification_head_load_in_a_fresh_process(folder, classifier, tmp_path):
    ecgs = make_ecgs(2)
    np.save(tmp_path / "ecgs.npy", np.stack(ecgs))
    script = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np
        from transformers import pipeline
        classifier = pipeline({TASK!r}, model={str(folder)!r}, trust_remote_code=True, device="cpu")
        ecgs = list(np.load("ecgs.npy"))
        results = classifier(ecgs, candidate_labels={LABELS!r}, batch_size=2)
        from transformers import AutoModelForSequenceClassification
        head = AutoModelForSequenceClassification.from_pretrained({str(folder)!r}, trust_remote_code=True, num_labels=4)
        print(json.dumps({{
            "pipeline": type(classifier).__module__ + "." + type(classifier).__name__,
            "model": type(classifier.model).__module__,
            "head": type(head).__name__,
            "head_logits": list(head(classifier.feature_extractor(ecgs[0], return_tensors="pt")["input_values"]).logits.shape),
            "results": results,
        }}))
        assert "dbeta" not in sys.modules, "the fresh process must not import the installed package"
        """
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    output = json.loads(completed.stdout.strip().splitlines()[-1])
    assert output["pipeline"].startswith("transformers_modules.")
    assert output["pipeline"].endswith("pipeline_dbeta.ZeroShotECGClassificationPipeline")
    assert output["model"].startswith("transformers_modules.")
    assert output["head"] == "DBetaForECGClassification" and output["head_logits"] == [1, 4]

    expected = classifier(ecgs, candidate_labels=LABELS)
    for fresh, local in zip(output["results"], expected):
        assert [item["label"] for item in fresh] == [item["label"] for item in local]
        np.testing.assert_allclose([i["score"] for i in fresh], [i["score"] for i in local], rtol=1e-5, atol=1e-6)


def test_scores_are_sigmoid_of_the_ets_logit_sorted_by_logit(classifier):
    ecg = make_ecgs(1)[0]
    result = classifier(ecg, candidate_labels=LABELS)

    model, tokenizer = classifier.model, classifier.tokenizer
    description = classifier.label_descriptions["AFIB"]
    texts = [description.lower(), classifier.label_descriptions["LBBB"].lower(), LABELS[2]]
    with torch.no_grad():
        ecg_embeds = model.get_ecg_features(
            classifier.feature_extractor(ecg, return_tensors="pt")["input_values"]
        ).pooler_output
        logits = []
        for text in texts:  # one text at a time, unpadded
            tokens = tokenizer(text, return_tensors="pt")
            text_embeds = model.get_text_features(tokens["input_ids"], tokens["attention_mask"]).pooler_output
            logits.append(model.ets_logits(ecg_embeds, text_embeds)[0, 0].item())
    order = np.argsort(-np.asarray(logits), kind="stable")
    assert [item["label"] for item in result] == [LABELS[i] for i in order]
    expected = 1 / (1 + np.exp(-np.asarray(logits)[order]))
    np.testing.assert_allclose([item["score"] for item in result], expected, rtol=1e-5)


def test_batch_and_single_give_identical_results(classifier):
    ecgs = make_ecgs(3)
    singles = [classifier(ecg, candidate_labels=LABELS) for ecg in ecgs]
    for batch_size in (1, 2, 3):
        assert classifier(ecgs, candidate_labels=LABELS, batch_size=batch_size) == singles
    assert classifier(np.stack(ecgs), candidate_labels=LABELS, batch_size=2) == singles  # a (B, 12, T) array
    assert classifier(torch.from_numpy(ecgs[0]), candidate_labels=LABELS) == singles[0]
    assert classifier(ecgs[0].tolist(), candidate_labels=LABELS) == singles[0]  # one ECG as nested lists
    assert classifier(list(ecgs[0]), candidate_labels=LABELS) == singles[0]  # one ECG as a list of 1-D leads


def test_label_codes_expand_to_descriptions_and_free_text_is_verbatim(classifier):
    description = classifier.label_descriptions["AFIB"]
    assert classifier.label_texts(["AFIB", "afib", "Left bundle branch block"]) == [
        normalize_label_text(description),
        "afib",  # not a code: codes match case-sensitively
        "left bundle branch block",
    ]
    assert classifier.label_texts(["AFIB"], hypothesis_template="ECG: {}", normalize_text=False) == [
        f"ECG: {description}"
    ]
    assert classifier.label_texts(["AFIB"], labels_are_codes=False) == ["afib"]
    assert classifier.label_texts("AFIB") == [normalize_label_text(description)]  # one string is one label

    ecg = make_ecgs(1)[0]
    by_code = classifier(ecg, candidate_labels=["AFIB"])
    by_text = classifier(ecg, candidate_labels=[description])
    assert by_code[0]["label"] == "AFIB" and by_text[0]["label"] == description
    assert by_code[0]["score"] == pytest.approx(by_text[0]["score"], rel=1e-6)


def test_label_texts_are_embedded_once_per_call(classifier, monkeypatch):
    calls = []
    original = classifier.model.get_text_features

    def counting(*args, **kwargs):
        calls.append(kwargs.get("input_ids", args[0] if args else None).shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(classifier.model, "get_text_features", counting)
    results = classifier(make_ecgs(5), candidate_labels=LABELS, batch_size=2)
    assert len(results) == 5
    assert calls == [len(LABELS)]


def test_softmax_top_k_and_settings_given_at_construction(folder, classifier):
    ecg = make_ecgs(1)[0]
    multi = classifier(ecg, candidate_labels=LABELS)
    single = classifier(ecg, candidate_labels=LABELS, multi_label=False)
    assert sum(item["score"] for item in single) == pytest.approx(1.0)
    assert [item["label"] for item in single] == [item["label"] for item in multi]
    top = classifier(ecg, candidate_labels=LABELS, top_k=2)
    assert top == multi[:2]

    preset = pipeline(TASK, model=str(folder), trust_remote_code=True, device="cpu", candidate_labels=LABELS, top_k=1)
    assert preset(ecg) == multi[:1]
    assert preset(ecg, top_k=3) == multi
    assert preset(ecg, hypothesis_template="{}.")[0]["label"] in LABELS


def test_file_record_and_dict_inputs(classifier):
    path = LUDB_FIXTURES / "1"
    from_path = classifier(str(path), candidate_labels=LABELS)
    record = read_wfdb_record(path)
    assert classifier(record, candidate_labels=LABELS) == from_path
    as_dict = {"signal": record.signal, "sampling_rate": record.sampling_rate, "lead_names": record.lead_names}
    assert classifier(as_dict, candidate_labels=LABELS) == from_path
    # Resampled input: the same ECG at 250 Hz gives a valid (different) result.
    low_rate = {"signal": record.signal[:, ::2], "sampling_rate": 250, "lead_names": record.lead_names}
    assert len(classifier(low_rate, candidate_labels=LABELS)) == 3


@pytest.mark.parametrize(
    "labels, kwargs, message",
    [
        ([], {}, "empty"),
        (["AFIB", " "], {}, "blank"),
        (["AFIB", "AFIB"], {}, "unique"),
        (["AFIB", "afib", "XYZW"], {"labels_are_codes": True}, r"'afib' \(did you mean AFIB\?\).*'XYZW'"),
        (["AFIB"], {"hypothesis_template": "no placeholder"}, "placeholder"),
        (["AFIB"], {"hypothesis_template": "ECG {label}"}, "placeholder"),
        (["AFIB", "***"], {}, "no text once normalised"),
        (["AFIB"], {"top_k": 0}, "top_k"),
    ],
)
def test_label_errors(classifier, labels, kwargs, message):
    with pytest.raises(ValueError, match=message):
        classifier(make_ecgs(1)[0], candidate_labels=labels, **kwargs)


def test_missing_labels_and_bad_signals(classifier, tmp_path):
    ecg = make_ecgs(1)[0]
    with pytest.raises(ValueError, match="candidate_labels"):
        classifier(ecg)
    with pytest.raises(TypeError, match="strings"):
        classifier(ecg, candidate_labels=["AFIB", 3])
    bad = ecg.copy()
    bad[3, 100] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        classifier(bad, candidate_labels=LABELS)
    with pytest.raises(ValueError, match="2-D"):
        classifier(ecg[0], candidate_labels=LABELS)
    with pytest.raises(ValueError, match="leads"):
        classifier(np.zeros((13, 5000), np.float32), candidate_labels=LABELS)
    with pytest.raises(ValueError, match="sampling_rate"):
        classifier(ecg[:, :3000], candidate_labels=LABELS)
    with pytest.raises(ValueError, match="No ECG record"):
        classifier(str(tmp_path / "missing"), candidate_labels=LABELS)
    with pytest.raises(ValueError, match="Cannot read an ECG"):
        classifier(object(), candidate_labels=LABELS)
    with pytest.raises(ValueError, match="'signal'"):
        classifier({"sampling_rate": 500}, candidate_labels=LABELS)


def test_ecg_only_model_is_rejected(classifier):
    ecg_model = DBetaECGModel(
        DBetaECGConfig(
            conv_dim=[32] * 4,
            hidden_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            intermediate_size=128,
            num_conv_pos_embeddings=16,
            projection_dim=64,
        )
    )
    with pytest.raises(ValueError, match="both towers"):
        ZeroShotECGClassificationPipeline(
            model=ecg_model, tokenizer=classifier.tokenizer, feature_extractor=classifier.feature_extractor
        )
