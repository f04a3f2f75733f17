# Copyright 2026 The dbeta authors. Licensed under the Apache License, Version 2.0.
"""Zero-shot ECG classification pipeline for D-BETA (`"zero-shot-ecg-classification"`).

This file ships in D-BETA model folders next to `modeling_dbeta.py` and is loaded as remote code
by `transformers.pipeline(..., trust_remote_code=True)`. The label descriptions it expands label
codes with live in the same folder, in `label_descriptions.json` (`{"AFIB": "Atrial
Fibrillation. ...", ...}`); `save_pipeline_folder` writes a complete folder.
"""

import difflib
import importlib.util
import json
import math
import numbers
import os
import shutil
import sys
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModel, Pipeline
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.utils import cached_file, logging

logger = logging.get_logger(__name__)

TASK = "zero-shot-ecg-classification"
LABEL_DESCRIPTIONS_NAME = "label_descriptions.json"
# Labels embedded per text-tower call (bounds memory for long candidate lists).
_TEXT_CHUNK_SIZE = 64
_LABEL_SETTINGS = ("candidate_labels", "hypothesis_template", "labels_are_codes", "normalize_text")


def normalize_label_text(text: str) -> str:
    """The report normalisation D-BETA was pre-trained with (specification, section 3).

    Lower-case, trim, `"ekg"` -> `"ecg"`, then strip `"* "`, `"=-"` and `"="` from both ends. The
    original zero-shot protocol also lower-cases the label descriptions. (Same rule as
    `dbeta.text.normalize_report`; repeated here because Hub files must be self-contained.)
    """
    text = text.lower().strip().replace("ekg", "ecg")
    return text.strip("* ").strip("=-").strip("=")


def load_label_descriptions(source: str | os.PathLike | Mapping[str, str]) -> dict[str, str]:
    """Read and check a `{code: description}` mapping from a JSON file (or check a mapping)."""
    if isinstance(source, Mapping):
        descriptions, origin = dict(source), "label_descriptions"
    else:
        with open(source, encoding="utf-8") as handle:
            descriptions, origin = json.load(handle), str(source)
    if not isinstance(descriptions, dict):
        raise ValueError(f"{origin}: expected a JSON object mapping label codes to descriptions.")
    bad = [code for code, text in descriptions.items() if not isinstance(text, str) or not text.strip()]
    if bad:
        raise ValueError(f"{origin}: codes {bad[:5]} have no description text.")
    return descriptions


def as_label_list(candidate_labels: Any) -> list:
    """`candidate_labels` as a list: one string is one label; any other iterable (list, tuple, generator,
    `dict.keys()`, ...) is read once. Element checks (strings, non-blank, unique) are `label_texts`'s.

    Raises:
        TypeError: `candidate_labels` is neither a string nor an iterable (bytes count as neither).
    """
    if isinstance(candidate_labels, str):
        return [candidate_labels]
    if isinstance(candidate_labels, (bytes, bytearray)):
        kind = type(candidate_labels).__name__
        raise TypeError(f"`candidate_labels` must be strings, got {kind}: {candidate_labels!r}.")
    try:
        return list(candidate_labels)
    except TypeError:
        raise TypeError(
            "`candidate_labels` must be a string or an iterable of strings, got "
            f"{type(candidate_labels).__name__}: {candidate_labels!r}."
        ) from None


