# Copyright 2026 The dbeta authors. Licensed under the Apache License, Version 2.0.
"""Real 12-lead ECGs for the demo: the vendored LUDB evaluation set and the real training pairs.

The demo trains in minutes on a simulated corpus; what it learns is measured on real ECGs of
patients it never saw. This module

* splits the shared LUDB v1.0.1 records (one record per patient) into an **evaluation part**,
  vendored in the package (`dbeta/assets/ludb_eval/ludb_eval.npz`, int16, ~2 MB) so that every
  demo run reports a real-ECG figure without a download, and a **training part** whose ECG-report
  pairs the sim+real demo variant may use. The split is a pure function of the record list: per
  rhythm, a seeded shuffle puts about half of the records (and at least one positive of every
  rhythm with two or more records) in evaluation. Record 1 (the fixture the tests and the
  tokenizer builder read by default) always goes to the training part;
* loads the vendored set and checks its integrity (SHA-256 of the decoded samples);
* scores it zero-shot exactly as the public pipeline does (processor -> ECG tower, the plain-text
  prompts normalised like `pipeline_dbeta.normalize_label_text` -> text tower, ETS logit);
* splits the shared CinC 2021 / CPSC 2018 records (real millivolts) into a dev half, scored
  beside the LUDB dev split when a recipe choice is judged, and an evaluation half read once per
  reported run (`split_cinc`, `cinc_part`; the dev protocol locks the evaluation half);
* reads the real training pairs (LUDB training part with its cardiologist diagnosis text, CinC
  2021 and CPSC 2018 records with their SNOMED-CT diagnoses as text) for the sim+real variant.

Rebuild the vendored set (only needed if the split rule changes)::

    python -m dbeta.train.demo.real_ecg --ludb_dir ../shared/data/real/ludb/data

LUDB is distributed under the Open Data Commons Attribution License v1.0 (ODC-By 1.0); the
vendored folder carries the attribution and licence text.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dbeta import ASSETS_DIR
from dbeta.ludb_assets import (  # the format's one reader (the web demo uses it too), and the protocol's lock
    PROTOCOL_ENV,  # noqa: F401 (re-exported)
    EvaluationSetLocked,
    dev_protocol,
    read_ludb_npz,
    read_recorded_ids,
    signals_sha256,
)
from dbeta.train.evaluation.downstream import _ludb_diagnoses as _ludb_header_diagnoses

logger = logging.getLogger(__name__)

LUDB_EVAL_DIR = ASSETS_DIR / "ludb_eval"
LUDB_EVAL_FILE = LUDB_EVAL_DIR / "ludb_eval.npz"
#: The other half of the split: LUDB's training records with their diagnosis text, vendored too so
#: that the demo can train on real pairs offline (same format, same licence).
LUDB_TRAIN_FILE = LUDB_EVAL_DIR / "ludb_train.npz"
LUDB_LEAD_NAMES: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
LUDB_SAMPLING_RATE = 500
#: Seed of the per-rhythm shuffle that decides the evaluation / training split of LUDB.
SPLIT_SEED = 20261203
#: Records that never go to evaluation: record 1 is the LUDB fixture that the tests and
#: `train/demo/build_demo_tokenizer.py` read by default.
ALWAYS_TRAIN = frozenset({"1"})

#: Zero-shot rhythm labels on LUDB: label (= the plain-text prompt) -> the LUDB rhythm lines that
#: are positives (matched at the start of the lower-cased ``Rhythm:`` line).
LUDB_RHYTHM_LABELS: dict[str, str] = {
    "sinus rhythm": r"^sinus rhythm",
    "sinus bradycardia": r"^sinus bradycardia",
    "sinus tachycardia": r"^sinus tachycardia",
    "atrial fibrillation": r"^atrial fibrillation",
    "atrial flutter": r"^atrial flutter",
}
#: A label is scored when the evaluation set has at least this many positives (and a negative).
MIN_POSITIVES = 2
#: The rhythm statements are mutually exclusive (one rhythm per ECG); findings such as bundle branch
#: blocks or inverted T waves co-occur with any of them.
RHYTHM_LABELS: tuple[str, ...] = tuple(LUDB_RHYTHM_LABELS)
#: How the demo's real-ECG figures score the rhythm labels: "softmax" over the rhythm labels being
#: scored (the pipeline's `multi_label=False`), or "sigmoid" (independent scores, the same ranking as
#: the paper's raw dot product). Other labels always get independent sigmoid scores. Chosen on the
#: dev split: benchmarks/results/demo_dev_choices.md, round 5.
DEMO_RHYTHM_SCORING = "softmax"
RHYTHM_SCORINGS = ("softmax", "sigmoid")


def rhythm_columns(names: Sequence[str], rhythm_scoring: str) -> list[int]:
    """The columns of `names` that share one softmax under `rhythm_scoring` (none under "sigmoid")."""
    if rhythm_scoring not in RHYTHM_SCORINGS:
        raise ValueError(f"rhythm_scoring must be one of {RHYTHM_SCORINGS}, got {rhythm_scoring!r}")
    return [column for column, name in enumerate(names) if name in RHYTHM_LABELS] if rhythm_scoring == "softmax" else []


def label_scores(logits: np.ndarray, names: Sequence[str], rhythm_scoring: str) -> np.ndarray:
    """(N, L) scores of ETS logits against the labels `names`, as the pipeline gives them: float32
    sigmoids, except the rhythm columns (`rhythm_columns`), which get a softmax over themselves."""
    import torch

    from dbeta.zero_shot import logits_to_scores

    logits = torch.as_tensor(np.asarray(logits, dtype=np.float32))
    if logits.ndim != 2 or logits.shape[1] != len(names):
        raise ValueError(f"logits must be (N, {len(names)}) for {len(names)} labels, got {tuple(logits.shape)}")
    scores = logits_to_scores(logits, multi_label=True)
    rhythm = rhythm_columns(names, rhythm_scoring)
    if rhythm:
        scores[:, rhythm] = logits_to_scores(logits[:, rhythm], multi_label=False)
    return scores.numpy()

# The dev protocol's lock on the evaluation file (docs/demo.md: `PROTOCOL_ENV`, `EvaluationSetLocked`,
# `dev_protocol`) lives with the one reader of the vendored files, `dbeta.ludb_assets`, and is
# re-exported here.


# --------------------------------------------------------------------------------------------
# LUDB records and the split
# --------------------------------------------------------------------------------------------


def ludb_diagnoses(header: Path) -> list[str]:
    """The diagnosis lines of a LUDB header (the same parser as the downstream LUDB loader)."""
    return _ludb_header_diagnoses(header)


def ludb_rhythm(diagnoses: Sequence[str]) -> str:
    """The rhythm of a LUDB record, lower-cased without the final full stop (``""`` if none)."""
    for line in diagnoses:
        if line.lower().startswith("rhythm:"):
            return line.split(":", 1)[1].strip().rstrip(".").strip().lower()
    return ""


def ludb_report(diagnoses: Sequence[str]) -> str:
    """The report of a LUDB record: its diagnosis lines joined with spaces."""
    return " ".join(line.strip() for line in diagnoses if line.strip())


def split_ludb(record_rhythms: Mapping[str, str], seed: int = SPLIT_SEED) -> tuple[list[str], list[str]]:
    """(evaluation ids, training ids): per rhythm, a seeded shuffle sends ceil(n / 2) records to
    evaluation (sinus rhythm, the most common, only 40), never the ids in :data:`ALWAYS_TRAIN`."""
    evaluation, training = [], []
    by_rhythm: dict[str, list[str]] = {}
    for record_id in sorted(record_rhythms, key=lambda value: (int(value) if value.isdigit() else 10**9, value)):
        by_rhythm.setdefault(record_rhythms[record_id], []).append(record_id)
    for index, rhythm in enumerate(sorted(by_rhythm)):
        candidates = [record for record in by_rhythm[rhythm] if record not in ALWAYS_TRAIN]
        order = np.random.default_rng([seed, index]).permutation(len(candidates))
        count = 40 if rhythm == "sinus rhythm" else (len(candidates) + 1) // 2
        chosen = {candidates[i] for i in order[:count]}
        for record in by_rhythm[rhythm]:
            (evaluation if record in chosen else training).append(record)
    key = lambda value: (int(value) if value.isdigit() else 10**9, value)  # noqa: E731
    return sorted(evaluation, key=key), sorted(training, key=key)


def read_ludb_folder(ludb_dir: str | Path) -> dict[str, dict]:
    """id -> {"signal": float mV (12, 5000) in LUDB lead order, "report", "rhythm"} for a LUDB data folder."""
    from processing_dbeta import read_wfdb_record

    records = {}
    for header in sorted(Path(ludb_dir).glob("*.hea")):
        diagnoses = ludb_diagnoses(header)
        record = read_wfdb_record(header.with_suffix(""))
        names = [name.lower() for name in record.lead_names]
        order = [names.index(lead.lower()) for lead in LUDB_LEAD_NAMES]
        records[header.stem] = {
            "signal": np.asarray(record.signal, dtype=np.float64)[order],
            "report": ludb_report(diagnoses),
            "rhythm": ludb_rhythm(diagnoses),
        }
    return records


# --------------------------------------------------------------------------------------------
# The vendored evaluation set
# --------------------------------------------------------------------------------------------


@dataclass
class RealEvalSet:
    """Real ECGs with rhythm labels: signals in mV (N, 12, T), LUDB lead order, 500 Hz."""

    record_ids: list[str]
    signals: np.ndarray
    reports: list[str]
    rhythms: list[str]
    lead_names: tuple[str, ...] = LUDB_LEAD_NAMES
    sampling_rate: int = LUDB_SAMPLING_RATE
    #: "evaluation" (the 65 vendored evaluation patients) or "dev" (the dev split of the training part).
    split: str = "evaluation"

    def labels(self, label_set: Mapping[str, str] = LUDB_RHYTHM_LABELS) -> np.ndarray:
        """(N, num_labels) 0/1 rhythm labels."""
        patterns = [re.compile(pattern) for pattern in label_set.values()]
        return np.array([[int(bool(p.search(rhythm))) for p in patterns] for rhythm in self.rhythms], dtype=np.int64)

    def scored_labels(self, label_set: Mapping[str, str] = LUDB_RHYTHM_LABELS) -> list[str]:
        """The labels with at least :data:`MIN_POSITIVES` positives and one negative here."""
        labels = self.labels(label_set)
        positives = labels.sum(axis=0)
        return [name for name, count in zip(label_set, positives) if MIN_POSITIVES <= count < len(self.record_ids)]


def _encode(signals_mv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int16 first differences, float32 gain per record and lead): lossless for LUDB's ADC units
    up to the gain, and ~3x smaller than raw samples once compressed."""
    peak = np.abs(signals_mv).max(axis=-1)
    gain = np.minimum(1000.0, 16000.0 / np.maximum(peak, 1e-6)).astype(np.float32)
    digital = np.round(signals_mv * gain[..., None]).astype(np.int32)
    delta = np.diff(digital, axis=-1, prepend=0)
    if np.abs(delta).max() > 32767:
        raise ValueError("A sample-to-sample step does not fit int16.")
    return delta.astype(np.int16), gain


