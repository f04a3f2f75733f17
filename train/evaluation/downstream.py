"""Loaders for the downstream benchmarks, from their folders exactly as distributed.

Every loader returns a :class:`DownstreamDataset`: per record an id, a split, a multi-hot label
row (with ``label_names``) and, read on demand through the file readers of
``processing_dbeta`` (DECISIONS 10), the signal in millivolts with its lead names and sampling
rate (the processor turns those into model input). LUDB also carries its report text.

| loader | folder as distributed | labels | splits (DECISIONS 22) |
|---|---|---|---|
| :func:`load_ptbxl` | ``ptbxl_database.csv``, ``scp_statements.csv``, ``records500/`` | super / sub / form / rhythm | folds 1-8 / 9 / 10 |
| :func:`load_cpsc2018` | ``*.mat`` (struct ``ECG``) + ``REFERENCE.csv``, or CinC WFDB | 9 CPSC classes | seeded, or ``split_file`` |
| :func:`load_cinc_wfdb` | CinC 2021 / CSN ``*.hea`` + ``*.mat`` with ``# Dx:`` | SNOMED -> abbreviation | seeded, or ``split_file`` |
| :func:`load_code_test` | ``ecg_tracings.hdf5`` + ``annotations/gold_standard.csv`` | 1dAVb RBBB LBBB SB AF ST | test only |
| :func:`load_ludb` | ``data/*.hea`` (+ ``ludb.csv``) | rhythm | test only |
"""

from __future__ import annotations

import ast
import csv
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

RESOURCES_DIR = Path(__file__).resolve().parent / "resources"
DX_MAPPING_FILES = (RESOURCES_DIR / "dx_mapping_scored.csv", RESOURCES_DIR / "dx_mapping_unscored.csv")
SPLITS = ("train", "validation", "test")
#: Seeded split fractions for datasets without an official split; they reproduce the MERL split
#: sizes (e.g. CPSC 2018 4950 / 551 / 1376, CSN 16546 / 1860 / 4620).
DEFAULT_SPLIT_FRACTIONS = (0.72, 0.08, 0.20)

PTBXL_TASKS = ("superdiagnostic", "subdiagnostic", "form", "rhythm")


def ptbxl_label_name(name: str) -> str:
    """The label name MERL and D-BETA use for a PTB-XL statement or class: PTB-XL pads some with
    underscores (subclasses ``_AVB``, ``ISC_``, ``NST_``; form statements ``STD_``, ``STE_``,
    ``NT_``, ``TAB_``, ``NST_``), under which no label description is found."""
    return name.strip("_")
#: CPSC 2018 REFERENCE.csv class numbers -> label names (MERL's names).
CPSC2018_CLASSES: dict[int, str] = {1: "NORM", 2: "AFIB", 3: "1AVB", 4: "CLBBB", 5: "CRBBB", 6: "PAC", 7: "VPC", 8: "STD", 9: "STE"}
#: SNOMED-CT codes of the CinC repackaging of CPSC 2018 -> the same label names.
CPSC2018_SNOMED: dict[str, str] = {
    "426783006": "NORM",
    "164889003": "AFIB",
    "270492004": "1AVB",
    "164909002": "CLBBB",
    "733534002": "CLBBB",
    "59118001": "CRBBB",
    "713427006": "CRBBB",
    "284470004": "PAC",
    "164884008": "VPC",
    "427172004": "VPC",
    "17338001": "VPC",
    "429622005": "STD",
    "164931005": "STE",
}
CODE_TEST_LABELS = ("1dAVb", "RBBB", "LBBB", "SB", "AF", "ST")


