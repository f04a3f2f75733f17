# Copyright 2026 The dbeta authors. Licensed under the Apache License, Version 2.0.
"""Model cards (`README.md` of a Hub folder): every card dbeta writes is built here.

- `build_model_card`: the card pre-training writes into every folder it exports. Everything in it
  comes from the run: the measured validation numbers, the resolved hyper-parameters, the data
  counts and the architecture. Nothing is filled in by hand.
- `build_conversion_card`: the card of a folder converted from the original release.
- `add_evaluation_to_card`: evaluation results added to an existing card (`model-index` + a section).
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from dbeta.files import write_text

CITATION = """@inproceedings{pham2025dbeta,
  title     = {Boosting Masked {ECG}-Text Auto-Encoders as Discriminative Learners},
  author    = {Pham, Hung Manh and Saeed, Aaqib and Ma, Dong},
  booktitle = {Proceedings of the 42nd International Conference on Machine Learning (ICML)},
  year      = {2025}
}"""


@dataclass
class PretrainingReport:
    """What a pre-training run measured and how it was configured (input of `build_model_card`).

    Attributes:
        model_name: the repository id, or the folder, that the usage snippet loads.
        is_demo: trained on the simulated demo corpus (changes the data, licence and limitation text).
        dataset_description: one line naming the training data.
        data_counts: e.g. `{"train records": 2707, "validation records": 293, "unique train reports": 30}`.
        hyperparameters: resolved training settings (name -> value).
        architecture: architecture summary (name -> value), e.g. layers and widths.
        metrics: the final validation metrics (name -> value), as `evaluate` returns them.
        zero_shot_labels: label name -> prompt used for zero-shot validation.
        completed_steps, samples_seen, train_seconds: how long it trained.
        hardware: e.g. "2 CPU cores" or "1 x NVIDIA H100".
        license: licence id of the weights.
        hub_dataset_ids: dataset ids for the card metadata (none for the demo).
        software: package versions.
    """

    model_name: str
    is_demo: bool
    dataset_description: str
    data_counts: Mapping[str, int]
    hyperparameters: Mapping[str, Any]
    architecture: Mapping[str, Any]
    metrics: Mapping[str, float]
    zero_shot_labels: Mapping[str, str]
    completed_steps: int
    samples_seen: int
    train_seconds: float
    hardware: str
    license: str = "apache-2.0"
    hub_dataset_ids: list[str] = field(default_factory=list)
    software: Mapping[str, str] = field(default_factory=dict)
    #: Departures of this run's configuration from the paper's, one sentence each.
    notes: list[str] = field(default_factory=list)
    #: Where the T5 tower's weights came from, e.g. "google/flan-t5-base (pretrained)".
    text_encoder: str | None = None
    #: What embedded the reports for the N3S negatives, e.g. "google/flan-t5-small" or "tfidf".
    n3s_encoder: str | None = None


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.4g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.4f}".rstrip("0").rstrip(".")
    if isinstance(value, (list, tuple)):
        return ", ".join(str(item) for item in value)
    return str(value)


def _table(rows: Mapping[str, Any], header: tuple[str, str]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {name} | {_format_value(value)} |" for name, value in rows.items()]
    return "\n".join(lines)


def evaluation_rows(metrics: Mapping[str, float], zero_shot_labels: Mapping[str, str]) -> dict[str, float]:
    """The evaluation table: zero-shot AUROC (macro, then per label), retrieval recall, losses."""
    rows: dict[str, float] = {}
    if "zero_shot_macro_auroc" in metrics:
        rows[f"zero-shot macro AUROC ({metrics.get('zero_shot_num_labels', len(zero_shot_labels))} labels)"] = metrics[
            "zero_shot_macro_auroc"
        ]
    for label in zero_shot_labels:
        key = f"zero_shot_auroc/{label}"
        if key in metrics:
            rows[f"zero-shot AUROC: {label}"] = metrics[key]
    for direction, title in (("ecg_to_text", "ECG -> report"), ("text_to_ecg", "report -> ECG")):
        for key in sorted((k for k in metrics if k.startswith(f"{direction}_recall@")), key=lambda k: int(k.split("@")[1])):
            rows[f"retrieval {title} recall@{key.split('@')[1]}"] = metrics[key]
    if "etm_accuracy" in metrics:
        rows["ETM accuracy (N3S negatives)"] = metrics["etm_accuracy"]
    for name in ("loss", "mlm_loss", "mem_loss", "etm_loss", "ets_loss"):
        if name in metrics:
            rows[f"validation {name.replace('_', ' ')}"] = metrics[name]
    return rows


def build_model_card(report: PretrainingReport) -> ModelCard:
    """A `huggingface_hub.ModelCard` with metadata (incl. `model-index` results) and the full text."""
    metrics = report.metrics
    dataset_name = "D-BETA demo corpus (simulated)" if report.is_demo else "MIMIC-IV-ECG v1.0 (validation split)"
    dataset_type = "dbeta-demo-corpus" if report.is_demo else "mimic-iv-ecg"
    eval_results = []
    if "zero_shot_macro_auroc" in metrics and not math.isnan(metrics["zero_shot_macro_auroc"]):
        eval_results.append(
            EvalResult(
                task_type="zero-shot-classification",
                task_name="Zero-shot ECG classification",
                dataset_type=dataset_type,
                dataset_name=dataset_name,
                dataset_split="validation",
                metric_type="roc_auc",
                metric_name="macro AUROC",
                metric_value=round(float(metrics["zero_shot_macro_auroc"]), 4),
            )
        )
    if "ecg_to_text_recall@1" in metrics:
        eval_results.append(
            EvalResult(
                task_type="feature-extraction",
                task_name="ECG-to-report retrieval",
                dataset_type=dataset_type,
                dataset_name=dataset_name,
                dataset_split="validation",
                metric_type="recall",
                metric_name="recall@1",
                metric_value=round(float(metrics["ecg_to_text_recall@1"]), 4),
            )
        )
    title = report.model_name.rstrip("/").split("/")[-1]
    card_data = ModelCardData(
        model_name=title,
        library_name="transformers",
        pipeline_tag="feature-extraction",
        license=report.license,
        datasets=report.hub_dataset_ids or None,
        tags=["ecg", "electrocardiogram", "d-beta", "multimodal", "custom_code", "zero-shot-ecg-classification"],
        metrics=["roc_auc", "recall"],
        eval_results=eval_results or None,
    )

    usage_label = next(iter(report.zero_shot_labels), "AFIB")
    example_prompt = report.zero_shot_labels.get(usage_label, "atrial fibrillation")
    hours, minutes = divmod(report.train_seconds / 60.0, 60.0)
    duration = f"{int(hours)} h {minutes:.0f} min" if hours >= 1 else f"{report.train_seconds / 60.0:.1f} min"

    if report.is_demo:
        data_text = (
            f"{report.dataset_description}. The records are **simulated** by `train/demo/make_demo_corpus.py` "
            "(a dipole heart model with rhythm and morphology findings, MIMIC-style machine reports, "
            "the MIMIC-IV-ECG file layout), so this model says nothing about real ECGs. It exists to show the "
            "pre-training pipeline end to end on a laptop."
        )
        license_text = "The weights are released under the Apache-2.0 licence (the data is synthetic)."
    else:
        data_text = (
            f"{report.dataset_description}. MIMIC-IV-ECG is distributed by PhysioNet under the PhysioNet "
            "Credentialed Health Data License 1.5.0; anyone using models trained on it must respect its data use "
            "agreement."
        )
        license_text = (
            f"Weights licence: `{report.license}`. The training data's terms (PhysioNet Credentialed Health Data "
            "License 1.5.0) apply in addition."
        )

    prompt_rows = {label: f'"{prompt}"' for label, prompt in report.zero_shot_labels.items()}
    encoder_lines = []
    if report.text_encoder:
        encoder_lines.append(f"Text encoder: {report.text_encoder}.")
    if report.n3s_encoder:
        n3s_method = "TF-IDF (scikit-learn)" if report.n3s_encoder == "tfidf" else f"`{report.n3s_encoder}` embeddings"
        encoder_lines.append(f"N3S negative reports chosen with {n3s_method}.")
    encoder_text = ("\n".join(encoder_lines) + "\n\n") if encoder_lines else ""
    notes_text = "".join(f"\n- {note}" for note in report.notes)
    if notes_text:
        notes_text = "\nDifferences from the paper's configuration:\n" + notes_text + "\n"
    content = f"""---
{card_data.to_yaml()}
---

