"""D-BETA config and model: published defaults, API contracts, SDPA/eager, checkpointing, save/load."""

import copy
import json
import math
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from tiny import tiny_config

from configuration_dbeta import DBetaConfig, DBetaECGConfig
from modeling_dbeta import DBetaECGModel, DBetaForPreTraining, DBetaModel


def make_ecg(batch_size=2, num_samples=5000, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, 12, num_samples, generator=generator)


def make_text(batch_size=2, length=9, seed=0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, 1000, (batch_size, length), generator=generator)
    input_ids[:, -1] = 1  # </s>
    return input_ids, torch.ones_like(input_ids)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return DBetaForPreTraining(tiny_config()).eval()


# ----------------------------------------------------------------------------- config


def test_default_config_is_the_published_architecture():
    config = DBetaConfig()
    ecg = config.ecg_config
    assert (ecg.num_hidden_layers, ecg.hidden_size, ecg.num_attention_heads, ecg.intermediate_size) == (8, 768, 12, 3072)
    assert (ecg.conv_dim, ecg.conv_kernel, ecg.conv_stride) == ([256] * 4, [2] * 4, [2] * 4)
    assert (ecg.num_conv_pos_embeddings, ecg.num_conv_pos_embedding_groups, ecg.num_leads) == (128, 16, 12)
    text = config.text_config
    assert (text.d_model, text.d_kv, text.d_ff, text.num_layers, text.num_heads, text.vocab_size) == (
        768, 64, 2048, 12, 12, 32128,
    )
    assert text.feed_forward_proj == "gated-gelu" and text.layer_norm_epsilon == 1e-6
    assert config.num_fusion_layers == 6 and config.hidden_size == 768
    assert (config.mem_decoder_hidden_size, config.mem_decoder_num_layers, config.mem_decoder_num_attention_heads) == (
        384, 4, 6,
    )
    assert ecg.mask_ratio == 0.75 and config.max_text_length == 256
    assert config.lead_names == ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]
    assert (config.sampling_rate, config.num_samples, config.num_ecg_tokens) == (500, 5000, 312)


def test_partial_text_config_is_completed_with_flan_t5_base():
    config = DBetaConfig(text_config={"num_layers": 2})
    assert config.text_config.num_layers == 2
    assert config.text_config.d_model == 768 and config.text_config.d_ff == 2048  # not stock T5 (512/2048)
    assert config.text_config.feed_forward_proj == "gated-gelu"


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"hidden_size": 0}, "hidden_size"),
        ({"num_fusion_layers": -1}, "num_fusion_layers"),
        ({"fusion_num_attention_heads": 5}, "fusion_num_attention_heads"),
        ({"fusion_dropout": 1.5}, "fusion_dropout"),
        ({"mlm_probability": -0.1}, "mlm_probability"),
        ({"mem_fusion_layer": 9}, "mem_fusion_layer"),
        ({"lead_names": ["I", "II"]}, "lead_names"),
        ({"ecg_config": {"num_attention_heads": 7}}, "num_attention_heads"),
        ({"ecg_config": {"mask_ratio": 1.0}}, "mask_ratio"),
        ({"ecg_config": {"conv_dim": [256, 256], "conv_kernel": [2]}}, "conv_dim"),
        ({"num_samples": 4}, "num_samples"),
    ],
)
def test_invalid_config_values_raise_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        DBetaConfig(**kwargs)


def test_config_round_trip(tmp_path):
    config = tiny_config(mlm_probability=0.2)
    config.save_pretrained(tmp_path)
    reloaded = DBetaConfig.from_pretrained(tmp_path)
    assert reloaded.to_dict() == config.to_dict()
    # The ECG sub-config can be read out of a full D-BETA config (ECG-only loading).
    ecg_config = DBetaECGConfig.from_pretrained(tmp_path)
    assert ecg_config.hidden_size == 64 and ecg_config.num_hidden_layers == 2