@dataclass
class DownstreamDataset:
    """Records of one benchmark with multi-hot labels; signals are read on demand.

    Attributes:
        name: benchmark name (e.g. ``"ptbxl-rhythm"``).
        record_ids: one id per record.
        labels: int8 (num_records, num_labels) multi-hot matrix.
        label_names: the column names of ``labels``.
        splits: ``"train"`` / ``"validation"`` / ``"test"`` per record.
        reports: free-text report per record (LUDB), else None.
        reader: ``reader(index) -> ECGRecord`` (signal float32 mV, lead_names, sampling_rate).
    """

    name: str
    record_ids: list[str]
    labels: np.ndarray
    label_names: list[str]
    splits: np.ndarray
    reader: Callable[[int], Any] = field(repr=False)
    reports: list[str] | None = None
    _indices: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.record_ids)

    def read(self, index: int):
        """The ``ECGRecord`` of record ``index`` (millivolts, lead names as in the file)."""
        source = int(self._indices[index]) if self._indices is not None else int(index)
        return self.reader(source)

    def __iter__(self) -> Iterator[Any]:
        for index in range(len(self)):
            yield self.read(index)

    def split(self, name: str) -> "DownstreamDataset":
        """The records of one split."""
        if name not in SPLITS:
            raise ValueError(f"Unknown split {name!r}; expected one of {SPLITS}")
        return self.select(np.flatnonzero(self.splits == name))

    def select(self, indices: Sequence[int]) -> "DownstreamDataset":
        indices = np.asarray(indices, dtype=np.int64)
        base = self._indices[indices] if self._indices is not None else indices
        return replace(
            self,
            record_ids=[self.record_ids[i] for i in indices],
            labels=self.labels[indices],
            splits=self.splits[indices],
            reports=[self.reports[i] for i in indices] if self.reports is not None else None,
            _indices=base,
        )

    def labels_without_positives(self, split: str) -> list[str]:
        """Labels with no positive record in ``split`` (left out of macro AUROC, DECISIONS 22)."""
        subset = self.labels[self.splits == split]
        return [name for name, count in zip(self.label_names, subset.sum(axis=0)) if count == 0]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _multi_hot(label_lists: Sequence[Sequence[str]], label_names: Sequence[str]) -> np.ndarray:
    column = {name: index for index, name in enumerate(label_names)}
    matrix = np.zeros((len(label_lists), len(label_names)), dtype=np.int8)
    for row, names in enumerate(label_lists):
        for name in names:
            if name in column:
                matrix[row, column[name]] = 1
    return matrix


def seeded_splits(
    record_ids: Sequence[str],
    seed: int = 42,
    fractions: tuple[float, float, float] = DEFAULT_SPLIT_FRACTIONS,
    split_file: str | os.PathLike | None = None,
) -> np.ndarray:
    """Split assignment per record: from ``split_file`` (CSV with ``record`` and ``split``
    columns, e.g. a published split) when given, else a seeded random permutation cut at
    ``fractions`` (train, validation, test). Records missing from a split file raise ValueError."""
    if split_file is not None:
        with open(split_file, newline="", encoding="utf-8") as handle:
            mapping = {row["record"]: row["split"] for row in csv.DictReader(handle)}
        missing = [record for record in record_ids if record not in mapping]
        if missing:
            raise ValueError(f"{split_file} has no split for {len(missing)} records, e.g. {missing[:3]}")
        splits = np.array([mapping[record] for record in record_ids], dtype=object)
        unknown = set(splits) - set(SPLITS)
        if unknown:
            raise ValueError(f"{split_file}: unknown split names {sorted(unknown)}")
        return splits
    if not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"Split fractions must sum to 1, got {fractions}")
    count = len(record_ids)
    order = np.random.default_rng(seed).permutation(count)
    num_train = int(round(fractions[0] * count))
    num_validation = int(round(fractions[1] * count))
    splits = np.empty(count, dtype=object)
    splits[order[:num_train]] = "train"
    splits[order[num_train : num_train + num_validation]] = "validation"
    splits[order[num_train + num_validation :]] = "test"
    return splits