# {title}

A D-BETA model (*Boosting Masked ECG-Text Auto-Encoders as Discriminative Learners*, ICML 2025):
an ECG transformer and a T5 text encoder pre-trained together with four objectives — masked
language modelling (MLM), masked ECG modelling (MEM), ECG-text matching (ETM, with N3S negative
reports) and the ECG-text sigmoid contrastive loss (ETS). It embeds 12-lead ECGs and reports in
one space, so ECGs can be classified zero-shot with text prompts and retrieved by report.

Pre-trained with `train/pretrain.py` of the `dbeta` package for {report.completed_steps} optimiser steps
({report.samples_seen} ECG-report pairs seen, {duration} on {report.hardware}).

## Usage

```python
import torch
from transformers import AutoModel, AutoProcessor, pipeline

model = AutoModel.from_pretrained("{report.model_name}", trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained("{report.model_name}", trust_remote_code=True)

ecg = torch.randn(12, 5000).numpy() * 0.1   # one 10 s, 500 Hz, 12-lead ECG in millivolts
inputs = processor(ecg=ecg, sampling_rate=500, text=["{example_prompt}"], return_tensors="pt")
with torch.no_grad():
    output = model(**inputs)
output.ecg_embeds.shape            # (1, {report.architecture.get("embedding size", "hidden_size")}) ECG embedding
output.logits_per_ecg              # ECG-text sigmoid logits (the ETS objective)

classifier = pipeline("zero-shot-ecg-classification", model="{report.model_name}", trust_remote_code=True)
classifier(ecg, sampling_rate=500, candidate_labels={list(report.zero_shot_labels)[:3]!r})
```

