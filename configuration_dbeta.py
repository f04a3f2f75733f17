# Copyright 2026 The dbeta authors. Licensed under the Apache License, Version 2.0.
"""D-BETA model configuration.

`DBetaConfig()` with no arguments is the published D-BETA architecture (Boosting Masked
ECG-Text Auto-Encoders as Discriminative Learners, ICML 2025): an 8-layer 768-d ECG transformer,
a Flan-T5-base text encoder, 6 BERT-style cross-attention fusion layers per modality and the MLM /
MEM / ETM pre-training heads. `DBetaECGConfig` describes the ECG tower alone (ECG-only exports).
"""

from dataclasses import field

import transformers
from packaging import version
from transformers import PreTrainedConfig, T5Config

if version.parse(transformers.__version__).major < 5:
    raise ImportError(
        f"dbeta needs transformers >= 5.0 (found {transformers.__version__}); "
        "upgrade with `pip install -U 'transformers>=5,<6'`."
    )

# Lead order of MIMIC-IV-ECG, which the published weights were trained on (aVF before aVL).
MIMIC_LEAD_ORDER = ("I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6")

# google/flan-t5-base, encoder side. Spelled out so that a partial `text_config` dict is completed
# with Flan-T5-base values rather than with stock `T5Config` defaults (t5-small).
FLAN_T5_BASE_TEXT_CONFIG = {
    "vocab_size": 32128,
    "d_model": 768,
    "d_kv": 64,
    "d_ff": 2048,
    "num_layers": 12,
    "num_decoder_layers": 12,
    "num_heads": 12,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "dropout_rate": 0.1,
    "layer_norm_epsilon": 1e-6,
    "initializer_factor": 1.0,
    "feed_forward_proj": "gated-gelu",
    # T5EncoderModel ties `encoder.embed_tokens` to `shared` only when this is set; D-BETA's text
    # encoder has one embedding table (there is no LM head to tie), so it is always on here.
    "tie_word_embeddings": True,
    "is_encoder_decoder": True,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "decoder_start_token_id": 0,
}


def _check_positive(config: PreTrainedConfig, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


def _check_probability(config: PreTrainedConfig, *names: str, allow_one: bool = False) -> None:
    for name in names:
        value = getattr(config, name)
        upper_ok = value <= 1.0 if allow_one else value < 1.0
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= value and upper_ok):
            interval = "[0, 1]" if allow_one else "[0, 1)"
            raise ValueError(f"`{name}` must be in {interval}, got {value!r}.")


def _check_divisible(config: PreTrainedConfig, width_name: str, heads_name: str) -> None:
    width, heads = getattr(config, width_name), getattr(config, heads_name)
    if width % heads != 0:
        raise ValueError(f"`{width_name}` ({width}) must be divisible by `{heads_name}` ({heads}).")


# Written into every saved config so that the Auto classes find the remote code (one entry per
# class would be all `register_for_auto_class` keeps).
DBETA_AUTO_MAP = {
    "AutoConfig": "configuration_dbeta.DBetaConfig",
    "AutoModel": "modeling_dbeta.DBetaModel",
    "AutoModelForPreTraining": "modeling_dbeta.DBetaForPreTraining",
    "AutoModelForSequenceClassification": "modeling_dbeta.DBetaForECGClassification",
    "AutoProcessor": "processing_dbeta.DBetaProcessor",
    "AutoFeatureExtractor": "processing_dbeta.DBetaFeatureExtractor",
}
DBETA_ECG_AUTO_MAP = {
    "AutoConfig": "configuration_dbeta.DBetaECGConfig",
    "AutoModel": "modeling_dbeta.DBetaECGModel",
    "AutoFeatureExtractor": "processing_dbeta.DBetaFeatureExtractor",
}