def load_snomed_mapping(files: Sequence[str | os.PathLike] = DX_MAPPING_FILES) -> dict[str, str]:
    """SNOMED-CT code -> abbreviation, from CinC ``dx_mapping_*.csv`` files (``SNOMEDCTCode``,
    ``Abbreviation``) or CSN's ``ConditionNames_SNOMED-CT.csv`` (``Snomed_CT``, ``Acronym Name``)."""
    mapping: dict[str, str] = {}
    for path in files:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            for row in csv.DictReader(handle):
                code = row.get("SNOMEDCTCode") or row.get("Snomed_CT")
                name = row.get("Abbreviation") or row.get("Acronym Name")
                if code and name:
                    mapping.setdefault(str(code).strip(), name.strip())
    return mapping


def _find_headers(root: Path) -> list[Path]:
    return sorted(root.rglob("*.hea"), key=lambda path: (path.stem, str(path)))


def _wfdb_reader(paths: Sequence[Path]) -> Callable[[int], Any]:
    from processing_dbeta import read_wfdb_record

    return lambda index: read_wfdb_record(paths[index].with_suffix(""))


# --------------------------------------------------------------------------------------------
# PTB-XL
# --------------------------------------------------------------------------------------------


def load_ptbxl(root: str | os.PathLike, task: str = "superdiagnostic", sampling_rate: int = 500) -> DownstreamDataset:
    """PTB-XL (v1.0.x) with one of the label sets used by MERL / D-BETA.

    ``superdiagnostic`` / ``subdiagnostic``: the ``diagnostic_class`` / ``diagnostic_subclass`` of
    the diagnostic statements in ``scp_codes``; ``form`` / ``rhythm``: the statements flagged as
    form / rhythm in ``scp_statements.csv`` (any likelihood, as in MERL). Records without a label of
    the task are left out. Splits: ``strat_fold`` 1-8 train, 9 validation, 10 test. Label names
    lose PTB-XL's underscore padding (``_AVB`` -> ``AVB``, ``STD_`` -> ``STD``; see
    :func:`ptbxl_label_name`), as in MERL and the label descriptions.
    """
    import pandas as pd

    if task not in PTBXL_TASKS:
        raise ValueError(f"Unknown PTB-XL task {task!r}; expected one of {PTBXL_TASKS}")
    root = Path(root)
    database = pd.read_csv(root / "ptbxl_database.csv", index_col="ecg_id")
    statements = pd.read_csv(root / "scp_statements.csv", index_col=0)
    if task in ("superdiagnostic", "subdiagnostic"):
        column = "diagnostic_class" if task == "superdiagnostic" else "diagnostic_subclass"
        diagnostic = statements[statements["diagnostic"] == 1]
        code_to_label = {code: str(value) for code, value in diagnostic[column].items() if pd.notna(value)}
    else:
        flagged = statements[statements[task] == 1]
        code_to_label = {code: code for code in flagged.index}
    names: dict[str, set[str]] = {}
    for label in code_to_label.values():
        names.setdefault(ptbxl_label_name(label), set()).add(label)
    clashes = {name: sorted(raw) for name, raw in names.items() if len(raw) > 1}
    if clashes:
        raise ValueError(f"{root / 'scp_statements.csv'}: PTB-XL labels that differ only by padding: {clashes}")
    code_to_label = {code: ptbxl_label_name(label) for code, label in code_to_label.items()}

    record_labels = []
    for codes in database["scp_codes"]:
        parsed = ast.literal_eval(codes) if isinstance(codes, str) else dict(codes)
        record_labels.append(sorted({code_to_label[code] for code in parsed if code in code_to_label}))
    keep = np.array([bool(labels) for labels in record_labels])
    kept = database[keep]
    record_labels = [labels for labels, selected in zip(record_labels, keep) if selected]
    label_names = sorted({label for labels in record_labels for label in labels})
    folds = kept["strat_fold"].to_numpy()
    splits = np.where(folds <= 8, "train", np.where(folds == 9, "validation", "test")).astype(object)
    file_column = "filename_hr" if sampling_rate == 500 else "filename_lr"
    paths = [root / name for name in kept[file_column]]

    from processing_dbeta import read_wfdb_record

    return DownstreamDataset(
        name=f"ptbxl-{task}",
        record_ids=[str(ecg_id) for ecg_id in kept.index],
        labels=_multi_hot(record_labels, label_names),
        label_names=label_names,
        splits=splits,
        reader=lambda index: read_wfdb_record(paths[index]),
    )


