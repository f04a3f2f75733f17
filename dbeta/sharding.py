"""One `dbeta embed` / `dbeta classify` run split across processes and machines.

Rule: the sorted record list of `find_records(folder)` is cut into `num_shards` contiguous blocks
of (almost) equal size, shard `i` taking records `[i * n // N, (i + 1) * n // N)`. The blocks are
disjoint, their union is the whole list, and shards 0, 1, ..., N-1 one after the other are the
records in the one-process order, so merging is a concatenation.

A shard's files are its outputs with `.shard-IIIII-of-NNNNN` before the suffix
(`emb.parquet` -> `emb.shard-00003-of-00016.parquet`, the same for `--errors` and `--per_window`),
each written atomically, then a completion marker `emb.shard-00003-of-00016.parquet.done.json`
(the sidecar): the run key (a hash of the record list, the model and the options that change the
rows), the shard's exit status and which files it wrote. A re-run with the same key reuses a
complete shard instead of recomputing it; any other shard file is recomputed.

Nothing here imports accelerate or torch.distributed: under `accelerate launch` / `torchrun` the
rank and world size are read from the `RANK` / `WORLD_SIZE` environment variables they set, and
the processes meet through the file system only (rank 0 polls for the other shards' markers).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dbeta.files import AtomicOutput, write_text

MARKER_SUFFIX = ".done.json"
MARKER_VERSION = 1


class ShardError(ValueError):
    """Shard arguments or environment that cannot be used (a usage error, exit status 2)."""


@dataclass(frozen=True)
class Shard:
    index: int
    count: int
    #: True when the index and count came from `RANK` / `WORLD_SIZE` (a launcher): rank 0 then
    #: waits for the other shards and merges them into the output.
    from_launcher: bool = False


def _env_int(environ: Mapping[str, str], name: str) -> int:
    value = environ[name]
    try:
        return int(value)
    except ValueError:
        raise ShardError(f"the environment variable {name}={value!r} is not an integer") from None


def resolve_shard(
    num_shards: int | None,
    shard_index: int | None,
    environ: Mapping[str, str] | None = None,
) -> Shard | None:
    """The shard this process runs, or None for a plain one-process run.

    Explicit `--num_shards N --shard_index i` win; without them, `WORLD_SIZE` > 1 and `RANK` (set by
    `torchrun` and `accelerate launch`) give the shard.
    """
    environ = os.environ if environ is None else environ
    if num_shards is not None or shard_index is not None:
        if num_shards is None:
            raise ShardError("--shard_index needs --num_shards")
        if num_shards < 1:
            raise ShardError(f"--num_shards must be >= 1 (got {num_shards})")
        if shard_index is None:
            if num_shards == 1:
                return None
            raise ShardError(f"--num_shards {num_shards} needs --shard_index (0 to {num_shards - 1})")
        if not 0 <= shard_index < num_shards:
            raise ShardError(
                f"--shard_index must be between 0 and {num_shards - 1} for --num_shards {num_shards} (got {shard_index})"
            )
        return None if num_shards == 1 else Shard(shard_index, num_shards)
    if "WORLD_SIZE" not in environ:
        return None
    world_size = _env_int(environ, "WORLD_SIZE")
    if world_size < 1:
        raise ShardError(f"the environment variable WORLD_SIZE={world_size} must be >= 1")
    if world_size == 1:
        return None
    if "RANK" not in environ:
        raise ShardError(f"WORLD_SIZE={world_size} is set but RANK is not")
    rank = _env_int(environ, "RANK")
    if not 0 <= rank < world_size:
        raise ShardError(f"the environment variable RANK={rank} must be between 0 and {world_size - 1}")
    return Shard(rank, world_size, from_launcher=True)


def shard_bounds(total: int, count: int, index: int) -> tuple[int, int]:
    """`[start, stop)` of shard `index` of `count` contiguous blocks over `total` items."""
    return index * total // count, (index + 1) * total // count


def shard_items(items: Sequence, count: int, index: int) -> list:
    start, stop = shard_bounds(len(items), count, index)
    return list(items[start:stop])


def shard_path(path: str | os.PathLike, index: int, count: int) -> Path:
    """`emb.parquet` -> `emb.shard-00003-of-00016.parquet` (suffix kept; a name without one gets it at the end)."""
    path = Path(path)
    tag = f".shard-{index:05d}-of-{count:05d}"
    return path.with_name(f"{path.stem}{tag}{path.suffix}" if path.suffix else f"{path.name}{tag}")


def marker_path(output: str | os.PathLike, index: int, count: int) -> Path:
    shard = shard_path(output, index, count)
    return shard.with_name(shard.name + MARKER_SUFFIX)


def _model_fingerprint(model: str) -> list:
    """The model folder's files by content (name, size, a hash of 16 chunks spread over each file), not
    its path: machines with their own copy of the model agree, and a model rewritten in place differs."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return [model]  # a Hub id
    entries = []
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        size = path.stat().st_size
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            if size <= _CHUNKS * _CHUNK:
                digest.update(handle.read())
            else:
                for number in range(_CHUNKS):
                    handle.seek(number * (size - _CHUNK) // (_CHUNKS - 1))
                    digest.update(handle.read(_CHUNK))
        entries.append([path.name, size, digest.hexdigest()])
    return entries


_CHUNKS, _CHUNK = 16, 1 << 16


def run_key(record_ids: Sequence[str], model: str, options: Mapping) -> str:
    """A hash of everything that decides a shard's rows: the whole record list, the model, the options."""
    digest = hashlib.sha256()
    digest.update(json.dumps(list(record_ids)).encode("utf-8"))
    digest.update(json.dumps(_model_fingerprint(model), default=str).encode("utf-8"))
    digest.update(json.dumps(dict(sorted(options.items())), default=str).encode("utf-8"))
    return digest.hexdigest()


def read_marker(output, index: int, count: int, key: str) -> dict | None:
    """The marker of a complete shard of this run (same key, all its files present), else None."""
    path = marker_path(output, index, count)
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("version") != MARKER_VERSION or marker.get("key") != key:
        return None
    if marker.get("shard_index") != index or marker.get("num_shards") != count:
        return None
    files = marker.get("files")
    if not isinstance(files, list) or not all(
        isinstance(name, str) and (path.parent / name).is_file() for name in files
    ):
        return None
    return marker


def write_marker(
    output,
    index: int,
    count: int,
    key: str,
    status: int,
    files: Sequence[Path],
    extra: Mapping,
) -> Path:
    path = marker_path(output, index, count)
    marker = {
        "version": MARKER_VERSION,
        "key": key,
        "shard_index": index,
        "num_shards": count,
        "status": status,
        # Relative to the marker's folder: machines may mount the shared folder at different paths.
        "files": [os.path.relpath(file, path.parent) for file in files],
        **extra,
    }
    return write_text(path, json.dumps(marker, indent=2, default=str) + "\n")


def wait_for_markers(output, count: int, key: str, timeout_s: float, poll_s: float = 0.5) -> list[dict]:
    """Markers of all `count` shards of this run, polling until they are complete; TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    markers: dict[int, dict] = {}
    while True:
        for index in range(count):
            if index not in markers:
                marker = read_marker(output, index, count, key)
                if marker is not None:
                    markers[index] = marker
        if len(markers) == count:
            return [markers[index] for index in range(count)]
        if time.monotonic() >= deadline:
            missing = [index for index in range(count) if index not in markers]
            raise TimeoutError(
                f"shards {missing} of {count} did not complete within {timeout_s:g} s "
                f"(no valid {marker_path(output, missing[0], count).name})"
            )
        time.sleep(poll_s)


def merge_parquet(parts: Sequence[Path], output: str | os.PathLike) -> int:
    """Concatenate Parquet files (same schema) into `output` atomically; the number of rows."""
    import pyarrow.parquet as pq

    rows = 0
    with AtomicOutput(output) as target:
        writer = None
        try:
            for part in parts:
                source = pq.ParquetFile(part)
                if writer is None:
                    writer = pq.ParquetWriter(target.temporary, source.schema_arrow)
                for batch in source.iter_batches():
                    writer.write_batch(batch)
                    rows += batch.num_rows
        finally:
            if writer is not None:
                writer.close()
        if writer is not None:
            target.commit()
    return rows


def merge_csv(parts: Sequence[Path], output: str | os.PathLike) -> int:
    """Concatenate CSV files with the same header into `output` atomically; the number of data rows.
    Rows are read and written back with the same `csv` dialect, so the bytes are those a one-process
    run writes (cells were already made formula-safe by the shards)."""
    rows = 0
    if not parts:
        return 0
    with AtomicOutput(output) as target:
        with open(target.temporary, "w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            for number, part in enumerate(parts):
                with open(part, newline="", encoding="utf-8") as handle:
                    reader = csv.reader(handle)
                    header = next(reader, None)
                    if number == 0 and header is not None:
                        writer.writerow(header)
                    for row in reader:
                        writer.writerow(row)
                        rows += 1
        target.commit()
    return rows
