"""`dbeta` command line: embed or zero-shot classify every ECG record of a folder.

    dbeta embed FOLDER --model MODEL --output embeddings.parquet
    dbeta classify FOLDER --model MODEL --labels AFIB LBBB "sinus rhythm" --output scores.csv
    dbeta embed FOLDER --model MODEL --output windows.parquet --windows [--window_stride 5]
    dbeta classify FOLDER --model MODEL --labels AFIB LBBB --window sliding [--aggregation max] \
        [--per_window windows.csv] --output scores.csv
    dbeta export-onnx MODEL --output DIR [--labels AFIB LBBB ...] [--quantize int8 | int8-static --calibration_data RECORDS]
    dbeta embed FOLDER --model MODEL --backend onnx --onnx_dir DIR --output embeddings.parquet
    dbeta report RECORD --model MODEL --labels AFIB LBBB ... --output report.png [--html report.html]
    dbeta demo [--model outputs/dbeta-demo] [--port 7860]        (web demo, needs the `web` extra)
    dbeta export-space --model MODEL --output_dir DIR            (a Hugging Face Space folder of it)

Records are found recursively: WFDB / PhysioNet-CinC records (`*.hea` with their `.dat` / `.mat`),
original CPSC 2018 `*.mat` files (no header beside them), CODE HDF5 files (`*.hdf5`, `*.h5`:
one record per exam, named `file.hdf5#index`) and clinical exports recognised by their content,
whatever their name (DICOM waveform, GE MUSE / Philips / HL7 aECG XML, SCP-ECG, EDF, ISHNE; see
docs/processor.md). They are read with the readers of
`processing_dbeta` (DECISIONS 10), prepared by the model's feature extractor and run through the
model in batches while the output is written, so folders of any size stream through. A record
that cannot be read or prepared is reported on stderr (and in `--errors` if given) and skipped;
the others go on. The exit status is 0 when every record was processed, 1 when some failed and 2
when none could be processed or the command cannot run (usage errors: a missing `--model`, an
output folder that does not exist, a model folder whose pieces disagree or whose weights are not
finite - one line on stderr, before any record is read).

Output is atomic: rows go to `OUTPUT.<random>.partial` in the output's folder, renamed to OUTPUT
only when the run completes. Interrupted (Ctrl-C / SIGINT, SIGTERM, an error), the partial file is
removed and an existing OUTPUT is left as it was (exit 130 / 143); killed outright (SIGKILL), only
the `.partial` file can remain, never a truncated OUTPUT. When no record could be processed, OUTPUT
is not written either.

`embed` and `classify` split over processes and machines (`dbeta.sharding`): with `--num_shards N
--shard_index i` a run takes the i-th of N contiguous blocks of the sorted record list and writes
`OUTPUT` with `.shard-0000i-of-0000N` before its suffix (and the same for `--errors`, `--per_window`)
plus a `.done.json` completion marker; under `torchrun` / `accelerate launch` (`RANK`, `WORLD_SIZE`)
each process does the same and rank 0 merges the shards into OUTPUT, in record order. A re-run
reuses complete shards of the same run.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dbeta.files import AtomicOutput, csv_writer

logger = logging.getLogger("dbeta.cli")

HDF5_SUFFIXES = (".hdf5", ".h5")
# A Hub model id: `name` or `namespace/name` (what `huggingface_hub` accepts).
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


class UsageError(Exception):
    """The command cannot run as given (arguments, model folder, output paths): one line, exit status 2."""


class Interrupted(BaseException):
    """Raised in the main thread when the process receives SIGTERM (SIGINT raises KeyboardInterrupt)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def check_output_path(option: str, path: str | os.PathLike) -> Path:
    """`path` can be written by an `AtomicOutput` (its folder exists and is writable, it is not a folder)."""
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder; give a file name")
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a folder"
        raise UsageError(f"{option} {path}: the folder {folder} {what}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: the folder {folder} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"{option} {path} exists and is read-only")
    return path


def check_model_argument(model: str) -> None:
    """`--model` names an existing model folder or looks like a Hub id (`name` or `namespace/name`)."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UsageError(f"--model {model} is a file, not a D-BETA model folder")
        if not (path / "config.json").is_file():
            raise UsageError(f"--model {model}: no config.json in this folder (not a saved D-BETA model)")
    elif not _HUB_ID.match(model):
        raise UsageError(f"--model {model}: no such model folder (and not a Hub id of the form namespace/name)")


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
        elif suffix not in _NOT_CLINICAL_SUFFIXES and not path.with_suffix(".hea").is_file():
            if _is_clinical_record(path, suffix):
                records.append(RecordRef(str(relative), path))
    return records


#: Suffixes of the clinical exports (`processing_dbeta.CLINICAL_FORMATS`): such a file is a record
#: even when its content is refused (an XML declaring entities, a BDF), so the refusal is reported.
CLINICAL_SUFFIXES = (".xml", ".dcm", ".dicom", ".scp", ".edf", ".ecg", ".ishne", ".hol")
# Files never sniffed: WFDB records (by their header), and what sits beside records in a dataset.
_NOT_CLINICAL_SUFFIXES = (".hea", ".mat", *HDF5_SUFFIXES, ".csv", ".json", ".md", ".txt", ".png", ".pdf", ".parquet")


def _is_clinical_record(path: Path, suffix: str) -> bool:
    """Whether a file is a clinical ECG export, by its content (DICOM files are often named by UIDs,
    `1.2.840....`, or have no extension at all)."""
    from processing_dbeta import ecg_file_format

    try:
        return ecg_file_format(path) is not None
    except (ValueError, OSError):
        return suffix in CLINICAL_SUFFIXES


#: Exams listed from one HDF5 file at most (CODE-15% ships 20,000 per file): a few-kB file may declare
#: millions of (unallocated) exams, and listing them would exhaust memory before anything is read.
MAX_HDF5_EXAMS = 1_000_000


def _hdf5_records(path: Path, relative: Path) -> list[RecordRef]:
    try:
        import h5py

        with h5py.File(path, "r") as handle:
            count = handle["tracings"].shape[0]
    except Exception as error:  # noqa: BLE001 - an unreadable file is one failing record
        logger.warning(f"{relative}: cannot list the exams of this HDF5 file ({type(error).__name__}: {error})")
        return [RecordRef(str(relative), path, row=-1)]
    if count > MAX_HDF5_EXAMS:
        logger.warning(f"{relative}: declares {count} exams, more than {MAX_HDF5_EXAMS}; split the file (skipped)")
        return [RecordRef(str(relative), path, row=-2)]
    return [RecordRef(f"{relative}#{row}", path, row=row) for row in range(count)]


def read_record(ref: RecordRef, feature_extractor=None):
    """The `ECGRecord` of a reference (millivolts, lead names, sampling rate). With the model's
    `feature_extractor`, only the part of a file that its input needs is read (a 24-hour Holter
    costs its first seconds); without, the whole recording (bounded by the readers' limits)."""
    from processing_dbeta import ECGRecord, read_code_hdf5, read_ecg_file

    if ref.row is None:
        return feature_extractor.read_file(ref.path) if feature_extractor is not None else read_ecg_file(ref.path)
    if ref.row == -2:
        raise ValueError(f"{ref.path} declares more than {MAX_HDF5_EXAMS} exams; split the file")
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
            record = read_record(ref, self.feature_extractor)
            values = self.feature_extractor(record)["input_values"][0]
        except Exception as error:  # noqa: BLE001 - any failure of one record is reported, not fatal
            item["error"] = f"{type(error).__name__}: {error}"
            return item
        item.update(
            input_values=np.asarray(values, dtype=np.float32),
            sampling_rate=float(record.sampling_rate),
            num_leads=int(record.signal.shape[0]),
            # The recording's length, not the part read for the model's input.
            duration_s=float(record.metadata.get("total_samples", record.signal.shape[1]) / record.sampling_rate),
        )
        return item


def stream_batches(
    records, feature_extractor, batch_size: int, num_workers: int, progress: bool
) -> Iterator[tuple[list, list]]:
    """Yield `(ok_items, failed_items)` per batch, reading records in `num_workers` processes (each
    `prefetch_factor` batches ahead), or with 0, in one background thread a batch ahead: either way
    the next records are read and resampled while the model embeds the current batch."""
    from tqdm.auto import tqdm

    loader = torch.utils.data.DataLoader(
        _RecordDataset(records, feature_extractor),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=list,
        worker_init_fn=functools.partial(_init_reader_worker, os.getpid()) if num_workers > 0 else None,
    )
    batches = loader if num_workers > 0 else read_ahead(loader)
    with tqdm(total=len(records), unit="ecg", disable=not progress, file=sys.stderr) as bar:
        for batch in batches:
            ok = [item for item in batch if "error" not in item]
            failed = [item for item in batch if "error" in item]
            for item in failed:
                bar.write(f"dbeta: skipped {item['record']}: {item['error']}", file=sys.stderr)
            yield ok, failed
            bar.update(len(batch))


_END = object()


def read_ahead(iterable, depth: int = 2) -> Iterator:
    """The items of `iterable`, produced in a background thread up to `depth` items ahead of the
    consumer. torch and onnxruntime release the GIL while they compute, so reading the next records
    overlaps the forward pass without reader processes. An error of the producer is raised here;
    when the consumer stops early, the thread stops at its next item."""
    import queue

    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in iterable:
                if not put((item, None)):
                    return
            put((_END, None))
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, raised there
            put((None, error))

    thread = threading.Thread(target=produce, name="dbeta-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item, error = items.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()


def _preflight(args: argparse.Namespace) -> None:
    """Everything that can be checked before any record is read or the model is loaded."""
    outputs = {"--output": check_output_path("--output", args.output)}
    for option in ("--errors", "--per_window"):
        value = getattr(args, option.lstrip("-"), None)
        if value is None:
            continue
        path = check_output_path(option, value)
        for other, other_path in outputs.items():
            if os.path.realpath(path) == os.path.realpath(other_path):
                raise UsageError(f"{option} and {other} are the same file ({path})")
        outputs[option] = path
    # Window options only mean something with windows: given alone they would be silently ignored.
    windowed = getattr(args, "window", None) == "sliding" or getattr(args, "windows", False)
    given = [
        option
        for option, default in (("--window_stride", None), ("--aggregation", "mean"), ("--per_window", None))
        if getattr(args, option.lstrip("-"), default) != default
    ]
    if given and not windowed:
        needed = "--windows" if args.command == "embed" else "--window sliding"
        raise UsageError(f"{', '.join(given)} only apply with {needed}")
    check_model_argument(args.model)
    backend, onnx_dir = getattr(args, "backend", "torch"), getattr(args, "onnx_dir", None)
    if backend == "onnx":
        if onnx_dir is None:
            raise UsageError("--backend onnx needs --onnx_dir (a folder written by `dbeta export-onnx`)")
        if getattr(args, "window", None) == "sliding":
            raise UsageError("--backend onnx does not run `classify --window sliding` (its windows go through the pipeline); use --backend torch")
        from dbeta.onnx_backend import ONNXFolderError, check_source_model, read_export_metadata

        try:
            check_source_model(onnx_dir, read_export_metadata(onnx_dir), args.model)
        except ONNXFolderError as error:
            raise UsageError(str(error)) from None
    elif onnx_dir is not None:
        raise UsageError("--onnx_dir only applies with --backend onnx")


def _ecg_encoder(args: argparse.Namespace, model, processor):
    """What `embed_ecg_batch` runs the batches through: the PyTorch model, or (`--backend onnx`) the
    exported ECG tower, checked against the model before any record is read."""
    if getattr(args, "backend", "torch") != "onnx":
        return model
    from dbeta.onnx_backend import ONNXECGEncoder, ONNXFolderError

    try:
        encoder = ONNXECGEncoder(args.onnx_dir, threads=torch.get_num_threads())
        encoder.check_matches(args.model, processor.feature_extractor, model.config.hidden_size)
    except ONNXFolderError as error:
        raise UsageError(str(error)) from None
    return encoder


def _load(model_path: str, device: str):
    """The model and processor through the checked loader: a folder that cannot be loaded, a feature
    extractor that disagrees with the model config, or non-finite weights are usage errors."""
    from dbeta.loading import ModelLoadError, load_model_and_processor

    try:
        return load_model_and_processor(model_path, device=device)
    except ModelLoadError as error:
        raise UsageError(str(error)) from error


def _write_errors(path: str | None, failures: list[dict]) -> None:
    if path is None:
        return
    with AtomicOutput(path) as target:
        with open(target.temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv_writer(handle)
            writer.writerow(["record", "path", "error"])
            writer.writerows([item["record"], item["path"], item["error"]] for item in failures)
        target.commit()


def _split_non_finite(ok: list[dict], values: np.ndarray, what: str) -> tuple[list[dict], np.ndarray, list[dict]]:
    """Items whose output row is finite (with those rows) and the others, as failures."""
    finite = np.isfinite(values).all(axis=tuple(range(1, values.ndim)))
    if finite.all():
        return ok, values, []
    failed = []
    for item, keep in zip(ok, finite):
        if not keep:
            item = {key: item[key] for key in ("record", "path")}
            item["error"] = f"ValueError: the {what} of this record is not finite (NaN/inf); not written"
            print(f"dbeta: skipped {item['record']}: {item['error']}", file=sys.stderr)
            failed.append(item)
    return [item for item, keep in zip(ok, finite) if keep], values[finite], failed


def _finish(num_ok: int, failures: list[dict], output: str) -> int:
    if num_ok == 0:
        print(
            f"dbeta: no record could be processed ({len(failures)} skipped); {output} was not written",
            file=sys.stderr,
        )
        return 2
    print(f"dbeta: {num_ok} records written to {output}, {len(failures)} skipped", file=sys.stderr)
    return 1 if failures else 0


def run_embed(args: argparse.Namespace) -> int:
    return _run_sharded(args, _embed)


def run_classify(args: argparse.Namespace) -> int:
    return _run_sharded(args, _classify)


def _records(args: argparse.Namespace) -> list[RecordRef]:
    """The records this process runs: its shard's share when sharded, else all of `args.folder`."""
    selected = getattr(args, "shard_records", None)
    return find_records(args.folder) if selected is None else list(selected)


#: Output options that get a shard file each (and are merged by rank 0 under a launcher).
SHARDED_OUTPUTS = ("output", "errors", "per_window")
#: Options that do not change a shard's rows: left out of the run key, so that a re-run with another
#: batch size, device or number of reader processes still reuses complete shards.
_NOT_IN_RUN_KEY = {
    "run", "folder", "model", "output", "errors", "per_window", "batch_size", "num_workers", "device",
    "no_progress", "num_shards", "shard_index", "merge_timeout", "shard_records",
}


def _run_sharded(args: argparse.Namespace, run_one) -> int:
    """Run `run_one` on this process's shard (`--num_shards/--shard_index`, or `RANK`/`WORLD_SIZE`
    from `torchrun` / `accelerate launch`), or on everything when there is one shard (`dbeta.sharding`)."""
    from dbeta import sharding

    try:
        shard = sharding.resolve_shard(getattr(args, "num_shards", None), getattr(args, "shard_index", None))
    except sharding.ShardError as error:
        raise UsageError(str(error)) from None
    if shard is None:
        return run_one(args)
    if not args.merge_timeout > 0:
        raise UsageError(f"--merge_timeout must be > 0 seconds (got {args.merge_timeout:g})")
    index, count = shard.index, shard.count
    _preflight(args)
    names = [name for name in SHARDED_OUTPUTS if getattr(args, name, None)]
    for name in names:
        check_output_path(f"--{name}", sharding.shard_path(getattr(args, name), index, count))
    records = find_records(args.folder)
    if not records:
        print(f"dbeta: no ECG records found under {args.folder}", file=sys.stderr)
        return 2
    options = {key: value for key, value in vars(args).items() if key not in _NOT_IN_RUN_KEY}
    options["outputs"] = names
    key = sharding.run_key([ref.record_id for ref in records], args.model, options)
    part = sharding.shard_items(records, count, index)
    marker = sharding.read_marker(args.output, index, count, key)
    if marker is not None:
        print(
            f"dbeta: shard {index} of {count} is complete ({sharding.marker_path(args.output, index, count).name}); "
            "reused, not recomputed",
            file=sys.stderr,
        )
        status = marker["status"]
    else:
        sharding.marker_path(args.output, index, count).unlink(missing_ok=True)
        paths = {name: sharding.shard_path(getattr(args, name), index, count) for name in names}
        for path in paths.values():  # a stale shard file of another run
            path.unlink(missing_ok=True)
        if part:
            shard_args = argparse.Namespace(**{**vars(args), **{name: str(path) for name, path in paths.items()}})
            shard_args.shard_records = part
            shard_args.device = _shard_device(args.device, shard)
            status = run_one(shard_args)
        else:
            print(f"dbeta: shard {index} of {count} has no records ({len(records)} records in all)", file=sys.stderr)
            status = 0
        start, stop = sharding.shard_bounds(len(records), count, index)
        sharding.write_marker(
            args.output, index, count, key, status, [path for path in paths.values() if path.is_file()],
            {"command": args.command, "model": str(args.model), "records": [start, stop], "total_records": len(records)},
        )
    if not shard.from_launcher:
        return status
    if index != 0:
        # Rank 0 reports the combined status: a non-zero exit here would make the launcher stop rank 0.
        return 0
    print(f"dbeta: waiting for the other {count - 1} shards ...", file=sys.stderr)
    try:
        markers = sharding.wait_for_markers(args.output, count, key, args.merge_timeout)
    except TimeoutError as error:
        print(f"dbeta: error: {error}; {args.output} was not written (re-run to resume)", file=sys.stderr)
        return 2
    return _merge_shards(args, count, markers)


def _shard_device(device: str, shard) -> str:
    """`cuda` under a launcher is this process's GPU (`LOCAL_RANK`), as `accelerate` and `torchrun` intend."""
    local_rank = os.environ.get("LOCAL_RANK")
    if shard.from_launcher and device == "cuda" and local_rank is not None and local_rank.isdigit():
        return f"cuda:{local_rank}"
    return device


def _merge_shards(args: argparse.Namespace, count: int, markers: list[dict]) -> int:
    """Rank 0: concatenate the shards' files in shard order (= record order) into the outputs, atomically,
    then remove the shard files and markers."""
    from dbeta import sharding

    folder = sharding.marker_path(args.output, 0, count).parent
    parts: dict[str, list[Path]] = {}
    for name in SHARDED_OUTPUTS:
        if not getattr(args, name, None):
            continue
        paths = [sharding.shard_path(getattr(args, name), index, count) for index in range(count)]
        parts[name] = [
            path for path, marker in zip(paths, markers) if os.path.relpath(path, folder) in marker["files"]
        ]
    statuses = [marker["status"] for marker in markers]
    rows = 0
    if parts["output"]:
        merge = sharding.merge_parquet if args.command == "embed" else sharding.merge_csv
        rows = merge(parts["output"], args.output)
        if parts.get("per_window"):
            sharding.merge_csv(parts["per_window"], args.per_window)
    if parts.get("errors"):
        sharding.merge_csv(parts["errors"], args.errors)
    for index in range(count):
        for name in parts:
            sharding.shard_path(getattr(args, name), index, count).unlink(missing_ok=True)
        sharding.marker_path(args.output, index, count).unlink(missing_ok=True)
    if not parts["output"]:
        print(f"dbeta: no record could be processed in any of the {count} shards; {args.output} was not written", file=sys.stderr)
        return 2
    print(f"dbeta: merged {count} shards: {rows} rows written to {args.output}", file=sys.stderr)
    return 0 if all(status == 0 for status in statuses) else 1


def _embed(args: argparse.Namespace) -> int:
    if getattr(args, "windows", False):
        return run_embed_windows(args)
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dbeta.embedding import embed_ecg_batch

    _preflight(args)
    records = _records(args)
    if not records:
        print(f"dbeta: no ECG records found under {args.folder}", file=sys.stderr)
        return 2
    model, processor = _load(args.model, args.device)
    encoder = _ecg_encoder(args, model, processor)
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
    with AtomicOutput(args.output) as target:
        with pq.ParquetWriter(target.temporary, schema) as writer:
            for ok, failed in stream_batches(
                records, processor.feature_extractor, args.batch_size, args.num_workers, not args.no_progress
            ):
                failures += failed
                if not ok:
                    continue
                embeddings = embed_ecg_batch(encoder, np.stack([item["input_values"] for item in ok])).numpy()
                ok, embeddings, failed = _split_non_finite(ok, embeddings, "embedding")
                failures += failed
                if not ok:
                    continue
                _write_embeddings(writer, schema, ok, embeddings, width)
                num_ok += len(ok)
        if num_ok:
            target.commit()
    _write_errors(args.errors, failures)
    return _finish(num_ok, failures, args.output)


def _write_embeddings(writer, schema, ok: list[dict], embeddings: np.ndarray, width: int) -> None:
    import pyarrow as pa

    names = ("record", "path", "sampling_rate", "num_leads", "duration_s")
    columns = {name: [item[name] for item in ok] for name in names}
    columns["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1), pa.float32()), width)
    writer.write_table(pa.table(columns, schema=schema))


def _classify(args: argparse.Namespace) -> int:
    if getattr(args, "window", None) == "sliding":
        return run_classify_windows(args)
    from pipeline_dbeta import ZeroShotECGClassificationPipeline

    from dbeta.embedding import embed_ecg_batch
    from dbeta.loading import model_label_descriptions
    from dbeta.zero_shot import embed_label_texts, logits_to_scores, zero_shot_logits

    _preflight(args)
    records = _records(args)
    if not records:
        print(f"dbeta: no ECG records found under {args.folder}", file=sys.stderr)
        return 2
    model, processor = _load(args.model, args.device)
    encoder = _ecg_encoder(args, model, processor)
    descriptions = model_label_descriptions(args.model if Path(args.model).exists() else None)
    pipe = ZeroShotECGClassificationPipeline(
        model=model,
        tokenizer=processor.tokenizer,
        feature_extractor=processor.feature_extractor,
        device=model.device,
        label_descriptions=descriptions,
    )
    labels_are_codes = {"auto": None, "yes": True, "no": False}[args.labels_are_codes]
    texts = pipe.label_texts(args.labels, args.hypothesis_template, labels_are_codes)
    label_embeds = embed_label_texts(model, processor.tokenizer, texts, normalize=False)  # once, for all records

    failures, num_ok = [], 0
    with AtomicOutput(args.output) as target:
        with open(target.temporary, "w", newline="", encoding="utf-8") as handle:
            writer = csv_writer(handle)
            writer.writerow(["record", *args.labels])
            for ok, failed in stream_batches(
                records, processor.feature_extractor, args.batch_size, args.num_workers, not args.no_progress
            ):
                failures += failed
                if not ok:
                    continue
                ecg_embeds = embed_ecg_batch(encoder, np.stack([item["input_values"] for item in ok]))
                logits = zero_shot_logits(model, ecg_embeds, label_embeds)
                ok, logits, failed = _split_non_finite(ok, logits.numpy(), "score")
                failures += failed
                if not ok:
                    continue
                scores = logits_to_scores(torch.from_numpy(logits), multi_label=not args.softmax)
                for item, row in zip(ok, scores.tolist()):
                    writer.writerow([item["record"], *(f"{score:.6g}" for score in row)])
                handle.flush()
                num_ok += len(ok)
        if num_ok:
            target.commit()
    _write_errors(args.errors, failures)
    return _finish(num_ok, failures, args.output)



def _record_windows(ref: RecordRef, stride_s: float | None, window_s: float):
    """`(start_s, ECGRecord)` windows of one record; WFDB `.dat` records stream from disk."""
    from processing_dbeta import iter_ecg_windows

    source = str(ref.path) if ref.row is None else read_record(ref)
    return iter_ecg_windows(source, window_s, stride_s)


def run_embed_windows(args: argparse.Namespace) -> int:
    """`dbeta embed --windows`: one row per window (record, path, window_start_s, ...) of every record."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    _preflight(args)
    records = _records(args)
    if not records:
        print(f"dbeta: no ECG records found under {args.folder}", file=sys.stderr)
        return 2
    model, processor = _load(args.model, args.device)
    encoder = _ecg_encoder(args, model, processor)
    extractor = processor.feature_extractor
    window_s = extractor.num_samples / extractor.sampling_rate
    width = model.config.hidden_size
    schema = pa.schema(
        [
            ("record", pa.string()),
            ("path", pa.string()),
            ("window_start_s", pa.float64()),
            ("window_s", pa.float64()),
            ("sampling_rate", pa.float64()),
            ("num_leads", pa.int32()),
            ("embedding", pa.list_(pa.float32(), width)),
        ],
        metadata={
            "model": str(args.model),
            "embedding": "DBetaModel.get_ecg_features(...).pooler_output of each window",
            "window_stride_s": str(args.window_stride or window_s),
        },
    )
    failures, num_ok, num_windows = [], 0, 0
    with AtomicOutput(args.output) as target:
        with pq.ParquetWriter(target.temporary, schema) as writer:
            for ref in tqdm(records, unit="record", disable=args.no_progress, file=sys.stderr):
                # A record's rows are written once all its windows are embedded: a record that fails
                # at window 3 leaves no rows (it is reported as skipped, and it is).
                rows, tables = [], []
                try:
                    for start, window in _record_windows(ref, args.window_stride, window_s):
                        values = extractor(window)["input_values"][0]
                        rows.append((start, window, np.asarray(values, dtype=np.float32)))
                        if len(rows) == args.batch_size:
                            tables.append(_window_table(schema, encoder, ref, rows, width, window_s))
                            rows = []
                    if rows:
                        tables.append(_window_table(schema, encoder, ref, rows, width, window_s))
                except Exception as error:  # noqa: BLE001 - a failing record is reported, the others go on
                    message = f"{type(error).__name__}: {error}"
                    failures.append({"record": ref.record_id, "path": str(ref.path), "error": message})
                    print(f"dbeta: skipped {ref.record_id}: {failures[-1]['error']}", file=sys.stderr)
                    continue
                for table in tables:
                    writer.write_table(table)
                num_ok += 1
                num_windows += sum(table.num_rows for table in tables)
        if num_ok:
            target.commit()
    _write_errors(args.errors, failures)
    print(f"dbeta: {num_windows} windows", file=sys.stderr)
    return _finish(num_ok, failures, args.output)


def _window_table(schema, encoder, ref, rows, width: int, window_s: float):
    import pyarrow as pa

    from dbeta.embedding import embed_ecg_batch

    embeddings = embed_ecg_batch(encoder, np.stack([values for _, _, values in rows])).numpy()
    if not np.isfinite(embeddings).all():
        raise ValueError("non-finite embedding")
    columns = {
        "record": [ref.record_id] * len(rows),
        "path": [str(ref.path)] * len(rows),
        "window_start_s": [float(start) for start, _, _ in rows],
        "window_s": [window_s] * len(rows),
        "sampling_rate": [float(window.sampling_rate) for _, window, _ in rows],
        "num_leads": [int(window.signal.shape[0]) for _, window, _ in rows],
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1), pa.float32()), width),
    }
    return pa.table(columns, schema=schema)


def run_classify_windows(args: argparse.Namespace) -> int:
    """`dbeta classify --window sliding`: one aggregated row per record (+ per-window rows with `--per_window`)."""
    from pipeline_dbeta import ZeroShotECGClassificationPipeline
    from tqdm.auto import tqdm

    from dbeta.loading import model_label_descriptions

    _preflight(args)
    records = _records(args)
    if not records:
        print(f"dbeta: no ECG records found under {args.folder}", file=sys.stderr)
        return 2
    model, processor = _load(args.model, args.device)
    pipe = ZeroShotECGClassificationPipeline(
        model=model,
        tokenizer=processor.tokenizer,
        feature_extractor=processor.feature_extractor,
        device=model.device,
        label_descriptions=model_label_descriptions(args.model if Path(args.model).exists() else None),
    )
    labels_are_codes = {"auto": None, "yes": True, "no": False}[args.labels_are_codes]
    failures, num_ok = [], 0
    # The per-window CSV is written and committed with the main output, atomically like it.
    window_target = AtomicOutput(args.per_window) if args.per_window else None
    per_window = open(window_target.temporary, "w", newline="", encoding="utf-8") if window_target else None
    try:
        window_writer = csv_writer(per_window) if per_window else None
        if window_writer:
            window_writer.writerow(["record", "window_start_s", *args.labels])
        with AtomicOutput(args.output) as target:
            with open(target.temporary, "w", newline="", encoding="utf-8") as handle:
                writer = csv_writer(handle)
                writer.writerow(["record", "num_windows", *args.labels])
                for ref in tqdm(records, unit="record", disable=args.no_progress, file=sys.stderr):
                    try:
                        source = str(ref.path) if ref.row is None else read_record(ref)
                        result = pipe.score_windows(
                            source,
                            args.labels,
                            window_stride=args.window_stride,
                            aggregation=args.aggregation,
                            return_windows=True,
                            batch_size=args.batch_size,
                            multi_label=not args.softmax,
                            hypothesis_template=args.hypothesis_template,
                            labels_are_codes=labels_are_codes,
                        )
                    except Exception as error:  # noqa: BLE001 - a failing record is reported, the others go on
                        message = f"{type(error).__name__}: {error}"
                        failures.append({"record": ref.record_id, "path": str(ref.path), "error": message})
                        print(f"dbeta: skipped {ref.record_id}: {failures[-1]['error']}", file=sys.stderr)
                        continue
                    scores = {item["label"]: item["score"] for item in result["scores"]}
                    writer.writerow(
                        [ref.record_id, len(result["windows"]), *(f"{scores[label]:.6g}" for label in args.labels)]
                    )
                    if window_writer:
                        for window in result["windows"]:
                            window_writer.writerow(
                                [ref.record_id, f"{window['start']:g}"]
                                + [f"{window['scores'][label]:.6g}" for label in args.labels]
                            )
                    num_ok += 1
            if num_ok:
                if per_window:
                    per_window.close()
                    window_target.commit()
                target.commit()
    finally:
        if per_window:
            per_window.close()
            window_target.discard()
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
        command.add_argument(
            "--num_workers",
            type=int,
            default=0,
            help="processes reading records in parallel (0: one background thread reads a batch ahead)",
        )
        command.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        command.add_argument("--errors", help="also write the skipped records and their errors to this CSV")
        command.add_argument("--no_progress", action="store_true", help="no progress bar")
        command.add_argument(
            "--num_shards", type=int, help="split the sorted records into N contiguous shards (SLURM arrays, several machines)"
        )
        command.add_argument(
            "--shard_index",
            type=int,
            help="run shard i (0 to N-1) only, writing OUTPUT with .shard-0000i-of-0000N before its suffix "
            "(default under torchrun / accelerate launch: RANK of WORLD_SIZE, merged into OUTPUT by rank 0)",
        )
        command.add_argument(
            "--backend",
            choices=("torch", "onnx"),
            default="torch",
            help="run the ECG tower in PyTorch, or with onnxruntime on the CPU from --onnx_dir",
        )
        command.add_argument(
            "--onnx_dir", help="with --backend onnx: a folder written by `dbeta export-onnx MODEL` (e.g. --quantize int8)"
        )
        command.add_argument(
            "--merge_timeout",
            type=float,
            default=86400.0,
            help="under a launcher, seconds rank 0 waits for the other shards before giving up (default: 1 day)",
        )

    embed = commands.add_parser("embed", help="768-d ECG embeddings -> parquet (record, path, ..., embedding)")
    common(embed)
    embed.set_defaults(run=run_embed)
    embed.add_argument(
        "--windows", action="store_true", help="one row per 10 s window of every record (long recordings)"
    )
    embed.add_argument("--window_stride", type=float, help="seconds between window starts (default: 10)")

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
    classify.add_argument(
        "--window", choices=("sliding",), help="score long recordings in 10 s windows, aggregated per record"
    )
    classify.add_argument("--window_stride", type=float, help="seconds between window starts (default: 10)")
    classify.add_argument("--aggregation", choices=("mean", "max"), default="mean", help="how windows combine")
    classify.add_argument("--per_window", help="also write every window's scores (record, window_start_s, ...)")

    from dbeta.export_onnx import add_arguments as add_export_onnx_arguments

    export_onnx = commands.add_parser(
        "export-onnx", help="ONNX files of the ECG and text towers (+ a numpy/onnxruntime zero-shot scorer)"
    )
    add_export_onnx_arguments(export_onnx)
    export_onnx.set_defaults(run=run_export_onnx, batch_size=1)

    from dbeta.report import add_arguments as add_report_arguments

    report = commands.add_parser(
        "report", help="PNG (and HTML) of one record: 12-lead ECG on 25 mm/s, 10 mm/mV paper + top label scores"
    )
    add_report_arguments(report)
    report.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    report.set_defaults(run=run_report, batch_size=1)
    from dbeta import web_demo  # gradio is imported only when the demo starts

    demo = commands.add_parser("demo", help="web demo (Gradio): upload an ECG, name labels, see the tracing and scores")
    web_demo.add_arguments(demo).set_defaults(run=web_demo.run, batch_size=1)
    space = commands.add_parser("export-space", help="a Hugging Face Space folder serving the web demo (app.py = dbeta demo)")
    web_demo.add_space_arguments(space).set_defaults(run=web_demo.run_space, batch_size=1)
    for name, (module_name, help_text) in TRAINING_COMMANDS.items():
        # Listed for `dbeta --help`; `main` hands their arguments to the script before parsing.
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def run_report(args: argparse.Namespace) -> int:
    from dbeta.report import run

    return run(args)


def run_export_onnx(args: argparse.Namespace) -> int:
    from dbeta.export_onnx import run

    return run(args)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"dbeta {version('dbeta')}"
    except PackageNotFoundError:
        return "dbeta (not installed)"


#: Commands that run a training-side script with its own options: `dbeta <name> ...` is
#: `python <script> ...` (they need the `train` extra: datasets, scikit-learn, accelerate).
TRAINING_COMMANDS = {
    "evaluate": ("dbeta.train.evaluation.evaluate", "zero-shot / retrieval / linear-probe / fine-tune evaluation (train/evaluation/evaluate.py)"),
    "convert": ("dbeta.train.conversion.convert_original_checkpoint", "original D-BETA checkpoint -> Hub folder (train/conversion/convert_original_checkpoint.py)"),
    "prepare-mimic": ("dbeta.train.data.prepare_mimic_iv_ecg", "MIMIC-IV-ECG -> datasets DatasetDict for pretraining (train/data/prepare_mimic_iv_ecg.py)"),
}


def run_training_command(name: str, argv: Sequence[str]) -> int:
    """Run a training-side script's `main(argv)`; a missing `train` extra is a one-line error."""
    import importlib

    module_name = TRAINING_COMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        print(
            f"dbeta: error: `dbeta {name}` needs the training extra ({error}); install it with "
            "pip install -e \".[train]\"",
            file=sys.stderr,
        )
        return 2
    saved_argv, sys.argv = sys.argv, [f"dbeta {name}", *argv]  # the script's usage lines name the command
    try:
        result = module.main(list(argv))
    finally:
        sys.argv = saved_argv
    return result if isinstance(result, int) else 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TRAINING_COMMANDS:
        return run_training_command(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    if args.batch_size < 1:
        print("dbeta: --batch_size must be >= 1", file=sys.stderr)
        return 2
    # SIGTERM unwinds like Ctrl-C, so that partial output files are removed (`AtomicOutput`).
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupted) if in_main_thread else None
    try:
        return args.run(args)
    except UsageError as error:
        print(f"dbeta: error: {error}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as error:  # e.g. a missing folder, a full disk, bad labels
        print(f"dbeta: error: {error}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Interrupted) as error:
        name = error.args[0] if isinstance(error, Interrupted) else "SIGINT"
        output = getattr(args, "output", None)
        kept = f"; {output} was not written (an existing file or export folder is unchanged)" if output else ""
        print(f"dbeta: interrupted ({name}){kept}", file=sys.stderr)
        return 128 + (error.signum if isinstance(error, Interrupted) else signal.SIGINT)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _raise_interrupted(signum, frame) -> None:
    raise Interrupted(signum)


def _init_reader_worker(main_pid: int, worker_id: int) -> None:
    """Reader processes end quietly on SIGTERM (a signal to the whole process group); the main process
    reports the interruption and removes the partial output. They would otherwise inherit its handler.
    They also end with the main process, even when it is killed with SIGKILL (`end_with_parent`)."""
    from dbeta.workers import end_with_parent

    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))
    end_with_parent(main_pid)


if __name__ == "__main__":
    sys.exit(main())