@pytest.mark.slow
def test_published_model_has_the_original_parameter_count():
    model = DBetaForPreTraining(DBetaConfig())
    assert sum(p.numel() for p in model.parameters()) == 321_387_330  # spec 1.3, unique parameters
    assert sum(p.numel() for p in model.dbeta.ecg_model.parameters()) == 62_021_760 + 768 * 768 * 2 + 768 * 2 + 768


# ----------------------------------------------------------------------------- API contracts


def test_feature_shapes_and_hub_release_contract(tiny_model):
    ecg = make_ecg(3)
    input_ids, attention_mask = make_text(2)
    with torch.no_grad():
        ecg_out = tiny_model.get_ecg_features(ecg)
        text_out = tiny_model.get_text_features(input_ids, attention_mask)
        both = tiny_model.dbeta(input_values=ecg, input_ids=input_ids, attention_mask=attention_mask)
        ecg_only = tiny_model.dbeta(ecg)
    assert ecg_out.pooler_output.shape == (3, 64) and ecg_out.last_hidden_state.shape == (3, 313, 64)
    assert text_out.pooler_output.shape == (2, 64) and text_out.last_hidden_state.shape == (2, 9, 64)
    torch.testing.assert_close(ecg_only.pooler_output, ecg_out.pooler_output)
    assert both.logits_per_ecg.shape == (3, 2)
    torch.testing.assert_close(both.logits_per_text, both.logits_per_ecg.t())
    # Fixed scale 1 and no bias: the logits are raw dot products of the pooled features.
    torch.testing.assert_close(both.logits_per_ecg, ecg_out.pooler_output @ text_out.pooler_output.t())


def test_return_matching_gives_pair_probabilities(tiny_model):
    ecg = make_ecg(2)
    input_ids, attention_mask = make_text(2)
    with torch.no_grad():
        out = tiny_model.dbeta(ecg, input_ids, attention_mask, return_matching=True)
    assert out.matching_probs.shape == (2,) and ((out.matching_probs >= 0) & (out.matching_probs <= 1)).all()
    with pytest.raises(ValueError, match="batch sizes"):
        tiny_model.dbeta(make_ecg(3), input_ids, attention_mask, return_matching=True)


