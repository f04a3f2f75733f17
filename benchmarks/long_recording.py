#!/usr/bin/env python
"""A 24-hour 12-lead 500 Hz recording through `dbeta embed --windows`: peak memory and windows/s.

    python benchmarks/long_recording.py [--hours 24] [--model FOLDER] [--stride 10]

Writes a WFDB record (format 16, 12 leads, 500 Hz; 1.04 GB for 24 h) chunk by chunk to a temporary
folder, then runs, each in a fresh process whose peak RSS (`ru_maxrss`) is read:

1. reading alone: `processing_dbeta.iter_ecg_windows` over every 10 s window (RSS after the
   imports and at the peak);
2. the command line: `dbeta embed FOLDER --windows --model MODEL` (read, prepare and embed every
   window, write one parquet row per window).

Without `--model` the model is the tests' tiny D-BETA (random weights, same code path), so the
figure measures the streaming and the pipeline overhead, not the published model's speed
(`benchmarks/ecg_features.py` measures that). For scale: the whole record as float64 would be
4.1 GB, as float32 2.1 GB. A shorter record (`--compare_hours`, 1 h) goes through the same
steps: equal peaks for both lengths mean memory does not grow with the recording.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import print_table  # noqa: E402

READ_ONLY = """
import json, resource, sys, time
from processing_dbeta import iter_ecg_windows
import wfdb
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start, count = time.perf_counter(), 0
for _, window in iter_ecg_windows(sys.argv[1], 10.0, float(sys.argv[2])):
    count += 1
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"windows": count, "seconds": seconds, "peak_rss_mib": peak, "rss_before_mib": before}))
"""


def write_record(folder: Path, hours: float, rate: int = 500) -> Path:
    import numpy as np

    leads = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    total = int(hours * 3600 * rate)
    chunk = 600 * rate
    rng = np.random.default_rng(0)
    with open(folder / "holter.dat", "wb") as handle:
        for start in range(0, total, chunk):
            count = min(chunk, total - start)
            time_s = (start + np.arange(count)) / rate
            beat = np.sin(2 * np.pi * 1.1 * time_s) ** 15
            signal = 0.8 * beat[None] * np.linspace(0.3, 1.2, 12)[:, None] + 0.03 * rng.standard_normal((12, count))
            handle.write(np.round(200 * signal.T).astype("<i2").tobytes())
    header = [f"holter 12 {rate} {total}"] + [f"holter.dat 16 200/mV 16 0 0 0 0 {lead}" for lead in leads]
    (folder / "holter.hea").write_text("\n".join(header) + "\n")
    return folder / "holter"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, default=24.0)
    parser.add_argument("--model", help="D-BETA folder (default: the tests' tiny model, random weights)")
    parser.add_argument("--stride", type=float, default=10.0, help="window stride in seconds")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument(
        "--compare_hours", type=float, default=1.0, help="a shorter record run the same way (constant memory check)"
    )
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        model = args.model
        if model is None:
            from zero_shot_utils import save_tiny_zero_shot_folder

            model = str(save_tiny_zero_shot_folder(folder / "tiny-model"))
        for hours in dict.fromkeys([args.compare_hours, args.hours]):
            records = folder / f"records-{hours:g}h"
            records.mkdir()
            start = time.perf_counter()
            record = write_record(records, hours)
            size = (records / "holter.dat").stat().st_size
            written = time.perf_counter() - start
            print(f"record: {hours:g} h, 12 leads, 500 Hz, {size / 1e9:.2f} GB (written in {written:.0f} s)")
            reading = json.loads(
                subprocess.run(
                    [sys.executable, "-c", READ_ONLY, str(record), str(args.stride)],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
            )
            rows.append(
                [
                    f"{hours:g} h",
                    "read (iter_ecg_windows)",
                    reading["windows"],
                    f"{reading['seconds']:.1f}",
                    f"{reading['windows'] / reading['seconds']:.0f}",
                    f"{reading['rss_before_mib']:.0f} -> {reading['peak_rss_mib']:.0f}",
                ]
            )
            output = folder / f"windows-{hours:g}h.parquet"
            command = [
                sys.executable, "-c",
                "import sys, resource, time; from dbeta.cli import main; t = time.perf_counter(); "
                "status = main(sys.argv[1:]); print('SECONDS', time.perf_counter() - t); "
                "print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024); sys.exit(status)",
                "embed", str(records), "--model", model, "--output", str(output), "--windows",
                "--window_stride", str(args.stride), "--batch_size", str(args.batch_size), "--no_progress",
                "--device", "cpu",
            ]  # fmt: skip
            completed = subprocess.run(command, capture_output=True, text=True)
            if completed.returncode != 0:
                raise SystemExit(completed.stderr[-2000:])
            lines = completed.stdout.splitlines()
            values = dict(line.split() for line in lines if line.startswith(("SECONDS", "PEAK")))
            import pyarrow.parquet as pq

            count = pq.ParquetFile(output).metadata.num_rows
            seconds = float(values["SECONDS"])
            rows.append(
                [
                    f"{hours:g} h",
                    "dbeta embed --windows",
                    count,
                    f"{seconds:.1f}",
                    f"{count / seconds:.0f}",
                    f"{float(values['PEAK']):.0f}",
                ]
            )
            (records / "holter.dat").unlink()
    model_name = args.model or "tests tiny D-BETA (random weights)"
    print(f"model: {model_name}; stride {args.stride:g} s; batch {args.batch_size}")
    header = ["record", "step", "windows", "seconds", "windows/s", "peak RSS MiB (read: after imports -> peak)"]
    print_table(header, rows)


if __name__ == "__main__":
    main()
