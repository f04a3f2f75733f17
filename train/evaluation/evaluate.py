"""Evaluate a D-BETA model the way the paper does: zero-shot, retrieval, linear probing, fine-tuning.

    python -m dbeta.train.evaluation.evaluate --model outputs/dbeta-demo \
        --dataset ludb=../shared/data/real/ludb --tasks zero_shot retrieval \
        --output_dir outputs/eval-ludb

Tasks (each on every `--dataset NAME=PATH`; dataset names in `DATASETS`):

- ``zero_shot``: every label is turned into a text (its description from the model folder's
  `label_descriptions.json` when the label is a known code, else the label name; `--prompts` JSON
  overrides), scored against the test ECGs, and ROC-AUC is computed per label and macro-averaged
  over the labels that have positives and negatives in the split (the others are listed).
  `--protocol package` (default) uses the package's processor (lead reordering to the model's
  order, polyphase resampling) and the ETS logit with the pre-training text normalisation.
  `--protocol original` reproduces the authors' notebook: FFT resampling
  (`scipy.signal.resample`) to 500 Hz, the first 5000 samples, leads in file order, descriptions
  lower-cased and embedded one by one, raw dot product.
- ``retrieval``: datasets with reports (LUDB): recall@1/5/10 for ECG -> report and report -> ECG.
  Identical reports are interchangeable (`recall_at_k`); the strict one-to-one numbers are given too.
  Reports are normalised as in pre-training; ECGs always go through the package's processor.
- ``linear_probe``: a linear layer on the frozen 768-d ECG embeddings, trained with BCE and Adam
  (lr 1e-3, batch 16) on 1 %, 10 % and 100 % of the training split; the subsets are
  `train_test_split(train_size=ratio, random_state=42)` (not stratified, as MERL); the reported
  test macro ROC-AUC is the one at the epoch with the best validation macro ROC-AUC.
- ``finetune``: `DBetaForECGClassification` trained end to end with the transformers `Trainer`
  (best epoch by validation macro ROC-AUC, then the test set).

Outputs in `--output_dir`: `results.json` (with provenance: package versions, git revision, seeds,
dataset paths and counts, DECISIONS 23), `results.md` (tables), `roc_<dataset>.png` (zero-shot ROC
curves). `--model_card README.md` also adds the numbers to the card's `model-index` and an
evaluation section with the tables and figures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dbeta.embedding import (
    base_model,
    embed_ecgs,
    embed_texts,
    normalize_text,
)
from dbeta.loading import load_model_and_processor, model_label_descriptions, model_training_records
from dbeta.model_card import add_evaluation_to_card
from dbeta.provenance import git_revision, package_versions
from dbeta.zero_shot import embed_label_texts, zero_shot_logits
from dbeta.train.evaluation import downstream
from dbeta.train.evaluation.metrics import DEFAULT_RECALL_KS, bootstrap_auroc_ci, multilabel_auroc, recall_at_k, roc_curves

logger = logging.getLogger("dbeta.evaluate")

TASKS = ("zero_shot", "retrieval", "linear_probe", "finetune")
PROTOCOLS = ("package", "original")
PROBE_RATIOS = (0.01, 0.1, 1.0)
SPLIT_SEED = 42  # train_test_split(random_state=42) for the probe subsets, as MERL

#: name -> (loader, fixed keyword arguments)
DATASETS: dict[str, tuple[Any, dict]] = {
    "ptbxl-super": (downstream.load_ptbxl, {"task": "superdiagnostic"}),
    "ptbxl-sub": (downstream.load_ptbxl, {"task": "subdiagnostic"}),
    "ptbxl-form": (downstream.load_ptbxl, {"task": "form"}),
    "ptbxl-rhythm": (downstream.load_ptbxl, {"task": "rhythm"}),
    "cpsc2018": (downstream.load_cpsc2018, {}),
    "csn": (downstream.load_csn, {}),
    "cinc2021": (downstream.load_cinc_wfdb, {}),
    "code-test": (downstream.load_code_test, {}),
    "ludb": (downstream.load_ludb, {}),
    # Any folder of records (clinical exports included) with a labels.csv beside them.
    "folder": (downstream.load_labeled_folder, {}),
}
_SEEDED_SPLIT_DATASETS = {"cpsc2018", "csn", "cinc2021"}

#: Named lead sets of `--leads` (the paper's 12/6/3/2/1-lead settings, after the PhysioNet/CinC
#: 2021 challenge sets its Table 1 baselines come from): the other leads are zero-filled in the
#: model input. `1` is lead I (the 1-lead setting of W2V+CMSC+RLM, Oh et al. 2022); `1-II` is lead
#: II, the other common single lead (rhythm strips, patches).
LEAD_SETS: dict[str, tuple[str, ...]] = {
    "12": ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"),
    "6": ("I", "II", "III", "aVR", "aVL", "aVF"),
    "3": ("I", "II", "V2"),
    "2": ("I", "II"),
    "1": ("I",),
    "1-II": ("II",),
}
BOOTSTRAP_RESAMPLES = 1000

#: Label names whose description the original notebook looked up under another code (CODE-test).
PROMPT_ALIASES: dict[str, dict[str, str]] = {
    "code-test": {"1dAVb": "1AVB", "SB": "SBRAD", "AF": "AFIB", "ST": "STACH"},
}


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def load_dataset(name: str, path: str | os.PathLike, seed: int = 42, split_file: str | None = None):
    """Load a benchmark by name (see `DATASETS`) from its folder as distributed."""
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; choose from {sorted(DATASETS)}.")
    loader, kwargs = DATASETS[name]
    kwargs = dict(kwargs)
    if name in _SEEDED_SPLIT_DATASETS:
        kwargs.update(seed=seed, split_file=split_file)
    elif split_file is not None:
        raise ValueError(f"--split_file is only used by {sorted(_SEEDED_SPLIT_DATASETS)}.")
    return loader(path, **kwargs)


def prepare_original(record, sampling_rate: int = 500, num_samples: int = 5000) -> np.ndarray:
    """The notebook's ECG preparation: FFT resampling to `sampling_rate`, the first `num_samples`
    samples, leads in the file's order, no unit or amplitude change. Shorter results are
    zero-padded at the end (the notebook's CODE-test traces are always long enough)."""
    import scipy.signal

    signal = np.asarray(record.signal, dtype=np.float64)
    if signal.ndim != 2 or signal.shape[0] != 12:
        raise ValueError(f"The original protocol needs 12 leads, got an array of shape {signal.shape}.")
    if not np.isfinite(signal).all():
        raise ValueError("The ECG contains NaN or infinite values.")
    target_length = int(round(signal.shape[1] * sampling_rate / float(record.sampling_rate)))
    if target_length != signal.shape[1]:
        signal = scipy.signal.resample(signal, target_length, axis=-1)
    signal = signal[:, :num_samples]
    if signal.shape[1] < num_samples:
        signal = np.pad(signal, ((0, 0), (0, num_samples - signal.shape[1])))
    return signal.astype(np.float32)


def label_prompts(
    dataset_name: str,
    label_names: Sequence[str],
    descriptions: dict[str, str],
    overrides: dict[str, str] | None = None,
) -> dict[str, str]:
    """The text for every label: an override, else the description of the label (or of its
    notebook alias), else the label name itself."""
    aliases = PROMPT_ALIASES.get(dataset_name, {})
    prompts = {}
    for label in label_names:
        if overrides and label in overrides:
            prompts[label] = overrides[label]
        else:
            code = aliases.get(label, label)
            prompts[label] = descriptions.get(code, label)
    return prompts


def labels_without_description(
    dataset_name: str,
    label_names: Sequence[str],
    descriptions: dict[str, str],
    overrides: dict[str, str] | None = None,
) -> list[str]:
    """The labels `label_prompts` scores as their raw name: no description, no override."""
    aliases = PROMPT_ALIASES.get(dataset_name, {})
    return [
        label
        for label in label_names
        if not (overrides and label in overrides) and aliases.get(label, label) not in descriptions
    ]


def zero_fill_leads(prepare, keep: Sequence[str], protocol: str, model_lead_names: Sequence[str]):
    """`prepare` followed by zeroing every lead not in `keep` (the paper's reduced-lead setting).

    The package protocol's input is in the model's lead order (`model_lead_names`); the original
    protocol keeps the file's order, so there the record's own lead names decide."""
    from processing_dbeta import canonical_lead_name

    keep = {canonical_lead_name(name) for name in keep}

    def prepared(record):
        if hasattr(prepare, "model_input_names"):  # the feature extractor
            values = np.array(prepare(record)["input_values"][0], dtype=np.float32)
        else:
            values = np.array(prepare(record), dtype=np.float32)
        names = model_lead_names if protocol == "package" else record.lead_names
        if len(names) != values.shape[0]:
            raise ValueError(f"{len(names)} lead names for {values.shape[0]} leads")
        drop = [row for row, name in enumerate(names) if canonical_lead_name(str(name)) not in keep]
        values[drop] = 0.0
        return values

    return prepared


def random_encoder(model, seed: int):
    """A randomly initialised ECG tower of the same architecture as `model`'s (the baseline for
    linear probing): `DBetaECGModel(ecg_config)` with D-BETA's own initialisation, seeded."""
    import copy

    from modeling_dbeta import DBetaECGModel

    base = base_model(model)
    config = copy.deepcopy(getattr(base.config, "ecg_config", base.config))
    parameter = next(base.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = DBetaECGModel(config)
    return encoder.to(parameter.device).eval()


def with_confidence_intervals(
    summary: dict, y_true, y_score, label_names, resamples: int, seed: int, prefix: str = ""
) -> dict:
    """Add bootstrap 95 % intervals of the macro and per-label AUROC to an AUROC summary dict."""
    if resamples <= 0:
        return summary
    ci = bootstrap_auroc_ci(y_true, y_score, label_names, num_resamples=resamples, seed=seed)
    summary[f"{prefix}macro_auroc_ci"] = ci["macro"]
    summary[f"{prefix}per_label_auroc_ci"] = ci["per_label"]
    summary[f"{prefix}bootstrap"] = {
        key: ci[key]
        for key in (
            "confidence", "num_resamples", "seed", "method", "min_class_count", "no_interval",
            "resamples_used", "macro_resamples_used",
        )
    }  # fmt: skip
    return summary


@dataclass
class EmbeddedSplit:
    """ECG embeddings of the records of one split that could be read, with their labels."""

    embeddings: torch.Tensor
    labels: np.ndarray
    record_ids: list[str]
    reports: list[str] | None
    failures: list[dict]


def embed_split(model, prepare, dataset, batch_size: int, progress: bool = True) -> EmbeddedSplit:
    """Embed every record of `dataset` (one split); unreadable records are skipped and listed."""
    thunks = [lambda index=index: dataset.read(index) for index in range(len(dataset))]
    embeddings, failures = embed_ecgs(
        model,
        prepare,
        thunks,
        batch_size=batch_size,
        record_ids=dataset.record_ids,
        skip_failures=True,
        progress=progress,
    )
    for failure in failures:
        logger.warning(f"{dataset.name}: record {failure.record_id} skipped ({failure.error})")
    failed = {failure.index for failure in failures}
    keep = [index for index in range(len(dataset)) if index not in failed]
    return EmbeddedSplit(
        embeddings=embeddings,
        labels=dataset.labels[keep],
        record_ids=[dataset.record_ids[index] for index in keep],
        reports=[dataset.reports[index] for index in keep] if dataset.reports is not None else None,
        failures=[{"record": failure.record_id, "error": failure.error} for failure in failures],
    )


# ---------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------


def zero_shot_scores(model, tokenizer, ecg_embeds: torch.Tensor, texts: Sequence[str], protocol: str) -> np.ndarray:
    """`(num_ecgs, num_labels)` zero-shot scores: ETS logits (package) or raw dot products (original)."""
    if protocol == "original":
        text_embeds = embed_texts(model, tokenizer, [text.lower() for text in texts], normalize=False, one_by_one=True)
        return (ecg_embeds @ text_embeds.T).numpy()
    label_embeds = embed_label_texts(model, tokenizer, texts, normalize=True)
    return zero_shot_logits(model, ecg_embeds, label_embeds).numpy()


def evaluate_zero_shot(
    model, tokenizer, split: EmbeddedSplit, label_names, prompts, protocol, bootstrap: int = 0, seed: int = 0
) -> tuple[dict, dict]:
    """Zero-shot ROC-AUC (and, with `bootstrap` resamples, 95 % intervals) and the ROC curves."""
    scores = zero_shot_scores(model, tokenizer, split.embeddings, [prompts[name] for name in label_names], protocol)
    result = multilabel_auroc(split.labels, scores, label_names)
    summary = result.to_dict()
    with_confidence_intervals(summary, split.labels, scores, label_names, bootstrap, seed)
    summary["prompts"] = dict(prompts)
    return summary, roc_curves(split.labels, scores, label_names)


def evaluate_retrieval(model, tokenizer, split: EmbeddedSplit, ks: Sequence[int] = DEFAULT_RECALL_KS) -> dict:
    """Recall@k of ECG <-> report retrieval over the (ECG, report) pairs of a split."""
    reports = [normalize_text(report) for report in split.reports]
    text_embeds = embed_texts(model, tokenizer, reports, normalize=False)
    similarity = (split.embeddings @ text_embeds.T).numpy()
    num_pairs = len(reports)
    return {
        "num_pairs": num_pairs,
        "num_unique_reports": len(set(reports)),
        # Identical reports are equally correct answers.
        "recall_at_k": {
            "ecg_to_text": recall_at_k(similarity, ks, reports, reports),
            "text_to_ecg": recall_at_k(similarity.T, ks, reports, reports),
        },
        "recall_at_k_strict": {
            "ecg_to_text": recall_at_k(similarity, ks),
            "text_to_ecg": recall_at_k(similarity.T, ks),
        },
        "chance_recall_at_k_strict": {k: min(1.0, k / num_pairs) for k in ks},
    }


def probe_subset(num_train: int, ratio: float, seed: int = SPLIT_SEED) -> np.ndarray:
    """Indices of the `ratio` training subset: `train_test_split(train_size=ratio, random_state=seed)`."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(num_train)
    if ratio >= 1.0:
        return indices
    if int(np.floor(ratio * num_train)) < 1:
        raise ValueError(f"{ratio:.0%} of {num_train} training records is no record")
    subset, _ = train_test_split(indices, train_size=ratio, random_state=seed)
    return np.sort(subset)


@contextlib.contextmanager
def torch_threads(count: int):
    """Run the block with `count` intra-op threads (restored afterwards)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def linear_probe(
    train_x: torch.Tensor,
    train_y: np.ndarray,
    val_x: torch.Tensor,
    val_y: np.ndarray,
    test_x: torch.Tensor,
    test_y: np.ndarray,
    label_names: Sequence[str],
    epochs: int = 100,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    seed: int = 42,
    progress: bool = False,
    bootstrap: int = 0,
) -> dict:
    """Train a linear layer on frozen features; return the test macro ROC-AUC at the best validation epoch
    (with `bootstrap` resamples: 95 % intervals of the test AUROCs too).

    Runs single-threaded: a (16 x 768) step is far too small for intra-op parallelism, whose thread
    synchronisation made it 50x slower on a busy 2-core machine.
    """
    with torch_threads(1):
        return _linear_probe(
            train_x,
            train_y,
            val_x,
            val_y,
            test_x,
            test_y,
            label_names,
            epochs,
            batch_size,
            learning_rate,
            seed,
            progress,
            bootstrap,
        )


def _linear_probe(
    train_x,
    train_y,
    val_x,
    val_y,
    test_x,
    test_y,
    label_names,
    epochs,
    batch_size,
    learning_rate,
    seed,
    progress,
    bootstrap=0,
):
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    num_labels = train_y.shape[1]
    head = torch.nn.Linear(train_x.shape[1], num_labels)
    optimizer = torch.optim.Adam(head.parameters(), lr=learning_rate)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    targets = torch.as_tensor(train_y, dtype=torch.float32)

    best = {"val_macro_auroc": -np.inf}
    for epoch in tqdm(range(1, epochs + 1), desc="linear probe", unit="epoch", disable=not progress):
        head.train()
        for batch in torch.randperm(len(train_x), generator=generator).split(batch_size):
            optimizer.zero_grad()
            loss = loss_fn(head(train_x[batch]), targets[batch])
            loss.backward()
            optimizer.step()
        head.eval()
        with torch.no_grad():
            val_auroc = multilabel_auroc(val_y, head(val_x).numpy(), label_names).macro
        if np.isnan(val_auroc):
            raise ValueError("The validation split has no label with both positives and negatives.")
        if val_auroc > best["val_macro_auroc"]:
            with torch.no_grad():
                test_scores = head(test_x).numpy()
                test = multilabel_auroc(test_y, test_scores, label_names)
            best = {
                "val_macro_auroc": float(val_auroc),
                "best_epoch": epoch,
                "test_macro_auroc": test.macro,
                "test_per_label_auroc": test.per_label,
                "test_skipped_labels": test.skipped,
            }
    best.update(num_train=len(train_x), epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed)
    with_confidence_intervals(best, test_y, test_scores, label_names, bootstrap, seed, prefix="test_")
    return best


class _ECGClassificationDataset(torch.utils.data.Dataset):
    """Model inputs read on demand for the `Trainer` (records that fail to read were dropped before)."""

    def __init__(self, dataset, indices, prepare):
        self.dataset, self.indices, self.prepare = dataset, list(indices), prepare

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, item):
        index = self.indices[item]
        values = self.prepare(self.dataset.read(index))["input_values"][0]
        return {
            "input_values": torch.as_tensor(values),
            "labels": torch.as_tensor(self.dataset.labels[index], dtype=torch.float32),
        }


def finetune(
    model_path: str,
    dataset,
    feature_extractor,
    output_dir: Path,
    epochs: int = 5,
    batch_size: int = 16,
    learning_rate: float = 5e-5,
    seed: int = 42,
    ratio: float = 1.0,
    skip: dict[str, set] | None = None,
) -> dict:
    """Fine-tune `DBetaForECGClassification` (multi-label BCE) with `Trainer`; best epoch by
    validation macro ROC-AUC, then evaluated on the test split."""
    from transformers import Trainer, TrainingArguments

    from modeling_dbeta import DBetaForECGClassification

    label_names = list(dataset.label_names)
    model = DBetaForECGClassification.from_pretrained(
        model_path,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={name: index for index, name in enumerate(label_names)},
        problem_type="multi_label_classification",
    )
    skip = skip or {}

    def split_indices(name):
        return [
            i for i in np.flatnonzero(dataset.splits == name) if dataset.record_ids[i] not in skip.get(name, set())
        ]

    validation_labels = dataset.labels[split_indices("validation")]
    positives = validation_labels.sum(axis=0)
    if not ((positives > 0) & (positives < len(validation_labels))).any():
        raise ValueError("the validation split has no label with both positives and negatives")
    train_indices = split_indices("train")
    train_indices = [train_indices[i] for i in probe_subset(len(train_indices), ratio)]
    splits = {
        name: _ECGClassificationDataset(dataset, indices, feature_extractor)
        for name, indices in (
            ("train", train_indices),
            ("validation", split_indices("validation")),
            ("test", split_indices("test")),
        )
    }

    def compute_metrics(prediction):
        return {"macro_auroc": multilabel_auroc(prediction.label_ids, prediction.predictions, label_names).macro}

    arguments = TrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        learning_rate=learning_rate,
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="macro_auroc",
        greater_is_better=True,
        seed=seed,
        report_to=[],
        logging_strategy="epoch",
        use_cpu=not torch.cuda.is_available(),
    )
    trainer = Trainer(
        model=model,
        args=arguments,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        compute_metrics=compute_metrics,
    )
    trainer.train()
    prediction = trainer.predict(splits["test"])
    test = multilabel_auroc(prediction.label_ids, prediction.predictions, label_names)
    best_metric = trainer.state.best_metric
    return {
        "test_macro_auroc": test.macro,
        "test_per_label_auroc": test.per_label,
        "test_skipped_labels": test.skipped,
        "val_macro_auroc": float(best_metric) if best_metric is not None else None,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "num_train": len(splits["train"]),
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "seed": seed,
        "train_ratio": ratio,
    }


