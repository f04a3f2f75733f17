#!/usr/bin/env python
# Copyright 2026 The dbeta authors. Licensed under the Apache License, Version 2.0.
"""Convert an original D-BETA checkpoint (fairseq-style `.pt`, weights under "model") to a
transformers folder that `AutoModel.from_pretrained(folder, trust_remote_code=True)` loads.

    python train/convert_original_checkpoint.py --checkpoint_path sample.pt --output_dir dbeta-base \
        [--original_config config.json] [--tokenizer google/flan-t5-base] [--ecg_only] [--trust_checkpoint]

Every original key is mapped; an unused original key or a new parameter left unset is an error
(never a silently random model, unlike the original loader's bare `except`). The architecture is
read from the checkpoint's shapes; head counts, which shapes do not reveal, come from the original
`config.json` (`--original_config`) or default to the published 64-d heads.
"""

import argparse
import ast
import json
import logging
import re
from pathlib import Path

import torch

from configuration_dbeta import DBetaConfig, DBetaECGConfig
from modeling_dbeta import DBetaECGModel, DBetaForPreTraining

logger = logging.getLogger(__name__)

# Encoder-only exports need exactly these original prefixes (what `get_ecg_feats` uses).
ECG_TOWER_PREFIXES = ("class_embedding", "ecg_encoder.", "multi_modal_ecg_proj.", "unimodal_ecg_pooler.")
UNUSED_ORIGINAL_KEYS = ("ecg_encoder.mask_emb",)

