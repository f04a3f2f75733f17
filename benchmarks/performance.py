#!/usr/bin/env python
"""How close D-BETA runs to the machine's limit: ECG features and the full pre-training step.

    python benchmarks/performance.py                       # CPU, the issue's settings
    python benchmarks/performance.py --device cuda --step_batch_sizes 32 64 --feature_batch_sizes 8 64 256

Everything is measured in one run and reported as ratios to figures of the same run:
- the machine's fp32 GEMM rate on a 2504x768x3072 matmul (2 FLOPs per multiply-add) — on CUDA also
  bf16, and the card's dense bf16 peak from its data sheet;
- ECG feature extraction (published ECG tower, `torch.inference_mode`): samples/s and the fraction
  of the GEMM limit (analytic FLOPs, `common.ecg_tower_flops`), peak memory;
- the pre-training step (default architecture, all four losses, forward + backward + AdamW):
  the optimised model vs `--reference` behaviour (eager attention, full-vocabulary MLM logits,
  text padded to 256): samples/s, speed-up, fraction of the limit, activation memory (peak minus
  parameters, gradients and optimiser state) and its ratio, and the largest loss difference.
Each measurement runs in a fresh process, so peak memory is that configuration's own.
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    PeakRSSSampler,
    current_rss_after_trim,
    ecg_tower_flops,
    measure_gemm_gflops,
    pretraining_forward_flops,
    print_table,
    run_isolated,
    time_call,
)

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s.
DENSE_BF16_PEAK_TFLOPS = {"H100 SXM": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H200": 989.0, "A100": 312.0}


def card_peak_tflops(name: str) -> float | None:
    for key, value in DENSE_BF16_PEAK_TFLOPS.items():
        if all(part in name for part in key.split()):
            return value
    if "H100" in name:  # an unmarked H100 is the SXM part on the machines we were lent
        return DENSE_BF16_PEAK_TFLOPS["H100 SXM"]
    return None


def synthetic_batch(batch_size: int, text_length: int, vocab_size: int, seed: int = 0):
    """An ECG-report batch as the collator makes it: every report `text_length` tokens (ending in
    </s>), MLM labels on a quarter of the tokens of the aligned half of the batch."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab_size - 100, (batch_size, text_length), generator=generator)
    input_ids[:, -1] = 1
    is_aligned = (torch.arange(batch_size) % 2 == 0).long()
    picked = (torch.rand(batch_size, text_length, generator=generator) < 0.25) & is_aligned[:, None].bool()
    picked[:, -1] = False
    mlm_labels = torch.where(picked, input_ids, torch.full_like(input_ids, -100))
    return {
        "input_values": torch.randn(batch_size, 12, 5000, generator=generator) * 0.3,
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "mlm_labels": mlm_labels,
        "is_aligned": is_aligned,
    }


