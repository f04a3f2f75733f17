"""ECG and text embeddings in batches (the inference helpers that evaluation, the CLI and the demo share).

D-BETA embeds ECGs (`get_ecg_features(...).pooler_output`) and reports
(`get_text_features(...).pooler_output`) into one 768-d space where the ETS logit
`scale * e.t + bias` scores a pair. Retrieval ranks by that logit, i.e. by the raw dot product
(the features are not L2-normalised, as in pre-training).

    >>> model, processor = dbeta.loading.load_model_and_processor("outputs/dbeta-demo")
    >>> ecg = embed_ecgs(model, processor.feature_extractor, records)           # (N, 768)
    >>> text = embed_texts(model, processor.tokenizer, reports)                 # (N, 768)

Search over them: `dbeta.train.evaluation.retrieval.ECGTextIndex`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

def normalize_text(text: str) -> str:
    """Pre-training report normalisation (lower-case, trim, ekg -> ecg, strip `* =-`)."""
    from dbeta.text import normalize_report

    return normalize_report(text)


def base_model(model):
    """The `DBetaModel` inside a `DBetaForPreTraining` (or the model itself)."""
    return getattr(model, "dbeta", model)


@torch.no_grad()
def embed_texts(
    model,
    tokenizer,
    texts: Sequence[str],
    batch_size: int = 64,
    normalize: bool = True,
    one_by_one: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """`(len(texts), hidden)` float32 CPU text embeddings.

    Args:
        normalize: apply the pre-training report normalisation first (`normalize_text`).
        one_by_one: tokenise and embed every text alone, unpadded (the original notebook). With the
            attention mask the padded batches give the same embeddings up to float rounding.
    """
    from tqdm.auto import tqdm

    base = base_model(model)
    device = next(base.parameters()).device
    max_length = getattr(base.config, "max_text_length", 256) - 2
    texts = [normalize_text(text) if normalize else text for text in texts]
    step = 1 if one_by_one else batch_size
    chunks = []
    for start in tqdm(range(0, len(texts), step), desc="texts", unit="batch", disable=not progress):
        tokens = tokenizer(
            texts[start : start + step], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(device)
        output = base.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        chunks.append(output.pooler_output.float().cpu())
    if not chunks:
        return torch.zeros(0, base.config.hidden_size)
    return torch.cat(chunks)


@torch.no_grad()
def embed_ecg_batch(model, input_values: torch.Tensor | np.ndarray) -> torch.Tensor:
    """ECG embeddings `(batch, hidden)` (float32, CPU) of ready model inputs `(batch, 12, samples)`.

    `model` is a D-BETA model, or an `ONNXECGEncoder` (`dbeta.onnx_backend`, `--backend onnx`):
    every embedding of `dbeta embed` / `classify` passes here, so the backends share all the rest."""
    if hasattr(model, "embed_ecg_inputs"):
        return torch.from_numpy(np.asarray(model.embed_ecg_inputs(np.asarray(input_values, dtype=np.float32))))
    base = base_model(model)
    parameter = next(base.parameters())
    input_values = torch.as_tensor(input_values).to(parameter.device, parameter.dtype)
    return base.get_ecg_features(input_values=input_values).pooler_output.float().cpu()


@dataclass
class EmbeddingFailure:
    """A record that could not be embedded (read or preprocessing error)."""

    index: int
    record_id: str
    error: str


def embed_ecgs(
    model,
    prepare: Callable[[Any], np.ndarray] | Any,
    items: Iterable[Any],
    batch_size: int = 32,
    record_ids: Sequence[str] | None = None,
    skip_failures: bool = False,
    progress: bool = False,
    total: int | None = None,
) -> tuple[torch.Tensor, list[EmbeddingFailure]]:
    """Embed a stream of ECGs in batches.

    Args:
        prepare: a `DBetaFeatureExtractor` (called on each item) or a function `item -> (12,
            samples)` model input; errors it raises are failures of that item.
        items: anything `prepare` accepts (ECGRecords, paths, arrays, or `lambda: ...` thunks
            whose result is passed on, so that reading happens inside the failure handling).
        skip_failures: report (`EmbeddingFailure`) and skip failing items instead of raising.

    Returns:
        `(embeddings, failures)`: float32 `(num_ok, hidden)` in input order, without the failures.
    """
    from tqdm.auto import tqdm

    def to_input(item):
        if callable(item):  # a thunk: read the record here, inside the failure handling
            item = item()
        if hasattr(prepare, "model_input_names"):  # a feature extractor
            return np.asarray(prepare(item)["input_values"][0], dtype=np.float32)
        return np.asarray(prepare(item), dtype=np.float32)

    embeddings, failures, batch = [], [], []
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    for index, item in enumerate(tqdm(items, total=total, desc="ECGs", unit="ecg", disable=not progress)):
        try:
            batch.append(to_input(item))
        except Exception as error:  # noqa: BLE001 - every reading/preprocessing error is per record
            if not skip_failures:
                raise
            record_id = record_ids[index] if record_ids is not None else str(index)
            failures.append(EmbeddingFailure(index, record_id, f"{type(error).__name__}: {error}"))
            continue
        if len(batch) == batch_size:
            embeddings.append(embed_ecg_batch(model, np.stack(batch)))
            batch = []
    if batch:
        embeddings.append(embed_ecg_batch(model, np.stack(batch)))
    if not embeddings:
        return torch.zeros(0, base_model(model).config.hidden_size), failures
    return torch.cat(embeddings), failures


__all__ = [
    "EmbeddingFailure",
    "base_model",
    "embed_ecg_batch",
    "embed_ecgs",
    "embed_texts",
    "normalize_text",
]
