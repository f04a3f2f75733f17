"""The demo's simulator vs neurokit2's 12-lead simulation (`nk.ecg_simulate(method="multileads")`).

Issue 11 asks to prefer a maintained simulator where one simulates well. This measures, in one run,
what decides it for the demo: the rhythms the zero-shot labels need, the lead relations of a real
12-lead ECG, and the cost of the 3000-record demo corpus within a 10-minute budget.

    pip install neurokit2   # not a dbeta dependency
    python benchmarks/neurokit2_comparison.py --records 10
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dbeta.train.demo.make_demo_corpus import DEMO_CONDITIONS, simulate_ecg  # noqa: E402

LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")


def einthoven_residual(leads: dict[str, np.ndarray]) -> float:
    """||III - (II - I)|| / ||III||: 0 for any real recording (Kirchhoff), up to noise."""
    residual = leads["III"] - (leads["II"] - leads["I"])
    return float(np.linalg.norm(residual) / np.linalg.norm(leads["III"]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=10)
    parser.add_argument("--corpus_records", type=int, default=3000, help="Size of the demo corpus, for the cost estimate.")
    args = parser.parse_args(argv)
    try:
        import neurokit2 as nk
    except ImportError:
        raise SystemExit("neurokit2 is not installed (pip install neurokit2); it is not a dbeta dependency.")

    started = time.perf_counter()
    nk_records = [
        np.asarray(nk.ecg_simulate(duration=10, sampling_rate=500, method="multileads", heart_rate=70, random_state=seed), dtype=float).T
        for seed in range(args.records)
    ]
    nk_seconds = (time.perf_counter() - started) / args.records
    started = time.perf_counter()
    ours = [simulate_ecg(np.random.default_rng(seed), ["sinus_rhythm"], lead_normalised=False).signal for seed in range(args.records)]
    our_seconds = (time.perf_counter() - started) / args.records

    mimic_order = ("I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6")
    nk_residual = np.median([einthoven_residual(dict(zip(LEADS, record))) for record in nk_records])
    our_residual = np.median([einthoven_residual(dict(zip(mimic_order, record))) for record in ours])
    rhythm_parameters = [name for name in inspect.signature(nk.ecg_simulate).parameters if name.startswith("heart_rate")]

    print(f"neurokit2 {nk.__version__}, {args.records} records of 10 s at 500 Hz each")
    print(f"| | neurokit2 multileads | dbeta simulator |")
    print(f"|---|---|---|")
    print(f"| seconds per record | {nk_seconds:.3f} | {our_seconds:.4f} |")
    print(f"| {args.corpus_records}-record corpus, one core (min) | {nk_seconds * args.corpus_records / 60:.1f} | {our_seconds * args.corpus_records / 60:.2f} |")
    print(f"| Einthoven residual, median norm(III - (II - I)) / norm(III) | {nk_residual:.3f} | {our_residual:.1e} |")
    print(f"| rhythm controls | {', '.join(rhythm_parameters)} (sinus only) | {', '.join(k for k in DEMO_CONDITIONS if 'sinus' in k or 'atrial' in k)}, sinus arrhythmia |")
    print(f"speed ratio (neurokit2 / dbeta): {nk_seconds / our_seconds:.0f}x")


if __name__ == "__main__":
    main()
