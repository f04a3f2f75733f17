# Copyright 2026 The dbeta authors. Licensed under the Apache License, Version 2.0.
"""PyTorch D-BETA model (Boosting Masked ECG-Text Auto-Encoders as Discriminative Learners, ICML 2025).

Layout follows transformers' CLIP: an ECG tower and a T5 text tower that each end in a projection
and a tanh pooler (`get_ecg_features` / `get_text_features`), plus D-BETA's cross-modal fusion
stacks and its four pre-training objectives (MLM, MEM, ETM, ETS).
"""

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, T5EncoderModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling
from transformers.utils import ModelOutput, logging

try:  # flat import when loaded as Hub remote code / from the repository root
    from .configuration_dbeta import DBetaConfig, DBetaECGConfig
except ImportError:
    from configuration_dbeta import DBetaConfig, DBetaECGConfig

logger = logging.get_logger(__name__)

# SigLIP's initial ETS scale and bias, used when they are learnable (DECISIONS 15).
ETS_LEARNABLE_INIT_SCALE = 10.0
ETS_LEARNABLE_INIT_BIAS = -10.0


# --------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------


@dataclass
class DBetaECGModelOutput(BaseModelOutputWithPooling):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, 1 + num_kept_tokens, projection_dim)`):
        Projected ECG token states, CLS first (313 tokens for a 10 s ECG without masking).
    pooler_output (`torch.FloatTensor` of shape `(batch_size, projection_dim)`):
        The ECG embedding: tanh pooler over the projected CLS token (the original `get_ecg_feats`).
    mem_mask (`torch.FloatTensor` of shape `(batch_size, num_tokens)`, *optional*):
        1 for tokens removed by masked ECG modelling, 0 for kept ones (only when masking).
    mem_ids_restore (`torch.LongTensor` of shape `(batch_size, num_tokens)`, *optional*):
        Permutation that puts the shuffled tokens back in time order (only when masking).
    """

    mem_mask: torch.FloatTensor | None = None
    mem_ids_restore: torch.LongTensor | None = None


@dataclass
class DBetaOutput(ModelOutput):
    r"""
    pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
        The ECG embedding when ECGs were given (the contract of the released Hub model,
        `model(ecg).pooler_output`), else the text embedding.
    ecg_embeds (`torch.FloatTensor` of shape `(batch_size_ecg, hidden_size)`, *optional*): ECG embeddings.
    text_embeds (`torch.FloatTensor` of shape `(batch_size_text, hidden_size)`, *optional*): text embeddings.
    logits_per_ecg (`torch.FloatTensor` of shape `(batch_size_ecg, batch_size_text)`, *optional*):
        ECG-text sigmoid logits `scale * ecg . text + bias` (the ETS objective's logits).
    logits_per_text (`torch.FloatTensor` of shape `(batch_size_text, batch_size_ecg)`, *optional*):
        Transpose of `logits_per_ecg`.
    matching_logits (`torch.FloatTensor` of shape `(batch_size, 2)`, *optional*):
        ETM head logits for the pairs (ecg_i, text_i) (with `return_matching=True`).
    matching_probs (`torch.FloatTensor` of shape `(batch_size,)`, *optional*):
        Probability that ecg_i and text_i match, from the fused features (with `return_matching=True`).
    ecg_model_output, text_model_output: the towers' outputs.
    """

    pooler_output: torch.FloatTensor | None = None
    ecg_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    logits_per_ecg: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    matching_logits: torch.FloatTensor | None = None
    matching_probs: torch.FloatTensor | None = None
    ecg_model_output: DBetaECGModelOutput | None = None
    text_model_output: BaseModelOutputWithPooling | None = None

    def to_tuple(self):
        return tuple(
            v.to_tuple() if k in ("ecg_model_output", "text_model_output") else v for k, v in self.items()
        )


@dataclass
class DBetaFusionOutput(ModelOutput):
    r"""
    text_hidden_state (`(batch_size, text_length, hidden_size)`), ecg_hidden_state
    (`(batch_size, ecg_length, hidden_size)`): the fused streams after the last fusion layer.
    cls_features (`(batch_size, 2 * hidden_size)`): text and ECG fusion poolers, concatenated.
    ecg_hidden_state_for_mem (`(batch_size, ecg_length, hidden_size)`, *optional*): the ECG stream
    entering fusion layer `config.mem_fusion_layer` (what the MEM decoder reads).
    """

    text_hidden_state: torch.FloatTensor | None = None
    ecg_hidden_state: torch.FloatTensor | None = None
    cls_features: torch.FloatTensor | None = None
    ecg_hidden_state_for_mem: torch.FloatTensor | None = None


@dataclass
class DBetaForPreTrainingOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`): weighted sum of the four objectives.
    mlm_loss, mem_loss, etm_loss, ets_loss (`torch.FloatTensor` of shape `()`): the objectives.
    mlm_logits (`(num_masked_text_tokens, vocab_size)`): MLM logits at the positions whose label is
        not -100 (row-major order), so no full-vocabulary projection of every token is computed.
    mem_logits (`(batch_size, num_tokens, num_leads, samples_per_token)`): reconstructed ECG patches.
    etm_logits (`(batch_size, 2)`): ECG-text matching logits.
    logits_per_ecg (`(global_batch_size, global_batch_size)`): ETS logits.
    ecg_embeds, text_embeds (`(batch_size, hidden_size)`): unimodal embeddings (ECG from the masked input).
    mem_mask (`(batch_size, num_tokens)`): 1 where an ECG token was masked.
    """

    loss: torch.FloatTensor | None = None
    mlm_loss: torch.FloatTensor | None = None
    mem_loss: torch.FloatTensor | None = None
    etm_loss: torch.FloatTensor | None = None
    ets_loss: torch.FloatTensor | None = None
    mlm_logits: torch.FloatTensor | None = None
    mem_logits: torch.FloatTensor | None = None
    etm_logits: torch.FloatTensor | None = None
    logits_per_ecg: torch.FloatTensor | None = None
    ecg_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    mem_mask: torch.FloatTensor | None = None


# --------------------------------------------------------------------------------------------
# Shared building blocks
# --------------------------------------------------------------------------------------------


class DBetaAttention(nn.Module):
    """Multi-head attention with separate q/k/v/out projections, for self- and cross-attention.

    Runs through `scaled_dot_product_attention` unless the config asks for `"eager"` (or attention
    weights are requested), which materialises the probabilities for inspection.
    """

    def __init__(self, config, embed_dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.config = config
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch_size, length, _ = x.shape
        return x.view(batch_size, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        hidden_states: torch.Tensor,
        key_value_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`attention_mask` is additive, broadcastable to (batch, heads, query_len, key_len)."""
        context = hidden_states if key_value_states is None else key_value_states
        query = self._split_heads(self.q_proj(hidden_states))
        key = self._split_heads(self.k_proj(context))
        value = self._split_heads(self.v_proj(context))
        dropout_p = self.dropout if self.training else 0.0

        attn_weights = None
        if output_attentions or getattr(self.config, "_attn_implementation", None) == "eager":
            scores = torch.matmul(query, key.transpose(-1, -2)) / math.sqrt(self.head_dim)
            if attention_mask is not None:
                scores = scores + attention_mask
            attn_weights = scores.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
            attn_output = torch.matmul(F.dropout(attn_weights, p=dropout_p, training=self.training), value)
        else:
            attn_output = F.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, dropout_p=dropout_p
            )
        batch_size, _, length, _ = attn_output.shape
        attn_output = attn_output.transpose(1, 2).reshape(batch_size, length, self.embed_dim)
        return self.out_proj(attn_output), (attn_weights if output_attentions else None)


