#!/usr/bin/env python
"""Embedding an archive: the whole `dbeta embed` command vs the model alone, records/s, in one run.

    python benchmarks/archive_embedding.py [--num_records 1200] [--batch_size 32] [--num_workers 0 2] \\
        [--backends torch onnx_int8] [--repeats 2] [--model FOLDER] [--write_results]

In a temporary folder it writes `--num_records` WFDB records (format 16, one `.hea` + `.dat` each,
100 per sub-folder) made from the real 10 s recordings in `--source` (LUDB and CinC 2021, 500 Hz):
a third at 500 Hz, a third resampled to 250 Hz and a third to 360 Hz (`scipy.signal.resample_poly`,
written with `wfdb.wrsamp`), so that the command reads, decodes and resamples back to 500 Hz as it
does for a mixed archive. Then, for each backend and `--repeats` times, alternating:

- **model alone**: `dbeta.embedding.embed_ecg_batch` (the call `dbeta embed` makes per batch) on
  batches of `--batch_size` ready model inputs held in memory (the first `--model_records` records,
  prepared beforehand), after one warm-up batch: the rate the command could reach if reading and
  preprocessing cost nothing;
- **full command**: `python -m dbeta.cli embed FOLDER --model M --output X.parquet --batch_size B
  --num_workers W` as a user runs it (a fresh process: start-up, model load, finding, reading,
  resampling, preprocessing, embedding and the Parquet output), wall time from start to exit,
  for every `--num_workers` W.

"full / model alone" is their ratio within the same repeat (the issue's goal: >= 0.90 on 2 cores).
"1-record command s" is the same command on a folder of one record: the fixed cost (Python start,
imports, model load, ONNX session) that a run pays once, which the full rate includes.
The model is the published-size ECG tower (`DBetaConfig().ecg_config`, 63 M parameters) with random
weights and a tiny text side (speed does not depend on the weights, and `embed` runs the ECG
tower only), or `--model`. `onnx_int8` is that tower exported with
`dbeta export-onnx --quantize int8` and run with `--backend onnx --onnx_dir`. Threads: torch's and
onnxruntime's defaults (all cores), as the command uses them.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import print_table  # noqa: E402

DEFAULT_SOURCES = [Path("/work/shared/data/real/ludb"), Path("/work/shared/data/real/cinc2021")]
RATES = (500, 250, 360)
BACKENDS = ("torch", "onnx_fp32", "onnx_int8")


def source_records(folders) -> list[Path]:
    """The 12-lead 500 Hz WFDB records under `folders` (record paths without suffix), sorted."""
    import wfdb

    records = []
    for folder in folders:
        for header in sorted(Path(folder).rglob("*.hea")):
            meta = wfdb.rdheader(str(header.with_suffix("")))
            if meta.n_sig == 12 and meta.fs == 500 and meta.sig_len >= 5000:
                records.append(header.with_suffix(""))
    if not records:
        raise SystemExit(f"no 12-lead 500 Hz WFDB records under {folders}")
    return records


def write_archive(sources: list[Path], folder: Path, count: int) -> dict[int, int]:
    """`count` WFDB records in `folder`: source `i % n` at rate `RATES[i % 3]`; records per rate."""
    import numpy as np
    import wfdb
    from scipy.signal import resample_poly

    signals = {}
    per_rate = dict.fromkeys(RATES, 0)
    for index in range(count):
        source = sources[index % len(sources)]
        rate = RATES[index % len(RATES)]
        if source not in signals:
            record = wfdb.rdrecord(str(source), sampto=5000)
            signals[source] = (np.nan_to_num(record.p_signal), record.sig_name, record.units)
        signal, names, units = signals[source]
        if rate != 500:
            signal = resample_poly(signal, rate // np.gcd(rate, 500), 500 // np.gcd(rate, 500), axis=0)
        target = folder / f"{index // 100:04d}"
        target.mkdir(parents=True, exist_ok=True)
        wfdb.wrsamp(
            f"r{index:06d}", fs=rate, units=list(units), sig_name=list(names), p_signal=signal,
            fmt=["16"] * signal.shape[1], write_dir=str(target),
        )
        per_rate[rate] += 1
    return per_rate


def save_published_size_model(folder: Path) -> Path:
    """The published-size ECG tower (random weights) with a tiny text side, as a model folder."""
    import torch

    from configuration_dbeta import DBetaConfig
    from dbeta.train.demo.build_demo_tokenizer import load_demo_tokenizer
    from modeling_dbeta import DBetaModel
    from pipeline_dbeta import save_pipeline_folder
    from processing_dbeta import DBetaFeatureExtractor, DBetaProcessor

    torch.manual_seed(0)
    config = DBetaConfig(
        text_config=dict(vocab_size=1000, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4),
        num_fusion_layers=1,
        mem_fusion_layer=1,
        mem_decoder_num_layers=1,
    )
    model = DBetaModel(config).eval()
    processor = DBetaProcessor(DBetaFeatureExtractor(), load_demo_tokenizer())
    return save_pipeline_folder(model, processor, folder)


def model_alone_rate(encoder, inputs, batch_size: int) -> float:
    """Records/s of `embed_ecg_batch` over the in-memory inputs, after a warm-up batch."""
    from dbeta.embedding import embed_ecg_batch

    embed_ecg_batch(encoder, inputs[:batch_size])
    start = time.perf_counter()
    for first in range(0, len(inputs), batch_size):
        embed_ecg_batch(encoder, inputs[first : first + batch_size])
    return len(inputs) / (time.perf_counter() - start)


def full_command_rate(folder: Path, model: Path, output: Path, batch_size: int, workers: int, backend_args) -> tuple[float, int]:
    """Records/s of the whole `dbeta embed` command in a fresh process, and the rows it wrote."""
    import pyarrow.parquet as pq

    command = [
        sys.executable, "-m", "dbeta.cli", "embed", str(folder), "--model", str(model), "--output", str(output),
        "--batch_size", str(batch_size), "--num_workers", str(workers), "--device", "cpu", "--no_progress",
        *backend_args,
    ]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"dbeta embed failed ({result.returncode}): {result.stderr[-2000:]}")
    rows = pq.read_metadata(output).num_rows
    output.unlink()
    return rows / seconds, rows, seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_records", type=int, default=1200, help="records written and embedded by the command")
    parser.add_argument("--model_records", type=int, default=256, help="records the model-alone rate is measured on")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_workers", type=int, nargs="+", default=[0, 2], help="reader processes of the command")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=["torch", "onnx_int8"])
    parser.add_argument("--repeats", type=int, default=2, help="alternating repeats (each gives its own ratio)")
    parser.add_argument("--model", help="a D-BETA model folder (default: published-size ECG tower, random weights)")
    parser.add_argument("--source", nargs="+", type=Path, default=DEFAULT_SOURCES, help="folders of real 500 Hz WFDB records")
    parser.add_argument("--write_results", action="store_true", help="also write benchmarks/results/archive_embedding_cpu.md")
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from dbeta.cli import find_records, read_record
    from dbeta.loading import load_model_and_processor
    from dbeta.onnx_backend import ONNXECGEncoder

    with tempfile.TemporaryDirectory(prefix="dbeta-archive-") as scratch:
        scratch = Path(scratch)
        started = time.perf_counter()
        sources = source_records(args.source)
        per_rate = write_archive(sources, scratch / "archive", args.num_records)
        write_archive(sources, scratch / "one_record", 1)
        print(
            f"archive: {args.num_records} WFDB records from {len(sources)} real recordings "
            f"({', '.join(f'{n} at {rate} Hz' for rate, n in per_rate.items())}), written in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        model_path = Path(args.model) if args.model else save_published_size_model(scratch / "model")
        model, processor = load_model_and_processor(model_path)
        parameters = sum(p.numel() for p in model.dbeta.ecg_model.parameters()) if hasattr(model, "dbeta") else sum(
            p.numel() for p in model.ecg_model.parameters()
        )
        refs = find_records(scratch / "archive")[: args.model_records]
        extractor = processor.feature_extractor
        inputs = np.stack([extractor(read_record(ref, extractor))["input_values"][0] for ref in refs]).astype(np.float32)

        encoders, backend_args = {}, {}
        for backend in args.backends:
            if backend == "torch":
                encoders[backend], backend_args[backend] = model, []
                continue
            from dbeta.export_onnx import export_onnx

            onnx_dir = scratch / backend
            export_onnx(str(model_path), onnx_dir, quantize="int8" if backend == "onnx_int8" else None)
            encoders[backend] = ONNXECGEncoder(onnx_dir, threads=torch.get_num_threads())
            backend_args[backend] = ["--backend", "onnx", "--onnx_dir", str(onnx_dir)]

        header = (
            f"model: {'published-size ECG tower, random weights' if not args.model else args.model} "
            f"({parameters / 1e6:.1f} M ECG-tower parameters); batch {args.batch_size}; torch threads {torch.get_num_threads()}; "
            f"{os.cpu_count()} CPUs; torch {torch.__version__}; python {platform.python_version()}"
        )
        print(header, flush=True)
        rows = []
        for repeat in range(1, args.repeats + 1):
            for backend in args.backends:
                alone = model_alone_rate(encoders[backend], inputs, args.batch_size)
                print(f"repeat {repeat} {backend}: model alone {alone:.2f} records/s", flush=True)
                fixed = full_command_rate(
                    scratch / "one_record", model_path, scratch / "out.parquet", args.batch_size, 0, backend_args[backend]
                )[2]
                for workers in args.num_workers:
                    rate, written, _ = full_command_rate(
                        scratch / "archive", model_path, scratch / "out.parquet", args.batch_size, workers, backend_args[backend]
                    )
                    if written != args.num_records:
                        raise SystemExit(f"dbeta embed wrote {written} rows for {args.num_records} records")
                    print(f"repeat {repeat} {backend}: full command, {workers} workers {rate:.2f} records/s", flush=True)
                    rows.append([repeat, backend, workers, f"{alone:.2f}", f"{rate:.2f}", f"{rate / alone:.3f}", f"{fixed:.1f}"])
        headers = [
            "repeat", "backend", "--num_workers", "model alone rec/s", "full command rec/s", "full / model alone",
            "1-record command s",
        ]
        print_table(headers, rows)

    if args.write_results:
        from common import append_results_section, markdown_table

        command = "python benchmarks/archive_embedding.py " + " ".join(argv if argv is not None else sys.argv[1:])
        load = os.getloadavg()
        section = (
            f"## Run of {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC\n\n`{command.strip()}` "
            f"(load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}).\n\n"
            f"{header}\n\n{markdown_table(headers, rows)}\n"
        )
        path = REPO / "benchmarks" / "results" / "archive_embedding_cpu.md"
        title = (
            "# Embedding an archive: `dbeta embed` vs the model alone (CPU)\n\n"
            "Written by `benchmarks/archive_embedding.py --write_results`; each run adds a section. The ratio is "
            "within one repeat (model alone measured just before the commands); absolute rates move with the "
            "machine's load.\n"
        )
        append_results_section(path, title, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
