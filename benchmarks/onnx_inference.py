#!/usr/bin/env python
"""ECG-tower inference: onnxruntime (CPU) vs PyTorch fp32, samples/s, in one run.

    python benchmarks/onnx_inference.py [--model FOLDER] [--batch_sizes 1 8] [--threads N]

The published ECG tower (`DBetaConfig().ecg_config`, random weights: speed does not depend on
values), or the ECG tower of `--model`, is exported with `dbeta.export_onnx.export_ecg_tower`
(dynamo exporter, opset 18) and timed on the same random (batch, 12, 5000) inputs: PyTorch
`get_ecg_features` under `torch.inference_mode` (SDPA attention) and an onnxruntime CPU session
(graph optimisations on), both with `--threads` intra-op threads. Each timing is at least 3 calls
and 3 s after a warm-up call; the two runtimes alternate for `--rounds` rounds (default 3) and
each keeps its fastest round, so a burst of load on a shared machine does not decide the ratio.
The largest |ONNX - PyTorch| of the embeddings is printed too.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import print_table, time_call  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="D-BETA folder (default: the published ECG tower, random weights)")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--min_seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds; the best of each is kept")
    args = parser.parse_args()

    import numpy as np
    import onnxruntime
    import torch

    from dbeta.export_onnx import DEFAULT_OPSET, export_ecg_tower, onnx_session

    torch.set_num_threads(args.threads)
    if args.model:
        from modeling_dbeta import DBetaECGModel

        model = DBetaECGModel.from_pretrained(args.model).eval()
        source = args.model
    else:
        from configuration_dbeta import DBetaConfig
        from modeling_dbeta import DBetaECGModel

        torch.manual_seed(0)
        model = DBetaECGModel(DBetaConfig().ecg_config).eval()
        source = "published ECG tower, random weights"
    parameters = sum(p.numel() for p in model.parameters())
    print(
        f"model: {source} ({parameters / 1e6:.1f} M parameters); threads: {args.threads}; torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, opset {DEFAULT_OPSET}"
    )

    with tempfile.TemporaryDirectory() as folder:
        path = export_ecg_tower(model, Path(folder) / "ecg_encoder.onnx")
        session = onnx_session(path, threads=args.threads)

        rng = np.random.default_rng(0)
        rows = []
        for batch_size in args.batch_sizes:
            values = (0.3 * rng.standard_normal((batch_size, 12, 5000))).astype(np.float32)
            tensor = torch.from_numpy(values)

            def run_torch():
                with torch.inference_mode():
                    return model.get_ecg_features(tensor).pooler_output

            def run_onnx():
                return session.run(None, {"input_values": values})[0]

            difference = float(np.abs(run_onnx() - run_torch().numpy()).max())
            # Alternate the runtimes for `--rounds` rounds and keep each one's best round, so a burst of
            # load from other processes does not decide the ratio.
            torch_seconds = onnx_seconds = float("inf")
            for _ in range(args.rounds):
                torch_seconds = min(torch_seconds, time_call(run_torch, warmup=1, min_seconds=args.min_seconds))
                onnx_seconds = min(onnx_seconds, time_call(run_onnx, warmup=1, min_seconds=args.min_seconds))
            torch_speed, onnx_speed = batch_size / torch_seconds, batch_size / onnx_seconds
            rows.append(
                [
                    batch_size,
                    f"{torch_speed:.2f}",
                    f"{onnx_speed:.2f}",
                    f"{onnx_speed / torch_speed:.2f}x",
                    f"{difference:.1e}",
                ]
            )
    print_table(
        ["batch", "PyTorch fp32 samples/s", "onnxruntime samples/s", "onnxruntime / PyTorch", "max |diff|"], rows
    )


if __name__ == "__main__":
    main()