def _model_name(model) -> str:
    return str(getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", "") or "the model")


def check_model_and_feature_extractor(model, feature_extractor) -> None:
    """Refuse a model folder whose pieces disagree, before anything is scored.

    The feature extractor must prepare exactly the input the model config describes (lead order,
    sampling rate, number of samples and leads): a `preprocessor_config.json` edited or copied from
    another model would otherwise change every score silently. The ETS logit scale and bias must be
    finite (a NaN `ets_logit_scale` makes every score NaN).

    Raises:
        ValueError: listing every disagreement, naming the model.
    """
    base = getattr(model, "dbeta", model)
    config = base.config
    problems = []
    model_leads = getattr(config, "lead_names", None)
    extractor_leads = getattr(feature_extractor, "lead_names", None)
    if model_leads is not None and extractor_leads is not None:
        if [str(name).lower() for name in model_leads] != [str(name).lower() for name in extractor_leads]:
            problems.append(
                f"lead order: feature extractor {list(extractor_leads)} != model config {list(model_leads)}"
            )
    for name in ("sampling_rate", "num_samples"):
        model_value = getattr(config, name, None)
        extractor_value = getattr(feature_extractor, name, None)
        if model_value is None or extractor_value is None:
            continue
        try:
            agree = np.isclose(float(model_value), float(extractor_value), rtol=1e-9, atol=0)
        except (TypeError, ValueError):
            agree = False
        if not agree:
            problems.append(f"{name}: feature extractor {extractor_value!r} != model config {model_value!r}")
    ecg_config = getattr(config, "ecg_config", None)
    num_leads = getattr(ecg_config, "num_leads", None)
    feature_size = getattr(feature_extractor, "feature_size", None)
    if num_leads is not None and feature_size is not None and int(num_leads) != int(feature_size):
        problems.append(f"number of leads: feature extractor {feature_size} != model config {num_leads}")
    for name, attribute in (("ets_logit_scale", "logit_scale"), ("ets_logit_bias", "logit_bias")):
        parameter = getattr(base, attribute, None)
        value = parameter.detach().float() if isinstance(parameter, torch.Tensor) else getattr(config, name, 0.0)
        try:
            finite = bool(torch.isfinite(torch.as_tensor(value, dtype=torch.float32)).all())
        except (TypeError, ValueError, RuntimeError):
            finite = False
        if not finite:
            where = f"the model's `{attribute}` weight" if isinstance(parameter, torch.Tensor) else f"config.{name}"
            problems.append(f"{where} is not finite ({value!r}): every score would be NaN")
    if problems:
        raise ValueError(
            f"Inconsistent D-BETA model folder {_model_name(model)!r}: " + "; ".join(problems) + ". Re-save the "
            "processor from the model's config (or fix config.json / preprocessor_config.json) before scoring."
        )


def non_finite_parameters(model, limit: int = 5) -> list[str]:
    """Names of (up to `limit`) parameters or buffers of `model` holding NaN or infinite values."""
    names = []
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            names.append(name)
            if len(names) >= limit:
                break
    return names


def explain_non_finite(model, what: str) -> str:
    """A message for non-finite model outputs (`what`: which ones), naming the likely cause."""
    bad = non_finite_parameters(model)
    if bad:
        cause = f"the model's weights contain NaN/inf values (e.g. {', '.join(bad)}); the checkpoint is damaged"
    else:
        cause = "the weights are finite, so the input or an overflow in the model is the cause"
    return f"{what} are not finite (NaN/inf): {cause}. No scores are returned rather than NaN scores."


def _is_record(value: Any) -> bool:
    """Whether `value` is an `ECGRecord` (duck-typed, as `processing_dbeta` recognises one)."""
    return not isinstance(value, (np.ndarray, torch.Tensor, str, os.PathLike, list, tuple, Mapping)) and all(
        hasattr(value, name) for name in ("signal", "lead_names", "sampling_rate")
    )


def _scores(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Scores from ETS logits (last axis: labels): independent sigmoids, or a softmax over the labels."""
    return logits.sigmoid() if multi_label else logits.softmax(dim=-1)


class _IndexedECG:
    """One item of a list of ECGs with its position, so that errors can name it."""

    __slots__ = ("ecg", "index")

    def __init__(self, index: int, ecg: Any):
        self.index, self.ecg = index, ecg


def _describe_ecg(index: int | None, ecg: Any) -> str:
    """`"ECG at index 3 ('ludb/4')"`: where an item of a batch is, and its file or record name."""
    name = None
    if isinstance(ecg, (str, os.PathLike)):
        name = str(ecg)
    elif isinstance(ecg, Mapping) and isinstance(ecg.get("signal"), (str, os.PathLike)):
        name = str(ecg["signal"])
    else:
        metadata = getattr(ecg, "metadata", None)
        if isinstance(metadata, Mapping):
            name = metadata.get("path") or metadata.get("name")
    where = "ECG" if index is None else f"ECG at index {index}"
    return where + (f" ({str(name)!r})" if name else "")


def _with_context(error: BaseException, context: str) -> BaseException:
    """The same kind of exception, its message prefixed with `context` (ValueError if it cannot be rebuilt)."""
    message = f"{context}: {error}"
    try:
        rebuilt = type(error)(message)
    except Exception:  # noqa: BLE001 - exception types with other constructors
        rebuilt = ValueError(message)
    return rebuilt if str(rebuilt) == message else ValueError(message)


class ZeroShotECGClassificationPipeline(Pipeline):
    r"""
    Zero-shot ECG classification with D-BETA: every candidate label is turned into a text, embedded
    once by the text tower, and scored against each ECG with the ECG-text sigmoid (ETS) logit the
    model was pre-trained with.

    Example:

    ```python
    >>> from transformers import pipeline

    >>> classifier = pipeline("zero-shot-ecg-classification", model="path/to/dbeta", trust_remote_code=True)
    >>> classifier("ludb/data/1", candidate_labels=["SR", "AFIB", "sinus bradycardia"])  # a WFDB record
    [{'label': ..., 'score': ...}, {'label': ..., 'score': ...}, {'label': ..., 'score': ...}]  # best first

    >>> classifier(signal, sampling_rate=250, candidate_labels=["AFIB", "LBBB"])  # a (12, T) array in mV
    >>> classifier([signal_a, signal_b], sampling_rate=250, candidate_labels=["AFIB", "LBBB"], batch_size=2)
    ```

    Labels. A candidate equal to a code of the model folder's `label_descriptions.json` (exact,
    case-sensitive match: `"AFIB"`, `"LBBB"`, ...) is replaced by that code's description; any
    other string is free text and used as given. The returned `label` is always the string that
    was passed. `labels_are_codes=True` makes every candidate a code (an unknown one is an error
    that suggests close codes); `labels_are_codes=False` never expands. The text is then put into
    `hypothesis_template` and, unless `normalize_text=False`, normalised as the pre-training
    reports were (lower-cased, trimmed).

    Scores. `multi_label=True` (default; ECG findings co-occur): `sigmoid(logit)` per label,
    independently. `multi_label=False`: softmax over the candidate labels. Results are sorted by
    logit, best first.

    ECG inputs (anything `DBetaFeatureExtractor` reads): a `(leads, samples)` array or tensor in
    millivolts, a path to a WFDB (`.hea`/`.dat`), CinC (`.hea`/`.mat`) or CPSC 2018 `.mat`
    record, an `ECGRecord`, or a dict `{"signal": ..., "sampling_rate": ..., "lead_names": ...}`
    with per-ECG settings. A list of those, or a 3-D `(batch, leads, samples)` array, is a batch and
    gives a list of results. Unnamed arrays are taken to be in the standard lead order (I, II, III,
    aVR, aVL, aVF, V1-V6); the extractor reorders, resamples and crops them to the model's input.

    This pipeline can be loaded with [`pipeline`] using the task identifier
    `"zero-shot-ecg-classification"` from a D-BETA folder saved with `save_pipeline_folder`.
    """

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = True
    _load_tokenizer = True

    def __init__(self, *args, label_descriptions: str | os.PathLike | Mapping[str, str] | None = None, **kwargs):
        processor = kwargs.get("processor")
        if processor is not None:
            kwargs["tokenizer"] = kwargs.get("tokenizer") or getattr(processor, "tokenizer", None)
            kwargs["feature_extractor"] = kwargs.get("feature_extractor") or getattr(
                processor, "feature_extractor", None
            )
        if kwargs.get("candidate_labels") is not None:  # a generator is read once, here
            kwargs["candidate_labels"] = as_label_list(kwargs["candidate_labels"])
        # Set before `Pipeline.__init__`, which already sanitises the constructor's call parameters.
        self._label_descriptions_source = label_descriptions
        self._label_descriptions = None
        self._init_label_settings = {name: kwargs[name] for name in _LABEL_SETTINGS if kwargs.get(name) is not None}
        model = kwargs.get("model", args[0] if args else None)
        base = getattr(model, "dbeta", model)
        if not all(hasattr(base, name) for name in ("get_ecg_features", "get_text_features", "ets_logits")):
            raise ValueError(
                f"{type(model).__name__} cannot do zero-shot classification: it needs a D-BETA model with both "
                "towers (`DBetaModel` or `DBetaForPreTraining`), not an ECG-only export."
            )
        super().__init__(*args, **kwargs)
        if self.tokenizer is None or self.feature_extractor is None:
            raise ValueError(
                "The zero-shot ECG pipeline needs a tokenizer and a DBetaFeatureExtractor (or a processor)."
            )
        # A feature extractor that prepares other input than the model expects (lead order, rate) or a
        # NaN logit scale would change or void every score silently: refuse the folder now.
        check_model_and_feature_extractor(self.model, self.feature_extractor)

    # -- labels ------------------------------------------------------------------------------------

    @property
    def label_descriptions(self) -> dict[str, str]:
        """`{code: description}` used to expand label codes (loaded once, from the model folder)."""
        if self._label_descriptions is None:
            self._label_descriptions = self._find_label_descriptions()
        return self._label_descriptions

    def _find_label_descriptions(self) -> dict[str, str]:
        if self._label_descriptions_source is not None:
            return load_label_descriptions(self._label_descriptions_source)
        name_or_path = getattr(self.model, "name_or_path", None) or getattr(self.model.config, "_name_or_path", "")
        path = None
        if name_or_path:
            path = cached_file(
                name_or_path,
                LABEL_DESCRIPTIONS_NAME,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
                _raise_exceptions_for_gated_repo=False,
            )
        if path is None:
            logger.warning(
                f"No {LABEL_DESCRIPTIONS_NAME} found for model {name_or_path!r}: label codes will not be expanded "
                "and every candidate label is used as free text. Pass `label_descriptions=` to the pipeline."
            )
            return {}
        return load_label_descriptions(path)

    def label_texts(
        self,
        candidate_labels: str | Sequence[str],
        hypothesis_template: str = "{}",
        labels_are_codes: bool | None = None,
        normalize_text: bool = True,
    ) -> list[str]:
        """The texts the candidate labels are scored with (codes expanded, template applied).

        Raises:
            ValueError: no labels, an empty or repeated label, a template without `{}`, or (with
                `labels_are_codes=True`) a label that is not a known code.
            TypeError: a label that is not a string.
        """
        labels = as_label_list(candidate_labels) if candidate_labels is not None else []
        if not labels:
            raise ValueError("`candidate_labels` is empty: pass at least one label code or description.")
        for label in labels:
            if not isinstance(label, str):
                raise TypeError(f"Candidate labels must be strings, got {type(label).__name__}: {label!r}.")
            if not label.strip():
                raise ValueError("Candidate labels must not be empty or blank strings.")
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ValueError(f"Candidate labels must be unique; repeated: {repeated}.")
        try:
            has_placeholder = hypothesis_template.format("\0") != hypothesis_template
        except (AttributeError, IndexError, KeyError, ValueError):
            has_placeholder = False
        if not has_placeholder:
            raise ValueError(
                f"`hypothesis_template` must be a string with one `{{}}` placeholder, got {hypothesis_template!r}."
            )

        descriptions = self.label_descriptions if labels_are_codes is not False else {}
        if labels_are_codes:
            unknown = [label for label in labels if label not in descriptions]
            if unknown:
                hints = []
                for label in unknown:
                    close = [code for code in descriptions if code.lower() == label.lower()]
                    close = close or difflib.get_close_matches(label, list(descriptions), n=3)
                    hints.append(f"{label!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
                raise ValueError(
                    f"Unknown label codes with `labels_are_codes=True`: {'; '.join(hints)}. Known codes are the keys "
                    f"of {LABEL_DESCRIPTIONS_NAME} ({len(descriptions)} codes); "
                    "pass free text with labels_are_codes=None."
                )
        texts = [hypothesis_template.format(descriptions.get(label, label)) for label in labels]
        if normalize_text:
            texts = [normalize_label_text(text) for text in texts]
        empty = [label for label, text in zip(labels, texts) if not text.strip()]
        if empty:
            raise ValueError(f"Candidate labels {empty} leave no text once normalised.")
        return texts

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """`(len(texts), hidden)` text embeddings (`get_text_features(...).pooler_output`), on the model device."""
        base = getattr(self.model, "dbeta", self.model)
        max_length = getattr(self.model.config, "max_text_length", 256) - 2
        embeddings = []
        with self.device_placement(), self.get_inference_context()():
            for start in range(0, len(texts), _TEXT_CHUNK_SIZE):
                tokens = self.tokenizer(
                    list(texts[start : start + _TEXT_CHUNK_SIZE]),
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                ).to(self.device)
                output = base.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
                embeddings.append(output.pooler_output)
        embeddings = torch.cat(embeddings)
        finite = torch.isfinite(embeddings).all(dim=-1)
        if not bool(finite.all()):
            bad = [texts[index] for index in (~finite).nonzero().flatten().tolist()]
            raise ValueError(explain_non_finite(self.model, f"The text embeddings of labels {bad[:5]}"))
        return embeddings

    # -- pipeline steps ----------------------------------------------------------------------------

    def __call__(self, ecgs: Any = None, candidate_labels: str | Sequence[str] | None = None, **kwargs: Any):
        """
        Score ECG(s) against candidate labels.

        Args:
            ecgs: one ECG (array/tensor `(leads, samples)` in mV, file path, `ECGRecord`, or dict with
                `"signal"` and optional `"sampling_rate"`, `"lead_names"`, `"units"`), a list of them,
                or a `(batch, leads, samples)` array.
            candidate_labels (`str` or an iterable of `str`): label codes (expanded to their
                descriptions) and/or free-text descriptions. A single string is one label; a list,
                tuple, generator, ... is read once. Empty is a `ValueError`.
            hypothesis_template (`str`, *optional*, defaults to `"{}"`): wraps each label text,
                e.g. `"ECG showing {}."`.
            multi_label (`bool`, *optional*, defaults to `True`): independent sigmoid scores;
                `False` gives a softmax over the candidate labels.
            top_k (`int`, *optional*): return only the `top_k` best labels (a positive integer; anything
                else is a `ValueError`).
            labels_are_codes (`bool`, *optional*): `True` requires known codes, `False` never
                expands, `None` (default) expands known codes and keeps other text.
            normalize_text (`bool`, *optional*, defaults to `True`): lower-case and trim the label
                texts as the pre-training reports were.
            sampling_rate (`float`, *optional*): rate of array inputs in Hz (files bring their own).
            lead_names (`list[str]`, *optional*): lead order of array inputs.
            units (`str`, *optional*, defaults to `"mV"`): units of array inputs (`"uV"`, `"V"`).
            batch_size (`int`, *optional*): ECGs per forward pass for list inputs.
            window (`str`, *optional*): `"sliding"` scores recordings of any length in 10 s windows, with
                `window_stride` (seconds), `aggregation` (`"mean"` / `"max"`) and `return_windows`; every
                other setting above (given here or to `pipeline(...)`) applies exactly as in a plain call.
                See `score_windows`.

        Return:
            For one ECG, a list of `{"label": str, "score": float}` sorted by logit, best first; for
            several, a list of such lists (an empty list of ECGs gives `[]`, after the labels are
            checked). Label texts are embedded once per call, whatever the number of ECGs.

        Raises:
            ValueError: a bad label or setting; an ECG that cannot be read or prepared (for a list of
                ECGs the message starts with `ECG at index i ('file')`); non-finite scores (NaN/inf
                weights, named in the message) - never NaN scores.
        """
        if "ecg" in kwargs:
            ecgs = kwargs.pop("ecg")
        if ecgs is None:
            raise ValueError("Pass the ECG(s) to classify as the first argument.")
        window = kwargs.pop("window", None)
        if window is not None:  # long recordings: see `score_windows`
            if window != "sliding":
                raise ValueError(f"window must be None or 'sliding', got {window!r}.")
            inputs = self._as_pipeline_inputs(ecgs)  # what is one ECG and what is a list, as below
            if isinstance(inputs, list):
                return [self.score_windows(ecg, candidate_labels, **kwargs) for ecg in inputs]
            return self.score_windows(inputs, candidate_labels, **kwargs)
        if candidate_labels is None and "candidate_labels" not in self._init_label_settings:
            raise ValueError("`candidate_labels` is required: the label codes or descriptions to score.")
        if candidate_labels is not None:
            kwargs["candidate_labels"] = as_label_list(candidate_labels)  # a generator is read once, here
        inputs = self._as_pipeline_inputs(ecgs)
        if isinstance(inputs, list):
            if not inputs:
                # An empty batch gives an empty result; the labels and settings are still checked.
                settings = {key: value for key, value in kwargs.items() if key not in ("batch_size", "num_workers")}
                self._sanitize_parameters(**settings)
                return []
            # Each item carries its position so that a failure names it (`preprocess`).
            inputs = [_IndexedECG(index, ecg) for index, ecg in enumerate(inputs)]
        elif isinstance(inputs, types.GeneratorType):
            inputs = (_IndexedECG(index, ecg) for index, ecg in enumerate(inputs))
        return super().__call__(inputs, **kwargs)

    # -- long recordings ---------------------------------------------------------------------------

    def score_windows(
        self,
        ecg: Any,
        candidate_labels: str | Sequence[str] | None = None,
        window_stride: float | None = None,
        aggregation: str = "mean",
        return_windows: bool = False,
        window_seconds: float | None = None,
        batch_size: int | None = None,
        **settings: Any,
    ):
        """`window="sliding"`: score a recording of any length window by window and aggregate.

        The recording is cut into windows of the model's input length (`num_samples /
        sampling_rate` of the feature extractor, 10 s; `window_seconds` may make them shorter, never
        longer) every `window_stride` seconds (default: the window length) with `iter_ecg_windows`.
        When the tail after the last full window is not covered, one more window ends with the
        recording (it starts at `duration - window`): no part of the recording is left out, and
        each window reports its real start. WFDB records are read from disk a block at a time, so
        memory is bounded by a block and `batch_size` windows, not by the recording.

        Settings are those of a plain call, resolved by the same code: `hypothesis_template`,
        `multi_label`, `top_k`, `labels_are_codes`, `normalize_text`, `sampling_rate`, `lead_names`
        and `units` given here override the ones given to `pipeline(...)` / the constructor, which
        apply otherwise; the same values are refused (e.g. `top_k=0`). The ECG follows the plain
        call's rules too: a file or record describes itself (a contradicting `sampling_rate` or
        `lead_names` is an error), an unnamed array must have the 12 standard leads, an array
        without `sampling_rate` is taken at the model's rate only when it is exactly the model's
        length. Each window is prepared exactly as a plain call prepares a 10 s ECG and scored with
        the ECG-text logit; `aggregation="mean"` averages the windows' scores per label, `"max"`
        keeps the highest.

        Returns:
            `[{"label", "score"}]` (aggregated, best first, at most `top_k`), or with
            `return_windows=True` a dict `{"scores": [...], "windows": [{"start": seconds, "scores":
            {label: score}}, ...], "aggregation": ...}`.

        Raises:
            ValueError: what a plain call refuses, and a stride of less than one sample, more than
                `MAX_WINDOWS` windows, windows longer than the model's input, an unknown aggregation.
        """
        if aggregation not in ("mean", "max"):
            raise ValueError(f"aggregation must be 'mean' or 'max', got {aggregation!r}.")
        if not isinstance(return_windows, (bool, np.bool_)):
            raise ValueError(f"return_windows must be True or False, got {return_windows!r}.")
        batch_size = (self._batch_size or 16) if batch_size is None else batch_size
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        extractor = self.feature_extractor
        model_seconds = extractor.num_samples / extractor.sampling_rate
        if window_seconds is None:
            window_seconds = model_seconds
        elif (
            isinstance(window_seconds, bool)
            or not isinstance(window_seconds, numbers.Real)
            or not math.isfinite(window_seconds)
            or not 0 < window_seconds <= model_seconds * (1 + 1e-9)
        ):
            raise ValueError(
                f"window_seconds must be a positive number of seconds, at most the model's input of {model_seconds:g} s "
                f"(the model reads no more of a window), got {window_seconds!r}."
            )
        # The windows come from the feature extractor's own module (the model folder's
        # processing_dbeta.py when loaded as remote code).
        module = sys.modules.get(type(extractor).__module__)
        iter_ecg_windows = getattr(module, "iter_ecg_windows", None)
        if iter_ecg_windows is None:
            raise ValueError(
                "window='sliding' needs a processing_dbeta.py with `iter_ecg_windows`; re-save the model folder "
                "with this version of dbeta."
            )
        if candidate_labels is not None:
            settings["candidate_labels"] = as_label_list(candidate_labels)  # a generator is read once, here
        elif "candidate_labels" not in self._init_label_settings:
            raise ValueError("`candidate_labels` is required: the label codes or descriptions to score.")
        # One path for settings: the plain call's (`_sanitize_parameters` + the construction-time ones).
        preprocess_params, forward_params, postprocess_params = self._call_settings(**settings)
        label_embeds = forward_params["label_embeds"]
        labels = postprocess_params["candidate_labels"]
        multi_label = postprocess_params.get("multi_label", True)
        top_k = postprocess_params.get("top_k")

        given = ecg
        base = getattr(self.model, "dbeta", self.model)
        starts, chunks, batch = [], [], []

        def flush():
            values = torch.cat([values for _, values in batch]).to(self.device)
            embeds = base.get_ecg_features(input_values=values).pooler_output
            chunks.append(base.ets_logits(embeds, label_embeds.to(embeds.dtype)).float().cpu())
            starts.extend(start for start, _ in batch)
            batch.clear()

        try:
            ecg, sampling_rate, lead_names, units = self._unpack_ecg(ecg, **preprocess_params)
            is_array = not isinstance(ecg, (str, os.PathLike)) and not _is_record(ecg)
            if is_array:
                # The plain call's rule for an array's rate (the feature extractor's own check).
                sampling_rate = extractor._resolve_sampling_rate(sampling_rate, int(np.shape(ecg)[-1]))
            windows = iter_ecg_windows(ecg, window_seconds, window_stride, sampling_rate, lead_names, units)
            with self.device_placement(), self.get_inference_context()():
                for start, window in windows:
                    try:
                        if is_array:  # prepared as a plain call prepares that part of the array
                            values = self._prepare_ecg(
                                window.signal, sampling_rate=window.sampling_rate, lead_names=lead_names, units=units
                            )
                        else:  # a window of a file or record: a record, which describes itself
                            values = self._prepare_ecg(window, units=units)
                    except Exception as error:  # noqa: BLE001 - re-raised naming the window
                        raise _with_context(error, f"window at {start:g} s") from error
                    batch.append((start, values))
                    if len(batch) == batch_size:
                        flush()
                if batch:
                    flush()
        except Exception as error:  # noqa: BLE001 - named as a plain call names it (`preprocess`)
            if not isinstance(given, (str, os.PathLike)):
                raise
            raise _with_context(error, _describe_ecg(None, given)) from error
        logits = torch.cat(chunks)
        finite = torch.isfinite(logits).all(dim=-1)
        if not bool(finite.all()):
            bad = [starts[row] for row in (~finite).nonzero().flatten().tolist()]
            raise ValueError(explain_non_finite(self.model, f"The scores of the windows at {bad[:5]} s"))
        scores = _scores(logits, multi_label)
        summary = scores.mean(dim=0) if aggregation == "mean" else scores.max(dim=0).values
        order = torch.argsort(summary, descending=True, stable=True).tolist()
        if top_k is not None:
            order = order[:top_k]
        result = [{"label": labels[index], "score": float(summary[index])} for index in order]
        if not return_windows:
            return result
        windows_out = [
            {"start": float(start), "scores": {label: float(value) for label, value in zip(labels, row)}}
            for start, row in zip(starts, scores.tolist())
        ]
        return {"scores": result, "windows": windows_out, "aggregation": aggregation}

    def _call_settings(self, **kwargs: Any) -> tuple[dict, dict, dict]:
        """The preprocess, forward and postprocess settings of one call: this call's settings, checked
        by `_sanitize_parameters`, over the construction-time ones; the merge `Pipeline.__call__` does."""
        preprocess_params, forward_params, postprocess_params = self._sanitize_parameters(**kwargs)
        return (
            {**self._preprocess_params, **preprocess_params},
            {**self._forward_params, **forward_params},
            {**self._postprocess_params, **postprocess_params},
        )

    @staticmethod
    def _as_pipeline_inputs(ecgs: Any) -> Any:
        """A 3-D array/tensor becomes a list of ECGs; one ECG written as nested lists or as a list of 1-D
        leads stays one input (as `DBetaFeatureExtractor` reads them)."""
        if isinstance(ecgs, (np.ndarray, torch.Tensor)) and ecgs.ndim == 3:
            return list(ecgs)
        if isinstance(ecgs, (list, tuple)) and ecgs:
            first = ecgs[0]
            if isinstance(first, (list, tuple)) and first and isinstance(first[0], (int, float, np.number)):
                return np.asarray(ecgs, dtype=np.float32)  # one ECG given as lists of samples per lead
            if all(isinstance(lead, (np.ndarray, torch.Tensor)) and lead.ndim == 1 for lead in ecgs):
                return torch.stack([torch.as_tensor(lead) for lead in ecgs])  # one ECG given as 1-D leads
        if isinstance(ecgs, tuple):
            return list(ecgs)
        return ecgs

    def _sanitize_parameters(
        self,
        candidate_labels=None,
        hypothesis_template=None,
        labels_are_codes=None,
        normalize_text=None,
        multi_label=None,
        top_k=None,
        sampling_rate=None,
        lead_names=None,
        units=None,
        **kwargs,
    ):
        if kwargs:
            raise TypeError(f"Unexpected arguments for the zero-shot ECG pipeline: {sorted(kwargs)}.")
        if candidate_labels is not None:
            candidate_labels = as_label_list(candidate_labels)
        preprocess_params = {
            name: value
            for name, value in (("sampling_rate", sampling_rate), ("lead_names", lead_names), ("units", units))
            if value is not None
        }
        postprocess_params = {}
        for name, value in (("multi_label", multi_label), ("normalize_text", normalize_text)):
            if value is not None and not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"`{name}` must be True or False, got {value!r}.")
        if labels_are_codes is not None and not isinstance(labels_are_codes, (bool, np.bool_)):
            raise ValueError(f"`labels_are_codes` must be None, True or False, got {labels_are_codes!r}.")
        if multi_label is not None:
            postprocess_params["multi_label"] = bool(multi_label)
        if top_k is not None:
            if isinstance(top_k, (bool, np.bool_)) or not isinstance(top_k, numbers.Integral) or top_k < 1:
                raise ValueError(f"`top_k` must be a positive integer, got {top_k!r}.")
            postprocess_params["top_k"] = int(top_k)

        forward_params = {}
        given = {
            name: value
            for name, value in zip(
                _LABEL_SETTINGS, (candidate_labels, hypothesis_template, labels_are_codes, normalize_text)
            )
            if value is not None
        }
        settings = {**getattr(self, "_init_label_settings", {}), **given}
        if given and "candidate_labels" in settings:
            # The label texts are embedded here, once per call, not once per ECG.
            texts = self.label_texts(**settings)
            forward_params["label_embeds"] = self.embed_texts(texts)
            labels = settings["candidate_labels"]
            postprocess_params["candidate_labels"] = [labels] if isinstance(labels, str) else list(labels)
        return preprocess_params, forward_params, postprocess_params

    def preprocess(self, ecg, sampling_rate=None, lead_names=None, units="mV"):
        index = None
        if isinstance(ecg, _IndexedECG):
            index, ecg = ecg.index, ecg.ecg
        try:
            input_values = self._prepare_ecg(ecg, sampling_rate=sampling_rate, lead_names=lead_names, units=units)
        except Exception as error:  # noqa: BLE001 - re-raised with the item's index and file name
            if index is None and not isinstance(ecg, (str, os.PathLike)):
                raise
            context = _describe_ecg(index, ecg)
            raise _with_context(error, context) from error
        # The index travels with the batch (a list after collation) so that `_forward` can name ECGs.
        return {"input_values": input_values, "ecg_index": -1 if index is None else index}

    def _prepare_ecg(self, ecg, sampling_rate=None, lead_names=None, units="mV") -> torch.Tensor:
        """One ECG input -> its `(1, leads, samples)` model input, in the model's dtype."""
        ecg, sampling_rate, lead_names, units = self._unpack_ecg(ecg, sampling_rate, lead_names, units)
        inputs = self.feature_extractor(
            ecg, sampling_rate=sampling_rate, lead_names=lead_names, units=units, return_tensors="pt"
        )
        if inputs["input_values"].shape[0] != 1:
            raise ValueError(f"Expected one ECG per input, got a batch of {inputs['input_values'].shape[0]}.")
        input_values = inputs["input_values"].to(self.dtype or torch.float32)
        if not bool(torch.isfinite(input_values).all()):
            raise ValueError(
                f"The prepared ECG is not finite in {input_values.dtype} (NaN/inf after conversion: amplitudes "
                "too large for the model's precision?)."
            )
        return input_values

    @staticmethod
    def _unpack_ecg(ecg, sampling_rate=None, lead_names=None, units="mV"):
        """One ECG input -> `(ecg, sampling_rate, lead_names, units)` for the feature extractor: a dict's
        own settings override the call's; a record (or file) is passed as such, so that the extractor
        checks the call's settings against it. Refuses what cannot be an ECG."""
        if isinstance(ecg, Mapping):
            unknown = set(ecg) - {"signal", "sampling_rate", "lead_names", "units"}
            if "signal" not in ecg or unknown:
                raise ValueError(
                    "A dict ECG input needs a 'signal' and may have 'sampling_rate', 'lead_names' and 'units'"
                    + (f"; unexpected keys {sorted(unknown)}" if unknown else "")
                    + "."
                )
            sampling_rate = ecg.get("sampling_rate", sampling_rate)
            lead_names = ecg.get("lead_names", lead_names)
            units = ecg.get("units", units)
            ecg = ecg["signal"]
        if _is_record(ecg):
            # An `ECGRecord` (duck-typed: the class loaded from a model folder and the one of an
            # installed package are different objects). It describes itself; the feature extractor
            # refuses a `sampling_rate`, `lead_names` or `units` that contradicts it.
            return ecg, sampling_rate, lead_names, units
        if not isinstance(ecg, (np.ndarray, torch.Tensor, list, str, os.PathLike)):
            raise ValueError(
                f"Cannot read an ECG from a {type(ecg).__name__}: pass an array (leads, samples), a file path, "
                "an ECGRecord or a dict with a 'signal'."
            )
        if isinstance(ecg, (str, os.PathLike)) and not (Path(ecg).exists() or Path(f"{ecg}.hea").is_file()):
            raise ValueError(f"No ECG record at {str(ecg)!r} (expected a WFDB/CinC .hea record or a .mat file).")
        if isinstance(ecg, (np.ndarray, torch.Tensor)) and ecg.ndim != 2:
            raise ValueError(f"An ECG must be 2-D (leads, samples), got shape {tuple(ecg.shape)}.")
        return ecg, sampling_rate, lead_names, units

    def _forward(self, model_inputs, label_embeds=None):
        if label_embeds is None:
            raise ValueError("`candidate_labels` is required: the label codes or descriptions to score.")
        base = getattr(self.model, "dbeta", self.model)
        ecg_embeds = base.get_ecg_features(input_values=model_inputs["input_values"]).pooler_output
        logits = base.ets_logits(ecg_embeds, label_embeds.to(ecg_embeds.dtype))
        finite = torch.isfinite(logits).all(dim=-1)
        if not bool(finite.all()):
            indices = model_inputs.get("ecg_index", -1)
            indices = indices.tolist() if isinstance(indices, torch.Tensor) else indices
            indices = indices if isinstance(indices, list) else [indices] * len(finite)
            bad = [indices[row] for row in (~finite).nonzero().flatten().tolist()]
            which = "the ECG" if bad == [-1] else f"the ECGs at index {[index for index in bad if index >= 0]}"
            raise ValueError(explain_non_finite(self.model, f"The scores of {which}"))
        return {"logits": logits}

    def postprocess(self, model_outputs, candidate_labels=None, multi_label=True, top_k=None):
        logits = model_outputs["logits"][0].float()
        scores = _scores(logits, multi_label)
        order = torch.argsort(logits, descending=True, stable=True).tolist()
        if top_k is not None:
            order = order[:top_k]
        scores = scores.tolist()
        return [{"label": candidate_labels[index], "score": scores[index]} for index in order]


PIPELINE_REGISTRY.register_pipeline(
    TASK, pipeline_class=ZeroShotECGClassificationPipeline, pt_model=AutoModel, type="multimodal"
)


def save_pipeline_folder(
    model,
    processor,
    save_directory: str | os.PathLike,
    label_descriptions: str | os.PathLike | Mapping[str, str] | None = None,
    **kwargs,
) -> Path:
    """Write a complete D-BETA folder that `pipeline("zero-shot-ecg-classification", model=folder,
    trust_remote_code=True)` loads: weights, config (with `custom_pipelines`), the hub code files,
    tokenizer, feature extractor, `processor_config.json` and `label_descriptions.json`.

    Args:
        model: a `DBetaModel` (or `DBetaForPreTraining`).
        processor: a `DBetaProcessor` (its tokenizer and feature extractor are saved).
        save_directory: the folder to write.
        label_descriptions: a `{code: description}` mapping or JSON file. Defaults to the file of
            the folder the model was loaded from, else to the one shipped with the `dbeta` package.
        kwargs: passed to `save_pretrained` (e.g. `safe_serialization`).

    Returns:
        The folder, as a `Path`.
    """
    save_directory = Path(save_directory)
    pipe = ZeroShotECGClassificationPipeline(
        model=model,
        tokenizer=processor.tokenizer,
        feature_extractor=processor.feature_extractor,
        task=TASK,
        device=model.device,
        label_descriptions={},
    )
    pipe.save_pretrained(save_directory, **kwargs)
    # `Pipeline.save_pretrained` does not write `processor_config.json`; it must come last.
    processor.save_pretrained(save_directory, **kwargs)

    if label_descriptions is None:
        label_descriptions = _default_label_descriptions_file(model)
    target = save_directory / LABEL_DESCRIPTIONS_NAME
    if label_descriptions is None:
        logger.warning(f"No label descriptions found: {target} not written; label codes will not expand.")
    elif isinstance(label_descriptions, Mapping):
        descriptions = load_label_descriptions(label_descriptions)
        target.write_text(json.dumps(descriptions, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    elif Path(label_descriptions).resolve() != target.resolve():
        load_label_descriptions(label_descriptions)  # validate before shipping it
        shutil.copyfile(label_descriptions, target)
    return save_directory


def _default_label_descriptions_file(model) -> Path | None:
    source = Path(str(getattr(model, "name_or_path", "") or "")) / LABEL_DESCRIPTIONS_NAME
    if source.is_file():
        return source
    try:  # the installed dbeta package ships the canonical file (located without importing it)
        spec = importlib.util.find_spec("dbeta")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        packaged = Path(list(spec.submodule_search_locations)[0]) / LABEL_DESCRIPTIONS_NAME
        if packaged.is_file():
            return packaged
    return None


__all__ = [
    "LABEL_DESCRIPTIONS_NAME",
    "TASK",
    "ZeroShotECGClassificationPipeline",
    "as_label_list",
    "check_model_and_feature_extractor",
    "explain_non_finite",
    "load_label_descriptions",
    "non_finite_parameters",
    "normalize_label_text",
    "save_pipeline_folder",
]
