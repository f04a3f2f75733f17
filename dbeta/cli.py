"""`dbeta` command line: embed or zero-shot classify every ECG record of a folder.

    dbeta embed FOLDER --model MODEL --output embeddings.parquet
    dbeta classify FOLDER --model MODEL --labels AFIB LBBB "sinus rhythm" --output scores.csv

Records are found recursively: WFDB / PhysioNet-CinC records (`*.hea` with their `.dat` / `.mat`),
original CPSC 2018 `*.mat` files (no header beside them) and CODE HDF5 files (`*.hdf5`, `*.h5`:
one record per exam, named `file.hdf5#index`). They are read with the readers of
`processing_dbeta` (DECISIONS 10), prepared by the model's feature extractor and run through the
model in batches while the output is written, so folders of any size stream through. A record
that cannot be read or prepared is reported on stderr (and in `--errors` if given) and skipped;
the others go on. The exit status is 0 when every record was processed, 1 when some failed and 2
when none could be processed.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger("dbeta.cli")

HDF5_SUFFIXES = (".hdf5", ".h5")


@dataclass(frozen=True)
class RecordRef:
    """Where one ECG lives: a record path, or an HDF5 file and the exam's row."""

    record_id: str
    path: Path
    row: int | None = None


def find_records(folder: str | os.PathLike) -> list[RecordRef]:
    """Every ECG record under `folder`, sorted by path (ids are paths relative to `folder`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    records = []
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        suffix = path.suffix.lower()
        relative = path.relative_to(folder)
        if suffix == ".hea":
            records.append(RecordRef(str(relative.with_suffix("")), path.with_suffix("")))
        elif suffix == ".mat" and not path.with_suffix(".hea").is_file():
            records.append(RecordRef(str(relative.with_suffix("")), path))
        elif suffix in HDF5_SUFFIXES:
            records.extend(_hdf5_records(path, relative))
    return records


def _hdf5_records(path: Path, relative: Path) -> list[RecordRef]:
    try:
        import h5py

        with h5py.File(path, "r") as handle:
            count = handle["tracings"].shape[0]
    except Exception as error:  # noqa: BLE001 - an unreadable file is one failing record
        logger.warning(f"{relative}: cannot list the exams of this HDF5 file ({type(error).__name__}: {error})")
        return [RecordRef(str(relative), path, row=-1)]
    return [RecordRef(f"{relative}#{row}", path, row=row) for row in range(count)]


def read_record(ref: RecordRef):
    """The `ECGRecord` of a reference (millivolts, lead names, sampling rate)."""
    from processing_dbeta import ECGRecord, read_code_hdf5, read_ecg_file

    if ref.row is None:
        return read_ecg_file(ref.path)
    if ref.row < 0:
        raise ValueError(f"{ref.path} is not a readable HDF5 file of ECG tracings")
    signals, lead_names, sampling_rate = read_code_hdf5(ref.path, start=ref.row, stop=ref.row + 1)
    return ECGRecord(signals[0], list(lead_names), sampling_rate, {"name": ref.record_id, "comments": []})


class _RecordDataset(torch.utils.data.Dataset):
    """Reads and prepares one record per item; failures come back as values, not exceptions."""

    def __init__(self, records: Sequence[RecordRef], feature_extractor):
        self.records = list(records)
        self.feature_extractor = feature_extractor

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        ref = self.records[index]
        item = {"record": ref.record_id, "path": str(ref.path)}
        try:
            record = read_record(ref)
            values = self.feature_extractor(record)["input_values"][0]
        except Exception as error:  # noqa: BLE001 - any failure of one record is reported, not fatal
            item["error"] = f"{type(error).__name__}: {error}"
            return item
        item.update(
            input_values=np.asarray(values, dtype=np.float32),
            sampling_rate=float(record.sampling_rate),
            num_leads=int(record.signal.shape[0]),
            duration_s=float(record.signal.shape[1] / record.sampling_rate),
        )
        return item


def stream_batches(
    records, feature_extractor, batch_size: int, num_workers: int, progress: bool
) -> Iterator[tuple[list, list]]:
    """Yield `(ok_items, failed_items)` per batch, reading records in `num_workers` processes."""
    from tqdm.auto import tqdm

    loader = torch.utils.data.DataLoader(
        _RecordDataset(records, feature_extractor),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=list,
    )
    with tqdm(total=len(records), unit="ecg", disable=not progress, file=sys.stderr) as bar:
        for batch in loader:
            ok = [item for item in batch if "error" not in item]
            failed = [item for item in batch if "error" in item]
            for item in failed:
                bar.write(f"dbeta: skipped {item['record']}: {item['error']}", file=sys.stderr)
            yield ok, failed
            bar.update(len(batch))


def _load(model_path: str, device: str):
    from dbeta.train.retrieval import load_model_and_processor

    return load_model_and_processor(model_path, device=device)


def _write_errors(path: str | None, failures: list[dict]) -> None:
    if path is None:
        return
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["record", "path", "error"])
        writer.writerows([item["record"], item["path"], item["error"]] for item in failures)


def _finish(num_ok: int, failures: list[dict], output: str) -> int:
    print(f"dbeta: {num_ok} records written to {output}, {len(failures)} skipped", file=sys.stderr)
    if num_ok == 0:
        return 2
    return 1 if failures else 0


def run_embed(args: argparse.Namespace) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dbeta.train.retrieval import embed_ecg_batch

    records = find_records(args.folder)
    if not records:
        print(f"dbeta: no ECG records found under {args.folder}", file=sys.stderr)
        return 2
    model, processor = _load(args.model, args.device)
    width = model.config.hidden_size
    schema = pa.schema(
        [
            ("record", pa.string()),
            ("path", pa.string()),
            ("sampling_rate", pa.float64()),
            ("num_leads", pa.int32()),
            ("duration_s", pa.float64()),
            ("embedding", pa.list_(pa.float32(), width)),
        ],
        metadata={"model": str(args.model), "embedding": "DBetaModel.get_ecg_features(...).pooler_output"},
    )
    failures, num_ok = [], 0
    with pq.ParquetWriter(args.output, schema) as writer:
        for ok, failed in stream_batches(
            records, processor.feature_extractor, args.batch_size, args.num_workers, not args.no_progress
        ):
            failures += failed
            if not ok:
                continue
            embeddings = embed_ecg_batch(model, np.stack([item["input_values"] for item in ok])).numpy()
            columns = {
                name: [item[name] for item in ok]
                for name in ("record", "path", "sampling_rate", "num_leads", "duration_s")
            }
            columns["embedding"] = pa.FixedSizeListArray.from_arrays(
                pa.array(embeddings.reshape(-1), pa.float32()), width
            )
            writer.write_table(pa.table(columns, schema=schema))
            num_ok += len(ok)
    _write_errors(args.errors, failures)
    return _finish(num_ok, failures, args.output)


def run_classify(args: argparse.Namespace) -> int:
    from pipeline_dbeta import ZeroShotECGClassificationPipeline

    from dbeta.train.retrieval import base_model, embed_ecg_batch, load_label_descriptions

    records = find_records(args.folder)
    if not records:
        print(f"dbeta: no ECG records found under {args.folder}", file=sys.stderr)
        return 2
    model, processor = _load(args.model, args.device)
    descriptions = load_label_descriptions(args.model if Path(args.model).exists() else None)
    pipe = ZeroShotECGClassificationPipeline(
        model=model,
        tokenizer=processor.tokenizer,
        feature_extractor=processor.feature_extractor,
        device=model.device,
        label_descriptions=descriptions,
    )
    labels_are_codes = {"auto": None, "yes": True, "no": False}[args.labels_are_codes]
    texts = pipe.label_texts(args.labels, args.hypothesis_template, labels_are_codes)
    label_embeds = pipe.embed_texts(texts).float().cpu()  # once, for all records
    base = base_model(model)

    failures, num_ok = [], 0
    with open(args.output, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["record", *args.labels])
        for ok, failed in stream_batches(
            records, processor.feature_extractor, args.batch_size, args.num_workers, not args.no_progress
        ):
            failures += failed
            if not ok:
                continue
            ecg_embeds = embed_ecg_batch(model, np.stack([item["input_values"] for item in ok]))
            with torch.no_grad():
                logits = base.ets_logits(ecg_embeds.to(base.device), label_embeds.to(base.device)).float().cpu()
            scores = logits.softmax(dim=-1) if args.softmax else logits.sigmoid()
            for item, row in zip(ok, scores.tolist()):
                writer.writerow([item["record"], *(f"{score:.6g}" for score in row)])
            handle.flush()
            num_ok += len(ok)
    _write_errors(args.errors, failures)
    return _finish(num_ok, failures, args.output)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dbeta", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True)

    def common(command):
        command.add_argument("folder", help="folder searched recursively for ECG records")
        command.add_argument("--model", required=True, help="D-BETA model folder (or Hub id)")
        command.add_argument("--output", required=True)
        command.add_argument("--batch_size", type=int, default=16, help="ECGs per forward pass")
        command.add_argument("--num_workers", type=int, default=0, help="processes reading records in parallel")
        command.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        command.add_argument("--errors", help="also write the skipped records and their errors to this CSV")
        command.add_argument("--no_progress", action="store_true", help="no progress bar")

    embed = commands.add_parser("embed", help="768-d ECG embeddings -> parquet (record, path, ..., embedding)")
    common(embed)
    embed.set_defaults(run=run_embed)

    classify = commands.add_parser("classify", help="zero-shot label scores -> CSV (record, one column per label)")
    common(classify)
    classify.add_argument(
        "--labels", nargs="+", required=True, help="label codes (AFIB, LBBB, ...) and/or free-text descriptions"
    )
    classify.add_argument("--hypothesis_template", default="{}", help='e.g. "ECG showing {}."')
    classify.add_argument(
        "--softmax", action="store_true", help="softmax across labels instead of independent sigmoid scores"
    )
    classify.add_argument(
        "--labels_are_codes",
        choices=("auto", "yes", "no"),
        default="auto",
        help="auto: known codes expand to their descriptions, other text is used as given; "
        "yes: all must be codes; no: never expand",
    )
    classify.set_defaults(run=run_classify)

    from dbeta.export_onnx import add_arguments as add_export_onnx_arguments

    export_onnx = commands.add_parser(
        "export-onnx", help="ONNX files of the ECG and text towers (+ a numpy/onnxruntime zero-shot scorer)"
    )
    add_export_onnx_arguments(export_onnx)
    export_onnx.set_defaults(run=run_export_onnx, batch_size=1)
    return parser


def run_export_onnx(args: argparse.Namespace) -> int:
    from dbeta.export_onnx import run

    return run(args)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"dbeta {version('dbeta')}"
    except PackageNotFoundError:
        return "dbeta (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    if args.batch_size < 1:
        print("dbeta: --batch_size must be >= 1", file=sys.stderr)
        return 2
    try:
        return args.run(args)
    except (FileNotFoundError, NotADirectoryError, ValueError) as error:
        print(f"dbeta: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