# --------------------------------------------------------------------------------------------
# CPSC 2018, CinC 2021, CSN
# --------------------------------------------------------------------------------------------


def load_cpsc2018(
    root: str | os.PathLike, seed: int = 42, split_file: str | os.PathLike | None = None
) -> DownstreamDataset:
    """CPSC 2018 with its 9 classes, from the original release (``*.mat`` + ``REFERENCE.csv``)
    or the PhysioNet/CinC WFDB repackaging (``*.hea`` + ``*.mat`` with SNOMED ``# Dx:``).

    Labels: NORM AFIB 1AVB CLBBB CRBBB PAC VPC STD STE (REFERENCE.csv classes 1-9).
    """
    root = Path(root)
    label_names = list(CPSC2018_CLASSES.values())
    references = sorted(root.rglob("REFERENCE.csv"))
    if references:
        from processing_dbeta import read_cpsc2018_mat

        record_ids, record_labels = [], []
        for reference in references:
            with open(reference, newline="", encoding="utf-8") as handle:
                for row in csv.DictReader(handle):
                    labels = [row[key] for key in ("First_label", "Second_label", "Third_label") if row.get(key, "").strip()]
                    record_ids.append(row["Recording"].strip())
                    record_labels.append([CPSC2018_CLASSES[int(float(label))] for label in labels])
        mat_files = {path.stem: path for path in root.rglob("*.mat")}
        missing = [record for record in record_ids if record not in mat_files]
        if missing:
            raise FileNotFoundError(f"{len(missing)} records of REFERENCE.csv have no .mat file, e.g. {missing[:3]}")
        paths = [mat_files[record] for record in record_ids]
        reader = lambda index: read_cpsc2018_mat(paths[index])  # noqa: E731
    else:
        headers = _find_headers(root)
        if not headers:
            raise FileNotFoundError(f"{root} has neither REFERENCE.csv nor WFDB headers")

        record_ids, record_labels = [], []
        for header in headers:
            codes = _header_dx_codes(header)
            record_ids.append(header.stem)
            record_labels.append(sorted({CPSC2018_SNOMED[code] for code in codes if code in CPSC2018_SNOMED}))
        reader = _wfdb_reader(headers)
    return DownstreamDataset(
        name="cpsc2018",
        record_ids=record_ids,
        labels=_multi_hot(record_labels, label_names),
        label_names=label_names,
        splits=seeded_splits(record_ids, seed, split_file=split_file),
        reader=reader,
    )


_DX_LINE = re.compile(r"^#\s*Dx\s*:\s*(?P<codes>.*)$", re.IGNORECASE)


def _header_dx_codes(header: Path) -> list[str]:
    """The SNOMED codes of a CinC header's ``# Dx:`` line (read without the signal)."""
    for line in header.read_text(encoding="utf-8", errors="replace").splitlines():
        match = _DX_LINE.match(line.strip())
        if match:
            return [code.strip() for code in match["codes"].split(",") if code.strip()]
    return []


