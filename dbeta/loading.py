"""The checked model loader: every command and script that loads a D-BETA folder goes through it.

A folder is refused, before anything is scored, when it cannot be loaded, when its feature
extractor prepares a different input than the model config describes (lead order, rate, length,
lead count), when the ETS scale/bias is not finite, or when any weight is NaN/inf. The CLI turns
`ModelLoadError` into a one-line usage error; evaluation, ONNX export, the report and the demo
raise it as it is.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

LABEL_DESCRIPTIONS_NAME = "label_descriptions.json"
#: The real records a model learnt from or was calibrated on, by dataset: `{"datasets": {name:
#: {"ids": [...], "uses": [...]}}}`. Evaluation leaves them out (`model_training_records`).
TRAINING_RECORDS_NAME = "training_records.json"


class ModelLoadError(ValueError):
    """A model folder that cannot be used: unreadable, inconsistent, or with damaged weights."""


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def default_feature_extractor(config):
    """The processor's `DBetaFeatureExtractor` matching a model config (folders saved without one)."""
    from processing_dbeta import DBetaFeatureExtractor

    return DBetaFeatureExtractor(
        sampling_rate=getattr(config, "sampling_rate", 500),
        num_samples=getattr(config, "num_samples", 5000),
        lead_names=list(getattr(config, "lead_names", None) or []) or None,
    )


def check_loaded_model(model, feature_extractor, name: str) -> None:
    """Raise `ModelLoadError` if the feature extractor disagrees with the config or a weight is not finite."""
    from pipeline_dbeta import check_model_and_feature_extractor, non_finite_parameters

    try:
        check_model_and_feature_extractor(model, feature_extractor)
    except ValueError as error:
        raise ModelLoadError(str(error)) from error
    bad = non_finite_parameters(model)
    if bad:
        raise ModelLoadError(f"the weights of {name!r} contain NaN/inf values ({', '.join(bad)}): the checkpoint is damaged")


def _load_feature_extractor(path, config):
    from processing_dbeta import DBetaFeatureExtractor

    try:
        return DBetaFeatureExtractor.from_pretrained(path)
    except OSError:  # no preprocessor_config.json: the defaults of the model config
        return default_feature_extractor(config)


def _refuse_missing_local_folder(path: str | os.PathLike) -> None:
    """A path that can only be local (absolute, `./`, `../`, `~`, or more than one `/`) and does not
    exist: say so, instead of the Hub's "Repo id must be in the form ..." message."""
    text = os.fspath(path)
    local = os.path.isabs(text) or text.startswith((".", "~")) or text.count("/") > 1 or os.sep != "/" and os.sep in text
    if local and not os.path.exists(os.path.expanduser(text)):
        raise ModelLoadError(f"cannot load the model {text!r}: no such folder (a Hub id looks like 'namespace/name')")


def load_model_and_processor(
    path: str | os.PathLike, device: str | torch.device = "cpu", dtype=None, check: bool = True
):
    """Load a D-BETA folder (or Hub id) as `(DBetaModel, DBetaProcessor)`, in eval mode, checked.

    The installed package's classes are used, never the folder's remote code (so nothing prompts
    for `trust_remote_code`). A folder without a saved feature extractor gets a default
    `DBetaFeatureExtractor` matching the model config.

    Raises:
        ModelLoadError: the folder cannot be loaded, or (with `check`) it is inconsistent or damaged.
    """
    _refuse_missing_local_folder(path)
    from transformers import AutoTokenizer

    from modeling_dbeta import DBetaModel
    from processing_dbeta import DBetaProcessor

    kwargs = {"dtype": dtype} if dtype is not None else {}
    try:
        model = DBetaModel.from_pretrained(path, **kwargs).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        feature_extractor = _load_feature_extractor(path, model.config)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelLoadError(f"cannot load the model {str(path)!r}: {_one_line(error)}") from error
    if check:
        check_loaded_model(model, feature_extractor, str(path))
    max_text_length = getattr(model.config, "max_text_length", 256) - 2
    return model, DBetaProcessor(feature_extractor, tokenizer, max_text_length=max_text_length)


def load_any_model(path: str | os.PathLike, device: str | torch.device = "cpu", check: bool = True):
    """`(model, processor_or_None, feature_extractor)`: a full D-BETA folder, or an ECG-only one
    (`DBetaECGModel`, e.g. exported for linear probing), checked as `load_model_and_processor` does."""
    from transformers import AutoConfig

    import dbeta  # noqa: F401 - registers the D-BETA configs with AutoConfig
    from configuration_dbeta import DBetaECGConfig

    _refuse_missing_local_folder(path)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelLoadError(f"cannot load the model {str(path)!r}: {_one_line(error)}") from error
    if not isinstance(config, DBetaECGConfig):
        model, processor = load_model_and_processor(path, device=device, check=check)
        return model, processor, processor.feature_extractor
    from modeling_dbeta import DBetaECGModel

    try:
        model = DBetaECGModel.from_pretrained(path).to(device).eval()
        feature_extractor = _load_feature_extractor(path, model.config)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelLoadError(f"cannot load the model {str(path)!r}: {_one_line(error)}") from error
    if check:
        check_loaded_model(model, feature_extractor, str(path))
    return model, None, feature_extractor


def model_label_descriptions(model_path: str | os.PathLike | None = None) -> dict[str, str]:
    """`{code: description}` from the model folder's `label_descriptions.json`, else the packaged file,
    read and checked by the pipeline's `load_label_descriptions` (the one reader of that format)."""
    from pipeline_dbeta import load_label_descriptions

    import dbeta

    folder_file = Path(model_path) / LABEL_DESCRIPTIONS_NAME if model_path is not None else None
    source = folder_file if folder_file is not None and folder_file.is_file() else Path(dbeta.LABEL_DESCRIPTIONS_FILE)
    return load_label_descriptions(source)


def model_training_records(model_path: str | os.PathLike | None) -> dict[str, set[str]]:
    """`{dataset: record ids}` the model folder says it learnt from (empty when it says nothing)."""
    import json

    if model_path is None or not (Path(model_path) / TRAINING_RECORDS_NAME).is_file():
        return {}
    source = Path(model_path) / TRAINING_RECORDS_NAME
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
        return {str(name): {str(record) for record in entry["ids"]} for name, entry in data["datasets"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ModelLoadError(f"{source} is damaged ({_one_line(error)}): cannot tell which records the model learnt from") from error


__all__ = [
    "ModelLoadError",
    "check_loaded_model",
    "default_feature_extractor",
    "load_any_model",
    "load_model_and_processor",
    "model_label_descriptions",
    "model_training_records",
]