class DBetaECGConfig(PreTrainedConfig):
    r"""
    Configuration of the D-BETA ECG tower: a convolutional feature extractor over the raw leads, a
    convolutional positional embedding, a CLS token and a post-LN transformer encoder (wav2vec 2.0
    style), followed by the projection and tanh pooler that give the 768-d ECG embedding.

    Args:
        num_leads (`int`, defaults to 12): input channels (leads).
        conv_dim (`tuple[int]`), conv_kernel (`tuple[int]`), conv_stride (`tuple[int]`): the
            feature-extractor convolutions; the default is four (256 channels, kernel 2, stride 2)
            blocks, so one token covers 16 samples (32 ms at 500 Hz).
        conv_bias (`bool`, defaults to `False`): bias in the feature-extractor convolutions.
        hidden_size (`int`, defaults to 768), num_hidden_layers (`int`, defaults to 8),
        num_attention_heads (`int`, defaults to 12), intermediate_size (`int`, defaults to 3072):
            transformer encoder sizes.
        num_conv_pos_embeddings (`int`, defaults to 128), num_conv_pos_embedding_groups (`int`,
            defaults to 16): kernel width and groups of the weight-normalised positional convolution.
        hidden_dropout, attention_dropout, activation_dropout, feat_proj_dropout (`float`): dropout
            after attention/FFN blocks, on attention weights, inside the FFN, after the feature
            projection.
        layer_norm_eps (`float`, defaults to 1e-5), initializer_range (`float`, defaults to 0.02).
        projection_dim (`int`, defaults to 768): width of the projected ECG tokens and of the pooled
            ECG embedding (the fusion width).
        mask_ratio (`float`, defaults to 0.75): fraction of ECG tokens removed for masked ECG
            modelling during pre-training (MAE-style random masking).
    """

    model_type = "dbeta_ecg"
    base_config_key = "ecg_config"

    num_leads: int = 12
    conv_dim: list[int] | tuple[int, ...] = (256, 256, 256, 256)
    conv_kernel: list[int] | tuple[int, ...] = (2, 2, 2, 2)
    conv_stride: list[int] | tuple[int, ...] = (2, 2, 2, 2)
    conv_bias: bool = False
    hidden_size: int = 768
    num_hidden_layers: int = 8
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    feat_proj_dropout: float = 0.1
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    projection_dim: int = 768
    mask_ratio: float = 0.75

    def __post_init__(self, **kwargs):
        self.conv_dim, self.conv_kernel, self.conv_stride = (
            list(self.conv_dim),
            list(self.conv_kernel),
            list(self.conv_stride),
        )
        if not (len(self.conv_dim) == len(self.conv_kernel) == len(self.conv_stride)) or not self.conv_dim:
            raise ValueError(
                "`conv_dim`, `conv_kernel` and `conv_stride` must be non-empty and of equal length, got "
                f"{len(self.conv_dim)}, {len(self.conv_kernel)} and {len(self.conv_stride)}."
            )
        for name in ("conv_dim", "conv_kernel", "conv_stride"):
            if any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in getattr(self, name)):
                raise ValueError(f"`{name}` must hold positive integers, got {getattr(self, name)!r}.")
        _check_positive(
            self,
            "num_leads",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "num_conv_pos_embeddings",
            "num_conv_pos_embedding_groups",
            "projection_dim",
        )
        _check_divisible(self, "hidden_size", "num_attention_heads")
        _check_divisible(self, "hidden_size", "num_conv_pos_embedding_groups")
        _check_probability(self, "hidden_dropout", "attention_dropout", "activation_dropout", "feat_proj_dropout")
        _check_probability(self, "mask_ratio")
        super().__post_init__(**kwargs)
        if getattr(self, "auto_map", None) is None:
            self.auto_map = dict(DBETA_ECG_AUTO_MAP)

    @property
    def samples_per_token(self) -> int:
        """Input samples per ECG token (the product of the conv strides)."""
        product = 1
        for stride in self.conv_stride:
            product *= stride
        return product

    def num_tokens(self, num_samples: int) -> int:
        """Number of ECG tokens (without CLS) the feature extractor makes from `num_samples` samples."""
        length = num_samples
        for kernel, stride in zip(self.conv_kernel, self.conv_stride):
            length = (length - kernel) // stride + 1
        return length