## Evaluation (validation split, measured at the end of training)

Zero-shot scores are the ETS logits between each validation ECG and the prompt of each label;
labels come from keyword matches in the held-out reports. Retrieval ranks the distinct
validation reports for every validation ECG by the same logit (ECG -> report), and all validation
ECGs for every distinct report, where any ECG carrying that report is a hit (report -> ECG).

{_table(evaluation_rows(metrics, report.zero_shot_labels), ("metric", "value"))}

Zero-shot prompts:

{_table(prompt_rows, ("label", "prompt"))}

## Training data

{data_text}

{_table(report.data_counts, ("split", "count"))}

## Training procedure

{encoder_text}{_table(report.hyperparameters, ("hyper-parameter", "value"))}

Architecture:

{_table(report.architecture, ("component", "size"))}
{notes_text}
Software: {", ".join(f"{name} {version}" for name, version in report.software.items()) or "n/a"}.

## Limitations

- {"Trained on a small simulated corpus: do not use it on patients, or as a baseline for real ECG results." if report.is_demo else "Trained on machine-generated reports of one hospital system (Beth Israel Deaconess Medical Center); findings rare in MIMIC-IV-ECG, other populations and other devices are less reliable."}
- Not a medical device. Outputs are research artefacts and must not drive clinical decisions.
- Inputs must be 12-lead ECGs in millivolts; the processor resamples to {report.architecture.get("sampling rate", 500)} Hz and
  takes the first {report.architecture.get("input samples", 5000)} samples, zero-padding shorter recordings.
- Zero-shot quality depends on the prompt wording; prompts phrased like the training reports work best.
- Validation labels come from report keywords, which miss negations and synonyms.

## Licence

{license_text}

## Citation

```bibtex
{CITATION}
```
"""
    return ModelCard(content)


def build_conversion_card(
    model,
    source_files: Sequence[tuple[str, int, str]],
    command: str,
    counts: Mapping[str, int],
    license: str,
    repository: str,
    tokenizer: str | None = None,
    original_config_given: bool = False,
    title: str = "dbeta",
) -> ModelCard:
    """The model card of a converted folder: source checkpoint (`(name, bytes, sha256)` per file),
    conversion command, licence, usage."""
    from modeling_dbeta import DBetaECGModel

    checksums = "\n".join(f"| `{name}` | {size:,} | `{digest}` |" for name, size, digest in source_files)
    two_towers = not isinstance(model, DBetaECGModel)
    config = model.config
    ecg_config = config if isinstance(model, DBetaECGModel) else config.ecg_config
    num_parameters = sum(parameter.numel() for parameter in model.parameters())
    architecture = {
        "ECG encoder": f"{counts['ECG encoder layer']} layers, {ecg_config.hidden_size}-d, {ecg_config.num_attention_heads} heads",
        "conv feature extractor": f"{counts['conv feature extractor layer']} layers, channels {list(ecg_config.conv_dim)}",
    }
    if two_towers:
        architecture.update(
            {
                "T5 text encoder": f"{counts['T5 text encoder block']} blocks, d_model {config.text_config.d_model}, vocabulary {config.text_config.vocab_size}",
                "fusion": f"{counts['text fusion layer']} layers per stream, {config.hidden_size}-d, {config.fusion_num_attention_heads} heads",
                "MEM decoder": f"{counts['MEM decoder block']} blocks, {config.mem_decoder_hidden_size}-d",
            }
        )
    architecture["parameters"] = f"{num_parameters:,}"
    architecture_rows = "\n".join(f"| {name} | {value} |" for name, value in architecture.items())
    card_data = ModelCardData(
        model_name=title,
        library_name="transformers",
        pipeline_tag="feature-extraction",
        license=license,
        tags=["ecg", "electrocardiogram", "d-beta", "custom_code"] + ["zero-shot-ecg-classification"] * two_towers,
    )
    if two_towers:
        usage = """```python
from transformers import pipeline

classifier = pipeline("zero-shot-ecg-classification", model="path/to/this/folder", trust_remote_code=True)
classifier("ludb/data/1", candidate_labels=["AFIB", "LBBB", "SR"])  # a WFDB record, or a (12, T) array in mV
```

