# Copyright 2026 The dbeta authors. Licensed under the Apache License, Version 2.0.
"""Each speed lever of `train/pretrain.py` on and off (issue 12): samples/s of the full
pre-training step and its losses against the plain (eager) path, in one run.

    python benchmarks/pretrain_levers.py                                  # CPU, the demo model
    python benchmarks/pretrain_levers.py --device cuda --batch_sizes 128 256 384   # the MFU table

A step is what `train/pretrain.py` does per batch: forward with all four losses (MLM, MEM, ETM, ETS),
backward, gradient clipping, AdamW. The batches are fixed and have reports of random lengths
(`--text_lengths MIN MAX` tokens), padded to the longest report of each batch (the plain path) or
to the next `--buckets` length (the bucketed lever), with the collator's rule
(`PretrainingBatchSettings.padded_text_length`). Levers, as the flags of `train/pretrain.py`:

- `buckets`   : `--text_length_buckets` (static text lengths);
- `fused`     : `--fused_adamw`;
- `compile`   : `--compile` (regional: each repeated transformer layer, `--compile_backend`);
- `all`       : the three together; on CUDA also `all-cudagraphs` (`--compile_mode reduce-overhead`).

Every setting runs in a fresh process from the same initial weights on the same batches. The first
pass over the batches (warm-up: compilation happens there) records the per-step losses, compared
with the eager setting's (`max |loss diff|`, over all steps and the five losses); the next
`--passes` passes are timed. Dropout is switched off (its masks depend on the padded shapes and
compiled code draws them otherwise), so the losses are comparable; `--keep_dropout` times it.
Precision: fp32 on the CPU; bf16 autocast on CUDA (what `accelerate`'s `mixed_precision="bf16"` does).

FLOPs: `3 x common.pretraining_forward_flops` per sample at the mean *unpadded* report length (the
useful work; padding to a bucket is counted as overhead). MFU is against the card's dense bf16
peak (`performance.card_peak_tflops`) on CUDA, against the fp32 GEMM rate measured around each
setting's timing on the CPU (its load varies on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

LOSSES = ("loss", "mlm_loss", "mem_loss", "etm_loss", "ets_loss")
LEVERS = {
    "eager": {},
    "buckets": {"buckets": True},
    "fused": {"fused": True},
    "compile": {"compile": True},
    "all": {"buckets": True, "fused": True, "compile": True},
    "all-cudagraphs": {"buckets": True, "fused": True, "compile": True, "compile_mode": "reduce-overhead"},
}


def build_config(name: str, keep_dropout: bool):
    from configuration_dbeta import DBetaConfig

    if name == "demo":
        from dbeta.train.demo.build_demo_tokenizer import load_demo_tokenizer
        from dbeta.train.demo.recipe import demo_model_config

        config = demo_model_config(load_demo_tokenizer())
    elif name == "tiny":
        from tests.pretraining_helpers import demo_tokenizer, tiny_pretraining_config

        config = tiny_pretraining_config(demo_tokenizer())
    else:
        config = DBetaConfig()
    if not keep_dropout:
        ecg = config.ecg_config
        ecg.hidden_dropout = ecg.attention_dropout = ecg.activation_dropout = ecg.feat_proj_dropout = 0.0
        config.text_config.dropout_rate = 0.0
        config.fusion_dropout = 0.0
    return config


def make_batches(config, batch_size: int, count: int, text_lengths: tuple[int, int], seed: int = 0):
    """`count` collator-like batches, text padded to each batch's longest report: random ECGs (mV
    scale), reports of random lengths ending in </s>, half the rows N3S negatives, MLM labels on a
    quarter of the aligned rows' tokens."""
    import torch

    text = config.text_config
    vocab = text.vocab_size
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        lengths = torch.randint(text_lengths[0], text_lengths[1] + 1, (batch_size,), generator=generator)
        width = int(lengths.max())
        input_ids = torch.full((batch_size, width), text.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros(batch_size, width, dtype=torch.long)
        for row, length in enumerate(lengths.tolist()):
            input_ids[row, : length - 1] = torch.randint(3, vocab - 100, (length - 1,), generator=generator)
            input_ids[row, length - 1] = text.eos_token_id
            attention_mask[row, :length] = 1
        is_aligned = (torch.randperm(batch_size, generator=generator) % 2).long()
        picked = (torch.rand(batch_size, width, generator=generator) < 0.25) & attention_mask.bool() & is_aligned[:, None].bool()
        picked &= input_ids != text.eos_token_id
        batches.append({
            "input_values": 0.3 * torch.randn(batch_size, config.ecg_config.num_leads, config.num_samples, generator=generator),
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "mlm_labels": torch.where(picked, input_ids, torch.full_like(input_ids, -100)),
            "is_aligned": is_aligned,
        })  # fmt: skip
    return batches


def pad_text(batch: dict, length: int, pad_token_id: int) -> dict:
    """The batch with its text padded (masked, unlabelled) up to `length` tokens."""
    import torch.nn.functional as F

    extra = length - batch["input_ids"].shape[1]
    if extra <= 0:
        return batch
    return {
        **batch,
        "input_ids": F.pad(batch["input_ids"], (0, extra), value=pad_token_id),
        "attention_mask": F.pad(batch["attention_mask"], (0, extra), value=0),
        "mlm_labels": F.pad(batch["mlm_labels"], (0, extra), value=-100),
    }


def measure(setting: str, options: dict) -> dict:
    """One setting, in this process: warm-up pass (losses recorded), then `passes` timed passes."""
    import torch

    from dbeta.train.pretraining.collator import PretrainingBatchSettings
    from dbeta.train.pretraining.model import optimizer_parameter_groups
    from dbeta.train.pretraining.speed_levers import build_adamw, compile_repeated_layers
    from modeling_dbeta import DBetaForPreTraining

    device = options["device"]
    if device == "cpu" and options.get("threads"):
        torch.set_num_threads(options["threads"])
    lever = LEVERS[setting]
    config = build_config(options["config"], options["keep_dropout"])
    batches = make_batches(config, options["batch_size"], options["num_batches"], tuple(options["text_lengths"]))
    if lever.get("buckets"):
        settings = PretrainingBatchSettings(lead_names=list(config.lead_names), num_samples=config.num_samples,
                                            max_text_length=config.max_text_length, text_length_buckets=options["buckets"])  # fmt: skip
        batches = [pad_text(b, settings.padded_text_length(b["input_ids"].shape[1]), config.text_config.pad_token_id) for b in batches]
    batches = [{name: tensor.to(device, non_blocking=True) for name, tensor in batch.items()} for batch in batches]

    torch.manual_seed(0)
    model = DBetaForPreTraining(config).to(device).train()
    if lever.get("compile"):
        compile_repeated_layers(model, backend=options["compile_backend"], mode=lever.get("compile_mode"))
    optimizer = build_adamw(optimizer_parameter_groups(model, 0.01), 5e-5, (0.9, 0.98), 1e-6, fused=bool(lever.get("fused")))
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=options["precision"] == "bf16")
    generator = torch.Generator(device=device)

    cudagraphs = lever.get("compile_mode") == "reduce-overhead"

    def step(index: int, batch: dict):
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()  # a new iteration: earlier graph outputs may be overwritten
        generator.manual_seed(index)  # the same MEM masks in every setting
        with autocast:
            outputs = model(**batch, mask_generator=generator)
        outputs.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return torch.stack([outputs[name].detach().float() for name in LOSSES])

    def synchronize():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    started = time.perf_counter()
    history = [step(i, batch).tolist() for i, batch in enumerate(batches)]
    synchronize()
    warmup_seconds = time.perf_counter() - started
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    else:  # the machine's state around the timed passes: on a shared CPU, a falling rate means other load
        from common import measure_gemm_gflops

        gemm_before = measure_gemm_gflops(seconds=1.0)
    started = time.perf_counter()
    steps = 0
    for _ in range(options["passes"]):
        for i, batch in enumerate(batches):
            step(len(batches) + steps, batch)
            steps += 1
    synchronize()
    seconds = time.perf_counter() - started
    gemm = None if device.startswith("cuda") else (gemm_before + measure_gemm_gflops(seconds=1.0)) / 2
    return {
        "gemm_gflops_during": gemm,
        "setting": setting,
        "samples_per_second": steps * options["batch_size"] / seconds,
        "seconds_per_step": seconds / steps,
        "warmup_seconds": warmup_seconds,
        "history": history,
        "mean_padded_length": sum(b["input_ids"].shape[1] for b in batches) / len(batches),
        "mean_text_length": sum(float(b["attention_mask"].sum(1).float().mean()) for b in batches) / len(batches),
        "peak_memory_mib": torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None,
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
    }


