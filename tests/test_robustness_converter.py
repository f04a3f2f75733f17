"""Original-checkpoint converter on bad and unusual inputs: missing layers, damaged files, missing
keys, other containers and key namings, unknown layouts. Every bad input is built here from the
tiny reference checkpoint."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from dbeta.train.conversion.convert_original_checkpoint import (
    CheckpointLayoutError,
    DamagedCheckpointError,
    config_from_original,
    convert_checkpoint,
    layer_counts,
    load_original_state_dict,
    main,
)
from modeling_dbeta import DBetaECGModel
from tiny import tokenizer_of_size

REFERENCE = Path(__file__).resolve().parent / "fixtures" / "reference"
CHECKPOINT = REFERENCE / "tiny_original_checkpoint.pt"


@pytest.fixture(scope="module")
def original():
    return load_original_state_dict(CHECKPOINT)


@pytest.fixture(scope="module")
def original_config():
    return json.loads((REFERENCE / "tiny_config.json").read_text())["original_config_model_section"]


def _without(state_dict, prefix):
    return {key: value for key, value in state_dict.items() if not key.startswith(prefix)}


def _save(state_dict, path, wrap=True):
    torch.save({"model": state_dict} if wrap else state_dict, path)
    return path


def _cli(tmp_path, checkpoint, *extra, config=None):
    arguments = ["--checkpoint_path", str(checkpoint), "--output_dir", str(tmp_path / "out"), "--tokenizer", tokenizer_of_size(1000)]
    if config is not None:
        (tmp_path / "config.json").write_text(json.dumps({"model": config}))
        arguments += ["--original_config", str(tmp_path / "config.json")]
    return main(arguments + list(extra))


# ----------------------------------------------------------------------------- layer counts


def test_layer_counts_of_the_reference(original, original_config):
    assert layer_counts(original, original_config) == {
        "conv feature extractor layer": 4,
        "ECG encoder layer": 2,
        "T5 text encoder block": 2,
        "text fusion layer": 2,
        "ECG fusion layer": 2,
        "MEM decoder block": 2,
    }


def test_a_checkpoint_missing_its_last_ecg_layer_fails_against_the_config(tmp_path, original, original_config, capsys):
    checkpoint = _save(_without(original, "ecg_encoder.encoder.layers.1."), tmp_path / "shallow.pt")
    with pytest.raises(SystemExit) as exit_info:
        _cli(tmp_path, checkpoint, config=original_config)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "encoder_layers = 2" in message and "ECG encoder layer 1 is missing" in message
    assert not (tmp_path / "out").exists()


def test_a_gap_in_layer_indices_names_the_missing_layer(original, original_config):
    gapped = _without(original, "ecg_encoder.encoder.layers.1.")
    for key, value in original.items():  # layers 0 and 2, no 1
        if key.startswith("ecg_encoder.encoder.layers.1."):
            gapped[key.replace("layers.1.", "layers.2.")] = value
    with pytest.raises(CheckpointLayoutError, match=r"no ECG encoder layer 1 \(no key starts with 'ecg_encoder.encoder.layers.1.'\)"):
        config_from_original(gapped)  # found without any config


@pytest.mark.parametrize(
    "prefix, name",
    [
        ("multi_modal_ecg_layers.1.", "ECG fusion layer 1"),
        ("multi_modal_language_layers.1.", "text fusion layer 1"),
        ("mim_head.decoder.resblocks.1.", "MEM decoder block 1"),
    ],
)
def test_missing_fusion_and_decoder_layers(original, original_config, prefix, name):
    with pytest.raises(CheckpointLayoutError, match=f"{name} is missing"):
        config_from_original(_without(original, prefix), original_config)
    if "fusion" in name:  # the other stream shows it even without a config
        with pytest.raises(CheckpointLayoutError, match=f"no {name} "):
            config_from_original(_without(original, prefix))


def test_a_layer_missing_one_tensor_is_named(original):
    partial = dict(original)
    del partial["ecg_encoder.encoder.layers.1.fc1.weight"]
    with pytest.raises(CheckpointLayoutError, match=r"ECG encoder layer 1 is incomplete.*ecg_encoder\.encoder\.layers\.1\.fc1\.weight"):
        layer_counts(partial)


# ----------------------------------------------------------------------------- damaged files


def _truncated(path, fraction=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


@pytest.mark.parametrize("kind", ["empty", "truncated zip", "truncated legacy", "truncated safetensors", "garbage"])
@pytest.mark.parametrize("trust", [False, True])
def test_damaged_files_are_reported_as_damaged(tmp_path, original, kind, trust):
    if kind == "empty":
        path = tmp_path / "sample.pt"
        path.write_bytes(b"")
    elif kind == "truncated zip":
        path = _truncated(_save(original, tmp_path / "sample.pt"))
    elif kind == "truncated legacy":
        path = tmp_path / "sample.pt"
        torch.save({"model": original}, path, _use_new_zipfile_serialization=False)
        _truncated(path)
    elif kind == "truncated safetensors":
        path = tmp_path / "model.safetensors"
        save_file({key: value.clone() for key, value in original.items()}, path)
        _truncated(path, 0.7)
    else:
        path = tmp_path / "sample.bin"
        path.write_bytes(b"<html>403 Forbidden</html>" * 10)
    with pytest.raises(DamagedCheckpointError) as error:
        load_original_state_dict(path, trust_checkpoint=trust)
    assert "damaged" in str(error.value) and str(path) in str(error.value)
    assert "trust_checkpoint" not in str(error.value)


def test_damaged_file_through_the_cli_leaves_nothing(tmp_path, original, capsys):
    path = _truncated(_save(original, tmp_path / "sample.pt"), 0.9)
    with pytest.raises(SystemExit):
        _cli(tmp_path, path)
    message = capsys.readouterr().err
    assert "is damaged" in message and "trust_checkpoint" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample.pt"]


# ----------------------------------------------------------------------------- missing keys


@pytest.mark.parametrize("key", ["class_embedding", "multi_modal_ecg_proj.weight", "language_encoder.shared.weight", "mim_head.decoder_embed.weight"])
def test_a_missing_required_key_is_named(original, original_config, key):
    with pytest.raises(CheckpointLayoutError, match=f"lacks the required key '{key}'"):
        config_from_original(_without(original, key), original_config)


# ----------------------------------------------------------------------------- containers and namings


def _assert_same_state_dict(loaded, original):
    assert set(loaded) == set(original)
    for key, value in original.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)


def _weight_norm_as_parametrizations(state_dict):
    renamed = dict(state_dict)
    renamed["ecg_encoder.conv_pos.pos_conv.0.parametrizations.weight.original0"] = renamed.pop("ecg_encoder.conv_pos.pos_conv.0.weight_g")
    renamed["ecg_encoder.conv_pos.pos_conv.0.parametrizations.weight.original1"] = renamed.pop("ecg_encoder.conv_pos.pos_conv.0.weight_v")
    return renamed


@pytest.mark.parametrize("container", ["fairseq .pt", "plain .pt", ".bin", ".safetensors", "folder"])
@pytest.mark.parametrize("prefix", ["", "module.", "model.", "module.model."])
@pytest.mark.parametrize("parametrized", [False, True])
def test_accepted_containers_prefixes_and_weight_norm_namings(tmp_path, original, container, prefix, parametrized):
    state_dict = _weight_norm_as_parametrizations(original) if parametrized else dict(original)
    # Separate storage per tensor (safetensors refuses shared ones).
    state_dict = {prefix + key: value.clone() for key, value in state_dict.items()}
    if container == "fairseq .pt":
        path = _save(state_dict, tmp_path / "sample.pt")
    elif container == "plain .pt":
        path = _save(state_dict, tmp_path / "sample.pt", wrap=False)
    elif container == ".bin":
        path = _save(state_dict, tmp_path / "pytorch_model.bin", wrap=False)
    elif container == ".safetensors":
        save_file(state_dict, tmp_path / "weights.safetensors")
        path = tmp_path / "weights.safetensors"
    else:
        save_file(state_dict, tmp_path / "model.safetensors")
        path = tmp_path
    _assert_same_state_dict(load_original_state_dict(path), original)


def test_safetensors_with_prefix_and_parametrized_weight_norm_converts_like_the_original(tmp_path, original, original_config):
    state_dict = {"module." + key: value.clone() for key, value in _weight_norm_as_parametrizations(original).items()}
    save_file(state_dict, tmp_path / "release.safetensors")
    model = convert_checkpoint(tmp_path / "release.safetensors", tmp_path / "ecg", original_config=original_config, ecg_only=True)
    reference = np.load(REFERENCE / "tiny_reference_outputs.npz")
    reloaded = DBetaECGModel.from_pretrained(tmp_path / "ecg").eval()
    with torch.no_grad():
        features = reloaded(torch.from_numpy(reference["ecg"])).pooler_output
    np.testing.assert_allclose(features.numpy(), reference["ecg_features"], atol=1e-5)
    assert isinstance(model, DBetaECGModel) and (tmp_path / "ecg" / "README.md").is_file()


def test_an_ecg_tower_checkpoint_converts_with_ecg_only(tmp_path, original, original_config):
    ecg_tower = {key: value for key, value in original.items() if key.startswith(("class_embedding", "ecg_encoder.", "multi_modal_ecg_proj.", "unimodal_ecg_pooler."))}
    path = _save(ecg_tower, tmp_path / "ecg_tower.pt")
    with pytest.raises(CheckpointLayoutError, match="pass --ecg_only"):
        convert_checkpoint(path, tmp_path / "full", original_config=original_config, tokenizer=tokenizer_of_size(1000))
    assert not (tmp_path / "full").exists()
    model = convert_checkpoint(path, tmp_path / "ecg", original_config=original_config, ecg_only=True)
    assert model.config.num_hidden_layers == 2


def test_weight_norm_named_twice_is_an_error(tmp_path, original):
    both = {**original, **{k: v for k, v in _weight_norm_as_parametrizations(original).items() if "parametrizations" in k}}
    with pytest.raises(CheckpointLayoutError, match="weight norm twice"):
        load_original_state_dict(_save(both, tmp_path / "both.pt"))


# ----------------------------------------------------------------------------- unknown layouts


def test_an_unrecognised_layout_lists_unmatched_and_expected_keys(tmp_path, original, capsys):
    # A layout the converter does not know: the ECG encoder under another name.
    renamed = {key.replace("ecg_encoder.", "ecg_backbone."): value for key, value in original.items()}
    path = _save(renamed, tmp_path / "other.pt")
    with pytest.raises(SystemExit):
        _cli(tmp_path, path)
    message = capsys.readouterr().err
    assert "keys that match no original D-BETA name" in message
    assert "ecg_backbone.encoder.layers.0.self_attn.k_proj.weight  (64, 64)" in message
    assert "Expected original names such as" in message and "ecg_encoder.encoder.layers.0.self_attn.q_proj.weight" in message
    assert not (tmp_path / "out").exists()


def test_unknown_extra_keys_are_listed(original, original_config):
    from dbeta.train.conversion.convert_original_checkpoint import convert_state_dict

    extra = {**original, "logit_scale": torch.zeros(()), "ecg_encoder.some_new_layer.weight": torch.zeros(2, 3)}
    config = config_from_original(extra, original_config)
    with pytest.raises(CheckpointLayoutError, match=r"2 checkpoint keys have no place") as error:
        convert_state_dict(extra, config)
    assert "logit_scale  ()" in str(error.value) and "ecg_encoder.some_new_layer.weight  (2, 3)" in str(error.value)


def test_an_already_converted_folder_is_recognised(tmp_path, original_config):
    convert_checkpoint(CHECKPOINT, tmp_path / "converted", original_config=original_config, ecg_only=True)
    with pytest.raises(CheckpointLayoutError, match="already in the dbeta layout"):
        load_original_state_dict(tmp_path / "converted" / "model.safetensors")


def test_a_tokenizer_much_smaller_than_the_embedding_is_refused(tmp_path, original_config):
    """The demo tokenizer (834 tokens) against the checkpoint's 1000 embedding rows: more unused rows
    than T5's padding, so it is not the model's tokenizer; nothing is written."""
    from dbeta.train.demo.build_demo_tokenizer import DEMO_TOKENIZER_DIR

    with pytest.raises(ValueError, match="834 tokens but the checkpoint's text encoder has 1000 embedding rows"):
        convert_checkpoint(CHECKPOINT, tmp_path / "out", original_config=original_config, tokenizer=str(DEMO_TOKENIZER_DIR))
    assert not (tmp_path / "out").exists()
    # Within T5's padding (fewer than 128 unused rows) it converts.
    convert_checkpoint(CHECKPOINT, tmp_path / "ok", original_config=original_config, tokenizer=tokenizer_of_size(900))
    assert (tmp_path / "ok" / "model.safetensors").is_file()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tmp_path, original, original_config, value):
    damaged = dict(original)
    key = next(key for key in damaged if key.startswith("ecg_encoder.") and damaged[key].is_floating_point())
    damaged[key] = damaged[key].clone()
    damaged[key].view(-1)[0] = value
    path = _save(damaged, tmp_path / "damaged.pt")
    with pytest.raises(ValueError, match="NaN/inf weights"):
        convert_checkpoint(path, tmp_path / "out", original_config=original_config, tokenizer=tokenizer_of_size(1000))
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exit_info:  # the script's one-line error, exit status 2
        _cli(tmp_path, path, config=original_config)
    assert exit_info.value.code == 2 and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "content",
    ["{bad json", "[1, 2]", '{"model": 5}', '{"model": {"encoder_layers": "x"}}', '{"model": {"encoder_attention_heads": [1]}}'],
)
def test_a_bad_original_config_is_one_line_naming_it(tmp_path, capsys, content):
    (tmp_path / "config.json").write_text(content)
    arguments = ["--checkpoint_path", str(CHECKPOINT), "--output_dir", str(tmp_path / "out"),
                 "--tokenizer", tokenizer_of_size(1000), "--original_config", str(tmp_path / "config.json")]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "original config" in err.replace("original_config", "original config")
    assert not (tmp_path / "out").exists()