Label codes found in `label_descriptions.json` (`AFIB`, `LBBB`, ...) are scored by their description."""
    else:
        usage = """```python
import torch
from transformers import AutoFeatureExtractor, AutoModel

model = AutoModel.from_pretrained("path/to/this/folder", trust_remote_code=True).eval()
extractor = AutoFeatureExtractor.from_pretrained("path/to/this/folder", trust_remote_code=True)
inputs = extractor(ecg, sampling_rate=500, return_tensors="pt")  # ecg: (12, T) array in millivolts
with torch.no_grad():
    features = model(**inputs).pooler_output  # the ECG embedding (get_ecg_feats of the original)
```"""
    content = f"""---
{card_data.to_yaml()}
---

# {title}

D-BETA (*Boosting Masked ECG-Text Auto-Encoders as Discriminative Learners*, ICML 2025) weights
converted from the original release ({repository}) into the `dbeta` transformers layout:
{"both towers, fusion layers and pre-training heads (`DBetaForPreTraining`)" if two_towers else "the ECG tower only (`DBetaECGModel`)"}.
The weights are the original ones, renamed; nothing was trained.

## Source checkpoint

| file | bytes | SHA-256 |
|---|---|---|
{checksums}

Converted with:

```bash
{command}
```

Tokenizer: {f"`{tokenizer}`" if tokenizer else "none (ECG-only export)"}. Original config: {"given (`--original_config`); layer counts checked against it" if original_config_given else "not given; head counts default to 64-d heads, layer counts read from the keys"}.
Every original key was mapped and every parameter set; layer counts come from contiguous key indices.

## Architecture

| component | size |
|---|---|
{architecture_rows}

## Usage

{usage}

## Licence

The original D-BETA weights are released under **CC BY-NC 4.0** (non-commercial use only), and these
converted weights are a derivative that keeps that licence. The code files in this folder are the
`dbeta` package's (Apache-2.0). The model was pre-trained on MIMIC-IV-ECG, distributed by PhysioNet
under the PhysioNet Credentialed Health Data License 1.5.0.

Not a medical device: outputs are research artefacts and must not drive clinical decisions.

## Citation

```bibtex
{CITATION}
```
"""
    return ModelCard(content)


def add_evaluation_to_card(
    card_path: str | os.PathLike,
    new_results: Sequence[EvalResult],
    section_key: str,
    section_markdown: str,
    figures: Sequence[str | os.PathLike] = (),
) -> Path:
    """Merge `new_results` into the card's `model-index` (replacing results of the same task, dataset
    and metric) and (re)write its evaluation section `section_key` with the figures copied beside
    the card. A missing card is created."""
    card_path = Path(card_path)
    card_path.parent.mkdir(parents=True, exist_ok=True)
    name = card_path.parent.resolve().name or "dbeta"
    card = (
        ModelCard.load(card_path)
        if card_path.is_file()
        else ModelCard(f"---\nlibrary_name: transformers\n---\n\n# {name}\n")
    )
    data = card.data
    if not data.model_name:
        data.model_name = name
    replaced = {(r.task_type, r.task_name, r.dataset_type, r.metric_name) for r in new_results}
    kept = [
        r
        for r in (data.eval_results or [])
        if (r.task_type, r.task_name, r.dataset_type, r.metric_name) not in replaced
    ]
    data.eval_results = kept + list(new_results)

    figure_links = []
    for figure in map(Path, figures):
        target = card_path.parent / figure.name
        if figure.resolve() != target.resolve():
            shutil.copyfile(figure, target)
        figure_links.append(f"![{figure.stem}]({figure.name})")
    # One section per key (the evaluation protocol), replaced when it is evaluated again.
    start = f"<!-- dbeta-evaluation:{section_key}:start -->"
    end = f"<!-- dbeta-evaluation:{section_key}:end -->"
    section = "\n".join([start, section_markdown.strip(), "", *figure_links, end])
    text = card.text
    if start in text and end in text:
        before, rest = text.split(start, 1)
        text = before + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    card.text = text
    write_text(card_path, str(card))
    return card_path
