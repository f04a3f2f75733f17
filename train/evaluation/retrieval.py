"""ECG <-> report search over precomputed embeddings (`dbeta.embedding` computes them).

    >>> model, processor = dbeta.loading.load_model_and_processor("outputs/dbeta-demo")
    >>> ecg = embed_ecgs(model, processor.feature_extractor, records)           # (N, 768)
    >>> text = embed_texts(model, processor.tokenizer, reports)                 # (N, 768)
    >>> index = ECGTextIndex(ecg, text, texts=reports)
    >>> index.search_texts(ecg[:1], top_k=5)                                     # ECG -> reports
    >>> index.recall(ks=(1, 5, 10))                                              # paired evaluation
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from dbeta.train.evaluation.metrics import DEFAULT_RECALL_KS, cross_modal_recall


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


__all__ = ["ECGTextIndex"]