def load_cinc_wfdb(
    root: str | os.PathLike,
    name: str = "cinc2021",
    label_names: Sequence[str] | None = None,
    mapping_files: Sequence[str | os.PathLike] = DX_MAPPING_FILES,
    seed: int = 42,
    split_file: str | os.PathLike | None = None,
) -> DownstreamDataset:
    """PhysioNet/CinC 2021 or CSN (Chapman-Shaoxing-Ningbo): WFDB ``.hea`` + ``.mat`` records whose
    ``# Dx:`` SNOMED-CT codes are named through ``mapping_files`` (default: the CinC 2021
    ``dx_mapping_*.csv`` shipped in ``train/evaluation/resources``; pass CSN's ``ConditionNames_SNOMED-CT.csv``
    for its own acronyms). ``label_names`` fixes the label columns (default: every name that occurs);
    codes without a name keep the code itself as name.
    """
    root = Path(root)
    headers = _find_headers(root)
    if not headers:
        raise FileNotFoundError(f"No WFDB headers under {root}")
    mapping = load_snomed_mapping(mapping_files)
    record_ids, record_labels = [], []
    for header in headers:
        record_ids.append(header.stem)
        record_labels.append(sorted({mapping.get(code, code) for code in _header_dx_codes(header)}))
    names = list(label_names) if label_names is not None else sorted({n for labels in record_labels for n in labels})
    return DownstreamDataset(
        name=name,
        record_ids=record_ids,
        labels=_multi_hot(record_labels, names),
        label_names=names,
        splits=seeded_splits(record_ids, seed, split_file=split_file),
        reader=_wfdb_reader(headers),
    )


def load_csn(root: str | os.PathLike, **kwargs: Any) -> DownstreamDataset:
    """CSN (Chapman-Shaoxing-Ningbo, PhysioNet ``ecg-arrhythmia``); see :func:`load_cinc_wfdb`.
    If the folder has CSN's ``ConditionNames_SNOMED-CT.csv`` it names the codes (MERL's names)."""
    own_names = sorted(Path(root).rglob("ConditionNames_SNOMED-CT.csv"))
    if own_names and "mapping_files" not in kwargs:
        kwargs["mapping_files"] = [own_names[0], *DX_MAPPING_FILES]
    return load_cinc_wfdb(root, name="csn", **kwargs)


# --------------------------------------------------------------------------------------------
# CODE-test
# --------------------------------------------------------------------------------------------


def load_code_test(
    root: str | os.PathLike, annotation_file: str = "annotations/gold_standard.csv", tracings_file: str = "ecg_tracings.hdf5"
) -> DownstreamDataset:
    """CODE-test (Ribeiro et al. 2020): 827 exams in ``ecg_tracings.hdf5`` (400 Hz, 4096 samples,
    leads I, II, III, aVR, aVL, aVF, V1-V6) and 0/1 annotations for 1dAVb RBBB LBBB SB AF ST
    (``annotations/gold_standard.csv`` by default; the residents' and students' files have the same
    columns). Test split only."""
    import pandas as pd
    from processing_dbeta import ECGRecord, read_code_hdf5

    root = Path(root)
    annotation_path = root / annotation_file
    if not annotation_path.is_file():
        candidates = sorted(root.rglob(Path(annotation_file).name))
        if not candidates:
            raise FileNotFoundError(f"No {annotation_file} under {root}")
        annotation_path = candidates[0]
    tracings_path = root / tracings_file
    if not tracings_path.is_file():
        tracings_path = next(iter(sorted(root.rglob(Path(tracings_file).name))), tracings_path)
    annotations = pd.read_csv(annotation_path)
    labels = annotations[list(CODE_TEST_LABELS)].to_numpy(dtype=np.int8)

    def reader(index: int) -> Any:
        signals, lead_names, sampling_rate = read_code_hdf5(tracings_path, start=index, stop=index + 1)
        return ECGRecord(signals[0], list(lead_names), sampling_rate, {"name": f"code-test-{index}", "comments": []})

    return DownstreamDataset(
        name="code-test",
        record_ids=[str(index) for index in range(len(annotations))],
        labels=labels,
        label_names=list(CODE_TEST_LABELS),
        splits=np.full(len(annotations), "test", dtype=object),
        reader=reader,
    )


# --------------------------------------------------------------------------------------------
# LUDB
# --------------------------------------------------------------------------------------------


def _ludb_rhythm(diagnoses: Sequence[str]) -> str | None:
    for line in diagnoses:
        if line.lower().startswith("rhythm:"):
            return line.split(":", 1)[1].strip().rstrip(".").strip()
    return None


