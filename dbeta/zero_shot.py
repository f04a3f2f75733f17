"""The zero-shot scorer: label texts -> text-tower embeddings -> ETS logits against ECG embeddings.

Every surface outside the Hub files scores through these functions: `dbeta classify`,
`train/evaluation/evaluate.py` (package protocol), pretraining's validation and the demo's real-ECG
figure. The pipeline (`pipeline_dbeta.py`) keeps its own copy because Hub files must be
self-contained; `tests/test_zero_shot_agreement.py` checks that all of them give the same scores.

    >>> label_embeds = embed_label_texts(model, tokenizer, ["atrial fibrillation", "sinus rhythm"])
    >>> logits = zero_shot_logits(model, ecg_embeds, label_embeds)     # (num_ecgs, 2), float32 CPU
    >>> scores = logits_to_scores(logits, multi_label=True)            # sigmoid; softmax otherwise
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dbeta.embedding import base_model
from dbeta.text import normalize_report

#: Label texts are embedded in chunks of this many (one chunk for every realistic label set).
TEXT_CHUNK_SIZE = 64


@torch.no_grad()
def embed_label_texts(model, tokenizer, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
    """`(len(texts), hidden)` text embeddings (`get_text_features(...).pooler_output`) on the model's device.

    Args:
        normalize: apply the pre-training normalisation first (what the pipeline does by default).

    Raises:
        ValueError: no texts, or a text whose embedding is not finite (damaged weights).
    """
    if not texts:
        raise ValueError("No label texts to score: pass at least one label.")
    base = base_model(model)
    device = next(base.parameters()).device
    max_length = getattr(base.config, "max_text_length", 256) - 2
    texts = [normalize_report(text) if normalize else text for text in texts]
    chunks = []
    for start in range(0, len(texts), TEXT_CHUNK_SIZE):
        tokens = tokenizer(
            list(texts[start : start + TEXT_CHUNK_SIZE]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        ).to(device)
        output = base.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        chunks.append(output.pooler_output)
    embeddings = torch.cat(chunks)
    finite = torch.isfinite(embeddings).all(dim=-1)
    if not bool(finite.all()):
        bad = [texts[index] for index in (~finite).nonzero().flatten().tolist()]
        raise ValueError(f"The text embeddings of labels {bad[:5]} are not finite (NaN/inf): damaged weights?")
    return embeddings


@torch.no_grad()
def zero_shot_logits(model, ecg_embeds: torch.Tensor, label_embeds: torch.Tensor) -> torch.Tensor:
    """`(num_ecgs, num_labels)` float32 CPU ETS logits `scale * ecg . label + bias` (the model's own
    scale and bias, learnt or fixed). Non-finite rows are returned as they are: callers decide."""
    base = base_model(model)
    label_embeds = torch.as_tensor(label_embeds)
    parameter = next(base.parameters())
    label_embeds = label_embeds.to(parameter.device)
    ecg_embeds = torch.as_tensor(ecg_embeds).to(label_embeds.device, label_embeds.dtype)
    return base.ets_logits(ecg_embeds, label_embeds).float().cpu()


def logits_to_scores(logits: torch.Tensor, multi_label: bool = True) -> torch.Tensor:
    """Independent sigmoid scores (`multi_label`) or a softmax over the labels, as the pipeline gives."""
    logits = torch.as_tensor(logits).float()
    return logits.sigmoid() if multi_label else logits.softmax(dim=-1)


__all__ = ["embed_label_texts", "logits_to_scores", "zero_shot_logits"]
