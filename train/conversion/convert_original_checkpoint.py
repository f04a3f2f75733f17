#!/usr/bin/env python
# Copyright 2026 The dbeta authors. Licensed under the Apache License, Version 2.0.
"""Convert an original D-BETA checkpoint into a complete Hub folder: what
`AutoModel.from_pretrained(folder, trust_remote_code=True)` and
`pipeline("zero-shot-ecg-classification", model=folder, trust_remote_code=True)` load.

    python train/conversion/convert_original_checkpoint.py --checkpoint_path sample.pt --output_dir dbeta-base \
        --tokenizer google/flan-t5-base [--original_config config.json] [--ecg_only] [--trust_checkpoint]

Inputs: the fairseq `.pt` of the original release (`{"model": state_dict}`), a plain state dict in
`.pt` / `.bin` / `.safetensors`, or a folder holding such files (sharded ones with their index). A
common key prefix (`module.`, `model.`, ...) is detected and stripped; the positional convolution's
weight norm may be named `weight_g/weight_v` or `parametrizations.weight.original0/1`.

Nothing is trusted that can be checked: every original key is mapped (an unknown key is an error
that lists the first unmatched keys and the names expected), every new parameter is set, layer
counts come from contiguous key indices (a gap is an error naming the missing layer) and must equal
`--original_config` when it is given; a damaged file is reported as such. The architecture is read
from the tensor shapes; head counts, which shapes do not reveal, come from the original
`config.json` (`--original_config`) or default to the published 64-d heads.

The folder is written by the same exporter as pre-training (`dbeta.hub_export`) into a
temporary sibling folder that is renamed at the end, so a failed conversion leaves nothing behind.
"""

import argparse
import ast
import hashlib
import json
import logging
import pickletools
import re
import shlex
import sys
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

from configuration_dbeta import DBetaConfig, DBetaECGConfig
from dbeta.files import staged_folder
from dbeta.hub_export import write_hub_folder
from dbeta.model_card import build_conversion_card
from modeling_dbeta import DBetaECGModel, DBetaForPreTraining
from pipeline_dbeta import non_finite_parameters

logger = logging.getLogger(__name__)

#: The released weights' licence (DECISIONS 12); a converted folder is a derivative and keeps it.
ORIGINAL_WEIGHTS_LICENSE = "cc-by-nc-4.0"
ORIGINAL_REPOSITORY = "https://github.com/manhph2211/D-BETA"

# Encoder-only exports need exactly these original prefixes (what `get_ecg_feats` uses).
ECG_TOWER_PREFIXES = ("class_embedding", "ecg_encoder.", "multi_modal_ecg_proj.", "unimodal_ecg_pooler.")
UNUSED_ORIGINAL_KEYS = ("ecg_encoder.mask_emb",)
#: Shown when a checkpoint's layout is not recognised, so that a user can report what differs.
EXPECTED_KEY_EXAMPLES = (
    "class_embedding",
    "ecg_encoder.feature_extractor.conv_layers.0.0.weight",
    "ecg_encoder.conv_pos.pos_conv.0.weight_g / .weight_v",
    "ecg_encoder.encoder.layers.0.self_attn.q_proj.weight",
    "multi_modal_ecg_proj.weight",
    "unimodal_ecg_pooler.dense.weight",
    "language_encoder.shared.weight",
    "language_encoder.encoder.block.0.layer.0.SelfAttention.q.weight",
    "multi_modal_language_layers.0.attention.self.query.weight",
    "itm_head.fc.weight",
    "mlm_head.decoder.weight",
    "mim_head.decoder.resblocks.0.attn.in_proj_weight",
)
#: Wrapper prefixes stripped when every key carries them (DDP, Lightning, HF wrappers, torch.compile).
_WRAPPER_PREFIXES = ("module.", "model.", "_orig_mod.", "state_dict.", "dbeta_model.")
#: Original `{"model": ...}` wrappers (fairseq), Lightning `state_dict` and DeepSpeed `module`.
_STATE_DICT_ENTRIES = ("model", "state_dict", "module")
_WEIGHT_NORM_RENAMES = (
    ("ecg_encoder.conv_pos.pos_conv.0.parametrizations.weight.original0", "ecg_encoder.conv_pos.pos_conv.0.weight_g"),
    ("ecg_encoder.conv_pos.pos_conv.0.parametrizations.weight.original1", "ecg_encoder.conv_pos.pos_conv.0.weight_v"),
)
#: Repeated blocks: (description, key prefix with `{}` for the index, key of the original config).
_LAYER_GROUPS = (
    ("conv feature extractor layer", "ecg_encoder.feature_extractor.conv_layers.{}.", None),
    ("ECG encoder layer", "ecg_encoder.encoder.layers.{}.", "encoder_layers"),
    ("T5 text encoder block", "language_encoder.encoder.block.{}.", None),
    ("text fusion layer", "multi_modal_language_layers.{}.", "num_top_layer"),
    ("ECG fusion layer", "multi_modal_ecg_layers.{}.", "num_top_layer"),
    ("MEM decoder block", "mim_head.decoder.resblocks.{}.", "mem_decoder_num_layers"),
)
#: Parameters only the first block has: T5's relative attention bias, the conv extractor's GroupNorm.
_FIRST_BLOCK_ONLY = {"layer.0.SelfAttention.relative_attention_bias.weight", "2.weight", "2.bias"}

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


