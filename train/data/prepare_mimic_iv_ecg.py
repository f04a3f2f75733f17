"""Prepare MIMIC-IV-ECG v1.0 (or the simulated demo corpus) for D-BETA pre-training.

    python train/data/prepare_mimic_iv_ecg.py --mimic_root /data/mimic-iv-ecg/1.0 --output_dir data/mimic_prepared \\
        --num_proc 8 --val_fraction 0.05 --seed 0

Writes a Hugging Face ``datasets.DatasetDict`` (train / validation, split by subject) to
``--output_dir`` with a dataset card, ``summary.json`` and ``skipped.csv``. Re-running the same
command after an interruption resumes from the finished shards.

Several processes or machines (a shared ``--output_dir``; see docs/pretraining.md):

    accelerate launch --num_processes 4 -m dbeta.cli prepare-mimic --mimic_root ... --output_dir ...
    # or a SLURM array: each task prepares its block of subjects, then one plain run assembles
    dbeta prepare-mimic ... --num_shards 16 --shard_index $SLURM_ARRAY_TASK_ID
    dbeta prepare-mimic ... See
:mod:`dbeta.train.data.mimic_iv_ecg` for the row format and the skip reasons. A missing or malformed
CSV is reported on one line (file, column, first bad row) with exit status 2, and so are a full disk
or a worker process that died (the finished shards are kept: re-running the command resumes).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict

from dbeta.train.data.mimic_iv_ecg import PreparationInputError, prepare_mimic_iv_ecg

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Prepare MIMIC-IV-ECG as a Hugging Face dataset for D-BETA.")
    parser.add_argument("--mimic_root", required=True, help="Folder with record_list.csv, machine_measurements.csv and files/.")
    parser.add_argument("--output_dir", required=True, help="Where to save the DatasetDict.")
    parser.add_argument("--num_proc", type=int, default=1, help="Worker processes.")
    parser.add_argument("--val_fraction", type=float, default=0.05, help="Fraction of subjects held out for validation.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the subject split.")
    parser.add_argument("--shard_size", type=int, default=1000, help="Studies per shard (unit of parallelism and resumption).")
    parser.add_argument("--overwrite", action="store_true", help="Discard shards left by a run with other inputs/settings.")
    parser.add_argument("--keep_shards", action="store_true", help="Keep output_dir/.shards after success.")
    parser.add_argument(
        "--num_shards", type=int,
        help="Split the work into N blocks of consecutive subjects (processes / machines sharing --output_dir).",
    )
    parser.add_argument(
        "--shard_index", type=int,
        help="Prepare block i (0 to N-1) only; the same command without --num_shards/--shard_index then assembles "
        "the dataset (default under accelerate launch / torchrun: RANK of WORLD_SIZE, assembled by rank 0).",
    )
    parser.add_argument(
        "--merge_timeout", type=float, default=86400.0,
        help="Under a launcher, seconds rank 0 waits for the other processes' shards (default: 1 day).",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        summary = prepare_mimic_iv_ecg(
            args.mimic_root,
            args.output_dir,
            num_proc=args.num_proc,
            val_fraction=args.val_fraction,
            seed=args.seed,
            shard_size=args.shard_size,
            overwrite=args.overwrite,
            keep_shards=args.keep_shards,
            num_shards=args.num_shards,
            shard_index=args.shard_index,
            merge_timeout=args.merge_timeout,
            launcher_shards=True,  # under accelerate launch / torchrun each process prepares its block
        )
    except (FileNotFoundError, PreparationInputError) as error:
        # Bad inputs (a missing or malformed CSV, leftover shards of another run): the message
        # names the file, the column and the row; a traceback would only hide it.
        sys.stderr.write(f"prepare_mimic_iv_ecg.py: error: {error}\n")
        raise SystemExit(2) from None
    except (OSError, BrokenProcessPool) as error:
        # A full disk, a folder without write permission, a worker killed (out of memory): the
        # finished shards stay in --output_dir/.shards, so the same command resumes after the fix.
        cause = "a worker process died (out of memory? try a smaller --num_proc)" if isinstance(error, BrokenProcessPool) else str(error)
        sys.stderr.write(
            f"prepare_mimic_iv_ecg.py: error: {' '.join(cause.split())}; fix this and re-run the same command: "
            "it resumes from the finished shards.\n"
        )
        raise SystemExit(2) from None
    if summary is None:  # this process prepared its block of subjects; another assembles the dataset
        return
    logger.info(json.dumps(asdict(summary), indent=2))
    rate = summary.records_read / summary.seconds if summary.seconds else float("nan")
    logger.info(
        "Kept %d of %d studies (%d skipped) in %.1f s (%.0f records/s); dataset in %s",
        summary.records_kept, summary.records_listed, summary.records_skipped, summary.seconds, rate, summary.output_dir,
    )


if __name__ == "__main__":
    main()
