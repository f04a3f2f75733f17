"""Shared benchmark helpers: the machine's GEMM limit, analytic FLOPs, isolated peak-memory runs.

Every figure a benchmark prints is measured in the same run, so ratios are comparable even where
absolute numbers drift between runs.
"""

import multiprocessing
import resource
import time
from collections.abc import Callable

import torch


def measure_gemm_gflops(m: int = 2504, k: int = 768, n: int = 3072, dtype=torch.float32, seconds: float = 2.0) -> float:
    """Sustained GFLOP/s of an (m x k) @ (k x n) matmul (2 FLOPs per multiply-add)."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    for _ in range(3):
        a @ b
    iterations, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        iterations += 1
    elapsed = time.perf_counter() - start
    return 2.0 * m * k * n * iterations / elapsed / 1e9


def ecg_tower_flops(ecg_config, num_samples: int = 5000, num_kept_tokens: int | None = None) -> float:
    """Forward FLOPs per ECG of the ECG tower (2 per multiply-add): convolutions, positional
    convolution, attention (projections and score/value products), FFN, projection and pooler."""
    flops, length, channels = 0.0, num_samples, ecg_config.num_leads
    for dim, kernel, stride in zip(ecg_config.conv_dim, ecg_config.conv_kernel, ecg_config.conv_stride):
        length = (length - kernel) // stride + 1
        flops += 2.0 * length * dim * channels * kernel
        channels = dim
    tokens, width = length, ecg_config.hidden_size
    flops += 2.0 * tokens * channels * width  # feature projection
    group_width = width // ecg_config.num_conv_pos_embedding_groups
    flops += 2.0 * tokens * width * group_width * ecg_config.num_conv_pos_embeddings
    sequence = (num_kept_tokens if num_kept_tokens is not None else tokens) + 1  # + CLS
    per_layer = (
        2.0 * 4 * sequence * width * width  # q, k, v, out projections
        + 2.0 * 2 * sequence * sequence * width  # scores and weighted values
        + 2.0 * 2 * sequence * width * ecg_config.intermediate_size  # FFN
    )
    flops += ecg_config.num_hidden_layers * per_layer
    flops += 2.0 * sequence * width * ecg_config.projection_dim + 2.0 * ecg_config.projection_dim**2
    return flops


def _child(target: Callable, args: tuple, queue) -> None:
    result = target(*args)
    # ru_maxrss is in KiB on Linux: the peak resident memory of this fresh process.
    queue.put((result, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def run_isolated(target: Callable, *args):
    """Run `target(*args)` in a fresh process; returns (its result, that process's peak RSS in MiB)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(target, args, queue))
    process.start()
    result = queue.get()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"benchmark child failed with exit code {process.exitcode}")
    return result


def time_call(function: Callable, warmup: int = 1, min_iterations: int = 3, min_seconds: float = 3.0) -> float:
    """Seconds per call, after `warmup` calls, over at least `min_iterations` calls and `min_seconds`."""
    for _ in range(warmup):
        function()
    iterations, start = 0, time.perf_counter()
    while iterations < min_iterations or time.perf_counter() - start < min_seconds:
        function()
        iterations += 1
    return (time.perf_counter() - start) / iterations


def print_table(headers: list[str], rows: list[list]) -> None:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    print("| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |")