class CheckpointLayoutError(ValueError):
    """The checkpoint is readable but its keys or shapes do not form an original D-BETA model."""


class DamagedCheckpointError(ValueError):
    """The checkpoint file is empty, truncated or corrupt (download it again)."""


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


# --------------------------------------------------------------------------------------------
# Reading checkpoint files
# --------------------------------------------------------------------------------------------


def _damaged(path: Path, reason: str) -> DamagedCheckpointError:
    size = path.stat().st_size if path.exists() else 0
    return DamagedCheckpointError(
        f"{path} is damaged or not a checkpoint ({reason}; the file has {size:,} bytes). Download it again and "
        "compare its size and checksum with the source."
    )


def _check_torch_file(path: Path) -> None:
    """Reject empty, truncated and corrupt `torch.save` files before unpickling anything."""
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if not magic:
        raise _damaged(path, "the file is empty")
    if magic == b"PK\x03\x04":  # torch's zip format
        if not zipfile.is_zipfile(path):
            raise _damaged(path, "the zip archive has no central directory: the file is truncated")
        try:
            with zipfile.ZipFile(path) as archive:
                bad_member = archive.testzip()  # reads every member and checks its CRC
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise _damaged(path, f"the zip archive cannot be read: {error}") from error
        if bad_member is not None:
            raise _damaged(path, f"member {bad_member!r} fails its CRC check")
        return
    # The legacy format is a sequence of pickles (magic number, protocol, system info, objects,
    # storage keys) before the raw tensor data: walk them without executing anything.
    with open(path, "rb") as handle:
        try:
            for _ in range(5):
                for _ in pickletools.genops(handle):
                    pass
        except Exception as error:  # pickletools raises ValueError for truncated or non-pickle data
            raise _damaged(path, f"not a readable pickle stream: {error}") from error


def _read_torch_file(path: Path, trust_checkpoint: bool):
    _check_torch_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        # The file's structure was checked above, so a refused global means pickled objects.
        if "Weights only load failed" not in str(error):
            raise _damaged(path, f"torch.load failed: {str(error).splitlines()[0]}") from error
        if not trust_checkpoint:
            raise ValueError(
                f"{path} cannot be loaded with torch.load(weights_only=True): it pickles other objects "
                f"(fairseq checkpoints store config objects). Only if you trust this file, rerun with "
                f"--trust_checkpoint to load it with weights_only=False. ({str(error).splitlines()[0]})"
            ) from error
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise _damaged(path, f"torch.load failed: {str(error).splitlines()[0]}") from error


