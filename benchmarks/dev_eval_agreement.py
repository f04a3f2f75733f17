# Copyright 2026 The dbeta authors. Licensed under the Apache License, Version 2.0.
"""Does the dev split rank a recipe's runs the way the evaluation patients do?

The protocol (docs/demo.md) judges every choice on the dev split and reports the evaluation
patients' figure. This joins the two, seed by seed, for runs that have both: their dev figures from
`sim_to_real.py --protocol dev --load --cinc` (dev data only) and their real macro AUROC on the 65
LUDB evaluation patients from the `results.json` written when they were reported. It reads no ECG,
so it reads the evaluation patients no further time.

    python benchmarks/sim_to_real.py --protocol dev --variants sim --seeds 30 ... 44 --load --cinc --output_root DEV
    python benchmarks/dev_eval_agreement.py --dev DEV/results-dev.json --eval RUNS/results.json ...

Prints, over the seeds:
- the rank correlation (Spearman) of each dev figure (combined dev macro, LUDB dev macro, CinC/CPSC
  dev half macro, simulated validation macro) with the evaluation figure;
- best-of-k: the expected evaluation figure, and the share >= 0.75 / 0.80, of a recipe that trains
  k seeds and keeps the one with the best dev figure, over every k-subset of the seeds;
- the sampling standard error of the evaluation macro AUROC at the seeds' mean per-label AUROCs and
  the set's positive counts (binormal scores, labels independent): the spread a single run's figure
  would show on another set of patients of the same size.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np
from scipy.stats import multivariate_normal, norm, spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sim_to_real import combined_dev_macro  # noqa: E402


def auroc_standard_error(auroc: float, num_positives: int, num_negatives: int) -> float:
    """Standard error of an AUROC estimated from `num_positives` and `num_negatives` cases when the
    scores are binormal with equal variances (the usual ROC model): the variance of the
    Mann-Whitney estimate (Hanley & McNeil 1982, eq. 2) with its Q1 = Q2 = P(two positives above one
    negative) computed exactly for that model, where Hanley-McNeil's exponential approximation
    overstates it (by a third at 6 positives and AUROC 0.9)."""
    if num_positives < 1 or num_negatives < 1:
        raise ValueError(f"an AUROC needs a positive and a negative case, got {num_positives} and {num_negatives}")
    auroc = min(max(auroc, 1e-9), 1.0 - 1e-9)
    z = norm.ppf(auroc)  # the shift between the classes over sqrt(2), in sd units
    both_above = multivariate_normal(mean=[0.0, 0.0], cov=[[1.0, 0.5], [0.5, 1.0]]).cdf([z, z])
    variance = (auroc * (1.0 - auroc) + (num_positives + num_negatives - 2) * (both_above - auroc**2)) / (num_positives * num_negatives)
    return math.sqrt(max(variance, 0.0))


def macro_auroc_se(per_label: dict[str, float], positives: dict[str, int], num_records: int) -> float:
    """Standard error of the mean of per-label AUROCs, the labels taken as independent."""
    variances = [auroc_standard_error(auroc, positives[label], num_records - positives[label]) ** 2 for label, auroc in per_label.items()]
    return math.sqrt(sum(variances)) / len(variances)


def best_of_k(selector: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    """The target of the run with the highest selector, for every k-subset of the runs (ties: the first)."""
    if not 1 <= k <= len(selector):
        raise ValueError(f"k must be between 1 and the number of runs ({len(selector)}), got {k}")
    return np.array([target[max(subset, key=lambda i: selector[i])] for subset in itertools.combinations(range(len(selector)), k)])


def joined_runs(dev_results: dict, eval_results: list[dict]) -> list[dict]:
    """Seed-by-seed rows of the dev figures and the evaluation figure, for the seeds in both."""
    dev_runs = dev_results["sim"]
    eval_runs: dict[str, dict] = {}
    for results in eval_results:
        eval_runs.update(results["sim"])
    rows = []
    for seed in sorted(set(dev_runs) & set(eval_runs), key=int):
        dev, held_out = dev_runs[seed], eval_runs[seed]
        if dev["real"].get("split") != "dev":
            raise ValueError(f"seed {seed}: the --dev results are not on the dev split (split={dev['real'].get('split')!r})")
        if held_out["real"].get("split", "evaluation") != "evaluation":
            raise ValueError(f"seed {seed}: the --eval results are not on the evaluation patients")
        if dev["real"].get("rhythm_scoring") != held_out["real"].get("rhythm_scoring"):
            raise ValueError(f"seed {seed}: dev and evaluation figures were scored differently")
        combined = combined_dev_macro(dev)
        if combined is None:
            raise ValueError(f"seed {seed}: the --dev results have no CinC/CPSC dev half (score them with --cinc)")
        rows.append({
            "seed": int(seed),
            "combined dev": combined,
            "LUDB dev": dev["real"]["macro"],
            "CinC/CPSC dev half": dev["cinc"]["macro"],
            "simulated validation": dev["simulated"]["zero_shot_macro_auroc"],
            "evaluation": held_out["real"]["macro"],
            "evaluation per label": held_out["real"]["per_label"],
            "evaluation positives": held_out["real"]["positives"],
            "evaluation records": held_out["real"]["records"],
        })
    return rows


SELECTORS = ("combined dev", "LUDB dev", "CinC/CPSC dev half", "simulated validation")


def report(rows: list[dict], ks: list[int]) -> str:
    if len(rows) < 3:
        raise ValueError(f"need at least 3 seeds with both figures, got {len(rows)}")
    target = np.array([row["evaluation"] for row in rows])
    lines = [f"Seeds: {', '.join(str(row['seed']) for row in rows)} ({len(rows)}).", "",
             "| seed | " + " | ".join(SELECTORS) + " | evaluation real macro |", "|---|" + "---|" * (len(SELECTORS) + 1)]
    for row in rows:
        lines.append(f"| {row['seed']} | " + " | ".join(f"{row[name]:.3f}" for name in SELECTORS) + f" | {row['evaluation']:.3f} |")
    lines += ["", f"Evaluation real macro over the seeds: {target.mean():.3f} ± {target.std(ddof=1):.3f}, "
                  f"{np.mean(target >= 0.75):.2f} of runs >= 0.75, {np.mean(target >= 0.80):.2f} >= 0.80.", "",
              "| dev figure | Spearman with the evaluation figure (p) | " + " | ".join(f"best of {k}: expected / >= 0.75 / >= 0.80" for k in ks) + " |",
              "|---|---|" + "---|" * len(ks)]
    for name in SELECTORS:
        selector = np.array([row[name] for row in rows])
        # A constant figure ranks nothing (Spearman is undefined).
        correlation = "n/a" if np.ptp(selector) == 0 else "{:+.2f} ({:.2f})".format(*spearmanr(selector, target))
        cells = []
        for k in ks:
            picked = best_of_k(selector, target, k)
            cells.append(f"{picked.mean():.3f} / {np.mean(picked >= 0.75):.2f} / {np.mean(picked >= 0.80):.2f}")
        lines.append(f"| {name} | {correlation} | " + " | ".join(cells) + " |")
    labels = list(rows[0]["evaluation per label"])
    mean_per_label = {label: float(np.mean([row["evaluation per label"][label] for row in rows])) for label in labels}
    positives, records = rows[0]["evaluation positives"], rows[0]["evaluation records"]
    se = macro_auroc_se(mean_per_label, positives, records)
    lines += ["", f"Sampling standard error of one run's evaluation macro AUROC ({records} patients; binormal scores at the "
                  f"mean per-label AUROCs, labels independent): {se:.3f}, against the spread over seeds {target.std(ddof=1):.3f}.",
              "Per label: " + ", ".join(f"{label} {mean_per_label[label]:.2f} with {positives[label]} positives: "
                                        f"{auroc_standard_error(mean_per_label[label], positives[label], records - positives[label]):.3f}" for label in labels) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dev", type=Path, required=True, help="results-dev.json of `sim_to_real.py --protocol dev --load --cinc`")
    parser.add_argument("--eval", type=Path, nargs="+", required=True, help="results.json files of the same runs under the evaluation protocol")
    parser.add_argument("--k", type=int, nargs="+", default=[2, 3, 5])
    parser.add_argument("--output", type=Path, help="also write the report here (markdown)")
    args = parser.parse_args(argv)
    rows = joined_runs(json.loads(args.dev.read_text()), [json.loads(path.read_text()) for path in args.eval])
    text = report(rows, args.k)
    print(text, end="")
    if args.output:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