def _write_ludb_part(records: Mapping[str, dict], record_ids: Sequence[str], other_ids: Sequence[str], output_file: Path) -> None:
    delta, gain = _encode(np.stack([records[record_id]["signal"] for record_id in record_ids]))
    output_file.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        output_file,
        record_ids=np.array(record_ids),
        # The evaluation file lists the training ids (and the training file the evaluation ids), so
        # that either one alone proves the split.
        **({"training_record_ids": np.array(other_ids)} if output_file.name == LUDB_EVAL_FILE.name else {"evaluation_record_ids": np.array(other_ids)}),
        signals_delta=delta,
        gain=gain,
        reports=np.array([records[r]["report"] for r in record_ids]),
        rhythms=np.array([records[r]["rhythm"] for r in record_ids]),
        lead_names=np.array(LUDB_LEAD_NAMES),
        sampling_rate=np.array(LUDB_SAMPLING_RATE),
        sha256=np.array(signals_sha256(delta)),
    )


def build_ludb_eval_set(ludb_dir: str | Path, output_file: str | Path = LUDB_EVAL_FILE, train_file: str | Path | None = LUDB_TRAIN_FILE) -> Path:
    """Split the LUDB folder and write the evaluation part (and, unless `train_file` is None, the
    training part beside it) as compressed ``.npz`` files."""
    records = read_ludb_folder(ludb_dir)
    evaluation, training = split_ludb({record_id: value["rhythm"] for record_id, value in records.items()})
    output_file = Path(output_file)
    _write_ludb_part(records, evaluation, training, output_file)
    if train_file is not None:
        _write_ludb_part(records, training, evaluation, Path(train_file))
    logger.info("Wrote %d LUDB evaluation records (%d kept for training) to %s (%.1f MB)",
                len(evaluation), len(training), output_file, output_file.stat().st_size / 1e6)
    return output_file


