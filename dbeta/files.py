"""How dbeta writes results: one file (`AtomicOutput`), one folder (`staged_folder`, `staged_files`),
and the cells of every CSV it writes (`csv_writer`).

Every command output (CSV, Parquet, HTML, errors file), every exported folder (Hub folder from
pretraining or the converter, ONNX export) goes through these, so an interrupted or failed run
leaves either the complete new result or the untouched old one, never a mix.
"""

from __future__ import annotations

import csv
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def _stream_kind(path: Path) -> str | None:
    """"stream" for a character device or FIFO (written in place), "file" for a regular file or an
    absent path (written atomically); anything else is refused by `AtomicOutput`."""
    try:
        mode = os.stat(path).st_mode  # follows symlinks: a link to a file is written through
    except FileNotFoundError:
        return "file"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return "stream"
    return None


class AtomicOutput:
    """A file written under a temporary name in the target's folder and renamed over the target by
    `commit()`. Leaving the `with` block without `commit()` (an exception, an interrupt, or nothing
    to write) removes the temporary file, so the target is either the complete new file or untouched.

    Only regular files (or absent paths) are replaced this way; a symlink to one is followed, so the
    link stays and its target is updated. A character device or FIFO (`/dev/stdout`, a named pipe)
    is written in place (`temporary` is the target itself): renaming over it would replace the device
    node. Any other kind of path (folder, socket, block device) is refused.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        kind = _stream_kind(self.path)
        if kind is None:
            raise IsADirectoryError(f"{self.path} is not a regular file, character device or FIFO: not written")
        self.in_place = kind == "stream"
        self.committed = False
        if self.in_place:
            self.temporary = self.path
            return
        target = Path(os.path.realpath(self.path))
        descriptor, name = tempfile.mkstemp(prefix=f"{target.name}.", suffix=".partial", dir=target.parent)
        os.close(descriptor)
        self.target = target
        self.temporary = Path(name)

    def commit(self) -> None:
        if self.in_place:
            self.committed = True
            return
        with open(self.temporary, "rb") as handle:
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.temporary, 0o666 & ~umask)  # mkstemp makes 0600; give the usual new-file mode
        os.replace(self.temporary, self.target)
        self.committed = True

    def discard(self) -> None:
        if not self.committed and not self.in_place:
            self.temporary.unlink(missing_ok=True)

    def __enter__(self) -> AtomicOutput:
        return self

    def __exit__(self, *exc_info) -> None:
        self.discard()


#: A spreadsheet reads a cell starting with one of these as a formula (OWASP, CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def formula_safe(cell):
    """A CSV cell a spreadsheet shows as text: a string that starts like a formula (`=cmd|...`,
    `+2+3`, `@SUM(...)`) gets a leading `'` (OWASP's advice). Numbers, also negative ones written
    as text, are left as they are."""
    if isinstance(cell, str) and cell.startswith(FORMULA_PREFIXES) and not _is_number(cell):
        return "'" + cell
    return cell


class _FormulaSafeWriter:
    def __init__(self, handle, **kwargs):
        self._writer = csv.writer(handle, **kwargs)

    def writerow(self, row):
        return self._writer.writerow([formula_safe(cell) for cell in row])

    def writerows(self, rows):
        for row in rows:
            self.writerow(row)


def csv_writer(handle, **kwargs) -> _FormulaSafeWriter:
    """`csv.writer` whose cells pass through `formula_safe`: every CSV dbeta writes uses it, since
    record names, paths, labels and error messages come from the user's files."""
    return _FormulaSafeWriter(handle, **kwargs)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through an `AtomicOutput` (complete new file or the old one)."""
    with AtomicOutput(path) as target:
        with open(target.temporary, "wb") as handle:
            handle.write(data)
        target.commit()
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """`write_bytes` of UTF-8 text."""
    return write_bytes(path, text.encode("utf-8"))


@contextmanager
def staged_folder(
    target: str | os.PathLike, overwrite: bool = False, replaceable: Callable[[Path], bool] | None = None
) -> Iterator[Path]:
    """Yield a temporary sibling folder of `target` that becomes `target` only if the block succeeds.

    Any error (a bad tokenizer, a failed check, Ctrl-C) removes the temporary folder, so no
    half-written `target` is ever left behind. An existing non-empty `target` is an error unless
    `overwrite=True` (and, with `replaceable`, unless `replaceable(target)` says it is a folder this
    writer made), in which case it is replaced once the new folder is complete.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a folder.")
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{target} already exists and is not empty; choose another folder or allow overwriting it.")
        if replaceable is not None and not replaceable(target):
            raise FileExistsError(f"{target} is not empty and was not written by this command; choose another folder.")
    target.parent.mkdir(parents=True, exist_ok=True)
    # A sibling, so that the final rename stays on one file system (and is atomic there).
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield staging
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            target.rename(retired / target.name)
            staging.rename(target)
            shutil.rmtree(retired)
        else:
            staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def staged_files(target: str | os.PathLike, staging_name: str = ".hub_staging") -> Iterator[Path]:
    """`staged_folder` for a folder that also holds other things (a pretraining run's output folder,
    with its checkpoints and logs): the new files are written into a staging folder inside `target`
    and moved in, each by one rename, only once all of them are written. A failed or interrupted
    export leaves the previous files in place and removes the staging folder."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a folder.")
    target.mkdir(parents=True, exist_ok=True)
    (target / staging_name).mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="export-", dir=target / staging_name))
    try:
        yield staging
        for entry in sorted(staging.iterdir()):
            destination = target / entry.name
            if destination.is_dir() and not destination.is_symlink():
                retired = Path(tempfile.mkdtemp(prefix=f"{entry.name}.old-", dir=staging.parent))
                destination.rename(retired / entry.name)
                entry.rename(destination)
                shutil.rmtree(retired, ignore_errors=True)
            else:
                os.replace(entry, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        try:
            (target / staging_name).rmdir()  # only when nothing else is staged there
        except OSError:
            pass


__all__ = ["AtomicOutput", "csv_writer", "formula_safe", "staged_files", "staged_folder", "write_bytes", "write_text"]
