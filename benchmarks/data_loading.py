#!/usr/bin/env python
"""Pre-training input pipeline vs training step: is the data loader the bottleneck? (CPU)

    python benchmarks/data_loading.py [--num_records 400] [--num_batches 40] [--default_batch_size 8] [--threads N] [--quick]

In one run it writes a simulated demo corpus (`make_demo_corpus`) in a temporary folder, prepares
it (`prepare_mimic_iv_ecg`, through `dbeta.train.demo.recipe.prepare_demo_dataset`), builds the N3S cache, the
pre-training collator, the sampler and the `DataLoader` exactly as `train/pretrain.py` does, and
measures:

- **loader records/s**: rows of the prepared (memory-mapped Arrow) training split turned into
  pre-training batches (int16 decode, lead reordering and masking, N3S negatives, tokenisation,
  MLM) by iterating the `DataLoader` with `num_workers` 0 and 2, over whole epochs (at least
  `--num_batches` batches), timed from `iter(loader)`: the workers' start-up, which every epoch of
  `pretrain.py` pays (no persistent workers), is included, so the rate is a lower bound; "first
  batch s" is the mean wait from `iter(loader)` to an epoch's first batch.
- **step samples/s**: one full pre-training step as the training loop does it (re-seeded dropout
  and MEM masking, `DBetaForPreTraining(...)(**batch).loss.backward()`, gradient clipping,
  AdamW step, zero_grad) on batches from that collator, after one warm-up step.

for (a) the demo configuration the pretraining script uses (`dbeta.train.pretraining.model.build_model` with the demo
arguments: its small model, batch 32) and (b) the default published architecture
(`DBetaConfig()`, batch `--default_batch_size`, a step or two: it is slow on CPU). The ratio
loader/step above 1 means the loader keeps up with training; the two are measured one after the
other, so with workers > 0 on a machine this small the loader's processes would also compete
with training for the same cores. Both settings use the demo tokenizer (the machine is offline;
the default model has the full 32128-token T5 vocabulary, so its MLM head costs the same).

`--quick` (for the tests, well under 30 s): a tiny corpus, a few batches, and the demo
configuration only (a step of the default architecture alone takes seconds to minutes on CPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import print_table, time_call  # noqa: E402

WORKER_SETTINGS = (0, 2)


def build_loader(train_rows, collator, batch_size: int, num_workers: int, seed: int):
    """The training DataLoader as `pretrain.main` builds it (map-style, non-streaming path)."""
    from torch.utils.data import DataLoader

    from dbeta.train.pretraining.collator import EpochShuffleSampler

    return DataLoader(
        train_rows,
        batch_size=batch_size,
        sampler=EpochShuffleSampler(len(train_rows), seed=seed),
        collate_fn=collator,
        num_workers=num_workers,
        drop_last=True,
    )


def loader_records_per_second(train_rows, collator, batch_size: int, num_workers: int, num_batches: int, seed: int) -> tuple[float, int, float]:
    """Records/s over whole epochs, timed from `iter(loader)` to the epoch's last batch (so the
    workers' start-up, which every epoch of `pretrain.py` pays, is included), for as many epochs
    as it takes to reach `num_batches` batches. Returns (rate, batches timed, mean seconds from
    `iter(loader)` to an epoch's first batch)."""
    loader = build_loader(train_rows, collator, batch_size, num_workers, seed)
    if len(loader) < 1:
        raise ValueError(f"No full batch of {batch_size} in {len(train_rows)} rows: use more --num_records.")
    epochs = max(1, -(-num_batches // len(loader)))
    records, batches, elapsed, first_batch = 0, 0, 0.0, 0.0
    for epoch in range(epochs):
        collator.set_epoch(epoch)
        loader.sampler.set_epoch(epoch)
        started = time.perf_counter()
        for position, batch in enumerate(loader):
            if position == 0:
                first_batch += time.perf_counter() - started
            records += batch["input_values"].shape[0]
            batches += 1
        elapsed += time.perf_counter() - started
    return records / elapsed, batches, first_batch / epochs


def step_samples_per_second(model, batches: list, args, warmup: int, min_iterations: int, min_seconds: float) -> float:
    """Samples/s of the training loop's step (without accelerate, which adds nothing on one CPU)."""
    import torch

    from dbeta.train.pretraining.model import optimizer_parameter_groups, step_seed

    optimizer = torch.optim.AdamW(
        optimizer_parameter_groups(model, args.weight_decay),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
    )
    mask_generator = torch.Generator()
    model.train()
    state = {"step": 0}

    def step():
        batch = dict(batches[state["step"] % len(batches)])
        seed = step_seed(args.seed, state["step"], 0)
        torch.manual_seed(seed)
        mask_generator.manual_seed(seed + 1)
        batch.pop("sample_index")
        outputs = model(**batch, mask_generator=mask_generator)
        outputs.loss.backward()
        if args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        state["step"] += 1

    batch_size = batches[0]["input_values"].shape[0]
    seconds = time_call(step, warmup=warmup, min_iterations=min_iterations, min_seconds=min_seconds)
    return batch_size / seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_records", type=int, default=400, help="Simulated studies in the demo corpus.")
    parser.add_argument("--num_batches", type=int, default=40, help="At least this many loader batches are timed (whole epochs).")
    parser.add_argument("--default_batch_size", type=int, default=8, help="Batch of the default architecture.")
    parser.add_argument("--default_steps", type=int, default=2, help="Timed steps of the default architecture.")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work_dir", default=None, help="Keep the corpus here (default: a temporary folder).")
    parser.add_argument("--quick", action="store_true", help="Tiny run for the tests (< 30 s).")
    options = parser.parse_args(argv)
    if options.quick:
        options.num_records, options.num_batches = min(options.num_records, 80), min(options.num_batches, 3)

    import datasets
    import torch
    import transformers
    from accelerate import PartialState
    from transformers import AutoTokenizer

    from configuration_dbeta import DBetaConfig
    from dbeta.train.pretraining.collator import DBetaPretrainingCollator, IndexedDataset, PretrainingBatchSettings
    from dbeta.train.pretraining.n3s import N3SSettings, default_cache_dir, load_or_build_n3s_index
    from dbeta.train.demo.build_demo_tokenizer import DEMO_TOKENIZER_DIR
    from dbeta.train.demo.recipe import prepare_demo_dataset
    from dbeta.train.pretraining.args import parse_args
    from dbeta.train.pretraining.data import load_splits
    from dbeta.train.pretraining.model import build_model
    from modeling_dbeta import DBetaForPreTraining

    torch.set_num_threads(options.threads)
    datasets.disable_progress_bars()
    transformers.utils.logging.set_verbosity_error()
    PartialState()  # pretrain's accelerate logger needs it

    with tempfile.TemporaryDirectory(prefix="dbeta-data-loading-") as temporary:
        work_dir = Path(options.work_dir or temporary)
        # The demo's own arguments (batch 32, N3S tfidf/far/k=64, negative fraction 0.5, AdamW...),
        # pointed at a corpus of --num_records studies in the work folder.
        args = parse_args([
            "--demo_corpus_dir", str(work_dir / "corpus"),
            "--demo_dataset_dir", str(work_dir / "prepared"),
            "--demo_num_records", str(options.num_records),
            "--seed", str(options.seed),
            "--report_to", "none",
        ])
        started = time.perf_counter()
        args.dataset_dir = prepare_demo_dataset(args)
        prepare_seconds = time.perf_counter() - started
        tokenizer = AutoTokenizer.from_pretrained(str(DEMO_TOKENIZER_DIR))
        train_data, _, train_reports = load_splits(args)
        n3s_settings = N3SSettings(args.n3s_encoder, args.n3s_mode, args.n3s_num_candidates, args.n3s_hard_max_similarity)
        n3s_index = load_or_build_n3s_index(train_reports, default_cache_dir(args.dataset_dir, args.train_split), n3s_settings)
        train_rows = IndexedDataset(train_data)

        torch.manual_seed(args.seed)
        demo_model = build_model(args, tokenizer)
        settings = {"demo (pretrain.py)": (demo_model.config, args.per_device_train_batch_size)}
        if not options.quick:
            settings["default DBetaConfig()"] = (DBetaConfig(), options.default_batch_size)
        print(f"torch {torch.__version__}, {options.threads} threads, {os.cpu_count()} CPU cores")
        print(
            f"demo corpus: {options.num_records} studies written and prepared in {prepare_seconds:.1f} s; "
            f"{len(train_data)} training rows, {len(n3s_index)} unique reports in the N3S index"
        )

        # Loaders first, while this process is small (workers fork it).
        loader_rates, collators = {}, {}
        for name, (config, batch_size) in settings.items():
            batch_settings = PretrainingBatchSettings.from_config(config, negative_fraction=args.negative_fraction)
            collators[name] = DBetaPretrainingCollator(tokenizer, batch_settings, n3s_index, seed=args.seed)
            for workers in WORKER_SETTINGS:
                loader_rates[name, workers] = loader_records_per_second(
                    train_rows, collators[name], batch_size, workers, options.num_batches, args.seed
                )

        step_rates = {}
        for name, (config, batch_size) in settings.items():
            loader = build_loader(train_rows, collators[name], batch_size, 0, args.seed)
            batches = [batch for batch, _ in zip(loader, range(2))]
            if name.startswith("demo"):
                model, timing = demo_model, dict(warmup=1, min_iterations=3, min_seconds=0.5 if options.quick else 5.0)
            else:
                torch.manual_seed(args.seed)
                model = DBetaForPreTraining(config)
                timing = dict(warmup=1, min_iterations=options.default_steps, min_seconds=0.0)
            step_rates[name] = step_samples_per_second(model, batches, args, **timing)
            parameters = sum(p.numel() for p in model.parameters()) / 1e6
            print(f"{name}: {parameters:.1f}M parameters, step measured at batch {batch_size}")
            del model
        if options.quick:
            print("--quick: the default architecture is not measured")

    rows = []
    for (name, workers), (rate, timed, first_batch) in loader_rates.items():
        batch_size = settings[name][1]
        rows.append([
            name, workers, batch_size, timed, f"{first_batch:.3f}", f"{rate:.1f}", f"{step_rates[name]:.2f}", f"{rate / step_rates[name]:.1f}",
        ])
    print()
    print_table(
        ["configuration", "num_workers", "batch size", "batches timed", "first batch s", "loader records/s", "step samples/s", "ratio loader/step"],
        rows,
    )
    slowest = min(rate / step_rates[name] for (name, _), (rate, _, _) in loader_rates.items())
    verdict = "the loader is not the bottleneck" if slowest > 1 else "the LOADER IS THE BOTTLENECK"
    print(f"\nlowest ratio loader/step: {slowest:.1f} ({verdict})")
    return rows


if __name__ == "__main__":
    main()