def load_ludb_train_set(path: str | Path = LUDB_TRAIN_FILE, eval_file: str | Path = LUDB_EVAL_FILE, verify: bool = True) -> RealEvalSet:
    """The vendored LUDB training part (records the demo may train on). Checked against the
    evaluation set: no record of it is here. Under the dev protocol the check uses the evaluation
    ids that the training file records, so that the evaluation file is not opened."""
    data = RealEvalSet(**read_ludb_npz(path, verify=verify))
    if dev_protocol():
        evaluation_ids = read_recorded_ids(path, "evaluation_record_ids")
    else:
        evaluation_ids = read_recorded_ids(eval_file, "record_ids")
    overlap = set(data.record_ids) & set(evaluation_ids)
    if overlap:
        raise ValueError(f"{path}: LUDB records {sorted(overlap)} are also in the evaluation set {eval_file}.")
    return data


def load_ludb_eval_set(path: str | Path = LUDB_EVAL_FILE, verify: bool = True) -> RealEvalSet:
    """The vendored LUDB evaluation set; `verify` checks the samples against the stored SHA-256.
    Refused under the dev protocol (`EvaluationSetLocked`)."""
    return RealEvalSet(**read_ludb_npz(path, verify=verify))


def ludb_dev_record_ids(train_file: str | Path = LUDB_TRAIN_FILE) -> list[str]:
    """The dev split: the training-part patients that lend no median beat to the simulator (so the
    demo never trains on them, whatever its seed), in record order. Recipe choices are judged here."""
    from dbeta.train.demo.make_demo_corpus import real_beat_library

    sources = {beat.record_id for beat in real_beat_library()}
    return [record_id for record_id in read_recorded_ids(train_file, "record_ids") if record_id not in sources]


