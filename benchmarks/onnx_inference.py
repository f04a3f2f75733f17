#!/usr/bin/env python
"""CPU inference backends side by side, in one run: PyTorch fp32, ONNX fp32, ONNX int8 (dynamic and static).

    python benchmarks/onnx_inference.py [--demo_model outputs/dbeta-demo] [--batch_sizes 1 32] \\
        [--threads N] [--rounds 2] [--accuracy_only] [--write_results]

Models: the published-size ECG tower (`DBetaConfig().ecg_config`, 63 M parameters, random weights:
speed does not depend on the values; saved as an ECG-only folder) and, with `--demo_model`, the
demo model (README command 1 trains it into `outputs/dbeta-demo`; the tests pass a tiny model).
Each is exported twice with the package's exporter (`dbeta.export_onnx.export_onnx`, the code of
`dbeta export-onnx`): fp32, `--quantize int8` (onnxruntime dynamic quantization of the
MatMul/Gemm weights, no calibration data) and `--quantize int8-static` (`onnx_int8_static`:
activation scales calibrated on the vendored LUDB **training-part** records, written to a
temporary folder of WFDB records and read back through `--calibration_data`, the `dbeta embed`
reader; the evaluation records are never among them).

Per model, backend and batch size (`--batch_sizes`), records/s in this process (PyTorch loads the
folder with `dbeta.loading.load_any_model` and calls `embed_ecg_batch`, the `dbeta embed` call;
ONNX runs an onnxruntime CPU session as the exported `onnx_zero_shot.py` does), timing at least 3
calls and `--min_seconds` after a warm-up call on random (batch, 12, 5000) inputs, with
`--threads` intra-op threads. Peak memory: each backend once more in a fresh process (spawned;
PyTorch with torch, ONNX with numpy + onnxruntime only) running the largest batch, its `VmHWM`
(libraries, weights and activations). Speed is not timed in those children: a spawned PyTorch
child ran the tower several times slower than the same code in the main process on the
development machine, which would flatter the ONNX ratios. The backends alternate for `--rounds` rounds and each keeps its fastest round, so a burst
of load on a shared machine does not decide the ratios; "x PyTorch" is to PyTorch fp32 of the same
model and batch.

Agreement with PyTorch fp32: the smallest cosine between the backend's and PyTorch's embeddings of
the 65 vendored LUDB evaluation ECGs (`dbeta/assets/ludb_eval`), and for the demo model its
zero-shot macro AUROC on them through the one scorer
(`dbeta.train.demo.real_ecg.evaluate_real_zero_shot`, with the backend as `ecg_encoder`); the goal
is |AUROC - PyTorch's| <= 0.005. `--accuracy_only` measures only this agreement (no timing, no
memory children: the numbers that do not depend on the machine's load).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Nothing at module level imports torch: the ONNX children (spawned, so they re-import this module)
# hold numpy and onnxruntime only, and their peak memory is that of a torch-free process.
BACKENDS = ("torch_fp32", "onnx_fp32", "onnx_int8", "onnx_int8_static")
#: `dbeta export-onnx --quantize` of each ONNX backend.
QUANTIZE = {"onnx_fp32": None, "onnx_int8": "int8", "onnx_int8_static": "int8-static"}


def ludb_training_calibration_folder(folder: Path) -> Path:
    """The vendored LUDB training-part records as WFDB records (16-bit, mV) in `folder`: the
    calibration data of `onnx_int8_static`. None of them is an evaluation record (asserted)."""
    import numpy as np
    import wfdb

    from dbeta.train.demo.real_ecg import load_ludb_eval_set, load_ludb_train_set

    train = load_ludb_train_set()
    evaluation_ids = set(load_ludb_eval_set(verify=False).record_ids)
    assert train.split == "training" and not set(train.record_ids) & evaluation_ids, "calibration would see evaluation records"
    folder.mkdir(parents=True, exist_ok=True)
    for record_id, signal in zip(train.record_ids, train.signals):
        wfdb.wrsamp(
            f"ludb_train_{record_id}",
            fs=train.sampling_rate,
            units=["mV"] * len(train.lead_names),
            sig_name=list(train.lead_names),
            p_signal=signal.T.astype(np.float64),
            fmt=["16"] * len(train.lead_names),
            write_dir=str(folder),
        )
    return folder


def measure_backend(backend: str, path: str, batch_sizes, threads: int, min_seconds: float, agreement_inputs):
    """In a fresh process: seconds per call for each batch size, and the embeddings of `agreement_inputs`."""
    import numpy as np

    if backend == "torch_fp32":
        import torch

        from dbeta.embedding import embed_ecg_batch
        from dbeta.loading import load_any_model

        torch.set_num_threads(threads)
        model = load_any_model(path)[0]

        def embed(values):
            with torch.inference_mode():
                return embed_ecg_batch(model, values).numpy()

    else:
        import json

        import onnxruntime

        metadata = json.loads((Path(path) / "dbeta_onnx.json").read_text())
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(
            str(Path(path) / metadata["ecg_encoder"]["file"]), options, providers=["CPUExecutionProvider"]
        )

        def embed(values):
            return session.run(None, {"input_values": np.ascontiguousarray(values, dtype=np.float32)})[0]

    import time

    rng = np.random.default_rng(0)
    seconds = {}
    for batch_size in batch_sizes:
        values = (0.3 * rng.standard_normal((batch_size, 12, 5000))).astype(np.float32)
        embed(values)  # warm-up
        calls, start = 0, time.perf_counter()
        while calls < 3 or time.perf_counter() - start < min_seconds:
            embed(values)
            calls += 1
        seconds[batch_size] = (time.perf_counter() - start) / calls
    embeddings = np.concatenate([embed(agreement_inputs[i : i + 16]) for i in range(0, len(agreement_inputs), 16)])
    return {"seconds": seconds, "embeddings": embeddings}


def peak_rss_mib() -> float:
    """This process's peak resident memory. Linux's `VmHWM` belongs to the process's own address
    space; `ru_maxrss` is not used because exec keeps the parent's peak in it (a spawned child would
    report at least the parent's memory)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # other systems (KiB on Linux, bytes on macOS)


