# Copyright 2026 The dbeta authors. Licensed under the Apache License, Version 2.0.
"""The errors a pre-training run reports on one line: bad flags, files or folders, a checkpoint that
does not fit the run, a prepared dataset that changed on disk, a disk that filled up.

Each is a `PretrainingInputError` (a `ValueError`; the subclasses below are also the built-in error
a caller would expect: `FileExistsError`, `FileNotFoundError`, `OSError`). Their message names the
file or flag and what to do. `train/pretrain.py` run as a command prints it as one line,
``pretrain.py: error: <message>`` (`one_line`), and exits with status 2, as argparse does for a bad
flag; code that calls `main()` gets the exception itself.
"""

from __future__ import annotations

import sys
from pathlib import Path


class PretrainingInputError(ValueError):
    """A run cannot go on with these inputs; the message says which file or flag and what to do."""


class PretrainingFileError(PretrainingInputError, OSError):
    """A file, folder or download the run needs is unusable (also an `OSError`)."""


class OutputDirInUseError(PretrainingInputError, FileExistsError):
    """`--output_dir` holds another run's checkpoints or model (also a `FileExistsError`)."""


class CheckpointNotFoundError(PretrainingInputError, FileNotFoundError):
    """`--resume_from_checkpoint` names no checkpoint folder (also a `FileNotFoundError`)."""


class CheckpointWriteError(PretrainingInputError, OSError):
    """A checkpoint or Hub folder could not be written (disk full, no permission); nothing partial is left."""


def first_line(error: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message`, shortened: for one-line reports of an underlying error."""
    text = str(error).strip().splitlines()
    line = text[0].strip() if text else ""
    if len(line) > limit:
        line = line[: limit - 3] + "..."
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


def one_line(error: PretrainingInputError) -> str:
    """The error as the one line the command prints: `pretrain.py: error: <message>`."""
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "pretrain.py"
    return f"{program}: error: {' '.join(str(error).split())}"