class DBetaConfig(PreTrainedConfig):
    r"""
    Configuration of the full D-BETA model: ECG tower, T5 text encoder, cross-modal fusion and the
    pre-training heads. `DBetaConfig()` is the published architecture.

    Args:
        ecg_config (`dict` or `DBetaECGConfig`): the ECG tower.
        text_config (`dict` or `T5Config`): the T5 text encoder; a partial dict is completed with
            google/flan-t5-base values.
        hidden_size (`int`, defaults to 768): fusion width (both projected streams).
        num_fusion_layers (`int`, defaults to 6): BERT-style cross-attention layers per modality.
        fusion_num_attention_heads (`int`, defaults to 12), fusion_intermediate_size (`int`,
            defaults to 3072), fusion_dropout (`float`, defaults to 0.1), fusion_layer_norm_eps
            (`float`, defaults to 1e-12): fusion layer sizes.
        max_text_length (`int`, defaults to 256): the original `max_text_size`; reports are
            tokenised to at most `max_text_length - 2` tokens.
        mem_decoder_hidden_size (`int`, defaults to 384), mem_decoder_num_layers (`int`, defaults
            to 4), mem_decoder_num_attention_heads (`int`, defaults to 6): the masked-ECG decoder.
        mem_fusion_layer (`int`, defaults to 3): the MEM decoder reads the ECG stream entering this
            fusion layer (after `mem_fusion_layer` fusion layers).
        mem_max_positions (`int`, defaults to 512): size of the decoder's sinusoid table.
        mem_norm_target (`bool`, defaults to `True`): normalise the MEM target per lead.
        mlm_probability (`float`, defaults to 0.25): report tokens picked for masked language modelling.
        lead_masking_probability (`float`, defaults to 0.5): each lead is zeroed with this probability
            during pre-training (augmentation).
        mlm_loss_weight, mem_loss_weight, etm_loss_weight, ets_loss_weight (`float`, default 1.0).
        ets_logit_scale (`float`, defaults to 1.0), ets_logit_bias (`float`, defaults to 0.0),
        ets_learnable_scale_bias (`bool`, defaults to `False`): the ECG-text sigmoid logits are
            `scale * e.t + bias`; fixed (scale 1, no bias) as the paper unless made learnable. When
            learnable, SigLIP's parametrisation and start are used (a log-scale parameter starting at
            log 10, bias -10) and the two fixed values are ignored.
        ets_unmasked_ecg (`bool`, defaults to `False`): the ECG embedding of the ETS loss comes from the
            MEM-masked ECG (the paper: 25% of the tokens); `True` embeds the whole ECG in a second
            pass, as zero-shot inference does (one more ECG-tower pass per step).
        lead_names (`tuple[str]`): the lead order the model expects (MIMIC-IV-ECG order for the
            published weights). sampling_rate (`int`, 500), num_samples (`int`, 5000): input
            sampling rate and length.
        initializer_range (`float`, defaults to 0.02).
    """

    model_type = "dbeta"
    sub_configs_defaults = {"ecg_config": DBetaECGConfig, "text_config": T5Config}

    ecg_config: dict | DBetaECGConfig | None = None
    text_config: dict | T5Config | None = None
    hidden_size: int = 768
    num_fusion_layers: int = 6
    fusion_num_attention_heads: int = 12
    fusion_intermediate_size: int = 3072
    fusion_dropout: float = 0.1
    fusion_layer_norm_eps: float = 1e-12
    max_text_length: int = 256
    mem_decoder_hidden_size: int = 384
    mem_decoder_num_layers: int = 4
    mem_decoder_num_attention_heads: int = 6
    mem_fusion_layer: int = 3
    mem_max_positions: int = 512
    mem_norm_target: bool = True
    mlm_probability: float = 0.25
    lead_masking_probability: float = 0.5
    mlm_loss_weight: float = 1.0
    mem_loss_weight: float = 1.0
    etm_loss_weight: float = 1.0
    ets_loss_weight: float = 1.0
    ets_logit_scale: float = 1.0
    ets_logit_bias: float = 0.0
    ets_learnable_scale_bias: bool = False
    ets_unmasked_ecg: bool = False
    lead_names: list[str] | tuple[str, ...] = MIMIC_LEAD_ORDER
    sampling_rate: int = 500
    num_samples: int = 5000
    initializer_range: float = 0.02
    # Ties the T5 encoder's `embed_tokens` to `shared` (one table, as in the original checkpoint).
    tie_word_embeddings: bool = True

    def __post_init__(self, **kwargs):
        if self.text_config is None or isinstance(self.text_config, dict):
            self.text_config = T5Config(**{**FLAN_T5_BASE_TEXT_CONFIG, **(self.text_config or {})})
        if not isinstance(self.text_config, T5Config):
            raise ValueError(f"`text_config` must be a T5Config or a dict, got {type(self.text_config).__name__}.")
        self.text_config.tie_word_embeddings = True
        if self.ecg_config is None:
            self.ecg_config = DBetaECGConfig()
        elif isinstance(self.ecg_config, dict):
            self.ecg_config.pop("model_type", None)
            self.ecg_config = DBetaECGConfig(**self.ecg_config)
        elif self.ecg_config is not None and not isinstance(self.ecg_config, DBetaECGConfig):
            raise ValueError(
                f"`ecg_config` must be a DBetaECGConfig or a dict, got {type(self.ecg_config).__name__}."
            )
        super().__post_init__(**kwargs)
        if getattr(self, "auto_map", None) is None:
            self.auto_map = dict(DBETA_AUTO_MAP)
        self.lead_names = list(self.lead_names)

        _check_positive(
            self,
            "hidden_size",
            "num_fusion_layers",
            "fusion_num_attention_heads",
            "fusion_intermediate_size",
            "max_text_length",
            "mem_decoder_hidden_size",
            "mem_decoder_num_layers",
            "mem_decoder_num_attention_heads",
            "mem_max_positions",
            "sampling_rate",
            "num_samples",
        )
        _check_divisible(self, "hidden_size", "fusion_num_attention_heads")
        _check_divisible(self, "mem_decoder_hidden_size", "mem_decoder_num_attention_heads")
        _check_probability(self, "fusion_dropout", "mlm_probability")
        _check_probability(self, "lead_masking_probability", allow_one=True)
        if not 0 <= self.mem_fusion_layer <= self.num_fusion_layers:
            raise ValueError(
                f"`mem_fusion_layer` must be in [0, num_fusion_layers={self.num_fusion_layers}], "
                f"got {self.mem_fusion_layer}."
            )
        if self.ecg_config.projection_dim != self.hidden_size:
            raise ValueError(
                f"`ecg_config.projection_dim` ({self.ecg_config.projection_dim}) must equal the fusion "
                f"`hidden_size` ({self.hidden_size})."
            )
        if len(self.lead_names) != self.ecg_config.num_leads:
            raise ValueError(
                f"`lead_names` has {len(self.lead_names)} names but `ecg_config.num_leads` is "
                f"{self.ecg_config.num_leads}."
            )
        if len(set(name.lower() for name in self.lead_names)) != len(self.lead_names):
            raise ValueError(f"`lead_names` must be unique, got {self.lead_names}.")
        num_tokens = self.ecg_config.num_tokens(self.num_samples)
        if num_tokens < 1:
            raise ValueError(f"`num_samples` ({self.num_samples}) is too short for the ECG feature extractor.")
        if num_tokens + 1 > self.mem_max_positions:
            raise ValueError(
                f"`mem_max_positions` ({self.mem_max_positions}) must exceed the number of ECG tokens "
                f"({num_tokens}) for `num_samples`={self.num_samples}."
            )

    @property
    def num_ecg_tokens(self) -> int:
        """ECG tokens (without CLS) for an input of `num_samples` samples: 312 for 10 s at 500 Hz."""
        return self.ecg_config.num_tokens(self.num_samples)


DBetaConfig.register_for_auto_class()
DBetaECGConfig.register_for_auto_class()

__all__ = ["DBetaConfig", "DBetaECGConfig", "FLAN_T5_BASE_TEXT_CONFIG", "MIMIC_LEAD_ORDER"]
