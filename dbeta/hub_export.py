# Copyright 2026 The dbeta authors. Licensed under the Apache License, Version 2.0.
"""Writing D-BETA Hub folders: the one exporter shared by pre-training and the checkpoint converter.

Callers write into a `dbeta.files.staged_folder`, so a failed export leaves no half-written folder.

A complete folder is what `pipeline("zero-shot-ecg-classification", model=folder,
trust_remote_code=True)` and `AutoModel.from_pretrained(folder, trust_remote_code=True)` load in an
environment without the `dbeta` package: config (with `auto_map` and `custom_pipelines`),
safetensors weights, the four hub `.py` files, processor and tokenizer files,
`label_descriptions.json` and the model card (`README.md`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

HUB_CODE_FILES = ("configuration_dbeta.py", "modeling_dbeta.py", "processing_dbeta.py", "pipeline_dbeta.py")


def write_hub_folder(
    model,
    processor,
    folder: str | os.PathLike,
    card=None,
    extra_files: Mapping[str, str] | None = None,
    label_descriptions: str | os.PathLike | Mapping[str, str] | None = None,
) -> Path:
    """Write a complete Hub folder for `model` into `folder` (created if needed).

    Args:
        model: a `DBetaModel` / `DBetaForPreTraining` (zero-shot folder, with pipeline registration and
            label descriptions), or a `DBetaECGModel` (ECG-tower folder: no text tower, so no pipeline).
        processor: a `DBetaProcessor` for a two-tower model; a `DBetaFeatureExtractor` (or a
            processor) for an ECG-only model.
        folder: where to write.
        card: a `huggingface_hub.ModelCard` saved as `README.md` (None: no card).
        extra_files: `{file name: text}` written as well (e.g. `results.json`).
        label_descriptions: `{code: description}` or a JSON file; default: the packaged file.

    Returns:
        The folder, as a `Path`.

    Raises:
        FileNotFoundError: a hub `.py` file did not reach the folder (it would not load as remote code).
    """
    from pipeline_dbeta import save_pipeline_folder

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    if hasattr(model, "get_text_features") or hasattr(getattr(model, "dbeta", None), "get_text_features"):
        save_pipeline_folder(model, processor, folder, label_descriptions=label_descriptions)
    else:
        model.save_pretrained(folder)
        getattr(processor, "feature_extractor", processor).save_pretrained(folder)
    model.train(was_training)
    for name, text in (extra_files or {}).items():
        (folder / name).write_text(text, encoding="utf-8")
    if card is not None:
        card.save(folder / "README.md")
    missing = [name for name in HUB_CODE_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks the hub code files {missing}: it would not load with trust_remote_code.")
    return folder
