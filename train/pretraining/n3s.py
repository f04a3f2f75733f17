# Copyright 2026 The dbeta authors. Licensed under the Apache License, Version 2.0.
"""N3S: the negative reports that D-BETA pairs with about half of every pre-training batch.

Every unique (normalised) training report is embedded once, every report is searched exactly
against all others, and the ``num_candidates`` chosen neighbours of each report are stored beside
the prepared dataset. The pre-training collator then draws one candidate uniformly per negative
row (:meth:`N3SIndex.sample_negative`).

Modes (DECISIONS 16):

- ``"far"`` (default, as the original): the candidates are the ``num_candidates`` **least**
  similar reports. The original searches FAISS with the negated query, which for unit vectors
  returns exactly these; far-away negatives keep false negatives (a different wording of the same
  findings) out of the ETM/ETS targets.
- ``"hard"`` (for ablations): the most similar reports whose cosine similarity stays below
  ``hard_max_similarity`` (near-duplicates are left out).

Encoders:

- ``"tfidf"``: scikit-learn TF-IDF over word uni- and bigrams (offline; the demo and the tests).
- any Hugging Face encoder id or folder, e.g. ``"google/flan-t5-small"`` (the original's choice
  for real runs): the encoder's last hidden state mean-pooled over the real tokens, L2-normalised.

Search is exact: chunked matrix products of the normalised embeddings followed by a top-k, on
the GPU when one is given. A FAISS ``IndexFlat`` would do the same brute-force products, so it
brings no speed-up for an exact search and is not needed.

Run it ahead of training (pre-training builds the cache itself when it is missing)::

    python train/pretraining/n3s.py --dataset_dir data/mimic_prepared --encoder google/flan-t5-small
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from dbeta.text import normalize_report

logger = logging.getLogger(__name__)

N3S_CACHE_VERSION = 1
#: "far": the least similar reports (the original); "hard": the most similar below a near-duplicate
#: threshold; "random": uniformly drawn other reports (the ablation without N3S; no embedding).
N3S_MODES = ("far", "hard", "random")
DEFAULT_NUM_CANDIDATES = 64
DEFAULT_HARD_MAX_SIMILARITY = 0.95
#: Similarity values held in memory at once during the search (a chunk of queries x all reports).
SEARCH_CHUNK_ELEMENTS = 1 << 25


class N3SEncoderUnavailable(OSError):
    """The text encoder that should embed the reports cannot be loaded (e.g. offline)."""


@dataclass
class N3SSettings:
    """What determines the candidates (part of the cache key)."""

    encoder: str = "tfidf"
    mode: str = "far"
    num_candidates: int = DEFAULT_NUM_CANDIDATES
    hard_max_similarity: float = DEFAULT_HARD_MAX_SIMILARITY
    max_length: int = 256

    def __post_init__(self):
        if self.mode not in N3S_MODES:
            raise ValueError(f"N3S mode must be one of {N3S_MODES}, got {self.mode!r}.")
        if self.num_candidates < 1:
            raise ValueError(f"`num_candidates` must be >= 1, got {self.num_candidates}.")

    def cache_name(self) -> str:
        encoder = self.encoder.replace("/", "--")
        suffix = f"-max{self.hard_max_similarity:g}" if self.mode == "hard" else ""
        return f"{encoder}-{self.mode}{suffix}-k{self.num_candidates}"


class N3SIndex:
    """Unique normalised reports and, for each, the row ids of its negative candidates.

    Attributes:
        reports (`list[str]`): the unique normalised reports, in sorted order.
        candidates (`np.ndarray` of shape `(num_reports, num_candidates)`, int32): row ids into
            `reports`; `-1` fills rows that have fewer valid candidates (tiny corpora, hard mode).
        settings (`N3SSettings`): how the candidates were chosen.
    """

    def __init__(self, reports: Sequence[str], candidates: np.ndarray, settings: N3SSettings):
        if candidates.shape[0] != len(reports):
            raise ValueError(f"{candidates.shape[0]} candidate rows for {len(reports)} reports.")
        self.reports = list(reports)
        self.candidates = np.asarray(candidates, dtype=np.int32)
        self.settings = settings
        self._row_of = {report: row for row, report in enumerate(self.reports)}
        self._num_valid = (self.candidates >= 0).sum(axis=1)

    def __len__(self) -> int:
        return len(self.reports)

    def row_of(self, report: str) -> int | None:
        """Row of a report (already normalised), or None when it was not indexed."""
        return self._row_of.get(report)

    def negatives_of(self, report: str) -> list[str]:
        """All candidate negatives of a normalised report (empty when it has none or is unknown)."""
        row = self.row_of(report)
        if row is None:
            return []
        return [self.reports[column] for column in self.candidates[row, : self._num_valid[row]]]

    def sample_negative(self, report: str, rng: np.random.Generator) -> str | None:
        """One candidate drawn uniformly, never a text identical to `report`; None if there is none."""
        row = self.row_of(report)
        if row is None or self._num_valid[row] == 0:
            return None
        negative = self.reports[self.candidates[row, rng.integers(self._num_valid[row])]]
        if negative == report:  # cannot happen with de-duplicated reports; guards a corrupted cache
            raise RuntimeError(f"N3S candidate identical to its positive report: {report!r}")
        return negative

    # -- persistence -------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike, fingerprint: str) -> None:
        """Write `reports.json`, `candidates.npy` and `n3s_config.json` (atomically)."""
        directory = Path(directory)
        staging = directory.with_name(directory.name + ".incomplete")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        (staging / "reports.json").write_text(json.dumps(self.reports, ensure_ascii=False))
        np.save(staging / "candidates.npy", self.candidates)
        meta = {"version": N3S_CACHE_VERSION, "fingerprint": fingerprint, "num_reports": len(self), **asdict(self.settings),
                "files_sha256": {name: _sha256(staging / name) for name in ("reports.json", "candidates.npy")}}  # fmt: skip
        (staging / "n3s_config.json").write_text(json.dumps(meta, indent=2))
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(staging, directory)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> tuple[N3SIndex, str]:
        """Load a saved index; returns it with the fingerprint it was saved with. Raises ValueError
        for files that differ from what `save` wrote (their SHA-256; older caches have none) or
        candidates that are not row ids of the reports."""
        directory = Path(directory)
        meta = json.loads((directory / "n3s_config.json").read_text())
        for name, digest in (meta.get("files_sha256") or {}).items():
            if name in ("reports.json", "candidates.npy") and _sha256(directory / name) != digest:
                raise ValueError(f"{directory / name} differs from what was saved (damaged or edited)")
        reports = json.loads((directory / "reports.json").read_text())
        candidates = np.load(directory / "candidates.npy")
        # A cache from disk is checked (older ones have no checksums): row ids of the reports, never the report itself.
        if candidates.ndim != 2 or not np.issubdtype(candidates.dtype, np.integer) or candidates.shape[0] != len(reports):
            raise ValueError(f"{directory / 'candidates.npy'}: {candidates.dtype} array of shape {candidates.shape} for {len(reports)} reports")
        if candidates.size and (candidates.min() < -1 or candidates.max() >= len(reports)
                                or (candidates == np.arange(len(reports))[:, None]).any()):  # fmt: skip
            raise ValueError(f"{directory / 'candidates.npy'} holds row ids that are not other reports' (damaged)")
        settings = N3SSettings(**{key: meta[key] for key in asdict(N3SSettings())})
        return cls(reports, candidates, settings), meta["fingerprint"]


# --------------------------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------------------------


def embed_reports_tfidf(reports: Sequence[str]):
    """L2-normalised TF-IDF vectors (scipy CSR, float32) over word uni- and bigrams."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(
        lowercase=False,  # the reports are normalised already
        token_pattern=r"(?u)\b\w+\b",  # keep one-character tokens ("t" waves, "av" block, "1st")
        ngram_range=(1, 2),
        sublinear_tf=True,
        dtype=np.float32,
    )
    return vectorizer.fit_transform(reports)