class DBetaPooler(nn.Module):
    """tanh(dense(first token)): the CLS pooler used for every D-BETA embedding."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden_states[:, 0]))


def padding_mask_to_additive(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(batch, length) 1/0 keep mask -> (batch, 1, 1, length) additive mask (0 keep, dtype-min drop)."""
    inverted = 1.0 - attention_mask[:, None, None, :].to(dtype)
    return inverted * torch.finfo(dtype).min


def sinusoid_position_table(num_positions: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Fixed transformer sinusoid table (num_positions, dim): sin on even, cos on odd dimensions."""
    positions = torch.arange(num_positions, dtype=torch.float64, device=device)[:, None]
    div_term = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64, device=device) * (-math.log(10000.0) / dim))
    table = torch.zeros(num_positions, dim, dtype=torch.float64, device=device)
    table[:, 0::2] = torch.sin(positions * div_term)
    table[:, 1::2] = torch.cos(positions * div_term)
    return table.to(dtype)


# --------------------------------------------------------------------------------------------
# ECG tower
# --------------------------------------------------------------------------------------------


class DBetaFeatureEncoderLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, bias: bool, group_norm: bool):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size=kernel, stride=stride, bias=bias)
        # Only the first block normalises (per channel over time), as in wav2vec 2.0's "default" mode.
        self.layer_norm = nn.GroupNorm(out_channels, out_channels, affine=True) if group_norm else None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(batch, time, channels) -> (batch, time', out_channels), channels-last throughout."""
        kernel, stride = self.conv.kernel_size[0], self.conv.stride[0]
        if kernel == stride:
            # Non-overlapping windows: the convolution is one GEMM over reshaped windows, which
            # runs at matmul speed where cuDNN/oneDNN pick slow kernels for k=2 convolutions.
            batch_size, length, channels = hidden_states.shape
            out_length = length // kernel
            windows = hidden_states[:, : out_length * kernel].reshape(batch_size, out_length, kernel * channels)
            weight = self.conv.weight.permute(0, 2, 1).reshape(self.conv.out_channels, kernel * channels)
            hidden_states = F.linear(windows, weight, self.conv.bias)
        else:
            hidden_states = self.conv(hidden_states.transpose(1, 2)).transpose(1, 2)
        if self.layer_norm is not None:
            # GroupNorm with one channel per group: statistics over time, in fp32 also under
            # autocast (DECISIONS 6). PyTorch's fused kernel wants channels first; the two copies
            # cost less than reducing over the strided time axis (benchmarks/results/cpu_levers.md,
            # round 5: 25-30 ms less per demo step on the CPU).
            with torch.autocast(device_type=hidden_states.device.type, enabled=False):
                values = hidden_states.float().transpose(1, 2).contiguous()
                values = F.group_norm(values, values.shape[1], self.layer_norm.weight.float(),
                                      self.layer_norm.bias.float(), self.layer_norm.eps)  # fmt: skip
            hidden_states = values.transpose(1, 2).contiguous().to(hidden_states.dtype)
        return F.gelu(hidden_states)


class DBetaFeatureEncoder(nn.Module):
    """Strided 1-D convolutions over the raw leads: (batch, leads, samples) -> (batch, tokens, channels)."""

    def __init__(self, config: DBetaECGConfig):
        super().__init__()
        in_channels = [config.num_leads] + config.conv_dim[:-1]
        self.conv_layers = nn.ModuleList(
            DBetaFeatureEncoderLayer(c_in, c_out, k, s, config.conv_bias, group_norm=(i == 0))
            for i, (c_in, c_out, k, s) in enumerate(
                zip(in_channels, config.conv_dim, config.conv_kernel, config.conv_stride)
            )
        )

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        hidden_states = input_values.transpose(1, 2)
        for layer in self.conv_layers:
            hidden_states = layer(hidden_states)
        return hidden_states


class DBetaFeatureProjection(nn.Module):
    def __init__(self, config: DBetaECGConfig):
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.conv_dim[-1], eps=config.layer_norm_eps)
        self.projection = nn.Linear(config.conv_dim[-1], config.hidden_size)
        self.dropout = nn.Dropout(config.feat_proj_dropout)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.projection(self.layer_norm(features)))