def load_ludb_dev_set(train_file: str | Path = LUDB_TRAIN_FILE) -> RealEvalSet:
    """The dev split (`ludb_dev_record_ids`) as a `RealEvalSet` with `split="dev"`."""
    data = load_ludb_train_set(train_file)
    keep = set(ludb_dev_record_ids(train_file))
    rows = [index for index, record_id in enumerate(data.record_ids) if record_id in keep]
    return RealEvalSet(
        record_ids=[data.record_ids[i] for i in rows],
        signals=data.signals[rows],
        reports=[data.reports[i] for i in rows],
        rhythms=[data.rhythms[i] for i in rows],
        lead_names=data.lead_names,
        sampling_rate=data.sampling_rate,
        split="dev",
    )


def ludb_training_record_ids(path: str | Path = LUDB_EVAL_FILE) -> list[str]:
    """The LUDB records that are NOT in the vendored evaluation set (the ones training may use)."""
    return read_recorded_ids(path, "training_record_ids")


# --------------------------------------------------------------------------------------------
# Zero-shot scoring (the pipeline's computation)
# --------------------------------------------------------------------------------------------


def zero_shot_logits(
    model, processor, eval_set: RealEvalSet, prompts: Sequence[str], batch_size: int = 32, ecg_encoder=None
):
    """ETS logits (N, num_prompts) of the records against plain-text prompts: the processor (lead
    order, resampling), the ECG tower, then the package's one scorer (`dbeta.zero_shot`), as
    `pipeline("zero-shot-ecg-classification")` scores them. `ecg_encoder` (e.g. an
    `dbeta.onnx_backend.ONNXECGEncoder` of this model's export) replaces the model's ECG tower."""
    import torch

    from dbeta.embedding import embed_ecg_batch
    from dbeta.zero_shot import embed_label_texts
    from dbeta.zero_shot import zero_shot_logits as ets_logits

    was_training = model.training
    model.eval()
    try:
        label_embeds = embed_label_texts(model, processor.tokenizer, prompts, normalize=True)
        logits = []
        for start in range(0, len(eval_set.record_ids), batch_size):
            chunk = eval_set.signals[start : start + batch_size]
            inputs = processor(ecg=chunk, sampling_rate=eval_set.sampling_rate, lead_names=list(eval_set.lead_names), return_tensors="pt")
            ecg_embeds = embed_ecg_batch(model if ecg_encoder is None else ecg_encoder, inputs["input_values"])
            logits.append(ets_logits(model, ecg_embeds, label_embeds))
    finally:
        model.train(was_training)
    return torch.cat(logits).numpy()


