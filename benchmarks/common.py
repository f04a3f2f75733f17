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


def markdown_table(headers: list[str], rows: list[list]) -> str:
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    return "\n".join(lines)


def append_results_section(path, title: str, section: str) -> None:
    """Add one run's section to a `benchmarks/results/` file (written with `title` first): repeated
    runs sit side by side, as a noisy machine needs."""
    exists = path.exists()
    with open(path, "a" if exists else "w") as handle:
        handle.write(("\n" if exists else title + "\n") + section)
    print(f"wrote {path}")


def print_table(headers: list[str], rows: list[list]) -> None:
    print(markdown_table(headers, rows))


def _attention_block_flops(queries: int, keys: int, width: int, projections_on_keys: bool = True) -> float:
    """q/out projections on the queries, k/v projections on the keys, scores and weighted values."""
    flops = 2.0 * 2 * queries * width * width
    flops += 2.0 * 2 * keys * width * width if projections_on_keys else 0.0
    return flops + 2.0 * 2 * queries * keys * width


def pretraining_forward_flops(config, text_length: int, num_masked_text_tokens: float) -> float:
    """Forward FLOPs per (ECG, report) pair of a pre-training step, as `DBetaForPreTraining` runs
    it: the MEM-masked ECG tower, the T5 encoder, both fusion stacks, the MLM head on the masked
    tokens only, the MEM decoder over every patch, poolers and the ETM head. A training step
    costs about 3x this (backward = 2x forward)."""
    ecg_config, text_config, width = config.ecg_config, config.text_config, config.hidden_size
    num_tokens = ecg_config.num_tokens(config.num_samples)
    kept = int(num_tokens * (1 - ecg_config.mask_ratio))
    ecg_length = kept + 1
    flops = ecg_tower_flops(ecg_config, config.num_samples, num_kept_tokens=kept)

    # T5 encoder (no biases; gated FFN has two input projections).
    inner = text_config.num_heads * text_config.d_kv
    per_t5_layer = 2.0 * 4 * text_length * text_config.d_model * inner + 2.0 * 2 * text_length**2 * inner
    per_t5_layer += 2.0 * 3 * text_length * text_config.d_model * text_config.d_ff
    flops += text_config.num_layers * per_t5_layer + 2.0 * text_length * text_config.d_model * width

    # Fusion: each layer = self-attention + cross-attention + FFN, for both streams.
    for queries, context in ((text_length, ecg_length), (ecg_length, text_length)):
        per_layer = _attention_block_flops(queries, queries, width)
        per_layer += _attention_block_flops(queries, context, width)
        per_layer += 2.0 * 2 * queries * width * config.fusion_intermediate_size
        flops += config.num_fusion_layers * per_layer

    # MLM head on masked tokens only.
    flops += num_masked_text_tokens * (2.0 * width * width + 2.0 * width * text_config.vocab_size)
    # MEM decoder over CLS + every patch.
    decoder_width, decoder_length = config.mem_decoder_hidden_size, num_tokens + 1
    flops += 2.0 * ecg_length * width * decoder_width
    per_block = _attention_block_flops(decoder_length, decoder_length, decoder_width)
    per_block += 2.0 * 2 * decoder_length * decoder_width * 4 * decoder_width
    flops += config.mem_decoder_num_layers * per_block
    flops += 2.0 * decoder_length * decoder_width * ecg_config.num_leads * ecg_config.samples_per_token
    # Poolers and the ETM head.
    flops += 2.0 * 4 * width * width + 2.0 * 2 * width * 2
    return flops


class PeakRSSSampler:
    """Samples this process's resident memory in a background thread; `peak` is the largest seen.

    CPU tensors have no allocator statistics, so peak activation memory is read as the RSS peak
    during a step minus the RSS just before it (after `malloc_trim`, so freed memory is returned).
    """

    def __init__(self, interval: float = 0.002):
        import threading

        import psutil

        self._process = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.peak = 0

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(self._interval)

    def __enter__(self):
        self.peak = self._process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def current_rss_after_trim() -> int:
    """Resident memory after asking glibc to return freed pages to the OS."""
    import ctypes

    import psutil

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass
    return psutil.Process().memory_info().rss