# ---------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------


def plot_roc(curves: dict, aurocs: dict[str, float], path: Path, title: str) -> Path:
    """One figure with the ROC curve of every evaluated label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 6))
    for name, (fpr, tpr) in curves.items():
        axis.plot(fpr, tpr, label=f"{name} ({aurocs[name]:.3f})", linewidth=1.2)
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    axis.set(
        xlabel="False positive rate", ylabel="True positive rate", title=title, xlim=(-0.01, 1.01), ylim=(-0.01, 1.01)
    )
    axis.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    return f"{100 * value:.2f}"


def _fmt_ci(value, interval) -> str:
    """`72.31 [65.10, 79.02]` (percent) or the value alone when there is no interval."""
    if not interval:
        return _fmt(value)
    return f"{_fmt(value)} [{_fmt(interval[0])}, {_fmt(interval[1])}]"


def markdown_report(results: dict, level: int = 1) -> str:
    """Markdown tables (ROC-AUC and recall in %) of a `results.json` dict; `level` is the heading
    level of the title (sections one below)."""
    title, h2, h3 = "#" * level, "#" * (level + 1), "#" * (level + 2)
    lines = [f"{title} D-BETA evaluation: `{results['model']}`", "", f"Protocol: `{results['protocol']}`.", ""]
    datasets = results["datasets"]
    zero_shot = {name: entry["zero_shot"] for name, entry in datasets.items() if "zero_shot" in entry}
    if zero_shot:
        normalisation = (
            "lower-cased"
            if results["protocol"] == "original"
            else "normalised like the pre-training reports (lower-cased, trimmed)"
        )
        lines += [
            f"{h2} Zero-shot (test split, macro ROC-AUC %)",
            "",
            "Labels without positives or negatives are left out of the mean. Prompts are shown as written; "
            f"they are {normalisation} before tokenisation.",
            "",
            "| dataset | records | labels evaluated | macro AUROC [95% CI] |",
            "|---|---|---|---|",
        ]
        for name, entry in zero_shot.items():
            macro = _fmt_ci(entry["macro_auroc"], entry.get("macro_auroc_ci"))
            lines.append(f"| {name} | {entry['num_samples']} | {len(entry['per_label_auroc'])} | {macro} |")
        resamples = {entry["bootstrap"]["num_resamples"] for entry in zero_shot.values() if "bootstrap" in entry}
        methods = {entry["bootstrap"]["method"] for entry in zero_shot.values() if "bootstrap" in entry}
        if resamples:
            lines += [
                "",
                f"Intervals ({', '.join(map(str, sorted(resamples)))} resamples): " + "; ".join(sorted(methods)) + ".",
            ]
        for name, entry in zero_shot.items():
            lines += [
                "",
                f"{h3} {name}: per label",
                "",
                "| label | positives | AUROC % [95% CI] | prompt |",
                "|---|---|---|---|",
            ]
            for label, positives in entry["num_positives"].items():
                auroc = entry["per_label_auroc"].get(label)
                interval = (entry.get("per_label_auroc_ci") or {}).get(label)
                if auroc is None:
                    note = f"left out ({entry['skipped_labels'][label]})"
                else:
                    note = _fmt_ci(auroc, interval)
                prompt = entry["prompts"][label].replace("|", "\\|")
                lines.append(f"| {label} | {positives} | {note} | {prompt} |")
    retrieval = {
        name: entry["retrieval"] for name, entry in datasets.items() if "recall_at_k" in entry.get("retrieval", {})
    }
    if retrieval:
        lines += ["", f"{h2} Retrieval (recall@k %, identical reports interchangeable; strict in brackets)", ""]
        for name, entry in retrieval.items():
            ks = list(entry["recall_at_k"]["ecg_to_text"])
            lines += [
                f"{name}: {entry['num_pairs']} pairs, {entry['num_unique_reports']} distinct reports.",
                "",
                "| direction | " + " | ".join(f"R@{k}" for k in ks) + " |",
                "|---|" + "---|" * len(ks),
            ]
            for direction in ("ecg_to_text", "text_to_ecg"):
                cells = [
                    f"{_fmt(entry['recall_at_k'][direction][k])} ({_fmt(entry['recall_at_k_strict'][direction][k])})"
                    for k in ks
                ]
                lines.append(f"| {direction.replace('_', ' ')} | " + " | ".join(cells) + " |")
            chance = entry["chance_recall_at_k_strict"]
            lines += ["", "Chance (strict): " + ", ".join(f"R@{k} {_fmt(chance[k])}" for k in ks), ""]
    probe = {name: entry["linear_probe"] for name, entry in datasets.items() if "linear_probe" in entry}
    ratios = sorted({ratio for entry in probe.values() for ratio in entry.get("ratios", {})}, key=float)
    if ratios:  # (a probe skipped everywhere is listed under "Skipped")
        lines += ["", f"{h2} Linear probe (test macro ROC-AUC % [95% CI] at the best validation epoch)", ""]
        lines += [
            "| dataset | encoder | " + " | ".join(f"{float(r):.0%}" for r in ratios) + " |",
            "|---|---|" + "---|" * len(ratios),
        ]
        for name, entry in probe.items():
            rows = [("D-BETA", entry)]
            if "linear_probe_random_init" in datasets[name]:
                rows.append(("random init (baseline)", datasets[name]["linear_probe_random_init"]))
            for encoder, result in rows:
                lines.append(f"| {name} | {encoder} | " + " | ".join(_probe_cells(result, ratios)) + " |")
    lead_tables = {name: entry["lead_sets"] for name, entry in datasets.items() if "lead_sets" in entry}
    if lead_tables:
        lines += [
            "",
            f"{h2} Reduced leads (other leads zero-filled; test macro ROC-AUC % [95% CI])",
            "",
        ]
        for name, lead_sets in lead_tables.items():
            ratios = sorted(
                {r for result in lead_sets.values() for r in result.get("linear_probe", {}).get("ratios", {})},
                key=float,
            )
            has_random = any("linear_probe_random_init" in result for result in lead_sets.values())
            header = ["dataset", "lead set", "leads", "zero-shot"]
            header += [f"probe {float(r):.0%}" for r in ratios]
            header += [f"random-init probe {float(r):.0%}" for r in ratios] if has_random else []
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for leads, result in lead_sets.items():
                cells = [name, leads, " ".join(result["leads"]) if len(result["leads"]) < 12 else "all 12"]
                zero = result.get("zero_shot")
                cells.append(_fmt_ci(zero["macro_auroc"], zero.get("macro_auroc_ci")) if zero else "-")
                cells += _probe_cells(result.get("linear_probe", {}), ratios) if ratios else []
                cells += _probe_cells(result.get("linear_probe_random_init", {}), ratios) if has_random else []
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    tuned = {name: entry["finetune"] for name, entry in datasets.items() if "finetune" in entry}
    if tuned:
        lines += [
            "",
            f"{h2} Fine-tuning (test macro ROC-AUC %)",
            "",
            "| dataset | AUROC | best val |",
            "|---|---|---|",
        ]
        for name, entry in tuned.items():
            if "skipped" in entry:
                lines.append(f"| {name} | skipped | {entry['skipped']} |")
            else:
                lines.append(f"| {name} | {_fmt(entry['test_macro_auroc'])} | {_fmt(entry['val_macro_auroc'])} |")
    skipped = [
        f"- {name} / {task}: {entry[task]['skipped']}"
        for name, entry in datasets.items()
        for task in ("linear_probe", "finetune", "retrieval")
        if isinstance(entry.get(task), dict) and "skipped" in entry[task]
    ]
    skipped += [
        f"- {name} / linear probe {float(ratio):.0%}: {result['skipped']}"
        for name, entry in probe.items()
        for ratio, result in entry.get("ratios", {}).items()
        if "skipped" in result
    ]
    if skipped:
        lines += ["", f"{h2} Skipped", "", *skipped]
    return "\n".join(lines) + "\n"


def _probe_cells(entry: dict, ratios) -> list[str]:
    """Table cells (macro AUROC % with CI) of a linear-probe entry, one per ratio."""
    if "skipped" in entry:
        return ["skipped" for _ in ratios]
    cells = []
    for ratio in ratios:
        result = entry.get("ratios", {}).get(ratio)
        if result is None:
            cells.append("-")
        elif "skipped" in result:
            cells.append("skipped")
        else:
            cells.append(_fmt_ci(result.get("test_macro_auroc"), result.get("test_macro_auroc_ci")))
    return cells


def update_model_card(card_path: Path, results: dict, figures: Sequence[Path]) -> Path:
    """Add the zero-shot / probe numbers to the card's `model-index` and (re)write its evaluation
    section (tables + ROC figures, copied next to the card)."""
    from huggingface_hub import EvalResult

    new_results = []
    for name, entry in results["datasets"].items():
        if entry.get("zero_shot", {}).get("macro_auroc") is not None:
            new_results.append(
                EvalResult(
                    task_type="zero-shot-classification",
                    task_name="Zero-shot ECG classification",
                    dataset_type=name,
                    dataset_name=name,
                    dataset_split="test",
                    metric_type="roc_auc",
                    metric_name=f"macro AUROC ({results['protocol']} protocol)",
                    metric_value=round(entry["zero_shot"]["macro_auroc"], 4),
                )
            )
        for ratio, probe in entry.get("linear_probe", {}).get("ratios", {}).items():
            if probe.get("test_macro_auroc") is not None:
                new_results.append(
                    EvalResult(
                        task_type="text-classification",
                        task_name="Linear probe",
                        dataset_type=name,
                        dataset_name=name,
                        dataset_split="test",
                        dataset_args={"train_fraction": float(ratio)},
                        metric_type="roc_auc",
                        metric_name=f"macro AUROC ({float(ratio):.0%} train)",
                        metric_value=round(probe["test_macro_auroc"], 4),
                    )
                )
        if entry.get("retrieval", {}).get("recall_at_k"):
            for direction, values in entry["retrieval"]["recall_at_k"].items():
                for k, value in values.items():
                    new_results.append(
                        EvalResult(
                            task_type="text-retrieval" if direction == "ecg_to_text" else "ecg-retrieval",
                            task_name=f"Retrieval {direction.replace('_', ' ')}",
                            dataset_type=name,
                            dataset_name=name,
                            dataset_split="test",
                            metric_type="recall",
                            metric_name=f"recall@{k}",
                            metric_value=round(value, 4),
                        )
                    )
    return add_evaluation_to_card(
        card_path, new_results, results["protocol"], markdown_report(results, level=2), figures
    )


def provenance(args: argparse.Namespace, argv: Sequence[str]) -> dict:
    versions = package_versions()
    model_config = Path(args.model) / "config.json"
    return {
        "command": [Path(sys.argv[0]).name, *argv],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
        "git": git_revision(),
        "model_path": str(Path(args.model).resolve()) if Path(args.model).exists() else args.model,
        "model_config_sha": _file_digest(model_config) if model_config.is_file() else None,
        "seeds": {"probe_subsets": SPLIT_SEED, "training": args.seed, "dataset_splits": args.split_seed},
        "device": str(args.device),
        "torch_threads": torch.get_num_threads(),
    }


def _file_digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def evaluate_dataset(args, name: str, path: str, model, processor, descriptions, prompt_overrides, output_dir: Path):
    dataset = load_dataset(name, path, seed=args.split_seed, split_file=args.split_file)
    # Records the model learnt from (its folder's training_records.json) are never evaluated on.
    learnt = model_training_records(args.model if Path(args.model).exists() else None).get(name, set())
    excluded = [index for index, record in enumerate(dataset.record_ids) if str(record) in learnt]
    if excluded:
        if len(excluded) == len(dataset):
            raise ValueError(f"{name}: every record of {path} is one the model learnt from; nothing is left to evaluate")
        logger.warning(f"{name}: left out {len(excluded)} records the model learnt from (training_records.json)")
        dataset = dataset.select(np.setdiff1d(np.arange(len(dataset)), excluded))
    splits_present = {split: int((dataset.splits == split).sum()) for split in downstream.SPLITS}
    entry: dict[str, Any] = {
        "path": str(Path(path).resolve()),
        "num_records": len(dataset),
        "label_names": list(dataset.label_names),
        "counts": splits_present,
        "labels_without_positives": {s: dataset.labels_without_positives(s) for s, n in splits_present.items() if n},
        "excluded_training_records": len(excluded),
    }
    if args.max_records:
        keep = np.flatnonzero(np.isin(dataset.splits, list(downstream.SPLITS)))[: args.max_records]
        dataset = dataset.select(keep)
        entry["max_records"] = args.max_records
    tokenizer = processor.tokenizer
    progress = not args.no_progress
    # (split, protocol) for the model on all 12 leads; (split, protocol, lead set, encoder) otherwise.
    cache: dict[tuple, EmbeddedSplit] = {}
    baseline_encoder = []  # built on first use

    def split_embeddings(split: str, protocol: str, leads: str = "12", encoder: str = "pretrained") -> EmbeddedSplit:
        key = (split, protocol) if (leads, encoder) == ("12", "pretrained") else (split, protocol, leads, encoder)
        if key not in cache:
            prepare = prepare_original if protocol == "original" else processor.feature_extractor
            if leads != "12":
                prepare = zero_fill_leads(prepare, LEAD_SETS[leads], protocol, processor.feature_extractor.lead_names)
            if encoder == "random_init" and not baseline_encoder:
                baseline_encoder.append(random_encoder(model, args.seed))
            embedder = baseline_encoder[0] if encoder == "random_init" else model
            logger.info(f"{name}: embedding the {split} split ({protocol} preprocessing, {leads} leads, {encoder})")
            cache[key] = embed_split(embedder, prepare, dataset.split(split), args.batch_size, progress)
        return cache[key]

    def probe_ratios(leads: str = "12", encoder: str = "pretrained") -> dict:
        train, val, test = (split_embeddings(split, "package", leads, encoder) for split in downstream.SPLITS)
        ratios = {}
        for ratio in args.probe_ratios:
            try:
                subset = probe_subset(len(train.embeddings), ratio)
                probe = linear_probe(
                    train.embeddings[subset],
                    train.labels[subset],
                    val.embeddings,
                    val.labels,
                    test.embeddings,
                    test.labels,
                    dataset.label_names,
                    epochs=args.probe_epochs,
                    batch_size=args.probe_batch_size,
                    learning_rate=args.probe_lr,
                    seed=args.seed,
                    progress=progress,
                    bootstrap=args.bootstrap,
                )
            except ValueError as error:  # too few records / no evaluable validation label
                ratios[str(ratio)] = {"skipped": str(error)}
                logger.warning(f"{name}: linear probe {ratio:.0%} ({leads} leads, {encoder}) skipped ({error})")
                continue
            ratios[str(ratio)] = {**probe, "subset_seed": SPLIT_SEED}
            logger.info(
                f"{name}: linear probe {ratio:.0%} ({leads} leads, {encoder}) -> test macro AUROC "
                f"{_fmt(probe['test_macro_auroc'])}%"
            )
        return {"ratios": ratios, "stratified": False}

    figures = []
    failures = {}
    if "zero_shot" in args.tasks:
        test = split_embeddings("test", args.protocol)
        prompts = label_prompts(name, dataset.label_names, descriptions, prompt_overrides)
        summary, curves = evaluate_zero_shot(
            model, tokenizer, test, dataset.label_names, prompts, args.protocol, args.bootstrap, args.seed
        )
        entry["zero_shot"] = summary
        summary["labels_without_description"] = labels_without_description(
            name, dataset.label_names, descriptions, prompt_overrides
        )
        if summary["labels_without_description"]:
            logger.warning(f"{name}: no description for {summary['labels_without_description']}; scored as the raw label text")
        if curves:
            figure = plot_roc(
                curves,
                summary["per_label_auroc"],
                output_dir / f"roc_{name}_{args.protocol}.png",
                f"{name}: zero-shot ROC (macro {_fmt(summary['macro_auroc'])}%)",
            )
            figures.append(figure)
        logger.info(
            f"{name}: zero-shot macro AUROC {_fmt(summary['macro_auroc'])}%; left out {summary['skipped_labels']}"
        )
    if "retrieval" in args.tasks:
        if dataset.reports is None:
            entry["retrieval"] = {"skipped": "the dataset has no report text"}
        else:
            test = split_embeddings("test", "package")
            entry["retrieval"] = evaluate_retrieval(model, tokenizer, test, args.recall_ks)
            logger.info(f"{name}: retrieval {entry['retrieval']['recall_at_k']}")
    if "linear_probe" in args.tasks:
        if not (splits_present["train"] and splits_present["validation"] and splits_present["test"]):
            entry["linear_probe"] = {"skipped": f"needs train/validation/test splits, has {splits_present}"}
        else:
            entry["linear_probe"] = probe_ratios()
            if args.random_baseline:
                entry["linear_probe_random_init"] = {
                    **probe_ratios(encoder="random_init"),
                    "encoder": "DBetaECGModel(ecg_config), D-BETA initialisation, torch seed = --seed",
                }
    reduced = [leads for leads in args.leads if leads != "12"]
    if reduced and ({"zero_shot", "linear_probe"} & set(args.tasks)):
        has_probe_splits = all(splits_present[split] for split in downstream.SPLITS)
        lead_sets = {}
        for leads in dict.fromkeys(["12", *reduced]):  # 12 first: the row the others are compared with
            result: dict[str, Any] = {"leads": list(LEAD_SETS[leads])}
            if "zero_shot" in args.tasks:
                test = split_embeddings("test", args.protocol, leads)
                prompts = label_prompts(name, dataset.label_names, descriptions, prompt_overrides)
                result["zero_shot"], _ = evaluate_zero_shot(
                    model, tokenizer, test, dataset.label_names, prompts, args.protocol, args.bootstrap, args.seed
                )
                result["zero_shot"].pop("prompts")  # as in the 12-lead entry
            if "linear_probe" in args.tasks and has_probe_splits:
                result["linear_probe"] = probe_ratios(leads)
                if args.random_baseline:
                    result["linear_probe_random_init"] = probe_ratios(leads, "random_init")
            lead_sets[leads] = result
        entry["lead_sets"] = lead_sets
    if "finetune" in args.tasks:
        if not (splits_present["train"] and splits_present["validation"] and splits_present["test"]):
            entry["finetune"] = {"skipped": f"needs train/validation/test splits, has {splits_present}"}
        else:
            skip = {
                split: {f["record"] for f in cache[split, "package"].failures}
                for split in downstream.SPLITS
                if (split, "package") in cache
            }
            try:
                entry["finetune"] = finetune(
                    args.model,
                    dataset,
                    processor.feature_extractor,
                    output_dir / f"finetune-{name}",
                    epochs=args.finetune_epochs,
                    batch_size=args.finetune_batch_size,
                    learning_rate=args.finetune_lr,
                    seed=args.seed,
                    ratio=args.finetune_ratio,
                    skip=skip,
                )
            except ValueError as error:  # too few records / no evaluable validation label
                entry["finetune"] = {"skipped": str(error)}
                logger.warning(f"{name}: fine-tuning skipped ({error})")
    for key, embedded in cache.items():
        label = "/".join(key)  # split/protocol[/lead set/encoder]
        entry.setdefault("embedded", {})[label] = len(embedded.record_ids)
        if embedded.failures and len(key) == 2:  # the other inputs read the same records
            failures[label] = embedded.failures
    entry["failed_records"] = failures
    return entry, figures


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="D-BETA model folder (or Hub id)")
    parser.add_argument(
        "--dataset",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help=f"repeatable; NAME in {sorted(DATASETS)}",
    )
    parser.add_argument("--tasks", nargs="+", default=["zero_shot", "retrieval"], choices=TASKS)
    parser.add_argument(
        "--protocol", default="package", choices=PROTOCOLS, help="zero-shot preprocessing/scoring (see above)"
    )
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--prompts", help="JSON {label: text} overriding the label texts")
    parser.add_argument(
        "--label_descriptions",
        help="JSON {code: description}; default: the model folder's file, else the packaged one",
    )
    parser.add_argument(
        "--split_file", help="CSV (record, split) for CPSC 2018 / CSN / CinC 2021 instead of the seeded split"
    )
    parser.add_argument(
        "--split_seed",
        type=int,
        default=42,
        help="seed of the documented random split (datasets without an official one)",
    )
    parser.add_argument("--seed", type=int, default=42, help="seed of probe / fine-tuning training")
    parser.add_argument("--batch_size", type=int, default=32, help="ECGs per forward pass when embedding")
    parser.add_argument("--recall_ks", type=int, nargs="+", default=list(DEFAULT_RECALL_KS))
    parser.add_argument("--probe_ratios", type=float, nargs="+", default=list(PROBE_RATIOS))
    parser.add_argument("--probe_epochs", type=int, default=100)
    parser.add_argument("--probe_batch_size", type=int, default=16)
    parser.add_argument("--probe_lr", type=float, default=1e-3)
    parser.add_argument(
        "--leads",
        nargs="+",
        default=["12"],
        choices=list(LEAD_SETS),
        help="lead sets for zero-shot and linear probing, the other leads zero-filled: 12, 6 (limb leads), "
        "3 (I, II, V2), 2 (I, II), 1 (I), 1-II (II); one table across them",
    )
    parser.add_argument(
        "--random_baseline",
        action="store_true",
        help="also linear-probe a randomly initialised ECG encoder of the same architecture (baseline row)",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=BOOTSTRAP_RESAMPLES,
        help="bootstrap resamples for the 95%% confidence intervals of the test AUROCs (0: none)",
    )
    parser.add_argument("--finetune_epochs", type=int, default=5)
    parser.add_argument("--finetune_batch_size", type=int, default=16)
    parser.add_argument("--finetune_lr", type=float, default=5e-5)
    parser.add_argument("--finetune_ratio", type=float, default=1.0)
    parser.add_argument(
        "--max_records", type=int, help="evaluate only the first N records of each dataset (smoke runs)"
    )
    parser.add_argument("--model_card", help="model card (README.md) to update with model-index entries and figures")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    return parser


def main(argv: Sequence[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    datasets = []
    for spec in args.dataset:
        name, separator, path = spec.partition("=")
        if not separator or not path:
            raise SystemExit(f"--dataset expects NAME=PATH, got {spec!r}")
        if name not in DATASETS:
            raise SystemExit(f"Unknown dataset {name!r}; choose from {sorted(DATASETS)}")
        datasets.append((name, path))
    if any(ratio <= 0 or ratio > 1 for ratio in args.probe_ratios):
        raise SystemExit("--probe_ratios must be in (0, 1]")

    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    model, processor = load_model_and_processor(args.model, device=args.device)
    if args.label_descriptions:
        descriptions = json.loads(Path(args.label_descriptions).read_text(encoding="utf-8"))
    else:
        descriptions = model_label_descriptions(args.model if Path(args.model).exists() else None)
    prompt_overrides = json.loads(Path(args.prompts).read_text(encoding="utf-8")) if args.prompts else None

    results: dict[str, Any] = {
        "model": args.model,
        "protocol": args.protocol,
        "tasks": list(args.tasks),
        "provenance": provenance(args, argv),
        "datasets": {},
    }
    figures = []
    for name, path in datasets:
        entry, dataset_figures = evaluate_dataset(
            args, name, path, model, processor, descriptions, prompt_overrides, output_dir
        )
        results["datasets"][name] = entry
        figures += dataset_figures

    # A JSON round trip: the dict returned and rendered is exactly what results.json holds.
    results = json.loads(json.dumps(_json_ready(results), allow_nan=False))
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (output_dir / "results.md").write_text(markdown_report(results), encoding="utf-8")
    if args.model_card:
        update_model_card(Path(args.model_card), results, figures)
    logger.info(f"Wrote {output_dir / 'results.json'} and {output_dir / 'results.md'}")
    return results


def _json_ready(value):
    """Plain JSON types (NaN -> None, numpy -> Python, int dict keys -> str)."""
    if isinstance(value, dict):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_json_ready(item) for item in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, Path):
        return str(value)
    return value


if __name__ == "__main__":
    main()