def evaluate_real_zero_shot(
    model,
    processor,
    eval_set: RealEvalSet | None = None,
    label_set: Mapping[str, str] = LUDB_RHYTHM_LABELS,
    ecg_encoder=None,
    rhythm_scoring: str = "sigmoid",
) -> dict[str, float]:
    """Per-label and macro zero-shot AUROC on real ECGs: ``{"real_zero_shot_macro_auroc",
    "real_zero_shot_num_labels", "real_zero_shot_num_records", "real_zero_shot_auroc/<label>"}``.
    `ecg_encoder`: another backend for the ECG tower (`zero_shot_logits`). `rhythm_scoring`: see
    `label_scores` (the demo's figure uses `DEMO_RHYTHM_SCORING`)."""
    from dbeta.train.evaluation.metrics import multilabel_auroc

    eval_set = eval_set if eval_set is not None else load_ludb_eval_set()
    if eval_set.split == "training":
        raise ValueError("The LUDB training part is not an evaluation set: use load_ludb_dev_set() for its dev split")
    scored = eval_set.scored_labels(label_set)
    labels = eval_set.labels({name: label_set[name] for name in scored})
    rhythm_columns(scored, rhythm_scoring)  # an unknown scoring fails before the model runs
    logits = zero_shot_logits(model, processor, eval_set, scored, ecg_encoder=ecg_encoder)
    # The pipeline's scores: float32 (saturated ties included), the rhythm labels as chosen.
    scores = label_scores(logits, scored, rhythm_scoring)
    auroc = multilabel_auroc(labels, scores, scored)
    metrics = {
        "real_zero_shot_macro_auroc": float(auroc.macro),
        "real_zero_shot_num_labels": len(auroc.per_label),
        "real_zero_shot_num_records": len(eval_set.record_ids),
        # 1 when these figures are the dev split's (the dev protocol), so that no one reports them as held out.
        "real_zero_shot_dev_split": float(eval_set.split == "dev"),
        # 1 when the rhythm labels were scored by a softmax over them (`label_scores`).
        "real_zero_shot_rhythm_softmax": float(bool(rhythm_columns(scored, rhythm_scoring))),
    }
    metrics.update({f"real_zero_shot_auroc/{label}": float(value) for label, value in auroc.per_label.items()})
    return metrics