def run_setting(setting: str, options: dict) -> dict:
    command = [sys.executable, __file__, "--_worker", setting, json.dumps(options)]
    completed = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy(), cwd=str(ROOT))
    if completed.returncode != 0:
        raise RuntimeError(f"{setting} failed:\n{completed.stderr[-4000:]}")
    return json.loads(next(line[7:] for line in completed.stdout.splitlines() if line.startswith("RESULT ")))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help='"cpu" or "cuda".')
    parser.add_argument("--config", choices=["demo", "tiny", "default"], default=None, help="Default: demo on the CPU, the published 321M architecture on CUDA.")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=None, help="Default: 32 on the CPU; 128 on CUDA.")
    parser.add_argument("--settings", nargs="+", default=None, choices=list(LEVERS), help="Default: all but all-cudagraphs on the CPU; all on CUDA.")
    parser.add_argument("--text_lengths", type=int, nargs=2, default=None, metavar=("MIN", "MAX"), help="Report lengths in tokens. Default: 8 48 (demo), 16 128 (CUDA).")
    parser.add_argument("--buckets", type=int, nargs="+", default=None, help="Bucket lengths. Default: 16 32 48 64 on the CPU, 32 64 128 254 on CUDA.")
    parser.add_argument("--num_batches", type=int, default=4, help="Distinct batches (one warm-up pass over them).")
    parser.add_argument("--passes", type=int, default=2, help="Timed passes over the batches.")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default=None, help="Default: fp32 on the CPU, bf16 on CUDA.")
    parser.add_argument("--compile_backend", default="inductor")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's).")
    parser.add_argument("--keep_dropout", action="store_true", help="Keep the config's dropout (losses then differ between settings by chance).")
    parser.add_argument("--output_json", default=None)
    parser.add_argument("--_worker", nargs=2, metavar=("SETTING", "OPTIONS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args._worker:
        result = measure(args._worker[0], json.loads(args._worker[1]))
        print("RESULT " + json.dumps(result))
        return

    cuda = args.device.startswith("cuda")
    config_name = args.config or ("default" if cuda else "demo")
    batch_sizes = args.batch_sizes or ([128] if cuda else [32])
    settings = args.settings or ([s for s in LEVERS] if cuda else [s for s in LEVERS if s != "all-cudagraphs"])
    if settings[0] != "eager":
        settings = ["eager", *[s for s in settings if s != "eager"]]
    text_lengths = args.text_lengths or ([16, 128] if cuda else [8, 48])
    buckets = args.buckets or ([32, 64, 128, 254] if cuda else [16, 32, 48, 64])
    precision = args.precision or ("bf16" if cuda else "fp32")

    import torch

    from common import measure_gemm_gflops, pretraining_forward_flops, print_table

    if cuda:
        from performance import card_peak_tflops

        peak_tflops = card_peak_tflops(torch.cuda.get_device_name())
        if peak_tflops is not None:
            peak_gflops, limit_name = peak_tflops * 1e3, "MFU (dense bf16 peak)"
        else:  # a card without a data-sheet entry: its measured bf16 GEMM rate
            from performance import _cuda_gemm

            peak_gflops, limit_name = _cuda_gemm("bf16"), "of measured bf16 GEMM"
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        peak_gflops = measure_gemm_gflops()
        limit_name = "of fp32 GEMM measured around the timing"
    config = build_config(config_name, args.keep_dropout)
    print(f"torch {torch.__version__}, device {args.device}, config {config_name}, {precision}, reports {text_lengths[0]}-{text_lengths[1]} "
          f"tokens, buckets {buckets}, compile backend {args.compile_backend}, dropout {'on' if args.keep_dropout else 'off'}")
    print(f"Limit: {peak_gflops / 1e3:.3f} TFLOP/s ({limit_name})", flush=True)

    results = []
    for batch_size in batch_sizes:
        options = {
            "device": args.device, "config": config_name, "batch_size": batch_size, "num_batches": args.num_batches,
            "passes": args.passes, "text_lengths": text_lengths, "buckets": buckets, "precision": precision,
            "compile_backend": args.compile_backend, "threads": args.threads, "keep_dropout": args.keep_dropout,
        }  # fmt: skip
        rows, baseline = [], None
        for setting in settings:
            result = run_setting(setting, options)
            result["batch_size"] = batch_size
            results.append(result)
            baseline = baseline or result
            text_length = baseline["mean_text_length"]
            masked = 0.25 * text_length * 0.5
            flops_per_sample = 3 * pretraining_forward_flops(config, text_length, masked)
            result["flops_per_sample"] = flops_per_sample
            # On the CPU, against the GEMM rate measured around this setting's timing (the load of a shared machine varies).
            limit = result["gemm_gflops_during"] or peak_gflops
            result["fraction_of_limit"] = result["samples_per_second"] * flops_per_sample / 1e9 / limit
            result["max_loss_diff"] = max(abs(a - b) for got, want in zip(result["history"], baseline["history"]) for a, b in zip(got, want))
            print(f"batch {batch_size} {setting}: {result['samples_per_second']:.2f} samples/s "
                  f"(warm-up {result['warmup_seconds']:.1f} s), max |loss diff| {result['max_loss_diff']:.1e}", flush=True)  # fmt: skip
            rows.append([
                batch_size, setting, f"{result['mean_padded_length']:.1f}", f"{result['samples_per_second']:.2f}",
                f"{result['samples_per_second'] / baseline['samples_per_second']:.2f}x", f"{result['fraction_of_limit']:.1%}",
                f"{result['warmup_seconds']:.1f}", f"{result['max_loss_diff']:.1e}",
                f"{result['peak_memory_mib']:.0f}" if result["peak_memory_mib"] is not None else f"{result['gemm_gflops_during']:.1f}",
            ])  # fmt: skip
        first = results[-1]
        print(f"\nBatch {batch_size}: {first['parameters'] / 1e6:.1f}M parameters, {first['device']}, "
              f"{baseline['flops_per_sample'] / 1e9:.1f} GFLOP per sample (3 x forward at {baseline['mean_text_length']:.1f} report tokens)\n")
        print_table(["batch", "setting", "mean text length (padded)", "samples/s", "vs eager", limit_name,
                     "warm-up s (compile)", "max |loss diff| vs eager", "peak GPU MiB" if cuda else "GEMM GFLOP/s around the timing"], rows)  # fmt: skip
        print()
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
