#!/usr/bin/env python
"""Where the time goes: torch.profiler tables of ECG feature extraction and the pre-training step.

    python benchmarks/profile_step.py --device cuda --batch_size 32 --precision bf16
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from configuration_dbeta import DBetaConfig  # noqa: E402
from modeling_dbeta import DBetaForPreTraining  # noqa: E402
from performance import synthetic_batch  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--text_length", type=int, default=128)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()

    torch.manual_seed(0)
    config = DBetaConfig()
    model = DBetaForPreTraining(config).to(args.device).train()
    batch = {k: v.to(args.device) for k, v in synthetic_batch(args.batch_size, args.text_length, 32128).items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    autocast = torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.precision == "bf16")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    sort_key = "cuda_time_total" if args.device == "cuda" else "cpu_time_total"

    def train_step():
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    def features():
        with torch.inference_mode(), autocast:
            model.get_ecg_features(batch["input_values"])

    for name, function in (("ECG features", features), ("pre-training step", train_step)):
        function()
        function()
        if args.device == "cuda":
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            function()
            if args.device == "cuda":
                torch.cuda.synchronize()
        print(f"\n=== {name}, batch {args.batch_size}, {args.precision} ===")
        print(prof.key_averages().table(sort_by=sort_key, row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