# --------------------------------------------------------------------------------------------
# The shared CinC 2021 / CPSC 2018 records (real millivolts): a dev half and an evaluation half
# --------------------------------------------------------------------------------------------

#: Zero-shot labels scored on the shared CinC 2021 + CPSC 2018 records (real millivolts, unlike LUDB):
#: prompt -> the CinC SNOMED-CT abbreviations that are its positives. The morphology labels need
#: amplitude and shape, which LUDB's per-lead normalisation removes.
CINC_LABELS: dict[str, frozenset[str]] = {
    "sinus rhythm": frozenset({"NSR"}),
    "sinus bradycardia": frozenset({"SB"}),
    "sinus tachycardia": frozenset({"STach"}),
    "atrial fibrillation": frozenset({"AF"}),
    "atrial flutter": frozenset({"AFL"}),
    "left bundle branch block": frozenset({"LBBB", "CLBBB"}),
    "right bundle branch block": frozenset({"RBBB", "CRBBB"}),
    "low QRS voltages": frozenset({"LQRSV"}),
    "inverted T waves": frozenset({"TInv"}),
}
CINC_SOURCES: tuple[str, ...] = ("cinc2021", "cpsc2018")
#: Seed of the per-stratum shuffle that splits the CinC/CPSC records into a dev and an evaluation half.
CINC_SPLIT_SEED = 20261207
CINC_PARTS = ("dev", "evaluation")


@dataclass(frozen=True)
class CincRecord:
    """One record of a shared `labels.csv` (`cinc2021/` or `cpsc2018/`): its signal file (`.hea`,
    else `.mat`), its SNOMED-CT abbreviations and their names."""

    source: str
    record_id: str
    path: Path
    codes: frozenset[str]
    dx_names: str

    @property
    def key(self) -> str:
        return f"{self.source}/{self.record_id}"

    def labels(self, names: Sequence[str]) -> list[int]:
        return [int(bool(self.codes & CINC_LABELS[name])) for name in names]


