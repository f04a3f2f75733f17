# Copyright 2026 The dbeta authors. Licensed under the Apache License, Version 2.0.
"""Throughput and peak memory of one full D-BETA pre-training step.

A step is what `train/pretrain.py` does per batch: the forward pass with all four objectives
(MLM, MEM, ETM, ETS), the backward pass, gradient clipping and an AdamW update. The model is the
published architecture (`DBetaConfig()`, 321M parameters, randomly initialised: nothing is
downloaded) on a batch of 10 s 12-lead ECGs with MIMIC-length reports.

Each setting runs in its own subprocess so that its peak memory is its own: peak resident set
size on the CPU, `torch.cuda.max_memory_allocated` on a GPU. Precision is fp32 or bf16 autocast
(what `accelerate`'s `mixed_precision="bf16"` does); attention is SDPA or the eager path
(`config._attn_implementation = "eager"`).

    python benchmarks/pretrain_step.py                       # CPU, batch 8, the 4 settings
    python benchmarks/pretrain_step.py --device cuda --batch_size 32
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

SETTINGS = [("fp32", "sdpa"), ("fp32", "eager"), ("bf16", "sdpa"), ("bf16", "eager")]


def pretraining_batch(batch_size: int, text_length: int, vocab_size: int, device, seed: int = 0):
    """Random ECGs (mV scale) and reports: 25% of the aligned rows' tokens MLM-labelled, half the rows negatives."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, min(vocab_size, 32000), (batch_size, text_length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    lengths = torch.randint(text_length // 2, text_length + 1, (batch_size,), generator=generator)
    for row, length in enumerate(lengths.tolist()):
        input_ids[row, length - 1] = 1  # </s>
        input_ids[row, length:] = 0
        attention_mask[row, length:] = 0
    is_aligned = (torch.arange(batch_size) % 2 == 0).long()
    picked = (torch.rand(input_ids.shape, generator=generator) < 0.25) & attention_mask.bool() & is_aligned[:, None].bool()
    mlm_labels = torch.where(picked, input_ids, torch.full_like(input_ids, -100))
    batch = {
        "input_values": 0.3 * torch.randn(batch_size, 12, 5000, generator=generator),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "mlm_labels": mlm_labels,
        "is_aligned": is_aligned,
    }
    return {name: tensor.to(device) for name, tensor in batch.items()}


def measure(precision: str, attention: str, batch_size: int, steps: int, warmup: int, text_length: int, device: str) -> dict:
    """Time `steps` full training steps after `warmup` ones; runs in the current process."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from configuration_dbeta import DBetaConfig
    from modeling_dbeta import DBetaForPreTraining

    torch.manual_seed(0)
    config = DBetaConfig()
    config._attn_implementation = attention
    model = DBetaForPreTraining(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    batch = pretraining_batch(batch_size, text_length, config.text_config.vocab_size, device)
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step():
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for _ in range(warmup):
        step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(steps):
        loss = step()
    loss.item()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    if device.startswith("cuda"):
        peak_mib = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
    return {
        "precision": precision,
        "attention": attention,
        "batch_size": batch_size,
        "steps": steps,
        "seconds_per_step": seconds / steps,
        "samples_per_second": batch_size * steps / seconds,
        "peak_memory_mib": peak_mib,
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
    }


def format_table(results: list[dict]) -> str:
    baseline = results[0]
    header = "| precision | attention | s/step | samples/s | vs first | peak memory (MiB) | vs first |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    for result in results:
        lines.append(
            f"| {result['precision']} | {result['attention']} | {result['seconds_per_step']:.2f} | "
            f"{result['samples_per_second']:.2f} | {result['samples_per_second'] / baseline['samples_per_second']:.2f}x | "
            f"{result['peak_memory_mib']:.0f} | {result['peak_memory_mib'] / baseline['peak_memory_mib']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="Timed steps per setting.")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--text_length", type=int, default=64, help="Padded report length in tokens.")
    parser.add_argument("--settings", nargs="+", default=[f"{p}-{a}" for p, a in SETTINGS], help="e.g. fp32-sdpa bf16-eager")
    parser.add_argument("--output_json", default=None)
    parser.add_argument("--_worker", nargs=2, metavar=("PRECISION", "ATTENTION"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._worker:
        result = measure(*args._worker, args.batch_size, args.steps, args.warmup, args.text_length, args.device)
        print("RESULT " + json.dumps(result))
        return

    results = []
    for setting in args.settings:
        precision, attention = setting.split("-")
        command = [
            sys.executable, __file__, "--_worker", precision, attention, "--device", args.device,
            "--batch_size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--text_length", str(args.text_length),
        ]  # fmt: skip
        completed = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
        if completed.returncode != 0:
            raise RuntimeError(f"{setting} failed:\n{completed.stderr[-3000:]}")
        result = json.loads(next(line[7:] for line in completed.stdout.splitlines() if line.startswith("RESULT ")))
        results.append(result)
        print(f"{setting}: {result['samples_per_second']:.2f} samples/s, peak {result['peak_memory_mib']:.0f} MiB", flush=True)

    first = results[0]
    print(
        f"\nFull pre-training step (4 losses + backward + clip + AdamW), {first['parameters'] / 1e6:.0f}M parameters, "
        f"batch {args.batch_size}, reports of <= {args.text_length} tokens, {first['device']}, torch {first['torch']}:\n"
    )
    print(format_table(results))
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
