"""Original-checkpoint converter: parity with the ORIGINAL implementation, strictness, safe loading."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from dbeta.train.conversion.convert_original_checkpoint import (
    config_from_original,
    convert_checkpoint,
    convert_state_dict,
    load_converted_state_dict,
    load_original_state_dict,
    main,
    parse_conv_feature_layers,
)
from modeling_dbeta import DBetaECGModel, DBetaForPreTraining, DBetaModel
from tiny import tokenizer_of_size
from pipeline_dbeta import normalize_label_text
from transformers import AutoProcessor

# The original implementation's tiny checkpoint and outputs (vendored from the spec's reference/).
REFERENCE = Path(__file__).resolve().parent / "fixtures" / "reference"


def reference_dir() -> Path:
    return REFERENCE


def original_model_section() -> dict:
    return json.loads((reference_dir() / "tiny_config.json").read_text())["original_config_model_section"]


def test_parse_conv_feature_layers_without_eval():
    assert parse_conv_feature_layers("[(256, 2, 2)] * 4") == [(256, 2, 2)] * 4
    assert parse_conv_feature_layers("[(512, 10, 5)] + [(512, 3, 2)] * 2") == [(512, 10, 5), (512, 3, 2), (512, 3, 2)]
    with pytest.raises(ValueError):
        parse_conv_feature_layers("__import__('os').system('true')")


def test_tiny_checkpoint_matches_the_original_implementation(tmp_path):
    reference = np.load(reference_dir() / "tiny_reference_outputs.npz")
    convert_checkpoint(
        reference_dir() / "tiny_original_checkpoint.pt",
        tmp_path / "converted",
        original_config=original_model_section(),
        tokenizer=tokenizer_of_size(1000),
    )
    processor = AutoProcessor.from_pretrained(tmp_path / "converted", trust_remote_code=True)
    assert processor.feature_extractor.lead_names == ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]
    assert processor(text=["sinus rhythm"])["input_ids"][0][-1] == 1
    # The converted folder loads back through the normal path, and is what we compare.
    model = DBetaForPreTraining.from_pretrained(tmp_path / "converted").eval()
    ecg = torch.from_numpy(reference["ecg"])
    input_ids = torch.from_numpy(reference["input_ids"]).long()
    attention_mask = torch.from_numpy(reference["attention_mask"]).long()
    with torch.no_grad():
        ecg_features = model.get_ecg_features(ecg).pooler_output
        text_features = model.get_text_features(input_ids, attention_mask).pooler_output
        ecg_states = model.dbeta.ecg_model(ecg[:2]).last_hidden_state
        text_states = model.dbeta.text_model(input_ids, attention_mask).last_hidden_state
        fused = model.dbeta.fuse(ecg_states, text_states, attention_mask)
        etm_logits = model.dbeta.etm_head(fused.cls_features)
        matching = model.dbeta(ecg[:2], input_ids, attention_mask, return_matching=True)
    np.testing.assert_allclose(ecg_features.numpy(), reference["ecg_features"], atol=1e-5)
    np.testing.assert_allclose(text_features.numpy(), reference["text_features"], atol=1e-5)
    np.testing.assert_allclose(fused.cls_features.numpy(), reference["multi_modal_cls_feats"], atol=1e-5)
    np.testing.assert_allclose(etm_logits.numpy(), reference["etm_logits"], atol=1e-5)
    np.testing.assert_allclose(matching.matching_logits.numpy(), reference["etm_logits"], atol=1e-5)


def test_ecg_only_export_matches_the_original_features(tmp_path):
    reference = np.load(reference_dir() / "tiny_reference_outputs.npz")
    convert_checkpoint(
        reference_dir() / "tiny_original_checkpoint.pt",
        tmp_path / "ecg",
        original_config=original_model_section(),
        ecg_only=True,
    )
    model = DBetaECGModel.from_pretrained(tmp_path / "ecg").eval()
    assert sum(p.numel() for p in model.parameters()) < 200_000  # no text tower, no fusion
    with torch.no_grad():
        features = model(torch.from_numpy(reference["ecg"])).pooler_output
    np.testing.assert_allclose(features.numpy(), reference["ecg_features"], atol=1e-5)


def test_every_original_key_is_used_and_every_parameter_set():
    state_dict = load_original_state_dict(reference_dir() / "tiny_original_checkpoint.pt")
    config = config_from_original(state_dict, original_model_section())
    converted = convert_state_dict(state_dict, config)
    model = DBetaForPreTraining(config)
    expected = set(model.state_dict()) - {"dbeta.text_model.t5.encoder.embed_tokens.weight"}
    assert set(converted) == expected

    with pytest.raises(ValueError, match="no place"):
        convert_state_dict({**state_dict, "ecg_encoder.some_new_layer.weight": torch.zeros(1)}, config)
    incomplete = dict(converted)
    incomplete.pop("dbeta.ecg_fusion_pooler.dense.weight")
    with pytest.raises(ValueError, match="missing"):
        load_converted_state_dict(DBetaForPreTraining(config), incomplete)
    untied = {**state_dict, "language_encoder.encoder.embed_tokens.weight": torch.zeros_like(state_dict["language_encoder.shared.weight"])}
    with pytest.raises(ValueError, match="tied"):
        convert_state_dict(untied, config)


class _PickledConfig:  # stands in for the config objects fairseq pickles into checkpoints
    pass


def test_unsafe_checkpoint_needs_explicit_trust(tmp_path):
    state_dict = load_original_state_dict(reference_dir() / "tiny_original_checkpoint.pt")
    path = tmp_path / "fairseq_style.pt"
    torch.save({"model": state_dict, "cfg": _PickledConfig()}, path)
    with pytest.raises(ValueError, match="--trust_checkpoint"):
        load_original_state_dict(path)
    assert set(load_original_state_dict(path, trust_checkpoint=True)) == set(state_dict)


@pytest.mark.slow
def test_full_size_synthetic_checkpoint_converts_strictly(tmp_path):
    """All 645 original keys at their real shapes (from the spec's TSV), random values."""
    tsv = (Path(__file__).resolve().parent / "fixtures" / "original_checkpoint_keys.tsv")
    generator = torch.Generator().manual_seed(0)
    state_dict = {}
    for line in tsv.read_text().splitlines():
        key, shape = line.split("\t")
        shape = tuple(int(d) for d in shape.strip("()").split(",") if d.strip())
        state_dict[key] = torch.randn(shape, generator=generator) * 0.02
    assert len(state_dict) == 645
    state_dict["language_encoder.encoder.embed_tokens.weight"] = state_dict["language_encoder.shared.weight"]
    state_dict["ecg_encoder.mask_emb"] = torch.randn(768, generator=generator)  # the release's extra key
    torch.save({"model": state_dict}, tmp_path / "synthetic.pt")

    model = convert_checkpoint(tmp_path / "synthetic.pt", tmp_path / "converted", tokenizer=tokenizer_of_size(32100))
    assert model.config.ecg_config.num_hidden_layers == 8 and model.config.text_config.num_layers == 12
    assert model.config.fusion_num_attention_heads == 12 and model.config.mem_decoder_num_attention_heads == 6
    assert sum(p.numel() for p in model.parameters()) == 321_387_330
    params = dict(model.named_parameters())
    # Spot-check renamed, split and weight-norm tensors against the original values.
    torch.testing.assert_close(
        params["dbeta.ecg_model.pos_conv_embed.conv.parametrizations.weight.original1"],
        state_dict["ecg_encoder.conv_pos.pos_conv.0.weight_v"],
    )
    q, k, v = state_dict["mim_head.decoder.resblocks.2.attn.in_proj_weight"].chunk(3)
    torch.testing.assert_close(params["mem_head.layers.2.attention.k_proj.weight"], k)
    torch.testing.assert_close(
        params["dbeta.text_fusion_layers.5.cross_attention_layer_norm.bias"],
        state_dict["multi_modal_language_layers.5.crossattention.output.LayerNorm.bias"],
    )
    del model
    reloaded = DBetaModel.from_pretrained(tmp_path / "converted").eval()
    ecg = torch.randn(1, 12, 5000, generator=generator)
    with torch.no_grad():
        features = reloaded(ecg).pooler_output
    assert features.shape == (1, 768) and torch.isfinite(features).all()


PACKAGE_DIR = Path(__file__).resolve().parents[1]
LUDB_RECORD = Path(__file__).resolve().parent / "fixtures" / "ludb" / "1"


def _convert_tiny_with_the_cli(tmp_path) -> Path:
    (tmp_path / "config.json").write_text(json.dumps({"model": original_model_section()}))
    folder = tmp_path / "dbeta-tiny"
    main(
        [
            "--checkpoint_path", str(reference_dir() / "tiny_original_checkpoint.pt"),
            "--output_dir", str(folder),
            "--tokenizer", tokenizer_of_size(1000),
            "--original_config", str(tmp_path / "config.json"),
        ]
    )
    return folder


def test_converted_folder_is_a_complete_hub_folder(tmp_path):
    folder = _convert_tiny_with_the_cli(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    assert config["custom_pipelines"]["zero-shot-ecg-classification"]["impl"] == "pipeline_dbeta.ZeroShotECGClassificationPipeline"
    for name in ("configuration_dbeta.py", "modeling_dbeta.py", "processing_dbeta.py", "pipeline_dbeta.py",
                 "model.safetensors", "processor_config.json", "preprocessor_config.json", "tokenizer.json"):
        assert (folder / name).is_file(), name
    shipped = json.loads((folder / "label_descriptions.json").read_text())
    assert shipped == json.loads((PACKAGE_DIR / "dbeta" / "label_descriptions.json").read_text())
    card = (folder / "README.md").read_text()
    assert "license: cc-by-nc-4.0" in card and "CC BY-NC 4.0" in card
    assert "tiny_original_checkpoint.pt" in card and "--original_config" in card
    assert "python train/conversion/convert_original_checkpoint.py --checkpoint_path" in card
    # Only the finished folder is left: no temporary sibling.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["config.json", "dbeta-tiny"]


def test_converted_folder_runs_the_zero_shot_pipeline_without_the_package(tmp_path):
    """A fresh process that never imports `dbeta` (nothing registered): remote code only."""
    folder = _convert_tiny_with_the_cli(tmp_path)
    script = textwrap.dedent(
        f"""
        import json, sys
        from transformers import pipeline
        classifier = pipeline("zero-shot-ecg-classification", model={str(folder)!r}, trust_remote_code=True, device="cpu")
        embedded = []
        embed_texts = classifier.embed_texts
        def recording_embed_texts(texts):
            embedded.extend(texts)
            return embed_texts(texts)
        classifier.embed_texts = recording_embed_texts
        result = classifier({str(LUDB_RECORD)!r}, candidate_labels=["AFIB", "LBBB"])
        assert "dbeta" not in sys.modules, "the fresh process must not import the installed package"
        print(json.dumps({{"pipeline": type(classifier).__module__, "embedded": embedded, "result": result}}))
        """
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    completed = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    output = json.loads(completed.stdout.strip().splitlines()[-1])
    assert output["pipeline"].startswith("transformers_modules.")
    descriptions = json.loads((PACKAGE_DIR / "dbeta" / "label_descriptions.json").read_text())
    # Both codes were embedded as their descriptions, not as the text "afib" / "lbbb".
    assert output["embedded"] == [normalize_label_text(descriptions["AFIB"]), normalize_label_text(descriptions["LBBB"])]
    assert len(output["embedded"][0]) > 20 and "fibrillation" in output["embedded"][0]
    assert sorted(item["label"] for item in output["result"]) == ["AFIB", "LBBB"]
    assert all(0.0 < item["score"] < 1.0 for item in output["result"])


@pytest.mark.parametrize("tokenizer", ["/nonexistent/tokenizer-folder", None])
def test_failed_conversion_leaves_no_folder(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="--tokenizer"):
        convert_checkpoint(
            reference_dir() / "tiny_original_checkpoint.pt",
            tmp_path / "out",
            original_config=original_model_section(),
            tokenizer=tokenizer,
        )
    assert list(tmp_path.iterdir()) == []


def test_existing_output_dir_needs_overwrite(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("earlier work")
    arguments = dict(original_config=original_model_section(), ecg_only=True)
    with pytest.raises(FileExistsError, match="not empty"):
        convert_checkpoint(reference_dir() / "tiny_original_checkpoint.pt", tmp_path / "out", **arguments)
    assert (tmp_path / "out" / "keep.txt").read_text() == "earlier work"
    convert_checkpoint(reference_dir() / "tiny_original_checkpoint.pt", tmp_path / "out", overwrite=True, **arguments)
    assert not (tmp_path / "out" / "keep.txt").exists() and (tmp_path / "out" / "model.safetensors").is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]