def read_cinc_records(real_dir: str | Path) -> list[CincRecord]:
    """Every record listed in the `labels.csv` of `real_dir/cinc2021` and `real_dir/cpsc2018`
    (folders without one are absent), in file order. A listed record without its signal file is an
    error: the split and every figure are functions of the full list."""
    records = []
    for source in CINC_SOURCES:
        folder = Path(real_dir) / source
        labels_file = folder / "labels.csv"
        if not labels_file.is_file():
            continue
        with open(labels_file, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                header = folder / "records" / f"{row['record']}.hea"
                path = header if header.is_file() else header.with_suffix(".mat")
                if not path.is_file():
                    raise FileNotFoundError(f"{labels_file}: record {row['record']!r} has no .hea or .mat in {folder / 'records'}")
                codes = frozenset(code.strip() for code in row["dx_abbrev"].split(",") if code.strip())
                records.append(CincRecord(source, row["record"], path, codes, row["dx_names"]))
    return records


def split_cinc(records: Sequence[CincRecord], seed: int = CINC_SPLIT_SEED) -> tuple[list[str], list[str]]:
    """(dev keys, evaluation keys) of the records (`CincRecord.key`), a pure function of their keys
    and codes: each record's stratum is the rarest label of :data:`CINC_LABELS` it carries (or none);
    per stratum a seeded shuffle sends ceil(n / 2) records to evaluation, the rest to dev, so each
    label's positives divide as evenly as the strata allow."""
    counts = {name: sum(bool(record.codes & wanted) for record in records) for name, wanted in CINC_LABELS.items()}
    by_stratum: dict[str, list[str]] = {}
    for record in sorted(records, key=lambda item: item.key):
        carried = [name for name in CINC_LABELS if record.codes & CINC_LABELS[name]]
        stratum = min(carried, key=lambda name: (counts[name], list(CINC_LABELS).index(name))) if carried else ""
        by_stratum.setdefault(stratum, []).append(record.key)
    dev, evaluation = [], []
    for index, stratum in enumerate(sorted(by_stratum)):
        keys = by_stratum[stratum]
        order = np.random.default_rng([seed, index]).permutation(len(keys))
        chosen = {keys[i] for i in order[: (len(keys) + 1) // 2]}
        for key in keys:
            (evaluation if key in chosen else dev).append(key)
    return sorted(dev), sorted(evaluation)


def cinc_part(real_dir: str | Path, part: str) -> list[CincRecord]:
    """The CinC/CPSC records of one half (`"dev"` or `"evaluation"`, `split_cinc`), in file order.
    The evaluation half is refused under the dev protocol (`EvaluationSetLocked`)."""
    if part not in CINC_PARTS:
        raise ValueError(f"part={part!r}: expected one of {CINC_PARTS}")
    if part == "evaluation" and dev_protocol():
        raise EvaluationSetLocked(
            "The evaluation half of the CinC/CPSC records may not be read under the dev protocol "
            f"({PROTOCOL_ENV}=dev); judge choices on their dev half"
        )
    records = read_cinc_records(real_dir)
    keep = set(split_cinc(records)[CINC_PARTS.index(part)])
    return [record for record in records if record.key in keep]


# --------------------------------------------------------------------------------------------
# Real ECG-report pairs for training (the sim+real variant)
# --------------------------------------------------------------------------------------------


def _cinc_report(dx_names: str) -> str:
    """CinC SNOMED-CT diagnosis names as a report: one capitalised statement per code."""
    statements = [name.strip() for name in dx_names.split(";") if name.strip()]
    return " ".join(statement[:1].upper() + statement[1:] + "." for statement in statements)


def real_training_pairs(real_dir: str | Path | None = None, eval_file: str | Path = LUDB_EVAL_FILE, train_file: str | Path = LUDB_TRAIN_FILE) -> list[dict]:
    """Real (ECG, report) pairs that training may use: the vendored LUDB training part (records
    outside the evaluation set, with their cardiologists' diagnosis text) and, with `real_dir` (laid
    out like `../shared/data/real`), its CinC 2021 and CPSC 2018 records (their SNOMED-CT diagnosis
    names as text). Each pair: {"source", "record_id", "record" (a `processing_dbeta.ECGRecord`),
    "report"}. Never returns an evaluation record (checked)."""
    from processing_dbeta import ECGRecord, read_ecg_file

    if dev_protocol():
        # The LUDB training part holds the dev split: training on its pairs would leak it.
        raise EvaluationSetLocked("Real LUDB training pairs (--demo_real_pairs) hold the dev split: not allowed under the dev protocol")
    ludb = load_ludb_train_set(train_file, eval_file)
    pairs: list[dict] = [
        {"source": "ludb", "record_id": record_id, "record": ECGRecord(signal, list(ludb.lead_names), float(ludb.sampling_rate), {"name": record_id}),
         "report": report}
        for record_id, signal, report in zip(ludb.record_ids, ludb.signals, ludb.reports)
    ]
    if real_dir is None:
        return pairs
    for cinc in read_cinc_records(real_dir):
        pairs.append({"source": cinc.source, "record_id": cinc.record_id, "record": read_ecg_file(cinc.path), "report": _cinc_report(cinc.dx_names)})
    return pairs


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the vendored LUDB evaluation set.")
    parser.add_argument("--ludb_dir", required=True, help="The LUDB v1.0.1 data folder (.hea/.dat).")
    parser.add_argument("--output_file", default=str(LUDB_EVAL_FILE))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = build_ludb_eval_set(args.ludb_dir, args.output_file)
    data = load_ludb_eval_set(path)
    counts = {label: int(count) for label, count in zip(LUDB_RHYTHM_LABELS, data.labels().sum(axis=0))}
    print(json.dumps({"records": len(data.record_ids), "positives": counts, "scored": data.scored_labels()}, indent=2))


if __name__ == "__main__":
    main()