class DBetaPositionalConvEmbedding(nn.Module):
    """Grouped, weight-normalised convolution over time whose GELU output is added to the tokens."""

    def __init__(self, config: DBetaECGConfig):
        super().__init__()
        kernel = config.num_conv_pos_embeddings
        conv = nn.Conv1d(
            config.hidden_size,
            config.hidden_size,
            kernel_size=kernel,
            padding=kernel // 2,
            groups=config.num_conv_pos_embedding_groups,
        )
        # One norm per kernel tap (dim=2), as the original.
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        # An even kernel with padding k//2 yields one extra step; drop it to keep the length.
        self.num_pad_remove = 1 if kernel % 2 == 0 else 0

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        inputs = hidden_states.transpose(1, 2)
        if inputs.is_cuda and (inputs.dtype != torch.float32 or torch.is_autocast_enabled("cuda")):
            # cuDNN's half-precision kernels for this long grouped convolution are ~10x slower than
            # its fp32 ones (measured on H100/H200), so this one layer runs in fp32.
            conv = self.conv
            with torch.autocast(device_type="cuda", enabled=False):
                positions = F.conv1d(
                    inputs.float(),
                    conv.weight.float(),
                    conv.bias.float(),
                    padding=conv.padding,
                    groups=conv.groups,
                ).to(hidden_states.dtype)
        else:
            positions = self.conv(inputs)
        if self.num_pad_remove:
            positions = positions[:, :, : -self.num_pad_remove]
        return F.gelu(positions).transpose(1, 2)


class DBetaFeedForward(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, activation_dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, hidden_size)
        self.activation_dropout = nn.Dropout(activation_dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_dropout(F.gelu(self.fc1(hidden_states))))


class DBetaECGEncoderLayer(GradientCheckpointingLayer):
    """Post-LN transformer layer: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, config: DBetaECGConfig):
        super().__init__()
        self.attention = DBetaAttention(
            config, config.hidden_size, config.num_attention_heads, config.attention_dropout
        )
        self.attention_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = DBetaFeedForward(config.hidden_size, config.intermediate_size, config.activation_dropout)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, hidden_states: torch.Tensor, output_attentions: bool = False):
        attn_output, attn_weights = self.attention(hidden_states, output_attentions=output_attentions)
        hidden_states = self.attention_layer_norm(hidden_states + self.dropout(attn_output))
        hidden_states = self.final_layer_norm(hidden_states + self.dropout(self.mlp(hidden_states)))
        return hidden_states, attn_weights


class DBetaECGEncoder(nn.Module):
    def __init__(self, config: DBetaECGConfig):
        super().__init__()
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.layers = nn.ModuleList(DBetaECGEncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden_states, output_attentions: bool = False, output_hidden_states: bool = False):
        hidden_states = self.dropout(self.layer_norm(hidden_states))
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            hidden_states, attn_weights = layer(hidden_states, output_attentions=output_attentions)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (attn_weights,)
        return BaseModelOutput(
            last_hidden_state=hidden_states, hidden_states=all_hidden_states, attentions=all_attentions
        )


class DBetaECGTransformer(nn.Module):
    """The whole ECG tower: raw leads -> projected token states and the pooled ECG embedding."""

    def __init__(self, config: DBetaECGConfig):
        super().__init__()
        self.config = config
        self.feature_extractor = DBetaFeatureEncoder(config)  # the original checkpoint's parameter name
        self.feature_projection = DBetaFeatureProjection(config)
        self.pos_conv_embed = DBetaPositionalConvEmbedding(config)
        self.class_embedding = nn.Parameter(torch.empty(config.hidden_size))
        self.encoder = DBetaECGEncoder(config)
        self.projection = nn.Linear(config.hidden_size, config.projection_dim)
        self.pooler = DBetaPooler(config.projection_dim)

    def check_input(self, input_values: torch.Tensor) -> None:
        if not torch.is_tensor(input_values):
            raise TypeError(
                f"`input_values` must be a torch.Tensor, got {type(input_values).__name__}; "
                "use DBetaFeatureExtractor to convert arrays and files."
            )
        if input_values.dim() != 3 or input_values.shape[1] != self.config.num_leads:
            raise ValueError(
                f"`input_values` must have shape (batch, {self.config.num_leads} leads, samples), "
                f"got {tuple(input_values.shape)}."
            )
        if not input_values.is_floating_point():
            raise ValueError(f"`input_values` must be a floating-point tensor, got {input_values.dtype}.")
        if self.config.num_tokens(input_values.shape[-1]) < 1:
            raise ValueError(f"`input_values` has {input_values.shape[-1]} samples: too short for the ECG encoder.")

    def embed_tokens(self, input_values: torch.Tensor) -> torch.Tensor:
        """Raw leads -> token states with their positional signal (before masking and the CLS token)."""
        self.check_input(input_values)
        features = self.feature_extractor(input_values.to(self.class_embedding.dtype))
        hidden_states = self.feature_projection(features)
        return hidden_states + self.pos_conv_embed(hidden_states)

    @staticmethod
    def random_masking(tokens: torch.Tensor, mask_ratio: float, generator: torch.Generator | None = None):
        """MAE-style masking: keep a random `1 - mask_ratio` of the tokens of every sample.

        Returns the kept tokens (shuffled order), the binary mask (1 = removed, original order) and
        the permutation that restores the original order.
        """
        batch_size, length, width = tokens.shape
        num_keep = int(length * (1 - mask_ratio))
        noise = torch.rand(batch_size, length, device=tokens.device, generator=generator)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :num_keep]
        kept = torch.gather(tokens, 1, ids_keep[:, :, None].expand(-1, -1, width))
        mask = torch.ones(batch_size, length, device=tokens.device, dtype=tokens.dtype)
        mask[:, :num_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return kept, mask, ids_restore

    def forward(
        self,
        input_values: torch.Tensor | None = None,
        mask_ratio: float = 0.0,
        mask_generator: torch.Generator | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        token_embeddings: torch.Tensor | None = None,
    ) -> DBetaECGModelOutput:
        """`token_embeddings` (from `embed_tokens`) replaces `input_values`: pre-training encodes the
        same tokens twice (masked for MEM, whole for ETS) without running the convolutions twice."""
        if (input_values is None) == (token_embeddings is None):
            raise ValueError("Pass exactly one of `input_values` and `token_embeddings`.")
        hidden_states = self.embed_tokens(input_values) if token_embeddings is None else token_embeddings

        mem_mask = mem_ids_restore = None
        if mask_ratio > 0:
            hidden_states, mem_mask, mem_ids_restore = self.random_masking(hidden_states, mask_ratio, mask_generator)
        # The CLS token gets no positional signal (it is prepended after the positional conv).
        cls = self.class_embedding.expand(hidden_states.shape[0], 1, -1)
        hidden_states = torch.cat([cls, hidden_states], dim=1)

        encoder_output = self.encoder(
            hidden_states, output_attentions=output_attentions, output_hidden_states=output_hidden_states
        )
        projected = self.projection(encoder_output.last_hidden_state)
        return DBetaECGModelOutput(
            last_hidden_state=projected,
            pooler_output=self.pooler(projected),
            hidden_states=encoder_output.hidden_states,
            attentions=encoder_output.attentions,
            mem_mask=mem_mask,
            mem_ids_restore=mem_ids_restore,
        )


# --------------------------------------------------------------------------------------------
# Text tower and fusion
# --------------------------------------------------------------------------------------------


class DBetaTextTransformer(nn.Module):
    """T5 encoder -> projection to the fusion width -> tanh pooler on token 0 (T5 has no CLS)."""

    def __init__(self, config: DBetaConfig):
        super().__init__()
        self.t5 = T5EncoderModel(config.text_config)
        self.projection = nn.Linear(config.text_config.d_model, config.hidden_size)
        self.pooler = DBetaPooler(config.hidden_size)

    def forward(self, input_ids, attention_mask=None, output_attentions=False, output_hidden_states=False):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        text_output = self.t5(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )
        projected = self.projection(text_output.last_hidden_state)
        return BaseModelOutputWithPooling(
            last_hidden_state=projected,
            pooler_output=self.pooler(projected),
            hidden_states=text_output.hidden_states,
            attentions=text_output.attentions,
        )


class DBetaFusionLayer(GradientCheckpointingLayer):
    """BERT cross-attention layer (post-LN): self-attention, cross-attention to the other modality, FFN."""

    def __init__(self, config: DBetaConfig):
        super().__init__()
        width, heads, eps = config.hidden_size, config.fusion_num_attention_heads, config.fusion_layer_norm_eps
        self.self_attention = DBetaAttention(config, width, heads, config.fusion_dropout)
        self.self_attention_layer_norm = nn.LayerNorm(width, eps=eps)
        self.cross_attention = DBetaAttention(config, width, heads, config.fusion_dropout)
        self.cross_attention_layer_norm = nn.LayerNorm(width, eps=eps)
        self.mlp = DBetaFeedForward(width, config.fusion_intermediate_size)
        self.final_layer_norm = nn.LayerNorm(width, eps=eps)
        self.dropout = nn.Dropout(config.fusion_dropout)

    def forward(self, hidden_states, attention_mask, context_states, context_mask):
        attn_output, _ = self.self_attention(hidden_states, attention_mask=attention_mask)
        hidden_states = self.self_attention_layer_norm(hidden_states + self.dropout(attn_output))
        attn_output, _ = self.cross_attention(
            hidden_states, key_value_states=context_states, attention_mask=context_mask
        )
        hidden_states = self.cross_attention_layer_norm(hidden_states + self.dropout(attn_output))
        return self.final_layer_norm(hidden_states + self.dropout(self.mlp(hidden_states)))


# --------------------------------------------------------------------------------------------
# Pre-training heads
# --------------------------------------------------------------------------------------------


class DBetaMLMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> vocabulary projection (not tied to the T5 embeddings)."""

    def __init__(self, config: DBetaConfig):
        super().__init__()
        self.transform = nn.Module()
        self.transform.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.fusion_layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.text_config.vocab_size, bias=False)
        self.bias = nn.Parameter(torch.zeros(config.text_config.vocab_size))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.transform.layer_norm(F.gelu(self.transform.dense(hidden_states)))
        return self.decoder(hidden_states) + self.bias