def test_text_attention_mask_makes_padding_irrelevant(tiny_model):
    input_ids, attention_mask = make_text(1, length=6)
    padded = torch.cat([input_ids, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    padded_mask = torch.cat([attention_mask, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    with torch.no_grad():
        short = tiny_model.get_text_features(input_ids, attention_mask).pooler_output
        long = tiny_model.get_text_features(padded, padded_mask).pooler_output
    torch.testing.assert_close(short, long, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "bad, error",
    [
        (torch.randn(2, 11, 5000), "12 leads"),
        (torch.randn(12, 5000), "12 leads"),
        (torch.ones(2, 12, 5000, dtype=torch.long), "floating-point"),
        (torch.randn(2, 12, 8), "too short"),
    ],
)
def test_bad_ecg_input_raises(tiny_model, bad, error):
    with pytest.raises(ValueError, match=error):
        tiny_model.get_ecg_features(bad)


def test_batch_equals_singles_and_eval_is_deterministic(tiny_model):
    ecg = make_ecg(4)
    input_ids, attention_mask = make_text(4)
    with torch.no_grad():
        batched = tiny_model.get_ecg_features(ecg).pooler_output
        singles = torch.cat([tiny_model.get_ecg_features(ecg[i : i + 1]).pooler_output for i in range(4)])
        text_batched = tiny_model.get_text_features(input_ids, attention_mask).pooler_output
        text_singles = torch.cat(
            [tiny_model.get_text_features(input_ids[i : i + 1], attention_mask[i : i + 1]).pooler_output for i in range(4)]
        )
        again = tiny_model.get_ecg_features(ecg).pooler_output
    torch.testing.assert_close(batched, singles, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(text_batched, text_singles, atol=1e-5, rtol=1e-5)
    assert torch.equal(batched, again)


def test_sdpa_equals_eager(tiny_model):
    eager_config = copy.deepcopy(tiny_model.config)
    eager_config._attn_implementation = "eager"
    eager = DBetaForPreTraining(eager_config).eval()
    eager.load_state_dict(tiny_model.state_dict())
    assert tiny_model.dbeta.ecg_model.encoder.layers[0].attention.config._attn_implementation != "eager"
    assert eager.dbeta.ecg_model.encoder.layers[0].attention.config._attn_implementation == "eager"
    ecg = make_ecg(2)
    input_ids, attention_mask = make_text(2)
    attention_mask[1, -3:] = 0
    with torch.no_grad():
        for model_a, model_b in [(tiny_model, eager)]:
            ecg_a, ecg_b = model_a.dbeta.ecg_model(ecg), model_b.dbeta.ecg_model(ecg)
            text_a = model_a.dbeta.text_model(input_ids, attention_mask)
            text_b = model_b.dbeta.text_model(input_ids, attention_mask)
            fused_a = model_a.dbeta.fuse(ecg_a.last_hidden_state, text_a.last_hidden_state, attention_mask)
            fused_b = model_b.dbeta.fuse(ecg_b.last_hidden_state, text_b.last_hidden_state, attention_mask)
    torch.testing.assert_close(ecg_a.pooler_output, ecg_b.pooler_output, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused_a.cls_features, fused_b.cls_features, atol=1e-5, rtol=1e-5)
    # Attention weights come back through the eager path.
    with torch.no_grad():
        out = tiny_model.get_ecg_features(ecg, output_attentions=True, output_hidden_states=True)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 4, 313, 313)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, 4, 313))
    assert len(out.hidden_states) == 3


def _pretraining_grads(model, batch):
    model.zero_grad()
    out = model(**batch, mask_generator=torch.Generator().manual_seed(1))
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    config = tiny_config(fusion_dropout=0.0, ecg_config=dict(tiny_config().ecg_config.to_dict(), hidden_dropout=0.0,
                         attention_dropout=0.0, feat_proj_dropout=0.0), text_config={**tiny_config().text_config.to_dict(), "dropout_rate": 0.0})
    model = DBetaForPreTraining(config).train()
    input_ids, attention_mask = make_text(2)
    labels = torch.full_like(input_ids, -100)
    labels[:, 2] = input_ids[:, 2]
    batch = dict(input_values=make_ecg(2), input_ids=input_ids, attention_mask=attention_mask,
                 mlm_labels=labels, is_aligned=torch.tensor([1, 0]))
    loss_plain, grads_plain = _pretraining_grads(model, batch)
    # transformers 5 renamed the API (`gradient_checkpointing_enable` warns that it goes in v6).
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        enable()
    assert model.dbeta.ecg_model.encoder.layers[0].gradient_checkpointing
    loss_ckpt, grads_ckpt = _pretraining_grads(model, batch)
    torch.testing.assert_close(loss_plain, loss_ckpt)
    assert grads_plain.keys() == grads_ckpt.keys() and len(grads_plain) == len(list(model.parameters()))
    for name in grads_plain:
        torch.testing.assert_close(grads_plain[name], grads_ckpt[name], atol=1e-6, rtol=1e-5, msg=name)


def test_learnable_ets_scale_and_bias_start_siglip_style():
    """DECISIONS 15: a learnt log-scale starting at scale 10, bias -10 (SigLIP); fixed 1 / 0 otherwise."""
    torch.manual_seed(0)
    model = DBetaModel(tiny_config(ets_learnable_scale_bias=True))
    torch.testing.assert_close(model.logit_scale.detach(), torch.tensor(math.log(10.0)))
    torch.testing.assert_close(model.logit_bias.detach(), torch.tensor(-10.0))
    ecg_embeds, text_embeds = torch.randn(3, 8), torch.randn(2, 8)
    torch.testing.assert_close(model.ets_logits(ecg_embeds, text_embeds), 10.0 * ecg_embeds @ text_embeds.t() - 10.0)
    # The scale is the exponential of the parameter, so its gradient is scale * d(logits)/d(scale).
    model.ets_logits(ecg_embeds, text_embeds).sum().backward()
    torch.testing.assert_close(model.logit_scale.grad, 10.0 * (ecg_embeds @ text_embeds.t()).sum())
    # The init survives `post_init` / `from_pretrained`-style re-initialisation.
    model.logit_scale.data.fill_(0.0)
    model.logit_bias.data.fill_(0.0)
    model._init_weights(model)
    assert model.logit_scale.item() == pytest.approx(math.log(10.0)) and model.logit_bias.item() == -10.0

    fixed = DBetaModel(tiny_config())
    assert fixed.logit_scale is None
    torch.testing.assert_close(fixed.ets_logits(ecg_embeds, text_embeds), ecg_embeds @ text_embeds.t())


def test_bf16_autocast_keeps_group_norm_in_fp32(tiny_model):
    ecg = make_ecg(2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = tiny_model.get_ecg_features(ecg).pooler_output
    with torch.no_grad():
        ref = tiny_model.get_ecg_features(ecg).pooler_output
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.05)


# ----------------------------------------------------------------------------- save / load


def _run_fresh(code: str, cwd) -> str:
    """Run `code` in a fresh interpreter outside the repository (no dbeta classes registered)."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_auto_classes_round_trip_in_a_fresh_process(tiny_model, tmp_path):
    folder = tmp_path / "dbeta-tiny"
    tiny_model.save_pretrained(folder)
    saved = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "configuration_dbeta.py", "modeling_dbeta.py", "processing_dbeta.py"} <= saved
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModel"] == "modeling_dbeta.DBetaModel"
    assert auto_map["AutoModelForPreTraining"] == "modeling_dbeta.DBetaForPreTraining"
    assert auto_map["AutoConfig"] == "configuration_dbeta.DBetaConfig"
    assert auto_map["AutoProcessor"] == "processing_dbeta.DBetaProcessor"

    ecg = make_ecg(2)
    input_ids, attention_mask = make_text(2)
    with torch.no_grad():
        reference = tiny_model.dbeta(ecg, input_ids, attention_mask)
    torch.save({"ecg": ecg, "ids": input_ids, "mask": attention_mask}, tmp_path / "inputs.pt")
    out = _run_fresh(
        f"""
        import torch
        from transformers import AutoConfig, AutoModel, AutoModelForPreTraining
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True).eval()
        assert type(model).__name__ == "DBetaModel", type(model)
        assert "transformers_modules" in type(model).__module__  # the folder's code, not an installed copy
        with torch.no_grad():
            out = model(input_values=inputs["ecg"], input_ids=inputs["ids"], attention_mask=inputs["mask"])
        torch.save({{"ecg": out.ecg_embeds, "text": out.text_embeds, "logits": out.logits_per_ecg}},
                   {str(tmp_path / "outputs.pt")!r})
        pretraining = AutoModelForPreTraining.from_pretrained({str(folder)!r}, trust_remote_code=True)
        print(type(pretraining).__name__, type(AutoConfig.from_pretrained({str(folder)!r}, trust_remote_code=True)).__name__)
        """,
        cwd=tmp_path,
    )
    assert out.split() == ["DBetaForPreTraining", "DBetaConfig"]
    reloaded = torch.load(tmp_path / "outputs.pt")
    assert torch.equal(reloaded["ecg"], reference.ecg_embeds)
    assert torch.equal(reloaded["text"], reference.text_embeds)
    assert torch.equal(reloaded["logits"], reference.logits_per_ecg)


def test_ecg_tower_loads_alone_from_a_full_checkpoint(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    ecg_model = DBetaECGModel.from_pretrained(tmp_path).eval()
    assert not any(name.startswith(("text_model", "dbeta.text")) for name, _ in ecg_model.named_parameters())
    ecg = make_ecg(2)
    with torch.no_grad():
        torch.testing.assert_close(ecg_model(ecg).pooler_output, tiny_model.get_ecg_features(ecg).pooler_output)
    # And a DBetaModel from a pre-training checkpoint: the heads are dropped, nothing is missing.
    base, info = DBetaModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == set() or not info["missing_keys"]


def test_ecg_only_export_round_trip_in_a_fresh_process(tiny_model, tmp_path):
    ecg_model = DBetaECGModel(tiny_model.config.ecg_config)
    ecg_model.ecg_model.load_state_dict(tiny_model.dbeta.ecg_model.state_dict())
    ecg_model.eval().save_pretrained(tmp_path / "ecg-only")
    ecg = make_ecg(2)
    torch.save(ecg, tmp_path / "ecg.pt")
    with torch.no_grad():
        expected = tiny_model.get_ecg_features(ecg).pooler_output
    _run_fresh(
        f"""
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / "ecg-only")!r}, trust_remote_code=True).eval()
        assert type(model).__name__ == "DBetaECGModel"
        with torch.no_grad():
            torch.save(model(torch.load({str(tmp_path / "ecg.pt")!r})).pooler_output, {str(tmp_path / "out.pt")!r})
        """,
        cwd=tmp_path,
    )
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)


def test_loading_in_bfloat16(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    model = DBetaModel.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert model.dtype == torch.bfloat16
    ecg = make_ecg(2)
    with torch.no_grad():
        features = model(ecg).pooler_output  # fp32 input is cast to the model's dtype
        reference = tiny_model.get_ecg_features(ecg).pooler_output
    assert features.dtype == torch.bfloat16
    torch.testing.assert_close(features.float(), reference, atol=0.02, rtol=0.02)


def test_feature_extractor_gemm_path_equals_convolution():
    """Stride == kernel windows are computed as one GEMM; they must equal Conv1d + GroupNorm + GELU."""
    torch.manual_seed(0)
    model = DBetaECGModel(tiny_config().ecg_config).eval()
    ecg = make_ecg(2)
    expected = ecg
    for index, layer in enumerate(model.ecg_model.feature_extractor.conv_layers):
        expected = layer.conv(expected)
        if index == 0:
            expected = layer.layer_norm(expected)
        expected = torch.nn.functional.gelu(expected)
    with torch.no_grad():
        actual = model.ecg_model.feature_extractor(ecg)
    torch.testing.assert_close(actual, expected.detach().transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_checkpoint_saved_before_the_front_end_rename_loads_bit_exactly():
    """The conv front end is `DBetaFeatureEncoder` now; its parameters keep the original names."""
    from pathlib import Path

    import numpy as np
    from safetensors.torch import load_file

    from modeling_dbeta import DBetaFeatureEncoder, DBetaModel

    folder = Path(__file__).resolve().parent / "fixtures" / "saved_checkpoint"
    saved_names = set(load_file(folder / "model.safetensors"))
    model = DBetaModel.from_pretrained(folder).eval()
    assert isinstance(model.ecg_model.feature_extractor, DBetaFeatureEncoder)
    # Every saved tensor is a parameter of the current model under the same name (the T5 input
    # embedding is tied to `shared` and saved once).
    assert saved_names <= set(model.state_dict())
    assert set(model.state_dict()) - saved_names == {"text_model.t5.encoder.embed_tokens.weight"}
    assert any(name.startswith("ecg_model.feature_extractor.conv_layers.0.") for name in saved_names)
    saved = load_file(folder / "model.safetensors")
    loaded = model.state_dict()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in saved.items())
    # The outputs recorded at saving time: equal up to float round-off. The weights above are the
    # bit-exact claim; outputs are not bit-portable: the first block's GroupNorm has run through
    # PyTorch's fused kernel since (another summation order), and another CPU's kernels round the
    # text tower differently (2.6e-8 at most on an AMX Xeon against the machine that recorded them).
    reference = np.load(folder / "outputs.npz")
    with torch.no_grad():
        ecg = model.get_ecg_features(input_values=torch.from_numpy(reference["input_values"])).pooler_output
        ids = torch.from_numpy(reference["input_ids"])
        text = model.get_text_features(input_ids=ids, attention_mask=torch.ones_like(ids)).pooler_output
    torch.testing.assert_close(ecg, torch.from_numpy(reference["ecg_pooler"]), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(text, torch.from_numpy(reference["text_pooler"]), atol=1e-6, rtol=1e-5)