_FUSION_RENAMES = (
    ("attention.self.query.", "self_attention.q_proj."),
    ("attention.self.key.", "self_attention.k_proj."),
    ("attention.self.value.", "self_attention.v_proj."),
    ("attention.output.dense.", "self_attention.out_proj."),
    ("attention.output.LayerNorm.", "self_attention_layer_norm."),
    ("crossattention.self.query.", "cross_attention.q_proj."),
    ("crossattention.self.key.", "cross_attention.k_proj."),
    ("crossattention.self.value.", "cross_attention.v_proj."),
    ("crossattention.output.dense.", "cross_attention.out_proj."),
    ("crossattention.output.LayerNorm.", "cross_attention_layer_norm."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
    ("output.LayerNorm.", "final_layer_norm."),
)
_PREFIX_RENAMES = (
    ("class_embedding", "dbeta.ecg_model.class_embedding"),
    ("ecg_encoder.layer_norm.", "dbeta.ecg_model.feature_projection.layer_norm."),
    ("ecg_encoder.post_extract_proj.", "dbeta.ecg_model.feature_projection.projection."),
    ("ecg_encoder.conv_pos.pos_conv.0.weight_g", "dbeta.ecg_model.pos_conv_embed.conv.parametrizations.weight.original0"),
    ("ecg_encoder.conv_pos.pos_conv.0.weight_v", "dbeta.ecg_model.pos_conv_embed.conv.parametrizations.weight.original1"),
    ("ecg_encoder.conv_pos.pos_conv.0.parametrizations.weight.", "dbeta.ecg_model.pos_conv_embed.conv.parametrizations.weight."),
    ("ecg_encoder.conv_pos.pos_conv.0.bias", "dbeta.ecg_model.pos_conv_embed.conv.bias"),
    ("ecg_encoder.encoder.layer_norm.", "dbeta.ecg_model.encoder.layer_norm."),
    ("multi_modal_ecg_proj.", "dbeta.ecg_model.projection."),
    ("unimodal_ecg_pooler.", "dbeta.ecg_model.pooler."),
    ("language_encoder.", "dbeta.text_model.t5."),
    ("multi_modal_language_proj.", "dbeta.text_model.projection."),
    ("unimodal_language_pooler.", "dbeta.text_model.pooler."),
    ("modality_type_embeddings.", "dbeta.modality_type_embeddings."),
    ("multi_modal_language_pooler.", "dbeta.text_fusion_pooler."),
    ("multi_modal_ecg_pooler.", "dbeta.ecg_fusion_pooler."),
    ("itm_head.fc.", "dbeta.etm_head."),
    ("mlm_head.transform.LayerNorm.", "mlm_head.transform.layer_norm."),
    ("mlm_head.", "mlm_head."),
    ("mim_head.decoder_norm.", "mem_head.decoder_norm."),
    ("mim_head.", "mem_head."),
)


def parse_conv_feature_layers(spec: str) -> list[tuple[int, int, int]]:
    """Parse the original `conv_feature_layers` string (e.g. "[(256, 2, 2)] * 4") without `eval` (Q4)."""
    layers = []
    for term in spec.split("+"):
        match = re.fullmatch(r"\s*(\[.*\])\s*(?:\*\s*(\d+))?\s*", term)
        if match is None:
            raise ValueError(f"Cannot parse conv_feature_layers term {term!r}.")
        block = ast.literal_eval(match.group(1))
        layers.extend(list(block) * int(match.group(2) or 1))
    if not all(isinstance(layer, tuple) and len(layer) == 3 for layer in layers):
        raise ValueError(f"conv_feature_layers must list (dim, kernel, stride) triples, got {spec!r}.")
    return layers


def load_original_state_dict(path: str | Path, trust_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """Load the `model` state dict of an original checkpoint, safely unless told otherwise (DECISIONS 25)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError subclasses and RuntimeError here
        if not trust_checkpoint:
            raise ValueError(
                f"{path} cannot be loaded with torch.load(weights_only=True): it pickles other objects "
                f"(fairseq checkpoints store config objects). Only if you trust this file, rerun with "
                f"--trust_checkpoint to load it with weights_only=False. ({error})"
            ) from error
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    state_dict = checkpoint.get("model", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state_dict, dict) or not all(torch.is_tensor(v) for v in state_dict.values()):
        raise ValueError(f"{path} holds no state dict under 'model'.")
    return dict(state_dict)


def _count_layers(state_dict, pattern: str) -> int:
    indices = {int(m.group(1)) for key in state_dict if (m := re.match(pattern, key))}
    return max(indices) + 1 if indices else 0


def config_from_original(state_dict: dict[str, torch.Tensor], original_config: dict | None = None) -> DBetaConfig:
    """Read the architecture from the checkpoint's shapes (head counts from the original config)."""
    original = dict(original_config or {})
    original = original.get("model", original)
    sd = state_dict

    width = sd["class_embedding"].shape[0]
    num_conv = _count_layers(sd, r"ecg_encoder\.feature_extractor\.conv_layers\.(\d+)\.0\.weight")
    conv_dims = [sd[f"ecg_encoder.feature_extractor.conv_layers.{i}.0.weight"].shape[0] for i in range(num_conv)]
    conv_kernels = [sd[f"ecg_encoder.feature_extractor.conv_layers.{i}.0.weight"].shape[2] for i in range(num_conv)]
    if "conv_feature_layers" in original:
        conv_strides = [stride for _, _, stride in parse_conv_feature_layers(original["conv_feature_layers"])]
    else:
        conv_strides = conv_kernels  # the published extractor uses stride == kernel
    pos_g_key = next(k for k in sd if k.startswith("ecg_encoder.conv_pos.pos_conv.0.") and ("weight_v" in k or "original1" in k))
    pos_v = sd[pos_g_key]

    def heads(name: str, dim: int) -> int:
        return int(original.get(name, max(1, dim // 64)))

    ecg_config = DBetaECGConfig(
        num_leads=sd["ecg_encoder.feature_extractor.conv_layers.0.0.weight"].shape[1],
        conv_dim=conv_dims,
        conv_kernel=conv_kernels,
        conv_stride=conv_strides,
        conv_bias="ecg_encoder.feature_extractor.conv_layers.0.0.bias" in sd,
        hidden_size=width,
        num_hidden_layers=_count_layers(sd, r"ecg_encoder\.encoder\.layers\.(\d+)\."),
        num_attention_heads=heads("encoder_attention_heads", width),
        intermediate_size=sd["ecg_encoder.encoder.layers.0.fc1.weight"].shape[0],
        num_conv_pos_embeddings=pos_v.shape[2],
        num_conv_pos_embedding_groups=width // pos_v.shape[1],
        projection_dim=sd["multi_modal_ecg_proj.weight"].shape[0],
        mask_ratio=float(original.get("mem_prob", 0.75)),
    )
    t5_prefix = "language_encoder.encoder.block."
    relative_bias = sd[f"{t5_prefix}0.layer.0.SelfAttention.relative_attention_bias.weight"]
    t5_heads = relative_bias.shape[1]
    text_config = {
        "vocab_size": sd["language_encoder.shared.weight"].shape[0],
        "d_model": sd["language_encoder.shared.weight"].shape[1],
        "d_kv": sd[f"{t5_prefix}0.layer.0.SelfAttention.q.weight"].shape[0] // t5_heads,
        "d_ff": sd[f"{t5_prefix}0.layer.1.DenseReluDense.wo.weight"].shape[1],
        "num_layers": _count_layers(sd, r"language_encoder\.encoder\.block\.(\d+)\."),
        "num_heads": t5_heads,
        "relative_attention_num_buckets": relative_bias.shape[0],
        "feed_forward_proj": "gated-gelu" if f"{t5_prefix}0.layer.1.DenseReluDense.wi_0.weight" in sd else "relu",
    }
    fusion_width = sd["multi_modal_language_proj.weight"].shape[0]
    mem_width = sd["mim_head.decoder_embed.weight"].shape[0] if "mim_head.decoder_embed.weight" in sd else 384
    return DBetaConfig(
        ecg_config=ecg_config,
        text_config=text_config,
        hidden_size=fusion_width,
        num_fusion_layers=_count_layers(sd, r"multi_modal_language_layers\.(\d+)\."),
        fusion_num_attention_heads=heads("num_heads", fusion_width),
        fusion_intermediate_size=sd["multi_modal_language_layers.0.intermediate.dense.weight"].shape[0],
        max_text_length=int(original.get("max_text_size", 256)),
        mem_decoder_hidden_size=mem_width,
        mem_decoder_num_layers=_count_layers(sd, r"mim_head\.decoder\.resblocks\.(\d+)\.") or 4,
        mem_decoder_num_attention_heads=heads("mem_decoder_num_heads", mem_width),
        mem_fusion_layer=int(original.get("mem_layer", 3)),
        mem_max_positions=sd["mim_head.decoder_pos_embed.pe"].shape[1] if "mim_head.decoder_pos_embed.pe" in sd else 512,
    )


def rename_original_key(key: str) -> str | None:
    """New parameter name for an original key (None for keys that are dropped on purpose)."""
    if key in UNUSED_ORIGINAL_KEYS or key == "language_encoder.encoder.embed_tokens.weight":
        return None
    if key == "mim_head.decoder_pos_embed.pe":
        return "mem_head.position_embeddings"
    if match := re.match(r"ecg_encoder\.feature_extractor\.conv_layers\.(\d+)\.(\d+)\.(weight|bias)$", key):
        layer, index, kind = match.groups()
        module = "conv" if index == "0" else "layer_norm"
        return f"dbeta.ecg_model.feature_extractor.conv_layers.{layer}.{module}.{kind}"
    if match := re.match(r"ecg_encoder\.encoder\.layers\.(\d+)\.(.+)$", key):
        layer, rest = match.groups()
        rest = rest.replace("self_attn_layer_norm.", "attention_layer_norm.").replace("self_attn.", "attention.")
        rest = re.sub(r"^fc([12])\.", r"mlp.fc\1.", rest)
        return f"dbeta.ecg_model.encoder.layers.{layer}.{rest}"
    if match := re.match(r"multi_modal_(language|ecg)_layers\.(\d+)\.(.+)$", key):
        stream, layer, rest = match.groups()
        for old, new in _FUSION_RENAMES:
            if rest.startswith(old):
                rest = new + rest[len(old) :]
                break
        else:
            raise KeyError(key)
        return f"dbeta.{'text' if stream == 'language' else 'ecg'}_fusion_layers.{layer}.{rest}"
    if match := re.match(r"mim_head\.decoder\.resblocks\.(\d+)\.(.+)$", key):
        layer, rest = match.groups()
        rest = rest.replace("attn.out_proj.", "attention.out_proj.")
        rest = rest.replace("mlp.c_fc.", "fc1.").replace("mlp.c_proj.", "fc2.")
        return f"mem_head.layers.{layer}.{rest}"
    for old, new in _PREFIX_RENAMES:
        if key.startswith(old):
            return new + key[len(old) :]
    raise KeyError(key)


def convert_state_dict(state_dict: dict[str, torch.Tensor], config: DBetaConfig) -> dict[str, torch.Tensor]:
    """Map every original key to the new layout; raises on anything unmapped or inconsistent."""
    converted, unmapped = {}, []
    for key, tensor in state_dict.items():
        if re.match(r"mim_head\.decoder\.resblocks\.\d+\.attn\.in_proj_(weight|bias)$", key):
            # The decoder's packed q/k/v projection is split into three projections.
            prefix = rename_original_key(key.replace("in_proj_weight", "out_proj.weight").replace("in_proj_bias", "out_proj.bias"))
            prefix = prefix.rsplit(".out_proj.", 1)[0]
            kind = "weight" if key.endswith("weight") else "bias"
            for name, chunk in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
                converted[f"{prefix}.{name}.{kind}"] = chunk.clone()
            continue
        try:
            new_key = rename_original_key(key)
        except KeyError:
            unmapped.append(key)
            continue
        if new_key is not None:
            converted[new_key] = tensor

    if unmapped:
        raise ValueError(f"{len(unmapped)} original keys have no place in the new model: {unmapped[:10]}")
    embed = state_dict.get("language_encoder.encoder.embed_tokens.weight")
    if embed is not None and not torch.equal(embed, state_dict["language_encoder.shared.weight"]):
        raise ValueError("language_encoder.encoder.embed_tokens.weight differs from the tied shared.weight.")
    return converted


def load_converted_state_dict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    result = model.load_state_dict(state_dict, strict=False)
    # T5's embed_tokens is tied to shared.weight, so it needs no entry of its own.
    missing = [k for k in result.missing_keys if not k.endswith("t5.encoder.embed_tokens.weight")]
    if missing or result.unexpected_keys:
        raise ValueError(f"Conversion is incomplete: missing {missing}, unexpected {result.unexpected_keys}.")


def convert_checkpoint(
    checkpoint_path: str | Path,
    output_dir: str | Path,
    original_config: dict | None = None,
    tokenizer: str | None = None,
    ecg_only: bool = False,
    trust_checkpoint: bool = False,
):
    """Convert and save; returns the converted model (in eval mode)."""
    state_dict = load_original_state_dict(checkpoint_path, trust_checkpoint)
    config = config_from_original(state_dict, original_config)
    converted = convert_state_dict(state_dict, config)

    if ecg_only:
        prefix = "dbeta.ecg_model."
        ecg_state = {"ecg_model." + k[len(prefix) :]: v for k, v in converted.items() if k.startswith(prefix)}
        model = DBetaECGModel(config.ecg_config)
        load_converted_state_dict(model, ecg_state)
    else:
        model = DBetaForPreTraining(config)
        load_converted_state_dict(model, converted)
    model.eval()
    model.save_pretrained(output_dir)

    from processing_dbeta import DBetaFeatureExtractor, DBetaProcessor

    feature_extractor = DBetaFeatureExtractor(
        lead_names=list(config.lead_names), sampling_rate=config.sampling_rate, num_samples=config.num_samples
    )
    if tokenizer is not None:
        from transformers import AutoTokenizer

        DBetaProcessor(feature_extractor, AutoTokenizer.from_pretrained(tokenizer)).save_pretrained(output_dir)
    else:
        feature_extractor.save_pretrained(output_dir)
        logger.warning(
            "No --tokenizer given: %s has no tokenizer files; pass the T5 tokenizer the model was trained "
            "with (google/flan-t5-base for the released weights) to make AutoProcessor work.",
            output_dir,
        )
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint_path", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--original_config", help="the original config.json (its 'model' section gives head counts)")
    parser.add_argument("--tokenizer", help="tokenizer folder or hub id saved with the model (e.g. google/flan-t5-base)")
    parser.add_argument("--ecg_only", action="store_true", help="export only the ECG tower (DBetaECGModel)")
    parser.add_argument(
        "--trust_checkpoint",
        action="store_true",
        help="allow torch.load(weights_only=False) for checkpoints that pickle objects; only for files you trust",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    original_config = json.loads(Path(args.original_config).read_text()) if args.original_config else None
    model = convert_checkpoint(
        args.checkpoint_path,
        args.output_dir,
        original_config=original_config,
        tokenizer=args.tokenizer,
        ecg_only=args.ecg_only,
        trust_checkpoint=args.trust_checkpoint,
    )
    num_params = sum(p.numel() for p in model.parameters())
    print(f"Converted {args.checkpoint_path} -> {args.output_dir} ({type(model).__name__}, {num_params:,} parameters)")


if __name__ == "__main__":
    main()
