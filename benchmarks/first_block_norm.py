#!/usr/bin/env python
"""The first convolution block's GroupNorm: PyTorch's fused kernel (today) against the hand-written
reduction over the strided time axis that it replaced (b31cbff-91a1fff), in one process.

    python benchmarks/first_block_norm.py --threads 2 --rounds 16

The demo model (`demo_model_config`), batch 32, the fixed batches of `pretrain_levers.py`; each round
times one pass over the batches (forward, backward, clipping, AdamW) with each implementation, in
alternating order, so that both see the same machine load. Prints the seconds per step and the
ratio of each round, and the largest difference of the block's output on one batch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from modeling_dbeta import DBetaFeatureEncoderLayer, DBetaForPreTraining  # noqa: E402
from pretrain_levers import build_config, make_batches  # noqa: E402


def strided_reduction_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """`DBetaFeatureEncoderLayer.forward` as of 91a1fff: statistics over dim 1 of (batch, time, channels)."""
    kernel = self.conv.kernel_size[0]
    batch_size, length, channels = hidden_states.shape
    out_length = length // kernel
    windows = hidden_states[:, : out_length * kernel].reshape(batch_size, out_length, kernel * channels)
    weight = self.conv.weight.permute(0, 2, 1).reshape(self.conv.out_channels, kernel * channels)
    hidden_states = F.linear(windows, weight, self.conv.bias)
    if self.layer_norm is not None:
        with torch.autocast(device_type=hidden_states.device.type, enabled=False):
            values = hidden_states.float()
            mean = values.mean(dim=1, keepdim=True)
            variance = values.var(dim=1, unbiased=False, keepdim=True)
            values = (values - mean) * torch.rsqrt(variance + self.layer_norm.eps)
            values = values * self.layer_norm.weight.float() + self.layer_norm.bias.float()
        hidden_states = values.to(hidden_states.dtype)
    return F.gelu(hidden_states)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=16, help="Timed rounds (one more untimed warm-up round).")
    parser.add_argument("--num_batches", type=int, default=8)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.num_batches < 1:
        parser.error("--rounds and --num_batches must be at least 1")
    torch.set_num_threads(args.threads)

    config = build_config("demo", keep_dropout=False)
    kernels = {"fused kernel": DBetaFeatureEncoderLayer.forward, "strided reduction": strided_reduction_forward}
    batches = make_batches(config, 32, args.num_batches, (8, 48))
    torch.manual_seed(0)
    model = DBetaForPreTraining(config).train()
    # A vanishing learning rate: the weights, and so the work per step, stay those of the start.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-12)
    generator = torch.Generator()

    first_block = model.dbeta.ecg_model.feature_extractor.conv_layers[0]
    block_input = batches[0]["input_values"].transpose(1, 2)
    outputs = {}
    with torch.no_grad():
        for name, forward in kernels.items():
            outputs[name] = forward(first_block, block_input)
    difference = (outputs["fused kernel"] - outputs["strided reduction"]).abs().max().item()

    def one_pass() -> float:
        started = time.perf_counter()
        for index, batch in enumerate(batches):
            generator.manual_seed(index)
            model(**batch, mask_generator=generator).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return (time.perf_counter() - started) / len(batches)

    seconds = {name: [] for name in kernels}
    try:
        for round_index in range(args.rounds + 1):
            order = list(kernels) if round_index % 2 == 0 else list(reversed(kernels))
            for name in order:
                DBetaFeatureEncoderLayer.forward = kernels[name]
                per_step = one_pass()
                if round_index > 0:
                    seconds[name].append(per_step)
    finally:
        DBetaFeatureEncoderLayer.forward = kernels["fused kernel"]

    ratios = [old / new for old, new in zip(seconds["strided reduction"], seconds["fused kernel"])]
    result = {
        "threads": args.threads,
        "rounds": args.rounds,
        "seconds_per_step": {name: statistics.median(values) for name, values in seconds.items()},
        "ratio_per_round": ratios,
        "max_abs_output_difference": difference,
    }
    print(f"torch {torch.__version__}, cpu ({args.threads} threads), demo model, batch 32, {args.num_batches} batches per pass, "
          f"{args.rounds} rounds in alternating order")  # fmt: skip
    for name, value in result["seconds_per_step"].items():
        print(f"  {name:18s} median {value:.4f} s per step")
    print(f"  strided / fused per round: median {statistics.median(ratios):.3f}, min {min(ratios):.3f}, max {max(ratios):.3f}")
    print(f"  first block's output, largest difference: {difference:.1e}")
    return result


if __name__ == "__main__":
    main()