def load_ludb(root: str | os.PathLike) -> DownstreamDataset:
    """LUDB v1.0.1: 10 s 500 Hz 12-lead ECGs whose cardiologists' diagnosis lines (header comments
    after ``#<diagnoses>:``) form the report (joined with spaces) — a real ECG-text pair set.
    Labels: the rhythm (``Rhythm: ...`` line, e.g. "Sinus rhythm", "Atrial fibrillation"). Test only."""
    from processing_dbeta import read_wfdb_record

    root = Path(root)
    headers = sorted(_find_headers(root), key=lambda path: (int(path.stem) if path.stem.isdigit() else 10**9, path.stem))
    if not headers:
        raise FileNotFoundError(f"No LUDB headers under {root}")
    record_ids, reports, rhythms = [], [], []
    for header in headers:
        diagnoses = _ludb_diagnoses(header)
        record_ids.append(header.stem)
        reports.append(" ".join(line.strip() for line in diagnoses if line.strip()))
        rhythm = _ludb_rhythm(diagnoses)
        rhythms.append([rhythm] if rhythm else [])
    label_names = sorted({rhythm for labels in rhythms for rhythm in labels})
    return DownstreamDataset(
        name="ludb",
        record_ids=record_ids,
        labels=_multi_hot(rhythms, label_names),
        label_names=label_names,
        splits=np.full(len(record_ids), "test", dtype=object),
        reader=lambda index: read_wfdb_record(headers[index].with_suffix("")),
        reports=reports,
    )


def load_labeled_folder(root: str | os.PathLike) -> DownstreamDataset:
    """Any folder of ECG records, in every format `dbeta embed` reads (WFDB, CPSC ``.mat``, and the
    clinical exports: DICOM waveform, GE MUSE / Philips / HL7 aECG XML, SCP-ECG, EDF, ISHNE), found
    the way the command line finds them (`dbeta.cli.find_records`), with their labels in
    ``labels.csv`` beside them: a ``record`` column (the record id `dbeta embed` writes: the path
    relative to the folder, without ``.hea`` for WFDB) and a ``labels`` column (label names or codes
    separated by ``;``, empty for none). Records without a row are left out; a row naming no record
    is an error. Test split only (zero-shot and retrieval)."""
    from dbeta.cli import find_records
    from processing_dbeta import read_ecg_file

    root = Path(root)
    labels_file = root / "labels.csv"
    if not labels_file.is_file():
        raise FileNotFoundError(f"{labels_file} not found: a labeled folder needs labels.csv (columns record, labels)")
    with open(labels_file, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"record", "labels"} <= set(rows[0]):
        raise ValueError(f"{labels_file}: expected the columns 'record' and 'labels'")
    records = {ref.record_id: ref for ref in find_records(root) if ref.row is None}
    unknown = [row["record"] for row in rows if row["record"] not in records]
    if unknown:
        raise ValueError(f"{labels_file}: rows name no record of {root}: {unknown[:5]}")
    record_ids = [row["record"] for row in rows]
    label_lists = [[label.strip() for label in (row["labels"] or "").split(";") if label.strip()] for row in rows]
    label_names = sorted({label for labels in label_lists for label in labels})
    paths = [records[record_id].path for record_id in record_ids]
    return DownstreamDataset(
        name="folder",
        record_ids=record_ids,
        labels=_multi_hot(label_lists, label_names),
        label_names=label_names,
        splits=np.full(len(record_ids), "test", dtype=object),
        reader=lambda index: read_ecg_file(paths[index]),
    )


def _ludb_diagnoses(header: Path) -> list[str]:
    """The diagnosis lines of a LUDB header (comments after ``#<diagnoses>:``)."""
    lines, inside = [], False
    for raw in header.read_text(encoding="utf-8", errors="replace").splitlines():
        if not raw.startswith("#"):
            continue
        comment = raw[1:].strip()
        if comment.startswith("<"):
            inside = comment.lower().startswith("<diagnoses>")
            continue
        if inside and comment:
            lines.append(comment)
    return lines