class DBetaMEMDecoderLayer(nn.Module):
    """Pre-LN transformer block with a QuickGELU MLP (the MAE/CLIP-style decoder block)."""

    def __init__(self, config: DBetaConfig):
        super().__init__()
        width = config.mem_decoder_hidden_size
        self.ln_1 = nn.LayerNorm(width)
        self.attention = DBetaAttention(config, width, config.mem_decoder_num_attention_heads, dropout=0.0)
        self.ln_2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.attention(self.ln_1(hidden_states))[0]
        mlp_input = self.fc1(self.ln_2(hidden_states))
        return hidden_states + self.fc2(mlp_input * torch.sigmoid(1.702 * mlp_input))


class DBetaMEMHead(nn.Module):
    """Masked ECG modelling decoder: re-inserts mask tokens and predicts every patch's raw samples."""

    def __init__(self, config: DBetaConfig):
        super().__init__()
        width = config.mem_decoder_hidden_size
        self.num_leads = config.ecg_config.num_leads
        self.samples_per_token = config.ecg_config.samples_per_token
        self.decoder_embed = nn.Linear(config.hidden_size, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        # Fixed sinusoid positions; a saved buffer, as in the original checkpoint (`decoder_pos_embed.pe`).
        self.register_buffer("position_embeddings", torch.zeros(1, config.mem_max_positions, width), persistent=True)
        self.layers = nn.ModuleList(DBetaMEMDecoderLayer(config) for _ in range(config.mem_decoder_num_layers))
        self.decoder_norm = nn.LayerNorm(width)
        self.decoder_pred = nn.Linear(width, self.num_leads * self.samples_per_token)

    def forward(self, ecg_hidden_state: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """(batch, 1 + kept, hidden) + (batch, tokens) -> (batch, tokens, leads, samples_per_token)."""
        hidden_states = self.decoder_embed(ecg_hidden_state)
        batch_size, num_tokens = ids_restore.shape
        num_masked = num_tokens + 1 - hidden_states.shape[1]
        tokens = torch.cat([hidden_states[:, 1:], self.mask_token.expand(batch_size, num_masked, -1)], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore[:, :, None].expand(-1, -1, tokens.shape[-1]))
        hidden_states = torch.cat([hidden_states[:, :1], tokens], dim=1)
        hidden_states = hidden_states + self.position_embeddings[:, : num_tokens + 1].to(hidden_states.dtype)
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        prediction = self.decoder_pred(self.decoder_norm(hidden_states))[:, 1:]
        return prediction.reshape(batch_size, num_tokens, self.num_leads, self.samples_per_token)


# --------------------------------------------------------------------------------------------
# Pre-trained model classes
# --------------------------------------------------------------------------------------------


class DBetaPreTrainedModel(PreTrainedModel):
    config_class = DBetaConfig
    base_model_prefix = "dbeta"
    main_input_name = "input_values"
    input_modalities = ("ecg", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["DBetaECGEncoderLayer", "DBetaFusionLayer", "T5Block"]

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save config, weights and the remote code, including the processing and pipeline files that
        the config's `auto_map` refers to, so the folder is a complete Hub repository."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            for name in ("processing_dbeta.py", "pipeline_dbeta.py"):
                source = Path(__file__).with_name(name)
                if source.is_file() and not (Path(save_directory) / name).exists():
                    shutil.copy(source, Path(save_directory) / name)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        std = self.config.initializer_range
        if isinstance(module, DBetaPositionalConvEmbedding):
            conv = module.conv
            kernel, channels = conv.kernel_size[0], conv.in_channels
            direction = conv.parametrizations.weight.original1
            init.normal_(direction, mean=0.0, std=math.sqrt(4.0 / (kernel * channels)))
            # g = ||v|| per kernel tap, so the initial weight equals v (as torch's weight_norm does).
            init.copy_(conv.parametrizations.weight.original0, direction.norm(dim=(0, 1), keepdim=True))
            init.zeros_(conv.bias)
        elif isinstance(module, DBetaFeatureEncoderLayer):
            init.kaiming_normal_(module.conv.weight)
            if module.conv.bias is not None:
                init.zeros_(module.conv.bias)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, DBetaECGTransformer):
            init.uniform_(module.class_embedding, 0.0, 1.0)
        elif isinstance(module, DBetaMEMHead):
            init.normal_(module.mask_token, mean=0.0, std=std)
            table = sinusoid_position_table(*module.position_embeddings.shape[1:])
            init.copy_(module.position_embeddings, table[None].to(module.position_embeddings.dtype))
        elif isinstance(module, DBetaMLMHead):
            init.zeros_(module.bias)
        elif isinstance(module, DBetaModel) and module.logit_scale is not None:
            init.constant_(module.logit_scale, math.log(ETS_LEARNABLE_INIT_SCALE))
            init.constant_(module.logit_bias, ETS_LEARNABLE_INIT_BIAS)


class DBetaECGModel(DBetaPreTrainedModel):
    """The ECG tower alone: `model(input_values).pooler_output` is the (batch, 768) ECG embedding.

    Loads from an ECG-only folder or from a full D-BETA checkpoint (the text tower and fusion
    weights are then skipped, never materialised).
    """

    config_class = DBetaECGConfig
    input_modalities = ("ecg",)
    _no_split_modules = ["DBetaECGEncoderLayer"]
    # Loading from a full checkpoint ignores everything that is not the ECG tower.
    _keys_to_ignore_on_load_unexpected = [r"^(dbeta\.)?(text_model|modality_type_embeddings|text_fusion|ecg_fusion|mlm_head|mem_head|etm_head|logit_)"]

    def __init__(self, config: DBetaECGConfig):
        super().__init__(config)
        self.ecg_model = DBetaECGTransformer(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.ecg_model.feature_extractor.conv_layers[0].conv

    def forward(
        self,
        input_values: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> DBetaECGModelOutput | tuple:
        output = self.ecg_model(
            input_values,
            output_attentions=bool(output_attentions),
            output_hidden_states=bool(output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states),
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()

    def get_ecg_features(self, input_values: torch.Tensor, **kwargs) -> DBetaECGModelOutput:
        return self.forward(input_values, return_dict=True, **kwargs)


class DBetaModel(DBetaPreTrainedModel):
    """ECG tower, T5 text tower and the cross-modal fusion stacks (no pre-training heads)."""

    # A pre-training checkpoint loads into DBetaModel without its MLM / MEM heads.
    _keys_to_ignore_on_load_unexpected = [r"^(mlm_head|mem_head)\."]
    # Declared here too: transformers only re-ties the outer model's own mapping after loading.
    _tied_weights_keys = {"text_model.t5.encoder.embed_tokens.weight": "text_model.t5.shared.weight"}

    def __init__(self, config: DBetaConfig):
        super().__init__(config)
        self.ecg_model = DBetaECGTransformer(config.ecg_config)
        self.text_model = DBetaTextTransformer(config)
        # Index 0 marks text tokens, index 1 ECG tokens.
        self.modality_type_embeddings = nn.Embedding(2, config.hidden_size)
        self.text_fusion_layers = nn.ModuleList(DBetaFusionLayer(config) for _ in range(config.num_fusion_layers))
        self.ecg_fusion_layers = nn.ModuleList(DBetaFusionLayer(config) for _ in range(config.num_fusion_layers))
        self.text_fusion_pooler = DBetaPooler(config.hidden_size)
        self.ecg_fusion_pooler = DBetaPooler(config.hidden_size)
        self.etm_head = nn.Linear(2 * config.hidden_size, 2)
        if config.ets_learnable_scale_bias:
            # SigLIP-style (DECISIONS 15): the log of the scale is learnt, starting at scale 10, bias -10.
            self.logit_scale = nn.Parameter(torch.tensor(math.log(ETS_LEARNABLE_INIT_SCALE)))
            self.logit_bias = nn.Parameter(torch.tensor(ETS_LEARNABLE_INIT_BIAS))
        else:
            self.logit_scale = self.logit_bias = None
        self.post_init()

    @classmethod
    def from_text_encoder_pretrained(cls, text_model_name_or_path: str = "google/flan-t5-base", config=None, **kwargs):
        """A fresh D-BETA around a pretrained T5 encoder (how real pre-training starts).

        The T5 weights are loaded here, outside `__init__`; everything else is randomly initialised.
        `kwargs` go to `T5EncoderModel.from_pretrained` (e.g. `revision`, `cache_dir`).
        """
        text_encoder = T5EncoderModel.from_pretrained(text_model_name_or_path, **kwargs)
        text_config = text_encoder.config.to_dict()
        if config is None:
            config = DBetaConfig(text_config=text_config)
        else:
            config.text_config = DBetaConfig(text_config=text_config).text_config
        model = cls(config)
        base = model if isinstance(model, DBetaModel) else model.dbeta
        weights = text_encoder.state_dict()
        # The embedding the T5 encoder actually reads is `encoder.embed_tokens`; ours is tied to `shared`.
        weights["shared.weight"] = weights.get("encoder.embed_tokens.weight", weights["shared.weight"])
        weights.pop("encoder.embed_tokens.weight", None)
        missing, unexpected = base.text_model.t5.load_state_dict(weights, strict=False)
        missing = [key for key in missing if key != "encoder.embed_tokens.weight"]
        if missing or unexpected:
            raise ValueError(f"T5 encoder weights do not fit: missing {missing}, unexpected {unexpected}.")
        return model

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.t5.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.text_model.t5.set_input_embeddings(value)

    def get_ecg_features(
        self,
        input_values: torch.Tensor,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        **kwargs,
    ) -> DBetaECGModelOutput:
        """ECG embedding: `.pooler_output` (batch, 768); `.last_hidden_state` the projected tokens."""
        return self.ecg_model(
            input_values, output_attentions=output_attentions, output_hidden_states=output_hidden_states
        )

    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_hidden_states: bool = False,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Text embedding: `.pooler_output` (batch, 768) from token 0; the attention mask is always used."""
        return self.text_model(
            input_ids,
            attention_mask=attention_mask,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
        )

    def ets_logits(self, ecg_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """(batch_ecg, batch_text) sigmoid logits `scale * e.t + bias` (unnormalised features, as trained)."""
        scale, bias = self.ets_scale_and_bias()
        return scale * ecg_embeds @ text_embeds.t() + bias

    def ets_scale_and_bias(self) -> tuple[torch.Tensor | float, torch.Tensor | float]:
        """The scale and bias of the ETS logits: the config's fixed values, or the learnt ones
        (`ets_learnable_scale_bias=True`, where `logit_scale` holds the log of the scale)."""
        if self.logit_scale is None:
            return self.config.ets_logit_scale, self.config.ets_logit_bias
        return self.logit_scale.exp(), self.logit_bias

    def fuse(
        self,
        ecg_hidden_state: torch.Tensor,
        text_hidden_state: torch.Tensor,
        text_attention_mask: torch.Tensor | None = None,
        return_mem_input: bool = False,
    ) -> DBetaFusionOutput:
        """Run both fusion stacks in parallel (each layer reads the other stream's previous state)."""
        if text_attention_mask is None:
            text_attention_mask = torch.ones(text_hidden_state.shape[:2], device=text_hidden_state.device)
        text_states = text_hidden_state + self.modality_type_embeddings.weight[0]
        ecg_states = ecg_hidden_state + self.modality_type_embeddings.weight[1]
        text_mask = padding_mask_to_additive(text_attention_mask, text_states.dtype)
        ecg_mask = None  # ECG tokens are never padded

        ecg_for_mem = None
        for index, (text_layer, ecg_layer) in enumerate(zip(self.text_fusion_layers, self.ecg_fusion_layers)):
            if return_mem_input and index == self.config.mem_fusion_layer:
                ecg_for_mem = ecg_states
            text_states, ecg_states = (
                text_layer(text_states, text_mask, ecg_states, ecg_mask),
                ecg_layer(ecg_states, ecg_mask, text_states, text_mask),
            )
        if return_mem_input and ecg_for_mem is None:
            ecg_for_mem = ecg_states
        cls_features = torch.cat([self.text_fusion_pooler(text_states), self.ecg_fusion_pooler(ecg_states)], dim=-1)
        return DBetaFusionOutput(
            text_hidden_state=text_states,
            ecg_hidden_state=ecg_states,
            cls_features=cls_features,
            ecg_hidden_state_for_mem=ecg_for_mem,
        )

    def forward(
        self,
        input_values: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        return_matching: bool = False,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> DBetaOutput | tuple:
        r"""
        input_values (`(batch_size, num_leads, num_samples)`): ECGs in the model's lead order, mV
            (see `DBetaFeatureExtractor`). input_ids / attention_mask (`(batch_size, length)`): reports.
        return_matching (`bool`): also run the fusion stacks and return the ETM match probability of
            each pair (ecg_i, text_i); needs equal batch sizes.
        """
        if input_values is None and input_ids is None:
            raise ValueError("Pass `input_values` (ECGs), `input_ids` (texts) or both.")
        output_attentions = bool(output_attentions)
        output_hidden_states = bool(output_hidden_states)
        ecg_output = text_output = None
        if input_values is not None:
            ecg_output = self.get_ecg_features(input_values, output_attentions, output_hidden_states)
        if input_ids is not None:
            text_output = self.get_text_features(input_ids, attention_mask, output_attentions, output_hidden_states)

        ecg_embeds = ecg_output.pooler_output if ecg_output is not None else None
        text_embeds = text_output.pooler_output if text_output is not None else None
        logits_per_ecg = logits_per_text = matching_logits = matching_probs = None
        if ecg_output is not None and text_output is not None:
            logits_per_ecg = self.ets_logits(ecg_embeds, text_embeds)
            logits_per_text = logits_per_ecg.t()
            if return_matching:
                if ecg_embeds.shape[0] != text_embeds.shape[0]:
                    raise ValueError("`return_matching=True` pairs ecg_i with text_i: batch sizes must be equal.")
                fused = self.fuse(ecg_output.last_hidden_state, text_output.last_hidden_state, attention_mask)
                matching_logits = self.etm_head(fused.cls_features)
                matching_probs = matching_logits.softmax(dim=-1)[:, 1]
        elif return_matching:
            raise ValueError("`return_matching=True` needs both ECGs and texts.")

        output = DBetaOutput(
            pooler_output=ecg_embeds if ecg_embeds is not None else text_embeds,
            ecg_embeds=ecg_embeds,
            text_embeds=text_embeds,
            logits_per_ecg=logits_per_ecg,
            logits_per_text=logits_per_text,
            matching_logits=matching_logits,
            matching_probs=matching_probs,
            ecg_model_output=ecg_output,
            text_model_output=text_output,
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()


# --------------------------------------------------------------------------------------------
# Pre-training
# --------------------------------------------------------------------------------------------


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from every process along dim 0, keeping gradients (identity on one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor.contiguous()), dim=0)


def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)


def ecg_patch_targets(input_values: torch.Tensor, num_tokens: int, samples_per_token: int, normalize: bool):
    """MEM targets (batch, tokens, leads * samples_per_token), lead-major inside each patch.

    The input is trimmed to whole patches and, with `normalize`, standardised per lead over the
    whole trimmed trace (unbiased variance + 1e-6), as the original.
    """
    batch_size, num_leads, _ = input_values.shape
    trimmed = input_values[:, :, : num_tokens * samples_per_token].float()
    if normalize:
        mean = trimmed.mean(dim=-1, keepdim=True)
        var = trimmed.var(dim=-1, keepdim=True, unbiased=True)
        trimmed = (trimmed - mean) / torch.sqrt(var + 1e-6)
    patches = trimmed.reshape(batch_size, num_leads, num_tokens, samples_per_token).permute(0, 2, 1, 3)
    return patches.reshape(batch_size, num_tokens, num_leads * samples_per_token)


def masked_patch_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error per patch, averaged over the masked patches only."""
    per_patch = ((prediction.float() - target) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


def ets_sigmoid_loss(logits: torch.Tensor, is_aligned: torch.Tensor | None = None) -> torch.Tensor:
    """ECG-text sigmoid loss: -sum_ij log sigmoid(y_ij z_ij) / batch (the paper's normalisation).

    y_ij = -1 off the diagonal; y_ii = +1 for a matched pair and -1 when text i is a negative report.
    """
    batch_size = logits.shape[0]
    labels = -torch.ones_like(logits)
    diagonal = torch.ones(batch_size, device=logits.device, dtype=logits.dtype)
    if is_aligned is not None:
        diagonal = 2.0 * is_aligned.to(logits.dtype) - 1.0
    labels = labels + torch.diag(diagonal + 1.0)
    return -F.logsigmoid(labels * logits).sum() / batch_size


class DBetaForPreTraining(DBetaPreTrainedModel):
    """D-BETA with its pre-training heads and the four objectives (MLM, MEM, ETM, ETS)."""

    _tied_weights_keys = {"dbeta.text_model.t5.encoder.embed_tokens.weight": "dbeta.text_model.t5.shared.weight"}

    def __init__(self, config: DBetaConfig):
        super().__init__(config)
        self.dbeta = DBetaModel(config)
        self.mlm_head = DBetaMLMHead(config)
        self.mem_head = DBetaMEMHead(config)
        self.post_init()

    @classmethod
    def from_text_encoder_pretrained(cls, text_model_name_or_path: str = "google/flan-t5-base", config=None, **kwargs):
        return DBetaModel.from_text_encoder_pretrained.__func__(cls, text_model_name_or_path, config, **kwargs)

    def get_input_embeddings(self) -> nn.Module:
        return self.dbeta.get_input_embeddings()

    def get_ecg_features(self, input_values, **kwargs):
        return self.dbeta.get_ecg_features(input_values, **kwargs)

    def get_text_features(self, input_ids, attention_mask=None, **kwargs):
        return self.dbeta.get_text_features(input_ids, attention_mask, **kwargs)

    def masked_language_modeling(self, text_hidden_state: torch.Tensor, mlm_labels: torch.Tensor):
        """MLM logits and loss, projecting only the masked positions onto the vocabulary (the
        other positions have no loss, so their 32k-way logits would be wasted work and memory)."""
        selected = mlm_labels != -100
        mlm_logits = self.mlm_head(text_hidden_state[selected])
        if not selected.any():
            return mlm_logits, mlm_logits.sum() * 0.0  # keeps the graph (and DDP) intact
        return mlm_logits, F.cross_entropy(mlm_logits.float(), mlm_labels[selected])

    def forward(
        self,
        input_values: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mlm_labels: torch.Tensor | None = None,
        is_aligned: torch.Tensor | None = None,
        mask_ratio: float | None = None,
        mask_generator: torch.Generator | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> DBetaForPreTrainingOutput | tuple:
        r"""
        input_values (`(batch_size, num_leads, num_samples)`): ECGs after lead masking (the MEM target
            is this input). input_ids / attention_mask: the reports after N3S substitution and MLM
            masking. mlm_labels (`(batch_size, length)`): original ids at MLM-masked positions, -100
            elsewhere. is_aligned (`(batch_size,)`): 1 for a matched pair, 0 for an N3S negative.
        mask_ratio (`float`): fraction of ECG tokens masked for MEM (default `config.ecg_config.mask_ratio`).

        Every objective whose inputs are present is computed; `loss` is their weighted sum. In
        multi-process training the ETS logits span the global batch (features gathered with gradient).
        """
        config = self.config
        mask_ratio = config.ecg_config.mask_ratio if mask_ratio is None else mask_ratio
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        ecg_model = self.dbeta.ecg_model
        ecg_tokens = ecg_model.embed_tokens(input_values)
        ecg_output = ecg_model(token_embeddings=ecg_tokens, mask_ratio=mask_ratio, mask_generator=mask_generator)
        text_output = self.dbeta.text_model(input_ids, attention_mask=attention_mask)
        fused = self.dbeta.fuse(
            ecg_output.last_hidden_state,
            text_output.last_hidden_state,
            attention_mask,
            return_mem_input=mask_ratio > 0,
        )

        losses = {}
        mlm_logits = mem_logits = None
        if mlm_labels is not None:
            mlm_logits, losses["mlm"] = self.masked_language_modeling(fused.text_hidden_state, mlm_labels)
        if mask_ratio > 0:
            mem_logits = self.mem_head(fused.ecg_hidden_state_for_mem, ecg_output.mem_ids_restore)
            num_tokens = mem_logits.shape[1]
            targets = ecg_patch_targets(
                input_values, num_tokens, config.ecg_config.samples_per_token, config.mem_norm_target
            )
            losses["mem"] = masked_patch_mse(mem_logits.flatten(2), targets, ecg_output.mem_mask)
        etm_logits = self.dbeta.etm_head(fused.cls_features)
        if is_aligned is not None:
            losses["etm"] = F.cross_entropy(etm_logits.float(), is_aligned.long())
        ecg_embeds, text_embeds = ecg_output.pooler_output, text_output.pooler_output
        if config.ets_unmasked_ecg and mask_ratio > 0:
            # ETS on the whole ECG, as zero-shot scoring sees it (the masked pass still feeds MEM/ETM).
            ecg_embeds = ecg_model(token_embeddings=ecg_tokens).pooler_output
        global_aligned = gather_no_grad(is_aligned) if is_aligned is not None else None
        logits_per_ecg = self.dbeta.ets_logits(gather_with_grad(ecg_embeds), gather_with_grad(text_embeds))
        losses["ets"] = ets_sigmoid_loss(logits_per_ecg.float(), global_aligned)

        weights = {
            "mlm": config.mlm_loss_weight,
            "mem": config.mem_loss_weight,
            "etm": config.etm_loss_weight,
            "ets": config.ets_loss_weight,
        }
        loss = sum(weights[name] * value for name, value in losses.items())
        output = DBetaForPreTrainingOutput(
            loss=loss,
            mlm_loss=losses.get("mlm"),
            mem_loss=losses.get("mem"),
            etm_loss=losses.get("etm"),
            ets_loss=losses.get("ets"),
            mlm_logits=mlm_logits,
            mem_logits=mem_logits,
            etm_logits=etm_logits,
            logits_per_ecg=logits_per_ecg,
            ecg_embeds=ecg_embeds,
            text_embeds=text_embeds,
            mem_mask=ecg_output.mem_mask,
        )
        return_dict = return_dict if return_dict is not None else config.return_dict
        return output if return_dict else output.to_tuple()


# --------------------------------------------------------------------------------------------
# Downstream classification
# --------------------------------------------------------------------------------------------

from transformers.modeling_outputs import SequenceClassifierOutput  # noqa: E402


class DBetaForECGClassification(DBetaPreTrainedModel):
    r"""
    The ECG tower with a linear classifier on the pooled ECG embedding, for fine-tuning on labelled
    ECGs (the paper's PhysioNet 2021 setting) or, with `freeze_ecg_encoder()`, linear probing.

    Follows transformers' `*ForSequenceClassification` contract, so it trains with `Trainer`:
    `config.num_labels` / `id2label` name the classes, `labels` gives the loss and
    `config.problem_type` chooses it (`"multi_label_classification"` -> BCE with logits, the usual
    ECG setting; `"single_label_classification"` -> cross-entropy; `"regression"` -> MSE; when
    unset it is inferred from `num_labels` and the dtype of `labels`, as in transformers).

    Loads from a full D-BETA checkpoint (`DBetaModel` or `DBetaForPreTraining`) or an ECG-only
    export: the ECG tower weights are reused, the text tower and pre-training heads are skipped and
    the classifier is newly initialised. `config` may be a `DBetaConfig` or a `DBetaECGConfig`;
    `config.classifier_dropout` (default 0.0) is applied to the embedding before the classifier.
    """

    input_modalities = ("ecg",)
    _no_split_modules = ["DBetaECGEncoderLayer"]
    _keys_to_ignore_on_load_unexpected = [
        r"^(dbeta\.)?(text_model|modality_type_embeddings|text_fusion|ecg_fusion|mlm_head|mem_head|etm_head|logit_)"
    ]

    def __init__(self, config: DBetaConfig | DBetaECGConfig):
        super().__init__(config)
        ecg_config = getattr(config, "ecg_config", config)  # a DBetaConfig, or a DBetaECGConfig itself
        self.num_labels = config.num_labels
        self.ecg_model = DBetaECGTransformer(ecg_config)
        self.dropout = nn.Dropout(getattr(config, "classifier_dropout", None) or 0.0)
        self.classifier = nn.Linear(ecg_config.projection_dim, config.num_labels)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.ecg_model.feature_extractor.conv_layers[0].conv

    def freeze_ecg_encoder(self) -> None:
        """Stop gradients to the ECG tower (linear probing); only the classifier then trains."""
        for parameter in self.ecg_model.parameters():
            parameter.requires_grad = False

    def get_ecg_features(self, input_values: torch.Tensor, **kwargs) -> DBetaECGModelOutput:
        return self.ecg_model(input_values, **kwargs)

    def _classification_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.config.problem_type is None:
            if self.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int) and labels.dim() == 1:
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        if self.config.problem_type == "regression":
            if self.num_labels == 1:
                return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).view(-1))
            return F.mse_loss(logits, labels.to(logits.dtype))
        if self.config.problem_type == "single_label_classification":
            return F.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        if self.config.problem_type == "multi_label_classification":
            return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        raise ValueError(f"Unknown `problem_type` {self.config.problem_type!r}.")

    def forward(
        self,
        input_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput | tuple:
        r"""
        input_values (`(batch_size, num_leads, num_samples)`): ECGs in the model's lead order, mV
            (see `DBetaFeatureExtractor`).
        labels (`torch.Tensor`, *optional*): `(batch_size, num_labels)` multi-hot targets for
            multi-label classification, `(batch_size,)` class indices for single-label
            classification, or regression targets.
        """
        ecg_output = self.ecg_model(
            input_values,
            output_attentions=bool(output_attentions),
            output_hidden_states=bool(output_hidden_states),
        )
        logits = self.classifier(self.dropout(ecg_output.pooler_output))
        loss = self._classification_loss(logits, labels) if labels is not None else None
        output = SequenceClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=ecg_output.hidden_states,
            attentions=ecg_output.attentions,
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        return output if return_dict else output.to_tuple()


DBetaECGModel.register_for_auto_class("AutoModel")
DBetaModel.register_for_auto_class("AutoModel")
DBetaForPreTraining.register_for_auto_class("AutoModelForPreTraining")
DBetaForECGClassification.register_for_auto_class("AutoModelForSequenceClassification")

__all__ = [
    "DBetaECGModel",
    "DBetaForECGClassification",
    "DBetaForPreTraining",
    "DBetaModel",
    "DBetaPreTrainedModel",
]