def _read_weights_file(path: Path, trust_checkpoint: bool) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint file at {path}.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        if path.stat().st_size == 0:
            raise _damaged(path, "the file is empty")
        try:
            return load_file(path, device="cpu")
        except Exception as error:  # safetensors raises SafetensorError for bad headers and short files
            raise _damaged(path, f"safetensors cannot read it: {error}") from error
    checkpoint = _read_torch_file(path, trust_checkpoint)
    if isinstance(checkpoint, Mapping):
        for entry in _STATE_DICT_ENTRIES:
            if isinstance(checkpoint.get(entry), Mapping):
                checkpoint = checkpoint[entry]
                break
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise CheckpointLayoutError(
            f"{path} holds no state dict: expected {{'model': state_dict}} (the original release) or a plain "
            f"{{name: tensor}} dict, got {type(checkpoint).__name__}."
        )
    not_tensors = [key for key, value in checkpoint.items() if not torch.is_tensor(value)]
    if not_tensors:
        raise CheckpointLayoutError(
            f"{path} holds no state dict: entries {not_tensors[:5]} are not tensors (top-level keys "
            f"{list(checkpoint)[:8]}; expected {{'model': state_dict}} or a plain {{name: tensor}} dict)."
        )
    return dict(checkpoint)


def _files_of_folder(folder: Path) -> list[Path]:
    """The weight files of a model folder: a single file, or the shards its index lists."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (folder / index_name).is_file():
            weight_map = json.loads((folder / index_name).read_text())["weight_map"]
            return [folder / name for name in sorted(set(weight_map.values()))]
    for name in ("model.safetensors", "pytorch_model.bin", "checkpoint.pt", "model.pt"):
        if (folder / name).is_file():
            return [folder / name]
    candidates = sorted(p for suffix in ("*.safetensors", "*.bin", "*.pt", "*.pth") for p in folder.glob(suffix))
    if len(candidates) == 1:
        return candidates
    raise FileNotFoundError(
        f"{folder} has no single weights file (model.safetensors, pytorch_model.bin or one .pt/.pth), found "
        f"{[p.name for p in candidates]}: pass the file with --checkpoint_path."
    )


def _strip_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove a prefix that wraps the original names (`module.`, `model.`, ...)."""
    anchors = {key[: -len("class_embedding")] for key in state_dict if key.split(".")[-1] == "class_embedding"}
    if len(anchors) == 1 and (prefix := anchors.pop()):
        if all(key.startswith(prefix) for key in state_dict):
            logger.info(f"Stripping the key prefix {prefix!r}.")
            return {key[len(prefix) :]: value for key, value in state_dict.items()}
        return state_dict  # mixed prefixes: reported as unmatched keys
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if state_dict and all(key.startswith(prefix) for key in state_dict):
                logger.info(f"Stripping the key prefix {prefix!r}.")
                state_dict = {key[len(prefix) :]: value for key, value in state_dict.items()}
                changed = True
    return state_dict


def normalize_original_keys(state_dict: Mapping[str, torch.Tensor], source: str = "the checkpoint") -> dict[str, torch.Tensor]:
    """Original names from any accepted layout: no wrapper prefix, weight norm as `weight_g/weight_v`."""
    if any("ecg_model.pos_conv_embed." in key for key in state_dict):
        raise CheckpointLayoutError(
            f"{source} is already in the dbeta layout (keys such as 'dbeta.ecg_model.*'): load its folder with "
            "from_pretrained instead of converting it."
        )
    state_dict = _strip_prefix(dict(state_dict))
    for new, old in _WEIGHT_NORM_RENAMES:
        if new in state_dict:
            if old in state_dict:
                raise CheckpointLayoutError(f"{source} names the positional weight norm twice: {new!r} and {old!r}.")
            state_dict[old] = state_dict.pop(new)
    return state_dict


def load_original_state_dict(path: str | Path, trust_checkpoint: bool = False) -> dict[str, torch.Tensor]:
    """The original state dict of a checkpoint file or folder, safely unless told otherwise (DECISIONS 25).

    Raises:
        FileNotFoundError: no such file, or a folder without one clear weights file.
        DamagedCheckpointError: an empty, truncated or corrupt file.
        ValueError: a file that pickles other objects (needs `trust_checkpoint=True`).
        CheckpointLayoutError: a readable file that holds no state dict, or one already converted.
    """
    path = Path(path)
    files = _files_of_folder(path) if path.is_dir() else [path]
    state_dict: dict[str, torch.Tensor] = {}
    for file in files:
        state_dict.update(_read_weights_file(file, trust_checkpoint))
    return normalize_original_keys(state_dict, source=str(path))


# --------------------------------------------------------------------------------------------
# Architecture from the keys and shapes
# --------------------------------------------------------------------------------------------