def _child(queue, *args) -> None:
    result = measure_backend(*args)
    queue.put((result, peak_rss_mib()))


def run_backend_process(*args):
    """`measure_backend(*args)` in a fresh (spawned) process; its result and peak RSS in MiB."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, *args))
    process.start()
    import queue as queues

    while True:  # a child that dies (out of memory, an import error) must not leave us waiting
        try:
            result = queue.get(timeout=1.0)
            break
        except queues.Empty:
            if not process.is_alive():
                raise RuntimeError(f"benchmark child died (exit code {process.exitcode}); see its error above") from None
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"benchmark child failed with exit code {process.exitcode}")
    return result


def cosines(expected, actual):
    from dbeta.export_onnx import embedding_cosines

    return embedding_cosines(expected, actual)


def published_size_folder(folder: Path) -> Path:
    import torch

    from configuration_dbeta import DBetaConfig
    from modeling_dbeta import DBetaECGModel

    torch.manual_seed(0)
    DBetaECGModel(DBetaConfig().ecg_config).eval().save_pretrained(folder)
    return folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo_model", help="the demo model folder (README command 1), for speed and zero-shot AUROC")
    parser.add_argument("--no_published_size", action="store_true", help="skip the published-size ECG tower")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--min_seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; each backend keeps its fastest")
    parser.add_argument(
        "--accuracy_only", action="store_true", help="only the agreement with PyTorch fp32 (cosines, AUROC): no timing"
    )
    parser.add_argument("--write_results", action="store_true", help="also write benchmarks/results/onnx_backends_cpu.md")
    args = parser.parse_args(argv)

    import numpy as np
    import onnxruntime
    import torch
    from common import append_results_section, markdown_table

    from dbeta.export_onnx import export_onnx
    from dbeta.loading import load_any_model
    from dbeta.onnx_backend import ONNXECGEncoder
    from dbeta.train.demo.real_ecg import evaluate_real_zero_shot, load_ludb_eval_set

    eval_set = load_ludb_eval_set()
    models = [] if args.no_published_size else [("published-size ECG tower (random weights)", None)]
    if args.demo_model:
        models.append((f"demo model ({args.demo_model})", Path(args.demo_model)))
    if not models:
        parser.error("nothing to measure: give --demo_model or leave out --no_published_size")
    header = (
        f"threads {args.threads}; {os.cpu_count()} CPUs; torch {torch.__version__}; onnxruntime {onnxruntime.__version__}; "
        f"python {platform.python_version()}; {args.rounds} alternating rounds, best each"
    )
    print(header, flush=True)
    speed_rows, agreement_rows = [], []
    with tempfile.TemporaryDirectory(prefix="dbeta-onnx-") as scratch:
        scratch = Path(scratch)
        for name, folder in models:
            if folder is None:
                folder = published_size_folder(scratch / "published")
            model, processor, extractor = load_any_model(folder)
            parameters = sum(p.numel() for p in getattr(model, "dbeta", model).parameters())
            # The 65 evaluation ECGs as model inputs (the processor's lead order, resampling, normalisation).
            inputs = extractor(
                eval_set.signals, sampling_rate=eval_set.sampling_rate, lead_names=list(eval_set.lead_names), return_tensors="np"
            )["input_values"].astype(np.float32)
            paths = {"torch_fp32": str(folder)}
            calibration = scratch / "ludb-train-wfdb"
            if not calibration.is_dir():
                ludb_training_calibration_folder(calibration)
            for backend, quantize in QUANTIZE.items():
                paths[backend] = str(scratch / f"{folder.name}-{backend}")
                static = {"calibration_data": calibration} if quantize == "int8-static" else {}
                export_onnx(str(folder), paths[backend], quantize=quantize, **static)
            best: dict[str, dict] = {}
            peaks: dict[str, float] = {}
            if args.accuracy_only:  # the evaluation ECGs' embeddings only
                for backend in BACKENDS:
                    best[backend] = measure_backend(backend, paths[backend], [], args.threads, 0.0, inputs)
            for backend in BACKENDS if not args.accuracy_only else ():  # memory: a fresh process per backend, largest batch
                peaks[backend] = run_backend_process(backend, paths[backend], [max(args.batch_sizes)], args.threads, 0.0, inputs[:1])[1]
            for _ in range(args.rounds if not args.accuracy_only else 0):
                for backend in BACKENDS:
                    result = measure_backend(backend, paths[backend], args.batch_sizes, args.threads, args.min_seconds, inputs)
                    previous = best.setdefault(backend, {"seconds": {}, "embeddings": result["embeddings"]})
                    for batch_size, seconds in result["seconds"].items():
                        previous["seconds"][batch_size] = min(previous["seconds"].get(batch_size, float("inf")), seconds)
            reference = best["torch_fp32"]
            aurocs = {}
            if processor is not None:
                for backend in BACKENDS:
                    encoder = None if backend == "torch_fp32" else ONNXECGEncoder(paths[backend], threads=args.threads)
                    aurocs[backend] = evaluate_real_zero_shot(model, processor, eval_set, ecg_encoder=encoder)["real_zero_shot_macro_auroc"]
            label = f"{name}, {parameters / 1e6:.1f} M parameters"
            for backend in BACKENDS:
                if not args.accuracy_only:
                    rates = {b: b / best[backend]["seconds"][b] for b in args.batch_sizes}
                    torch_rates = {b: b / reference["seconds"][b] for b in args.batch_sizes}
                    speed_rows.append(
                        [label, backend]
                        + [f"{rates[b]:.2f} ({rates[b] / torch_rates[b]:.2f}x)" for b in args.batch_sizes]
                        + [f"{peaks[backend]:.0f}"]
                    )
                cosine = cosines(reference["embeddings"], best[backend]["embeddings"])
                row = [label, backend, f"{cosine.min():.5f}", f"{cosine.mean():.5f}"]
                if aurocs:
                    row += [f"{aurocs[backend]:.4f}", f"{aurocs[backend] - aurocs['torch_fp32']:+.4f}"]
                else:
                    row += ["-", "-"]
                agreement_rows.append(row)
            print(f"measured {label}", flush=True)

    speed_headers = ["model", "backend"] + [f"batch {b}: records/s (x PyTorch)" for b in args.batch_sizes] + ["peak RSS MiB"]
    agreement_headers = ["model", "backend", "min cosine to PyTorch", "mean cosine", "zero-shot macro AUROC", "AUROC - PyTorch"]
    agreement = markdown_table(agreement_headers, agreement_rows)
    speed = "(--accuracy_only: not timed)" if args.accuracy_only else markdown_table(speed_headers, speed_rows)
    print(speed)
    print()
    print(agreement)
    if args.write_results:
        command = "python benchmarks/onnx_inference.py " + " ".join(argv if argv is not None else sys.argv[1:])
        load = os.getloadavg()
        section = (
            f"## Run of {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC\n\n`{command.strip()}` "
            f"(load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}).\n\n{header}\n\n"
            f"{speed}\n\nAgreement on the 65 vendored LUDB evaluation ECGs:\n\n{agreement}\n"
        )
        path = REPO / "benchmarks" / "results" / "onnx_backends_cpu.md"
        title = (
            "# CPU inference backends: PyTorch fp32, ONNX fp32, ONNX int8\n\n"
            "Written by `benchmarks/onnx_inference.py --write_results`; each run adds a section. Ratios are to "
            "PyTorch fp32 of the same model and batch in the same run.\n"
        )
        append_results_section(path, title, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
