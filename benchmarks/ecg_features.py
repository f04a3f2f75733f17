#!/usr/bin/env python
"""ECG feature extraction throughput and peak memory: default D-BETA ECG tower, CPU.

    python benchmarks/ecg_features.py [--batch_sizes 1 8 32] [--threads N] [--device cpu|cuda]

For each attention path (SDPA, eager), precision (fp32, bf16 autocast) and batch size, a fresh
process builds the published ECG tower (random weights: speed does not depend on values), runs
`get_ecg_features` under `torch.inference_mode`, and reports samples/s, the fraction of the
machine's measured fp32 GEMM limit, and that process's peak memory. Ratios are against SDPA fp32
at the same batch size, measured in this run.
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ecg_tower_flops, measure_gemm_gflops, print_table, run_isolated, time_call  # noqa: E402


def _measure(attn: str, dtype_name: str, batch_size: int, threads: int, device: str):
    import torch

    from configuration_dbeta import DBetaConfig
    from modeling_dbeta import DBetaECGModel

    torch.set_num_threads(threads)
    config = DBetaConfig().ecg_config
    config._attn_implementation = attn
    model = DBetaECGModel(config).eval().to(device)
    ecg = torch.randn(batch_size, 12, 5000, device=device)
    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step():
        with torch.inference_mode(), torch.autocast(device, dtype=dtype, enabled=dtype_name == "bf16"):
            model(ecg)
        if device == "cuda":
            torch.cuda.synchronize()

    seconds = time_call(step, warmup=1, min_iterations=3, min_seconds=3.0 if device == "cpu" else 1.0)
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    return batch_size / seconds, gpu_peak


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()

    import torch

    from configuration_dbeta import DBetaConfig

    torch.set_num_threads(args.threads)
    gemm_before = measure_gemm_gflops()
    flops = ecg_tower_flops(DBetaConfig().ecg_config)
    print(f"device: {args.device}, threads: {args.threads}, torch {torch.__version__}")

    rows, baseline = [], {}
    for batch_size in args.batch_sizes:
        for attn in ("sdpa", "eager"):
            for dtype_name in ("fp32", "bf16"):
                (samples_per_s, gpu_peak), peak_rss = run_isolated(
                    _measure, attn, dtype_name, batch_size, args.threads, args.device
                )
                baseline.setdefault(batch_size, samples_per_s)
                peak = gpu_peak if gpu_peak is not None else peak_rss
                rows.append([batch_size, attn, dtype_name, samples_per_s, baseline[batch_size], peak])
    # The limit is measured before and after the workload and the higher figure kept, so a transient
    # load on the machine cannot inflate the fractions.
    gemm = max(gemm_before, measure_gemm_gflops())
    print(f"fp32 GEMM 2504x768x3072: {gemm_before:.1f} / {gemm:.1f} GFLOP/s (before / max with after); "
          f"ECG tower: {flops / 1e9:.1f} GFLOP per 10 s ECG")
    rows = [
        [batch, attn, dtype, f"{speed:.2f}", f"{speed / base:.2f}x", f"{speed * flops / 1e9 / gemm:.0%}", f"{peak:.0f}"]
        for batch, attn, dtype, speed, base, peak in rows
    ]
    memory = "peak GPU MiB" if args.device == "cuda" else "peak RSS MiB"
    print_table(["batch", "attention", "precision", "samples/s", "vs sdpa fp32", "of fp32 GEMM limit", memory], rows)


if __name__ == "__main__":
    main()
