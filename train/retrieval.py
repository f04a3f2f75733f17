"""ECG and text embeddings in batches, and ECG <-> report search over them.

D-BETA embeds ECGs (`get_ecg_features(...).pooler_output`) and reports
(`get_text_features(...).pooler_output`) into one 768-d space where the ETS logit
`scale * e.t + bias` scores a pair. Retrieval ranks by that logit, i.e. by the raw dot product
(the features are not L2-normalised, as in pre-training).

    >>> model, processor = load_model_and_processor("outputs/dbeta-demo")
    >>> ecg = embed_ecgs(model, processor.feature_extractor, records)           # (N, 768)
    >>> text = embed_texts(model, processor.tokenizer, reports)                 # (N, 768)
    >>> index = ECGTextIndex(ecg, text, texts=reports)
    >>> index.search_texts(ecg[:1], top_k=5)                                     # ECG -> reports
    >>> index.recall(ks=(1, 5, 10))                                              # paired evaluation
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .metrics import DEFAULT_RECALL_KS, cross_modal_recall

LABEL_DESCRIPTIONS_NAME = "label_descriptions.json"


def normalize_text(text: str) -> str:
    """Pre-training report normalisation (lower-case, trim, ekg -> ecg, strip `* =-`)."""
    from .text import normalize_report

    return normalize_report(text)


def base_model(model):
    """The `DBetaModel` inside a `DBetaForPreTraining` (or the model itself)."""
    return getattr(model, "dbeta", model)


def load_model_and_processor(path: str | os.PathLike, device: str | torch.device = "cpu", dtype=None):
    """Load a D-BETA folder (or Hub id) as `(DBetaModel, DBetaProcessor)`, in eval mode.

    The installed package's classes are used, never the folder's remote code (so nothing prompts
    for `trust_remote_code`). A folder without a saved feature extractor gets a default
    `DBetaFeatureExtractor` matching the model config.
    """
    from transformers import AutoTokenizer

    from modeling_dbeta import DBetaModel
    from processing_dbeta import DBetaFeatureExtractor, DBetaProcessor

    kwargs = {"dtype": dtype} if dtype is not None else {}
    model = DBetaModel.from_pretrained(path, **kwargs).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    try:
        feature_extractor = DBetaFeatureExtractor.from_pretrained(path)
    except OSError:
        config = model.config
        feature_extractor = DBetaFeatureExtractor(
            sampling_rate=getattr(config, "sampling_rate", 500),
            num_samples=getattr(config, "num_samples", 5000),
            lead_names=list(getattr(config, "lead_names", None) or []) or None,
        )
    max_text_length = getattr(model.config, "max_text_length", 256) - 2
    return model, DBetaProcessor(feature_extractor, tokenizer, max_text_length=max_text_length)


def load_label_descriptions(model_path: str | os.PathLike | None = None) -> dict[str, str]:
    """`{code: description}` from the model folder's `label_descriptions.json`, else the packaged file."""
    import dbeta

    folder_file = Path(model_path) / LABEL_DESCRIPTIONS_NAME if model_path is not None else None
    source = folder_file if folder_file is not None and folder_file.is_file() else Path(dbeta.LABEL_DESCRIPTIONS_FILE)
    return json.loads(source.read_text(encoding="utf-8"))


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
    """ECG embeddings `(batch, hidden)` (float32, CPU) of ready model inputs `(batch, 12, samples)`."""
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


class ECGTextIndex:
    """Exact ECG <-> text search over precomputed embeddings (dot product = ETS logit order).

    Args:
        ecg_embeds: `(num_ecgs, hidden)`.
        text_embeds: `(num_texts, hidden)`.
        ecg_ids / texts: optional names returned with the hits.
    """

    def __init__(
        self, ecg_embeds, text_embeds, ecg_ids: Sequence[str] | None = None, texts: Sequence[str] | None = None
    ):
        self.ecg_embeds = torch.as_tensor(ecg_embeds, dtype=torch.float32)
        self.text_embeds = torch.as_tensor(text_embeds, dtype=torch.float32)
        if self.ecg_embeds.shape[-1] != self.text_embeds.shape[-1]:
            raise ValueError(f"Embedding widths differ: {self.ecg_embeds.shape[-1]} vs {self.text_embeds.shape[-1]}.")
        self.ecg_ids = list(ecg_ids) if ecg_ids is not None else [str(i) for i in range(len(self.ecg_embeds))]
        self.texts = list(texts) if texts is not None else None

    @staticmethod
    def _top_k(queries: torch.Tensor, gallery: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
        queries = torch.as_tensor(queries, dtype=torch.float32)
        if queries.dim() == 1:
            queries = queries[None]
        scores = queries @ gallery.T
        return torch.topk(scores, k=min(top_k, gallery.shape[0]), dim=-1)

    def search_texts(self, ecg_queries, top_k: int = 5) -> list[list[dict]]:
        """ECG -> text: for each query ECG embedding, the `top_k` texts `{"index", "text", "score"}`."""
        scores, indices = self._top_k(ecg_queries, self.text_embeds, top_k)
        return [
            [
                {"index": int(i), "text": self.texts[int(i)] if self.texts else None, "score": float(s)}
                for s, i in zip(row_scores, row_indices)
            ]
            for row_scores, row_indices in zip(scores, indices)
        ]

    def search_ecgs(self, text_queries, top_k: int = 5) -> list[list[dict]]:
        """Text -> ECG: for each query text embedding, the `top_k` ECGs `{"index", "id", "score"}`."""
        scores, indices = self._top_k(text_queries, self.ecg_embeds, top_k)
        return [
            [{"index": int(i), "id": self.ecg_ids[int(i)], "score": float(s)} for s, i in zip(row_scores, row_indices)]
            for row_scores, row_indices in zip(scores, indices)
        ]

    def recall(self, ks: Iterable[int] = DEFAULT_RECALL_KS, groups: Sequence[Any] | None = None) -> dict:
        """Recall@k both ways when ECG `i` and text `i` are a pair (see `metrics.cross_modal_recall`)."""
        return cross_modal_recall(self.ecg_embeds.numpy(), self.text_embeds.numpy(), ks, groups)


__all__ = [
    "ECGTextIndex",
    "EmbeddingFailure",
    "base_model",
    "embed_ecg_batch",
    "embed_ecgs",
    "embed_texts",
    "load_label_descriptions",
    "load_model_and_processor",
    "normalize_text",
]