def measure_features(batch_size: int, dtype_name: str, device: str, threads: int):
    import torch

    from configuration_dbeta import DBetaConfig
    from modeling_dbeta import DBetaECGModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = DBetaECGModel(DBetaConfig().ecg_config).eval().to(device)
    ecg = torch.randn(batch_size, 12, 5000, device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype_name == "bf16")

    def step():
        with torch.inference_mode(), autocast:
            model(ecg)
        if device == "cuda":
            torch.cuda.synchronize()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = time_call(step, warmup=2, min_iterations=3, min_seconds=3.0 if device == "cpu" else 1.0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    return batch_size / seconds, peak


def measure_step(mode: str, batch_size: int, text_length: int, dtype_name: str, device: str, threads: int, steps: int):
    """One configuration of the pre-training step; returns speed, memory and the losses."""
    import torch

    from reference import pad_text_to, reference_model_from
    from configuration_dbeta import DBetaConfig
    from modeling_dbeta import DBetaForPreTraining

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = DBetaConfig()
    model = DBetaForPreTraining(config)
    if mode == "reference":
        model = reference_model_from(model)
    model.to(device).train()
    batch = synthetic_batch(batch_size, text_length, config.text_config.vocab_size)
    if mode == "reference":
        batch = pad_text_to(batch, config.max_text_length)
    batch = {k: v.to(device) for k, v in batch.items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype_name == "bf16")

    def train_step():
        with autocast:
            loss = model(**batch, mask_generator=torch.Generator(device).manual_seed(1)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # keep gradient buffers: they are static memory
        if device == "cuda":
            torch.cuda.synchronize()

    # Equality check first, from the untouched initial weights, without dropout.
    model.eval()
    with torch.no_grad(), autocast:
        out = model(**batch, mask_generator=torch.Generator(device).manual_seed(1))
        features = model.get_ecg_features(batch["input_values"][:2]).pooler_output.float().cpu().numpy()
    losses = {name: float(getattr(out, name)) for name in ("mlm_loss", "mem_loss", "etm_loss", "ets_loss", "loss")}
    model.train()

    train_step()  # warm-up: allocates gradients and optimiser state
    if device == "cuda":
        static = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        seconds = time_call(train_step, warmup=0, min_iterations=steps, min_seconds=0.0)
        activation = torch.cuda.max_memory_allocated() - static
    else:
        static = current_rss_after_trim()
        with PeakRSSSampler() as sampler:
            seconds = time_call(train_step, warmup=0, min_iterations=steps, min_seconds=0.0)
        activation = sampler.peak - static
    return {
        "samples_per_s": batch_size / seconds,
        "activation_mib": activation / 2**20,
        "losses": losses,
        "features": features,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--feature_batch_sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--step_batch_sizes", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--text_lengths", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per configuration")
    parser.add_argument("--skip_features", action="store_true")
    parser.add_argument("--skip_steps", action="store_true")
    args = parser.parse_args()

    import torch

    from configuration_dbeta import DBetaConfig

    torch.set_num_threads(args.threads)
    config = DBetaConfig()
    precisions = ["fp32", "bf16"] if args.device == "cuda" else ["fp32"]
    print(f"torch {torch.__version__}, device {args.device}, {args.threads} threads")
    # Measured twice (now and after the workload) and the higher figure used as the limit, so a
    # transient load on the machine cannot inflate the fractions.
    gemm = {"fp32": max(measure_gemm_gflops(), measure_gemm_gflops())}
    print(f"CPU fp32 GEMM 2504x768x3072: {gemm['fp32']:.1f} GFLOP/s")
    peak_tflops = None
    if args.device == "cuda":
        name = torch.cuda.get_device_name()
        torch.backends.cuda.matmul.allow_tf32 = False
        gemm = {p: _cuda_gemm(p) for p in precisions}
        peak_tflops = card_peak_tflops(name)
        print(f"GPU: {name}; GEMM fp32 {gemm['fp32'] / 1e3:.1f} TFLOP/s, bf16 {gemm['bf16'] / 1e3:.1f} TFLOP/s; "
              f"data-sheet dense bf16 peak: {peak_tflops} TFLOP/s")

    if not args.skip_features:
        flops = ecg_tower_flops(config.ecg_config)
        print(f"\nECG feature extraction, published ECG tower: {flops / 1e9:.1f} GFLOP per 10 s ECG")
        rows = []
        for batch_size in args.feature_batch_sizes:
            for precision in precisions:
                (speed, gpu_peak), rss = run_isolated(measure_features, batch_size, precision, args.device, args.threads)
                memory = gpu_peak if gpu_peak is not None else rss
                rows.append([batch_size, precision, f"{speed:.2f}", f"{speed * flops / 1e9 / gemm[precision]:.0%}", f"{memory:.0f}"])
        memory_name = "peak GPU MiB" if args.device == "cuda" else "peak RSS MiB"
        print_table(["batch", "precision", "samples/s", "of measured GEMM limit (same precision)", memory_name], rows)

    if not args.skip_steps:
        print("\nPre-training step, default architecture (forward + backward + AdamW, all four losses)")
        rows = []
        for batch_size in args.step_batch_sizes:
            for text_length in args.text_lengths:
                masked = 0.25 * text_length * 0.5
                step_flops = 3 * pretraining_forward_flops(config, text_length, masked)
                for precision in precisions:
                    results = {}
                    for mode in ("optimised", "reference"):
                        results[mode], _ = run_isolated(
                            measure_step, mode, batch_size, text_length, precision, args.device, args.threads, args.steps
                        )
                    fast, slow = results["optimised"], results["reference"]
                    loss_gap = max(abs(fast["losses"][k] - slow["losses"][k]) for k in fast["losses"])
                    feature_gap = float(abs(fast["features"] - slow["features"]).max())
                    limit = gemm[precision] if peak_tflops is None else peak_tflops * 1e3
                    rows.append(
                        [
                            batch_size,
                            text_length,
                            precision,
                            f"{fast['samples_per_s']:.2f}",
                            f"{slow['samples_per_s']:.2f}",
                            f"{fast['samples_per_s'] / slow['samples_per_s']:.2f}x",
                            f"{fast['samples_per_s'] * step_flops / 1e9 / limit:.0%}",
                            f"{fast['activation_mib']:.0f}",
                            f"{slow['activation_mib']:.0f}",
                            f"{fast['activation_mib'] / max(slow['activation_mib'], 1e-9):.2f}",
                            f"{loss_gap:.1e}",
                            f"{feature_gap:.1e}",
                        ]
                    )
        limit_name = "MFU (dense bf16 peak)" if peak_tflops else "of measured GEMM limit"
        print_table(
            ["batch", "text", "precision", "samples/s", "reference samples/s", "speed-up", limit_name,
             "activation MiB", "reference activation MiB", "activation ratio", "max |loss diff|", "max |feature diff|"],
            rows,
        )


def _cuda_gemm(precision: str) -> float:
    import time

    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    m, k, n = 8192, 8192, 8192  # large enough to reach the card's sustained rate
    a, b = torch.randn(m, k, device="cuda", dtype=dtype), torch.randn(k, n, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    iterations, start = 20, time.perf_counter()
    for _ in range(iterations):
        a @ b
    torch.cuda.synchronize()
    return 2.0 * m * k * n * iterations / (time.perf_counter() - start) / 1e9


if __name__ == "__main__":
    main()