def _unmatched_keys(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    unmatched = []
    for key in state_dict:
        try:
            rename_original_key(key)
        except KeyError:
            unmatched.append(key)
    return unmatched


def _layout_report(state_dict: Mapping[str, torch.Tensor], limit: int = 10) -> str:
    """The first keys no original name matches, and what was expected (to report a new layout)."""
    unmatched = _unmatched_keys(state_dict)
    shown = unmatched[:limit] if unmatched else list(state_dict)[:limit]
    listing = "\n".join(f"    {key}  {tuple(state_dict[key].shape)}" for key in shown)
    expected = "\n".join(f"    {key}" for key in EXPECTED_KEY_EXAMPLES)
    title = (
        f"The first {len(shown)} of {len(unmatched)} keys that match no original D-BETA name"
        if unmatched
        else f"The first {len(shown)} of {len(state_dict)} keys of the checkpoint"
    )
    return (
        f"\n{title}:\n{listing}\nExpected original names such as:\n{expected}\n"
        "If this is a D-BETA release with another layout, please report these lines."
    )


def _require(state_dict: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state_dict:
        raise CheckpointLayoutError(f"The checkpoint lacks the required key {key!r}." + _layout_report(state_dict))
    return state_dict[key]


def _original_section(original_config: Mapping | None) -> dict:
    original = dict(original_config or {})
    section = original.get("model", original)
    if not isinstance(section, Mapping):
        raise ValueError(f"the original config's 'model' section must be a JSON object, got {type(section).__name__}")
    return dict(section)


def layer_counts(state_dict: Mapping[str, torch.Tensor], original_config: Mapping | None = None) -> dict[str, int]:
    """Number of blocks of every repeated group, from contiguous key indices.

    Raises:
        CheckpointLayoutError: a gap in the indices, a block missing keys its siblings have, the two
            fusion streams of different depth, or a count that differs from `original_config`.
    """
    original = _original_section(original_config)
    counts: dict[str, int] = {}
    for name, template, config_key in _LAYER_GROUPS:
        pattern = re.compile(re.escape(template).replace(r"\{\}", r"(\d+)") + r"(.+)$")
        suffixes: dict[int, set[str]] = {}
        for key in state_dict:
            if match := pattern.match(key):
                suffixes.setdefault(int(match.group(1)), set()).add(match.group(2))
        count = max(suffixes) + 1 if suffixes else 0
        absent = [index for index in range(count) if index not in suffixes]
        if absent:
            raise CheckpointLayoutError(
                f"The checkpoint has no {name} {absent[0]} (no key starts with {template.format(absent[0])!r}), "
                f"but has {name}s {sorted(suffixes)}: it would convert into a shallower model."
            )
        # Blocks repeat the same parameters, except those only block 0 has.
        every = set().union(*suffixes.values())
        for index in range(count):
            lacking = sorted(every - suffixes[index] - (_FIRST_BLOCK_ONLY if index else set()))
            if lacking:
                raise CheckpointLayoutError(
                    f"The checkpoint's {name} {index} is incomplete: it lacks "
                    f"{[template.format(index) + suffix for suffix in lacking[:5]]}, which the other {name}s have."
                )
        if config_key is not None and config_key in original and count and int(original[config_key]) != count:
            expected = int(original[config_key])
            missing = f": {name} {count} is missing" if expected > count else ""
            raise CheckpointLayoutError(
                f"The checkpoint has {count} {name}s ({template.format(0)}* to {template.format(count - 1)}*) but "
                f"--original_config says {config_key} = {expected}{missing}."
            )
        counts[name] = count
    text, ecg = counts["text fusion layer"], counts["ECG fusion layer"]
    if text != ecg:
        name, template = ("ECG fusion layer", "multi_modal_ecg_layers.{}.") if ecg < text else ("text fusion layer", "multi_modal_language_layers.{}.")
        missing = min(text, ecg)
        raise CheckpointLayoutError(
            f"The checkpoint has no {name} {missing} (no key starts with {template.format(missing)!r}); the other "
            f"fusion stream has {max(text, ecg)} layers."
        )
    return counts


def ecg_config_from_original(state_dict: dict[str, torch.Tensor], original_config: Mapping | None = None) -> DBetaECGConfig:
    """The ECG tower's architecture from the checkpoint's shapes (head count from the original config)."""
    original = _original_section(original_config)
    sd = state_dict
    counts = layer_counts(sd, original_config)
    width = _require(sd, "class_embedding").shape[0]
    num_conv = counts["conv feature extractor layer"]
    if num_conv == 0:
        _require(sd, "ecg_encoder.feature_extractor.conv_layers.0.0.weight")
    conv_weights = [_require(sd, f"ecg_encoder.feature_extractor.conv_layers.{i}.0.weight") for i in range(num_conv)]
    conv_dims = [weight.shape[0] for weight in conv_weights]
    conv_kernels = [weight.shape[2] for weight in conv_weights]
    if "conv_feature_layers" in original:
        layers = parse_conv_feature_layers(original["conv_feature_layers"])
        if [(dim, kernel) for dim, kernel, _ in layers] != list(zip(conv_dims, conv_kernels)):
            raise CheckpointLayoutError(
                f"The checkpoint's conv extractor (dims {conv_dims}, kernels {conv_kernels}) differs from "
                f"--original_config conv_feature_layers {original['conv_feature_layers']!r}."
            )
        conv_strides = [stride for _, _, stride in layers]
    else:
        conv_strides = conv_kernels  # the published extractor uses stride == kernel
    _require(sd, "ecg_encoder.conv_pos.pos_conv.0.weight_g")
    pos_v = _require(sd, "ecg_encoder.conv_pos.pos_conv.0.weight_v")
    if counts["ECG encoder layer"] == 0:
        _require(sd, "ecg_encoder.encoder.layers.0.fc1.weight")

    def heads(name: str, dim: int) -> int:
        return int(original.get(name, max(1, dim // 64)))

    return DBetaECGConfig(
        num_leads=conv_weights[0].shape[1],
        conv_dim=conv_dims,
        conv_kernel=conv_kernels,
        conv_stride=conv_strides,
        conv_bias="ecg_encoder.feature_extractor.conv_layers.0.0.bias" in sd,
        hidden_size=width,
        num_hidden_layers=counts["ECG encoder layer"],
        num_attention_heads=heads("encoder_attention_heads", width),
        intermediate_size=_require(sd, "ecg_encoder.encoder.layers.0.fc1.weight").shape[0],
        num_conv_pos_embeddings=pos_v.shape[2],
        num_conv_pos_embedding_groups=width // pos_v.shape[1],
        projection_dim=_require(sd, "multi_modal_ecg_proj.weight").shape[0],
        mask_ratio=float(original.get("mem_prob", 0.75)),
    )


def config_from_original(state_dict: dict[str, torch.Tensor], original_config: Mapping | None = None) -> DBetaConfig:
    """The full architecture from the checkpoint's shapes (head counts from the original config)."""
    original = _original_section(original_config)
    sd = state_dict
    ecg_config = ecg_config_from_original(sd, original_config)
    counts = layer_counts(sd, original_config)
    for name in ("T5 text encoder block", "text fusion layer"):
        if counts[name] == 0:
            template = next(template for group, template, _ in _LAYER_GROUPS if group == name)
            raise CheckpointLayoutError(
                f"The checkpoint has no {name}s (no key starts with {template.format(0)!r}); for an ECG-tower "
                "checkpoint pass --ecg_only." + _layout_report(sd)
            )

    def heads(name: str, dim: int) -> int:
        return int(original.get(name, max(1, dim // 64)))

    t5_prefix = "language_encoder.encoder.block."
    shared = _require(sd, "language_encoder.shared.weight")
    relative_bias = _require(sd, f"{t5_prefix}0.layer.0.SelfAttention.relative_attention_bias.weight")
    t5_heads = relative_bias.shape[1]
    text_config = {
        "vocab_size": shared.shape[0],
        "d_model": shared.shape[1],
        "d_kv": _require(sd, f"{t5_prefix}0.layer.0.SelfAttention.q.weight").shape[0] // t5_heads,
        "d_ff": _require(sd, f"{t5_prefix}0.layer.1.DenseReluDense.wo.weight").shape[1],
        "num_layers": counts["T5 text encoder block"],
        "num_heads": t5_heads,
        "relative_attention_num_buckets": relative_bias.shape[0],
        "feed_forward_proj": "gated-gelu" if f"{t5_prefix}0.layer.1.DenseReluDense.wi_0.weight" in sd else "relu",
    }
    fusion_width = _require(sd, "multi_modal_language_proj.weight").shape[0]
    mem_width = _require(sd, "mim_head.decoder_embed.weight").shape[0]
    if counts["MEM decoder block"] == 0:
        _require(sd, "mim_head.decoder.resblocks.0.attn.in_proj_weight")
    return DBetaConfig(
        ecg_config=ecg_config,
        text_config=text_config,
        hidden_size=fusion_width,
        num_fusion_layers=counts["text fusion layer"],
        fusion_num_attention_heads=heads("num_heads", fusion_width),
        fusion_intermediate_size=_require(sd, "multi_modal_language_layers.0.intermediate.dense.weight").shape[0],
        max_text_length=int(original.get("max_text_size", 256)),
        mem_decoder_hidden_size=mem_width,
        mem_decoder_num_layers=counts["MEM decoder block"],
        mem_decoder_num_attention_heads=heads("mem_decoder_num_heads", mem_width),
        mem_fusion_layer=int(original.get("mem_layer", 3)),
        mem_max_positions=_require(sd, "mim_head.decoder_pos_embed.pe").shape[1],
    )


# --------------------------------------------------------------------------------------------
# Renaming
# --------------------------------------------------------------------------------------------


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
        raise CheckpointLayoutError(
            f"{len(unmapped)} checkpoint keys have no place in the new model: {unmapped[:10]}" + _layout_report(state_dict)
        )
    embed = state_dict.get("language_encoder.encoder.embed_tokens.weight")
    if embed is not None and not torch.equal(embed, state_dict["language_encoder.shared.weight"]):
        raise ValueError("language_encoder.encoder.embed_tokens.weight differs from the tied shared.weight.")
    return converted


def load_converted_state_dict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as error:  # size mismatches, e.g. one layer of another width
        raise CheckpointLayoutError(f"The checkpoint's shapes do not fit one architecture: {error}") from error
    # T5's embed_tokens is tied to shared.weight, so it needs no entry of its own.
    missing = [k for k in result.missing_keys if not k.endswith("t5.encoder.embed_tokens.weight")]
    if missing or result.unexpected_keys:
        raise CheckpointLayoutError(
            f"Conversion is incomplete: the checkpoint sets no value for {missing[:10]} ({len(missing)} parameters "
            f"missing); unexpected {result.unexpected_keys[:10]}."
        )


# --------------------------------------------------------------------------------------------
# The Hub folder
# --------------------------------------------------------------------------------------------


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def conversion_command(
    checkpoint_path, output_dir, original_config=None, tokenizer=None, ecg_only=False, trust_checkpoint=False
) -> str:
    """The command line that performs this conversion (for the model card)."""
    argv = ["python", "train/conversion/convert_original_checkpoint.py", "--checkpoint_path", str(checkpoint_path), "--output_dir", str(output_dir)]
    if original_config is not None:
        argv += ["--original_config", str(original_config) if isinstance(original_config, (str, Path)) else "<config.json>"]
    if tokenizer is not None:
        argv += ["--tokenizer", str(tokenizer)]
    argv += ["--ecg_only"] * bool(ecg_only) + ["--trust_checkpoint"] * bool(trust_checkpoint)
    return shlex.join(argv)


#: T5 checkpoints pad the embedding to a multiple of 128 rows (Flan-T5: 32,100 tokens, 32,128 rows).
EMBEDDING_PADDING = 128


def check_tokenizer_fits(text_tokenizer, vocab_size: int, name) -> None:
    """The tokenizer must be the one the text tower was trained with: no id beyond the embedding, and
    no more unused rows than T5's padding of the embedding (a small tokenizer, e.g. the demo's 834
    tokens against Flan-T5's 32,128 rows, would tokenise every text into the wrong embeddings)."""
    size = len(text_tokenizer)
    if size > vocab_size:
        raise ValueError(
            f"--tokenizer {name!r} has {size} tokens but the checkpoint's text encoder only "
            f"{vocab_size}: it is not the tokenizer this model was trained with."
        )
    if vocab_size - size >= EMBEDDING_PADDING:
        raise ValueError(
            f"--tokenizer {name!r} has {size} tokens but the checkpoint's text encoder has {vocab_size} embedding rows "
            f"({vocab_size - size} unused; T5 pads by fewer than {EMBEDDING_PADDING}): it is not the tokenizer this model "
            "was trained with (the release needs google/flan-t5-base's)."
        )


def convert_checkpoint(
    checkpoint_path: str | Path,
    output_dir: str | Path,
    original_config: Mapping | None = None,
    tokenizer: str | None = None,
    ecg_only: bool = False,
    trust_checkpoint: bool = False,
    overwrite: bool = False,
    command: str | None = None,
):
    """Convert and write a complete Hub folder; returns the converted model (in eval mode).

    The folder is built in a temporary sibling folder and renamed to `output_dir` only once it is
    complete: on any error nothing is left at `output_dir`.

    Args:
        checkpoint_path: the original checkpoint file (or a folder with one weights file / shards).
        output_dir: the folder to create (must be absent or empty unless `overwrite=True`).
        original_config: the original `config.json` (or its `model` section): head counts, strides,
            and the layer counts the checkpoint must have.
        tokenizer: folder or hub id of the T5 tokenizer the model was trained with (required unless
            `ecg_only`; `google/flan-t5-base` for the released weights).
        ecg_only: export the ECG tower alone (`DBetaECGModel`; other original keys are dropped).
        trust_checkpoint: allow `torch.load(weights_only=False)` for files that pickle objects.
        overwrite: replace an existing non-empty `output_dir`.
        command: the command line shown in the model card (default: the equivalent CLI call).
    """
    if not ecg_only and tokenizer is None:
        raise ValueError(
            "--tokenizer is required for a two-tower export (the zero-shot pipeline needs it): pass the T5 tokenizer "
            "the model was trained with (google/flan-t5-base for the released weights), or --ecg_only."
        )
    if ecg_only and tokenizer is not None:
        logger.warning("--tokenizer is not used by an --ecg_only export (it has no text tower).")
        tokenizer = None
    if command is None:
        command = conversion_command(checkpoint_path, output_dir, original_config, tokenizer, ecg_only, trust_checkpoint)

    from processing_dbeta import DBetaFeatureExtractor, DBetaProcessor

    with staged_folder(output_dir, overwrite=overwrite) as staging:
        text_tokenizer = None
        if tokenizer is not None:  # before the (slow) checkpoint, so a bad name fails at once
            from transformers import AutoTokenizer

            try:
                text_tokenizer = AutoTokenizer.from_pretrained(tokenizer)
            except Exception as error:  # OSError, ValueError, ... depending on what is wrong with it
                raise ValueError(f"--tokenizer {tokenizer!r} could not be loaded: {error}") from error

        state_dict = load_original_state_dict(checkpoint_path, trust_checkpoint)
        counts = layer_counts(state_dict, original_config)
        logger.info("Layer counts read from the keys: " + ", ".join(f"{name}s {count}" for name, count in counts.items()))
        if original_config is None:
            logger.warning(
                "No --original_config: a checkpoint that lacks its LAST layer cannot be told from a shallower model. "
                "Check the counts above (the published model: 8 ECG encoder layers, 12 T5 blocks, 6 fusion layers "
                "per stream, 4 MEM decoder blocks) or pass the original config.json."
            )
        if ecg_only:
            unmatched = _unmatched_keys(state_dict)
            if unmatched:
                raise CheckpointLayoutError(
                    f"{len(unmatched)} checkpoint keys have no place in the model: {unmatched[:10]}" + _layout_report(state_dict)
                )
            ecg_state = {key: value for key, value in state_dict.items() if key.startswith(ECG_TOWER_PREFIXES)}
            logger.info(f"ECG-only export: {len(state_dict) - len(ecg_state)} keys of the other modules are left out.")
            ecg_config = ecg_config_from_original(ecg_state, original_config)
            prefix = "dbeta.ecg_model."
            converted = {}
            for key, value in ecg_state.items():
                new_key = rename_original_key(key)
                if new_key is not None:
                    converted["ecg_model." + new_key[len(prefix) :]] = value
            model = DBetaECGModel(ecg_config)
            load_converted_state_dict(model, converted)
            lead_config = None  # the ECG config has no input format: the published one (MIMIC lead order)
        else:
            config = config_from_original(state_dict, original_config)
            converted = convert_state_dict(state_dict, config)
            model = DBetaForPreTraining(config)
            load_converted_state_dict(model, converted)
            lead_config = config
            check_tokenizer_fits(text_tokenizer, config.text_config.vocab_size, tokenizer)
        bad = non_finite_parameters(model)
        if bad:
            raise ValueError(
                f"{checkpoint_path}: the checkpoint holds NaN/inf weights ({', '.join(bad)}); it is damaged and was not converted."
            )
        model.eval()

        if lead_config is None:
            feature_extractor = DBetaFeatureExtractor()
        else:
            feature_extractor = DBetaFeatureExtractor(
                lead_names=list(lead_config.lead_names), sampling_rate=lead_config.sampling_rate, num_samples=lead_config.num_samples
            )
        processor = feature_extractor if ecg_only else DBetaProcessor(feature_extractor, text_tokenizer)
        source = Path(checkpoint_path)
        source_files = [
            (file.name, file.stat().st_size, file_sha256(file))
            for file in (_files_of_folder(source) if source.is_dir() else [source])
        ]
        card = build_conversion_card(
            model,
            source_files,
            command,
            counts,
            license=ORIGINAL_WEIGHTS_LICENSE,
            repository=ORIGINAL_REPOSITORY,
            tokenizer=tokenizer,
            original_config_given=original_config is not None,
            title=Path(output_dir).resolve().name,
        )
        write_hub_folder(model, processor, staging, card)
    return model


def read_original_config(path: str, parser: argparse.ArgumentParser) -> dict:
    """The original `config.json` as a dict, or a one-line error naming the file (exit status 2)."""
    try:
        config = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        parser.exit(2, f"error: --original_config {path}: cannot read it as JSON ({type(error).__name__}: {error})\n")
    if not isinstance(config, dict):
        parser.exit(2, f"error: --original_config {path}: expected a JSON object (the original config.json), got {type(config).__name__}\n")
    return config


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint_path", required=True, help="original .pt, a state dict in .pt/.bin/.safetensors, or a folder")
    parser.add_argument("--output_dir", required=True, help="the Hub folder to create (absent or empty)")
    parser.add_argument("--original_config", help="the original config.json (its 'model' section gives head and layer counts)")
    parser.add_argument("--tokenizer", help="T5 tokenizer folder or hub id saved with the model (google/flan-t5-base for the release)")
    parser.add_argument("--ecg_only", action="store_true", help="export only the ECG tower (DBetaECGModel)")
    parser.add_argument("--overwrite_output_dir", action="store_true", help="replace a non-empty --output_dir")
    parser.add_argument(
        "--trust_checkpoint",
        action="store_true",
        help="allow torch.load(weights_only=False) for checkpoints that pickle objects; only for files you trust",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    original_config = read_original_config(args.original_config, parser) if args.original_config else None
    command = shlex.join(["python", "train/conversion/convert_original_checkpoint.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        model = convert_checkpoint(
            args.checkpoint_path,
            args.output_dir,
            original_config=original_config,
            tokenizer=args.tokenizer,
            ecg_only=args.ecg_only,
            trust_checkpoint=args.trust_checkpoint,
            overwrite=args.overwrite_output_dir,
            command=command,
        )
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        where = f"--original_config {args.original_config}: " if original_config is not None and "config" not in str(error) else ""
        parser.exit(2, f"error: {where}{error}\n")
    except (TypeError, KeyError, AttributeError) as error:
        if original_config is None:
            raise
        # A field of the original config with an unexpected type (a number given as a list, ...).
        parser.exit(
            2,
            f"error: --original_config {args.original_config}: a field has an unexpected type or value "
            f"({type(error).__name__}: {error}); pass the original release's config.json\n",
        )
    num_params = sum(p.numel() for p in model.parameters())
    print(f"Converted {args.checkpoint_path} -> {args.output_dir} ({type(model).__name__}, {num_params:,} parameters)")
    return model


if __name__ == "__main__":
    main()
