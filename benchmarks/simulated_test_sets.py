"""Zero-shot AUROC of demo models on fresh simulated test sets that no run trained on.

A demo run's own validation split comes from its own simulator, so two simulator versions cannot be
compared on it: each is scored on a different set. This draws one test set per simulator version
(`--simulator`, a path to a `make_demo_corpus.py`; default: the installed one) from `--seed`, scores
every model folder on every set with the public pipeline's scoring (processor -> ECG tower ->
normalised prompts -> ETS logits, `dbeta.train.demo.real_ecg.evaluate_real_zero_shot`), and prints
per-label AUROC, the macro over the demo's 8 labels and the morphology mean (low QRS voltages, LBBB,
inverted T waves), with the positive counts of each set.

    python benchmarks/simulated_test_sets.py --simulator old=/path/to/old/make_demo_corpus.py \\
        --simulator new=train/demo/make_demo_corpus.py --models outputs/runA outputs/runB

Use a `--seed` that no corpus of the compared runs used (the demo's corpora use the run seeds).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np

MORPHOLOGY_LABELS = ("low qrs voltages", "left bundle branch block", "inverted t waves")


def load_simulator(path: str | Path, name: str):
    """A `make_demo_corpus.py` as a module of its own (two versions can live in one process)."""
    spec = importlib.util.spec_from_file_location(f"simulator_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def simulated_test_set(simulator, seed: int, num_records: int):
    """`num_records` ECGs with random conditions, as a `RealEvalSet` whose "rhythms" are the
    normalised reports (labels: the demo's keyword patterns)."""
    from dbeta.train.demo.real_ecg import RealEvalSet

    from dbeta.text import normalize_report

    rng = np.random.default_rng(seed)
    ecgs = [simulator.simulate_ecg(rng) for _ in range(num_records)]
    reports = [normalize_report(" ".join(ecg.report_lines)) for ecg in ecgs]
    test_set = RealEvalSet(
        record_ids=[f"sim-{seed}-{index}" for index in range(num_records)],
        signals=np.stack([ecg.signal for ecg in ecgs]).astype(np.float32),
        reports=reports,
        rhythms=reports,
        lead_names=tuple(simulator.MIMIC_LEAD_ORDER),
        sampling_rate=simulator.SAMPLING_RATE,
        split="simulated",
    )
    real_beat_share = float(np.mean([ecg.real_beat_record is not None for ecg in ecgs]))
    return test_set, real_beat_share


def demo_label_patterns(simulator) -> dict[str, str]:
    """prompt -> keyword pattern, as the demo's validation scores its labels (`demo_zero_shot_label_set`)."""
    from dbeta.text import normalize_report

    return {normalize_report(phrase): re.escape(normalize_report(phrase)) for phrase in simulator.DEMO_CONDITIONS.values()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--simulator", action="append", default=None, metavar="NAME=PATH",
                        help="A simulator version to draw a test set from (repeatable); default: the installed one.")
    parser.add_argument("--models", nargs="+", required=True, help="Model folders (a demo run's output_dir).")
    parser.add_argument("--seed", type=int, default=99)
    parser.add_argument("--num_records", type=int, default=2000)
    parser.add_argument("--num_cpu_threads", type=int, default=None)
    parser.add_argument("--output_json", default=None)
    args = parser.parse_args(argv)

    import torch

    if args.num_cpu_threads:
        torch.set_num_threads(args.num_cpu_threads)
    from dbeta.train.demo import make_demo_corpus
    from dbeta.train.demo.real_ecg import evaluate_real_zero_shot

    from dbeta.loading import load_model_and_processor

    simulators = {}
    for item in args.simulator or [f"installed={make_demo_corpus.__file__}"]:
        name, _, path = item.partition("=")
        if not path:
            parser.error(f"--simulator {item!r}: expected NAME=PATH")
        simulators[name] = load_simulator(path, name)
    patterns = demo_label_patterns(next(iter(simulators.values())))
    test_sets = {}
    for name, simulator in simulators.items():
        test_set, real_beat_share = simulated_test_set(simulator, args.seed, args.num_records)
        positives = dict(zip(patterns, test_set.labels(patterns).sum(axis=0).tolist()))
        test_sets[name] = test_set
        print(f"test set {name}: {args.num_records} records (seed {args.seed}), real-beat share {real_beat_share:.2f}, positives {positives}")

    results = {"seed": args.seed, "num_records": args.num_records, "models": {}}
    for folder in args.models:
        model, processor = load_model_and_processor(folder)
        results["models"][folder] = {}
        for name, test_set in test_sets.items():
            metrics = evaluate_real_zero_shot(model, processor, test_set, patterns)
            per_label = {key.split("/", 1)[1]: value for key, value in metrics.items() if key.startswith("real_zero_shot_auroc/")}
            morphology = [per_label[label] for label in MORPHOLOGY_LABELS if label in per_label]
            row = {"macro": metrics["real_zero_shot_macro_auroc"], "morphology": float(np.mean(morphology)) if morphology else float("nan"), "per_label": per_label}
            results["models"][folder][name] = row
            print(f"{folder} on {name}: macro {row['macro']:.3f}, morphology {row['morphology']:.3f} ("
                  + ", ".join(f"{label} {value:.3f}" for label, value in per_label.items()) + ")", flush=True)
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