@torch.inference_mode()
def embed_reports_with_encoder(
    reports: Sequence[str],
    model_name_or_path: str = "google/flan-t5-small",
    batch_size: int = 256,
    max_length: int = 256,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Mean-pooled, L2-normalised last hidden states of a text encoder (float32 `(num_reports, d)`).

    The original pools over every position including the batch's pads, so a report's embedding
    depends on its batch; here only the real tokens are averaged. Reports are batched by length.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer, T5EncoderModel

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
        config = AutoConfig.from_pretrained(model_name_or_path)
        model_class = T5EncoderModel if config.model_type in ("t5", "mt5", "umt5") else AutoModel
        model = model_class.from_pretrained(model_name_or_path).to(device).eval()
    except (OSError, ValueError) as error:
        raise N3SEncoderUnavailable(
            f"the N3S text encoder {model_name_or_path!r} could not be loaded ({error}). Make it reachable (online, in "
            'the Hugging Face cache, or as a local folder), or use "tfidf" (offline; not the paper\'s setting).'
        ) from error

    order = np.argsort([len(report) for report in reports], kind="stable")
    embeddings = None
    for start in range(0, len(reports), batch_size):
        rows = order[start : start + batch_size]
        batch = tokenizer(
            [reports[row] for row in rows],
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        ).to(device)
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        weights = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
        pooled = torch.nn.functional.normalize(pooled.float(), dim=-1, eps=1e-10).cpu().numpy()
        if embeddings is None:
            embeddings = np.empty((len(reports), pooled.shape[1]), dtype=np.float32)
        embeddings[rows] = pooled
    return embeddings


def embed_reports(reports: Sequence[str], settings: N3SSettings, device=None):
    if settings.encoder == "tfidf":
        return embed_reports_tfidf(reports)
    return embed_reports_with_encoder(reports, settings.encoder, max_length=settings.max_length, device=device)


# --------------------------------------------------------------------------------------------
# Exact search
# --------------------------------------------------------------------------------------------


def _similarity_chunk(embeddings, start: int, stop: int, device: torch.device) -> torch.Tensor:
    """Cosine similarities of rows [start, stop) against every row, as a float32 tensor."""
    if hasattr(embeddings, "tocsr"):  # scipy sparse (TF-IDF)
        block = (embeddings[start:stop] @ embeddings.T).toarray()
        return torch.from_numpy(np.ascontiguousarray(block, dtype=np.float32)).to(device)
    queries = torch.as_tensor(embeddings[start:stop], device=device)
    return queries @ torch.as_tensor(embeddings, device=device).T


def search_candidates(
    embeddings,
    num_candidates: int = DEFAULT_NUM_CANDIDATES,
    mode: str = "far",
    hard_max_similarity: float = DEFAULT_HARD_MAX_SIMILARITY,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Exact neighbour search of every row against all other rows of L2-normalised `embeddings`.

    Returns `(num_rows, num_candidates)` int32 row ids, ordered from the best candidate on
    (least similar first in "far" mode, most similar first in "hard" mode); a row never lists
    itself, and slots without a valid candidate hold -1.
    """
    if mode not in ("far", "hard"):
        raise ValueError(f"The neighbour search has modes 'far' and 'hard', got {mode!r}.")
    device = torch.device(device or "cpu")
    if hasattr(embeddings, "tocsr"):
        embeddings = embeddings.tocsr()
    else:
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    num_rows = embeddings.shape[0]
    k = min(num_candidates, num_rows - 1)
    result = np.full((num_rows, num_candidates), -1, dtype=np.int32)
    if k <= 0:
        return result
    chunk = max(1, SEARCH_CHUNK_ELEMENTS // num_rows)
    for start in range(0, num_rows, chunk):
        stop = min(num_rows, start + chunk)
        similarity = _similarity_chunk(embeddings, start, stop, device)
        rows = torch.arange(stop - start, device=device)
        if mode == "far":
            similarity[rows, rows + start] = float("inf")  # never the report itself
            scores, columns = torch.topk(similarity, k, dim=1, largest=False, sorted=True)
            valid = torch.isfinite(scores)
        else:
            similarity[rows, rows + start] = float("-inf")
            similarity[similarity >= hard_max_similarity] = float("-inf")  # near-duplicates
            scores, columns = torch.topk(similarity, k, dim=1, largest=True, sorted=True)
            valid = torch.isfinite(scores)
        columns = torch.where(valid, columns, torch.full_like(columns, -1))
        result[start:stop, :k] = columns.cpu().numpy()
    return result


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def unique_reports(reports: Iterable[str]) -> list[str]:
    """Normalised (as the collator does), de-duplicated, sorted; empty reports are dropped."""
    return sorted({text for text in (normalize_report(report) for report in reports) if text})


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def reports_fingerprint(reports: Sequence[str], settings: N3SSettings) -> str:
    digest = hashlib.sha256(json.dumps({"version": N3S_CACHE_VERSION, **asdict(settings)}, sort_keys=True).encode())
    for report in reports:
        digest.update(report.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def random_candidates(num_rows: int, num_candidates: int = DEFAULT_NUM_CANDIDATES, seed: int = 0) -> np.ndarray:
    """`(num_rows, num_candidates)` int32 row ids drawn uniformly without replacement from the other
    rows (every other row when there are fewer); -1 fills the slots left empty."""
    rng = np.random.default_rng(seed)
    k = min(num_candidates, num_rows - 1)
    result = np.full((num_rows, num_candidates), -1, dtype=np.int32)
    for row in range(num_rows):
        if k <= 0:
            break
        others = rng.choice(num_rows - 1, size=k, replace=False)
        result[row, :k] = others + (others >= row)  # skip the row itself
    return result


def _build_from_unique(texts: list[str], settings: N3SSettings, device=None) -> N3SIndex:
    if not texts:
        raise ValueError("N3S needs at least one non-empty report.")
    if settings.mode == "random":
        return N3SIndex(texts, random_candidates(len(texts), settings.num_candidates), settings)
    embeddings = embed_reports(texts, settings, device=device)
    candidates = search_candidates(
        embeddings, settings.num_candidates, settings.mode, settings.hard_max_similarity, device=device
    )
    return N3SIndex(texts, candidates, settings)


def build_n3s_index(reports: Iterable[str], settings: N3SSettings | None = None, device=None) -> N3SIndex:
    """Embed the unique normalised reports and choose every report's candidates (no caching)."""
    return _build_from_unique(unique_reports(reports), settings or N3SSettings(), device)


def load_or_build_n3s_index(
    reports: Iterable[str],
    cache_dir: str | os.PathLike,
    settings: N3SSettings | None = None,
    device=None,
) -> N3SIndex:
    """The index of `reports` from `cache_dir/<settings>/` if it was built from the same reports
    and settings, else built now and saved there (an outdated cache is replaced)."""
    settings = settings or N3SSettings()
    texts = unique_reports(reports)
    fingerprint = reports_fingerprint(texts, settings)
    directory = Path(cache_dir) / settings.cache_name()
    if (directory / "n3s_config.json").is_file():
        try:
            index, saved_fingerprint = N3SIndex.load(directory)
        except (OSError, ValueError, KeyError, TypeError, EOFError) as error:
            logger.warning("Unreadable N3S cache in %s (%s); rebuilding it.", directory, error)
        else:
            if saved_fingerprint == fingerprint and index.reports == texts and index.settings == settings:
                logger.info("N3S: reusing %d reports' candidates from %s", len(index), directory)
                return index
            logger.info("N3S cache in %s was built from other reports or settings; rebuilding it.", directory)
    started = time.perf_counter()
    index = _build_from_unique(texts, settings, device)
    index.save(directory, fingerprint)
    logger.info(
        "N3S: embedded %d unique reports with %s and searched them (%s mode, k=%d) in %.1f s; cached in %s",
        len(texts), settings.encoder, settings.mode, settings.num_candidates, time.perf_counter() - started, directory,
    )
    return index


def default_cache_dir(dataset_dir: str | os.PathLike, split: str) -> Path:
    """Where pre-training keeps a split's N3S candidates: beside the prepared dataset."""
    return Path(dataset_dir) / "n3s" / split


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the N3S negative-report cache of a prepared dataset.")
    parser.add_argument("--dataset_dir", required=True, help="A DatasetDict saved by train/data/prepare_mimic_iv_ecg.py.")
    parser.add_argument("--splits", nargs="+", default=["train", "validation"])
    parser.add_argument("--encoder", default="tfidf", help='"tfidf" or a text encoder id, e.g. google/flan-t5-small.')
    parser.add_argument("--mode", choices=N3S_MODES, default="far")
    parser.add_argument("--num_candidates", type=int, default=DEFAULT_NUM_CANDIDATES)
    parser.add_argument("--hard_max_similarity", type=float, default=DEFAULT_HARD_MAX_SIMILARITY)
    parser.add_argument("--cache_dir", default=None, help="Default: <dataset_dir>/n3s/<split>.")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import datasets

    data = datasets.load_from_disk(args.dataset_dir)
    settings = N3SSettings(args.encoder, args.mode, args.num_candidates, args.hard_max_similarity)
    for split in args.splits:
        cache_dir = Path(args.cache_dir) / split if args.cache_dir else default_cache_dir(args.dataset_dir, split)
        try:
            index = load_or_build_n3s_index(data[split]["report"], cache_dir, settings, device=args.device)
        except N3SEncoderUnavailable as error:
            raise SystemExit(f"--encoder {args.encoder!r}: {error}") from error
        logger.info("%s: %d unique reports, candidates in %s", split, len(index), cache_dir / settings.cache_name())


if __name__ == "__main__":
    main()
