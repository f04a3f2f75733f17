"""Does the demo model transfer from simulated to real ECGs? Sim-only vs sim+real, with seeds.

For each variant and seed this trains the README's demo (`train/pretrain.py`, its demo defaults
unless overridden) in a child process, or loads the folder a previous run left, then scores the
vendored real evaluation set (`dbeta/assets/ludb_eval`: LUDB patients never used in training)
**through the public pipeline** (`pipeline("zero-shot-ecg-classification", model=folder,
trust_remote_code=True)`, plain-text prompts "sinus rhythm", "sinus bradycardia", ...), and prints
per-label and macro AUROC, the simulated validation macro AUROC and ECG->report recall@1 (from the
run's `results.json`), and the wall-clock and CPU time of the training.

Variants:
  sim       the simulated corpus only (README command 1; 80 % of its ECGs are built from real median
            beats of the LUDB training part, re-timed to simulated rhythms, but it has no real pair)
  sim+ludb  the simulated corpus plus the vendored LUDB training part (95 patients outside the
            evaluation set, with their cardiologists' diagnosis text; no download), each repeated
            `--real_repeats` times
  sim+real  the simulated corpus plus real ECG-report pairs from `--real_dir` (LUDB records outside
            the evaluation set with their cardiologist diagnoses, CinC 2021 and CPSC 2018 records
            with their SNOMED-CT diagnoses as text), each repeated `--real_repeats` times

    python benchmarks/sim_to_real.py --variants sim sim+real --seeds 0 1 \\
        --real_dir ../shared/data/real --output_root outputs/sim_to_real

`--config_overrides` (e.g. "ets_loss_weight=0") trains an ablation with the same budget; `--load`
only evaluates existing folders. Results go to `<output_root>/results.json` and `results.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from dbeta.train.demo.real_ecg import DEMO_RHYTHM_SCORING, RHYTHM_SCORINGS  # noqa: E402


def _child_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def train_child(variant: str, real_dir: str | None, real_repeats: int, pretrain_args: list[str]) -> None:
    """Runs in the child process: the demo's `pretrain.main` with the variant's real pairs."""
    sys.path.insert(0, str(REPO_ROOT / "train"))
    import pretrain

    real_pairs = {"sim": "none", "sim+ludb": "ludb", "sim+real": real_dir}[variant]
    pretrain.main([*pretrain_args, "--demo_real_pairs", real_pairs, "--demo_real_repeats", str(real_repeats)])


#: The README's ablation table: name -> pretrain.py flags (same budget as the demo).
ABLATIONS: dict[str, list[str]] = {
    "full": [],
    "random_negatives": ["--n3s_mode", "random"],
    "no_ets": ["--config_overrides", "ets_loss_weight=0"],
    # Without MEM nothing masks the ECG either (the masking exists for MEM): ETS/ETM see it whole.
    "no_mem": ["--config_overrides", "mem_loss_weight=0,ecg_config.mask_ratio=0"],
    "no_mlm": ["--config_overrides", "mlm_loss_weight=0"],
}


def run_folder(output_root: Path, variant: str, seed: int, tag: str) -> Path:
    name = variant.replace("+", "_plus_") + (f"-{tag}" if tag else "") + f"-seed{seed}"
    return output_root / name


def train(args, variant: str, seed: int) -> dict:
    folder = run_folder(Path(args.output_root), variant, seed, args.tag)
    pretrain_args = [
        "--seed", str(seed), "--output_dir", str(folder / "model"), "--report_to", "none",
        "--demo_corpus_dir", str(Path(args.output_root) / f"corpus-seed{seed}"),
        # The prepared corpus depends only on the variant and seed: ablations share it.
        "--demo_dataset_dir", str(Path(args.output_root) / f"prepared-{variant.replace('+', '_plus_')}-seed{seed}"),
        "--checkpointing_steps", "0",
    ]  # fmt: skip
    pretrain_args += ABLATIONS[args.tag] if args.tag in ABLATIONS else []
    for flag in ("max_train_steps", "learning_rate", "demo_num_records", "eval_steps", "num_cpu_threads", "config_overrides", "negative_fraction", "train_crop_seconds"):
        value = getattr(args, flag)
        if value is not None:
            pretrain_args += [f"--{flag}", str(value)]
    command = [sys.executable, __file__, "--_child", variant, "--real_dir", str(args.real_dir), "--real_repeats", str(args.real_repeats), "--", *pretrain_args]
    print(f"[{variant} seed {seed}] training: {' '.join(command)}", flush=True)
    cpu_before, started = _child_cpu_seconds(), time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "train.log", "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    return {"wall_seconds": time.perf_counter() - started, "cpu_seconds": _child_cpu_seconds() - cpu_before, "load_average": os.getloadavg()}


def real_set():
    """The real records scored here: the dev split of the LUDB training part under `--protocol dev`
    (the evaluation file cannot be opened then), the 65 evaluation patients otherwise."""
    from dbeta.train.demo.real_ecg import dev_protocol, load_ludb_dev_set, load_ludb_eval_set

    return load_ludb_dev_set() if dev_protocol() else load_ludb_eval_set()


#: Rate labels and their definitions (beats/min): the measured rate of their positives is printed,
#: and a positive outside its own definition is flagged.
RATE_DEFINITIONS = {"sinus bradycardia": (None, 60.0), "sinus tachycardia": (100.0, None)}


def positive_rates() -> dict:
    """Median R-R heart rate of each rate label's positives (the simulator's R-peak detector), and
    which ones fall outside the label's definition (LUDB's two "sinus tachycardia" patients run at
    90-91 /min by this count: that label then ranks the two fastest records, not tachycardia)."""
    from dbeta.train.demo.make_demo_corpus import detect_r_peaks
    from dbeta.train.demo.real_ecg import LUDB_RHYTHM_LABELS

    eval_set = real_set()
    out = {}
    for name, (low, high) in RATE_DEFINITIONS.items():
        positives = np.flatnonzero(eval_set.labels({name: LUDB_RHYTHM_LABELS[name]})[:, 0])
        rates = []
        for index in positives:
            rr = np.diff(detect_r_peaks(np.asarray(eval_set.signals[index], dtype=np.float64))) / eval_set.sampling_rate
            rates.append(round(float(60.0 / np.median(rr)), 1))
        outside = [rate for rate in rates if (low is not None and rate <= low) or (high is not None and rate >= high)]
        out[name] = {"rates": rates, "outside_definition": outside}
    return out


def pipeline_scores(classifier, inputs, names: list[str], rhythm_scoring: str, **call_kwargs) -> np.ndarray:
    """(N, L) pipeline scores of `inputs` for the labels `names`: one call with `multi_label=False`
    for the rhythm labels that share a softmax (`real_ecg.rhythm_columns`), one with independent
    sigmoids for the rest; the same numbers as `real_ecg.label_scores` of the logits."""
    from dbeta.train.demo.real_ecg import rhythm_columns

    rhythm = rhythm_columns(names, rhythm_scoring)
    groups = [([names[c] for c in rhythm], False), ([name for c, name in enumerate(names) if c not in rhythm], True)]
    by_label = [dict() for _ in inputs]
    for group, multi_label in groups:
        if group:
            outputs = classifier(inputs, candidate_labels=group, multi_label=multi_label, **call_kwargs)
            for record, output in zip(by_label, outputs):
                record.update({item["label"]: item["score"] for item in output})
    return np.array([[record[name] for name in names] for record in by_label])


def pipeline_real_auroc(model_folder: Path, rhythm_scoring: str = DEMO_RHYTHM_SCORING) -> dict:
    """Per-label and macro AUROC on the vendored real set, through the public pipeline."""
    from transformers import pipeline

    from dbeta.train.evaluation.metrics import multilabel_auroc
    from dbeta.train.demo.real_ecg import LUDB_RHYTHM_LABELS

    eval_set = real_set()
    scored = eval_set.scored_labels()
    labels = eval_set.labels({name: LUDB_RHYTHM_LABELS[name] for name in scored})
    classifier = pipeline("zero-shot-ecg-classification", model=str(model_folder), trust_remote_code=True, device="cpu")
    scores = pipeline_scores(classifier, eval_set.signals, scored, rhythm_scoring, sampling_rate=eval_set.sampling_rate, lead_names=list(eval_set.lead_names))
    auroc = multilabel_auroc(labels, scores, scored)
    return {"macro": float(auroc.macro), "per_label": {k: float(v) for k, v in auroc.per_label.items()}, "records": len(eval_set.record_ids),
            "positives": {name: int(count) for name, count in zip(scored, labels.sum(axis=0))}, "split": eval_set.split,
            "rhythm_scoring": rhythm_scoring}


def cinc_real_auroc(model_folder: Path, real_dir: Path, rhythm_scoring: str = DEMO_RHYTHM_SCORING) -> dict:
    """Zero-shot AUROC through the public pipeline on one half of the shared CinC 2021 and CPSC 2018
    records (never trained on by the sim variant; `real_ecg.split_cinc`): the dev half under the dev
    protocol, the evaluation half otherwise. Every label of `CINC_LABELS` with at least 2 positives
    there (and a negative) is scored; the others are listed with their positive count."""
    from transformers import pipeline

    from dbeta.train.demo.real_ecg import CINC_LABELS, cinc_part, dev_protocol
    from dbeta.train.evaluation.metrics import multilabel_auroc

    part = "dev" if dev_protocol() else "evaluation"
    records = cinc_part(real_dir, part)
    if not records:
        return {}
    positives = {name: sum(record.labels([name])[0] for record in records) for name in CINC_LABELS}
    scored = [name for name, count in positives.items() if 2 <= count < len(records)]
    labels = np.array([record.labels(scored) for record in records])
    classifier = pipeline("zero-shot-ecg-classification", model=str(model_folder), trust_remote_code=True, device="cpu")
    scores = pipeline_scores(classifier, [str(record.path) for record in records], scored, rhythm_scoring)
    auroc = multilabel_auroc(labels, scores, scored)
    return {"macro": float(auroc.macro), "per_label": {k: float(v) for k, v in auroc.per_label.items()},
            "records": len(records), "positives": positives, "part": part, "rhythm_scoring": rhythm_scoring}


def rr_rule_baseline() -> dict:
    """What a 10-line R-peak detector gets on the real set, without any learning: band-pass 5-25 Hz,
    R peaks on the summed energy of the 12 leads, then rate and RR coefficient of variation (CV) as
    scores (bradycardia: -rate; tachycardia: rate; AF and flutter: CV; sinus rhythm: -|rate - 75| -
    100 CV). An upper reference for what the rhythm labels need, not a zero-shot model."""
    from dbeta.train.demo.make_demo_corpus import detect_r_peaks
    from dbeta.train.evaluation.metrics import multilabel_auroc
    from dbeta.train.demo.real_ecg import LUDB_RHYTHM_LABELS

    eval_set = real_set()
    rates, variation = [], []
    for signal in eval_set.signals:
        rr = np.diff(detect_r_peaks(np.asarray(signal, dtype=np.float64))) / eval_set.sampling_rate
        rates.append(60.0 / np.median(rr) if rr.size else np.nan)
        variation.append(rr.std() / rr.mean() if rr.size else np.nan)
    rate, cv = np.array(rates), np.array(variation)
    rules = {"sinus rhythm": -np.abs(rate - 75) - 100 * cv, "sinus bradycardia": -rate, "sinus tachycardia": rate,
             "atrial fibrillation": cv, "atrial flutter": cv}
    # A record where fewer than two R peaks are found has no rate: the rule abstains there (the
    # middle of its scores) rather than the record being dropped from the set the models are scored on.
    unreadable = int(np.isnan(rate).sum())  # rate and CV are missing together
    rules = {name: np.where(np.isnan(score), np.nanmedian(score), score) for name, score in rules.items()}
    scored = eval_set.scored_labels()
    auroc = multilabel_auroc(eval_set.labels({n: LUDB_RHYTHM_LABELS[n] for n in scored}), np.stack([rules[n] for n in scored], 1), scored)
    return {"macro": float(auroc.macro), "per_label": {k: float(v) for k, v in auroc.per_label.items()}, "unreadable_records": unreadable}


def real_linear_probe(model_folder: Path) -> dict:
    """Leave-one-out logistic regression on the model's ECG embeddings of the real set: whether the
    ECG tower encodes the rhythm of real records at all, apart from the text side (with 2 positives
    a label's figure is noise)."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import LeaveOneOut, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from transformers import AutoModel, AutoProcessor

    from dbeta.train.demo.real_ecg import LUDB_RHYTHM_LABELS

    eval_set = real_set()
    model = AutoModel.from_pretrained(str(model_folder), trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(str(model_folder), trust_remote_code=True)
    inputs = processor(ecg=list(eval_set.signals), sampling_rate=eval_set.sampling_rate, lead_names=list(eval_set.lead_names), return_tensors="pt")
    with torch.no_grad():
        features = model.get_ecg_features(inputs["input_values"]).pooler_output.numpy()
    per_label = {}
    for name in eval_set.scored_labels():
        target = eval_set.labels({name: LUDB_RHYTHM_LABELS[name]})[:, 0]
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        scores = cross_val_predict(probe, features, target, cv=LeaveOneOut(), method="decision_function")
        per_label[name] = float(roc_auc_score(target, scores))
    return {"macro": float(np.mean(list(per_label.values()))), "per_label": per_label}


def _mean_sd(values: list[float], digits: int = 3) -> str:
    values = [v for v in values if v is not None and not np.isnan(v)]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def combined_dev_macro(run: dict) -> float | None:
    """The dev protocol's figure with both dev parts: the mean of the per-label AUROCs of the LUDB
    dev split and of the CinC/CPSC dev half (each label of each part counts once); None without
    the CinC/CPSC part."""
    if run["real"].get("split") != "dev" or run.get("cinc", {}).get("part") != "dev":
        return None
    values = list(run["real"]["per_label"].values()) + list(run["cinc"]["per_label"].values())
    return float(np.mean(values))


def markdown(results: dict) -> str:
    variants = list(results)
    labels = sorted({label for runs in results.values() for run in runs.values() for label in run["real"]["per_label"]},
                    key=lambda name: list(__import__("dbeta.train.demo.real_ecg", fromlist=["x"]).LUDB_RHYTHM_LABELS).index(name))
    first = next(iter(next(iter(results.values())).values()))["real"]
    split = first.get("split", "evaluation")
    lines = [
        ("Real set: the DEV split of the LUDB training part (" if split == "dev" else "Real set: the vendored LUDB evaluation set (")
        + f"{first['records']} patients; positives: " + ", ".join(f"{k} {v}" for k, v in first.get("positives", {}).items()) + ").",
        "Rhythm labels scored by " + ("a softmax over the rhythm labels" if first.get("rhythm_scoring") == "softmax" else "independent sigmoids")
        + " (other labels: independent sigmoids).",
        "",
        "| metric | " + " | ".join(variants) + " |", "|---|" + "---|" * len(variants),
    ]

    def row(name, getter, digits=3):
        cells = [_mean_sd([getter(run) for run in results[v].values()], digits) for v in variants]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    for label in labels:
        row(f"real AUROC {label}", lambda run, label=label: run["real"]["per_label"].get(label))
    row("**real macro AUROC**", lambda run: run["real"]["macro"])
    lines.append("| lowest seed's real macro AUROC | " + " | ".join(f"{min(run['real']['macro'] for run in results[v].values()):.3f}" for v in variants) + " |")
    row("simulated validation macro AUROC", lambda run: run["simulated"].get("zero_shot_macro_auroc"))
    row("simulated ECG->report recall@1", lambda run: run["simulated"].get("ecg_to_text_recall@1"))
    # Near 0: the pooled ECG embedding no longer depends on the input (a collapsed model), and its
    # zero-shot AUROCs then rank floating-point noise rather than ECGs.
    row("ECG embedding spread (simulated validation, mean per-dim sd; ~0 = collapsed)", lambda run: run["simulated"].get("ecg_embedding_std"), digits=4)
    if any("probe" in run for runs in results.values() for run in runs.values()):
        row("real LOO linear probe macro AUROC (diagnostic)", lambda run: run.get("probe", {}).get("macro"))
        row("real LOO linear probe AUROC atrial fibrillation", lambda run: run.get("probe", {}).get("per_label", {}).get("atrial fibrillation"))
    cinc = [run["cinc"] for runs in results.values() for run in runs.values() if run.get("cinc")]
    if cinc:
        for label in cinc[0]["per_label"]:
            row(f"CinC/CPSC {cinc[0]['part']} half AUROC {label} ({cinc[0]['positives'][label]} pos.)", lambda run, label=label: run.get("cinc", {}).get("per_label", {}).get(label))
        row(f"CinC/CPSC {cinc[0]['part']} half macro AUROC ({cinc[0]['records']} records)", lambda run: run.get("cinc", {}).get("macro"))
        if split == "dev":
            row("**combined dev macro AUROC** (LUDB dev + CinC/CPSC dev half, mean over their labels)", combined_dev_macro)
    row("training wall minutes", lambda run: run.get("timing", {}).get("wall_seconds", float("nan")) / 60)
    row("training CPU minutes", lambda run: run.get("timing", {}).get("cpu_seconds", float("nan")) / 60)
    if cinc:
        unscored = {name: count for name, count in cinc[0]["positives"].items() if name not in cinc[0]["per_label"]}
        lines.append("")
        lines.append("CinC/CPSC labels not scored (fewer than 2 positives): " + ", ".join(f"{k} ({v})" for k, v in unscored.items()) + ".")
    seeds = {v: sorted(results[v]) for v in variants}
    lines.append("")
    lines.append("Seeds: " + "; ".join(f"{v}: {', '.join(map(str, s))}" for v, s in seeds.items()) + " (mean ± sample sd over seeds).")
    for variant in variants:
        for seed, run in sorted(results[variant].items()):
            per = ", ".join(f"{k} {v:.3f}" for k, v in run["real"]["per_label"].items())
            lines.append(f"- {variant} seed {seed}: real macro {run['real']['macro']:.3f} ({per}); simulated macro "
                         f"{run['simulated'].get('zero_shot_macro_auroc', float('nan')):.3f}; steps {run['steps']}")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--protocol", choices=["eval", "dev"], default="eval",
                        help="dev: judge a choice on the dev split of the LUDB training part; this process and its children "
                             "cannot read the evaluation file (DBETA_PROTOCOL=dev). eval: a reported run, read once.")
    parser.add_argument("--variants", nargs="+", default=["sim", "sim+real"], choices=["sim", "sim+ludb", "sim+real"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--real_dir", default=str(REPO_ROOT.parent / "shared" / "data" / "real"))
    parser.add_argument("--real_repeats", type=int, default=8)
    parser.add_argument("--output_root", default="outputs/sim_to_real")
    parser.add_argument("--tag", default="", help="Appended to the run folders (e.g. an ablation name).")
    parser.add_argument("--ablations", nargs="+", choices=list(ABLATIONS), default=None,
                        help="Train and score these ablations (each its own --tag) instead of one run per variant.")
    parser.add_argument("--cinc", action="store_true",
                        help="Also score the shared CinC 2021 + CPSC 2018 records (real millivolts; rhythm and morphology labels) from --real_dir: "
                             "their dev half under --protocol dev (then also the combined dev macro), their evaluation half otherwise.")
    parser.add_argument("--load", action="store_true", help="Only evaluate folders left by earlier runs.")
    parser.add_argument("--max_train_steps", type=int, default=None, help="Default: the demo's.")
    parser.add_argument("--learning_rate", type=float, default=None, help="Default: the demo's (1e-3 reproduces the runs before L5, seeds 10-44).")
    parser.add_argument("--demo_num_records", type=int, default=None)
    parser.add_argument("--eval_steps", type=int, default=None)
    parser.add_argument("--num_cpu_threads", type=int, default=None)
    parser.add_argument("--config_overrides", default=None, help='Ablations, e.g. "ets_loss_weight=0".')
    parser.add_argument("--negative_fraction", type=float, default=None)
    parser.add_argument("--train_crop_seconds", type=float, default=None, help="Default: the demo's.")
    parser.add_argument("--rhythm_scoring", choices=list(RHYTHM_SCORINGS), default=DEMO_RHYTHM_SCORING,
                        help="How the real figures score the rhythm labels: softmax over them, or independent sigmoids "
                             "(other labels: sigmoids). Default: the demo's (`real_ecg.DEMO_RHYTHM_SCORING`).")
    parser.add_argument("--diagnostics", action="store_true",
                        help="Also print the R-peak rule baseline and a leave-one-out linear probe of each model's real-set ECG embeddings.")
    return parser


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--_child":
        separator = argv.index("--")
        child = argparse.ArgumentParser()
        child.add_argument("--_child")
        child.add_argument("--real_dir")
        child.add_argument("--real_repeats", type=int)
        known = child.parse_args(argv[:separator])
        train_child(known._child, known.real_dir, known.real_repeats, argv[separator + 1 :])
        return {}

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.protocol == "dev":
        from dbeta.train.demo.real_ecg import PROTOCOL_ENV

        if set(args.variants) != {"sim"}:
            parser.error("--protocol dev trains on the simulated corpus only: the real LUDB pairs hold the dev split")
        os.environ[PROTOCOL_ENV] = "dev"  # inherited by the training children
    if "sim+real" in args.variants and not Path(args.real_dir).is_dir():
        parser.error(f"sim+real needs --real_dir (not found: {args.real_dir})")

    output_root = Path(args.output_root)
    results: dict = {}
    runs = [(variant, tag, seed) for variant in args.variants for tag in (args.ablations or [args.tag]) for seed in args.seeds]
    for variant, tag, seed in runs:
        args.tag = tag
        folder = run_folder(output_root, variant, seed, tag)
        model_folder = folder / "model"
        timing = None
        if not args.load and not (model_folder / "results.json").is_file():
            timing = train(args, variant, seed)
        if not (model_folder / "results.json").is_file():
            raise FileNotFoundError(f"No trained model in {model_folder}")
        run_results = json.loads((model_folder / "results.json").read_text())
        if timing is None:
            timing_file = folder / "timing.json"
            timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
        else:
            (folder / "timing.json").write_text(json.dumps(timing, indent=2))
        real = pipeline_real_auroc(model_folder, args.rhythm_scoring)
        in_run = run_results["metrics"].get("real_zero_shot_macro_auroc")
        in_run_softmax = bool(run_results["metrics"].get("real_zero_shot_rhythm_softmax", 0.0))
        same_scoring = in_run_softmax == (args.rhythm_scoring == "softmax")
        # A model trained under the dev protocol validated on the dev split: nothing to compare.
        same_split = bool(run_results["metrics"].get("real_zero_shot_dev_split", 0.0)) == (real["split"] == "dev")
        if in_run is not None and same_scoring and same_split and abs(in_run - real["macro"]) > 1e-4:
            print(f"WARNING: pipeline macro {real['macro']:.4f} differs from the training summary's {in_run:.4f}")
        results.setdefault(variant + (f" ({tag})" if tag else ""), {})[seed] = {
            "real": real, "simulated": run_results["metrics"], "steps": run_results["completed_steps"], "timing": timing,
        }
        if args.diagnostics:
            results[variant + (f" ({tag})" if tag else "")][seed]["probe"] = real_linear_probe(model_folder)
        if args.cinc and variant == "sim":  # the other variants may train on these records
            results[variant + (f" ({tag})" if tag else "")][seed]["cinc"] = cinc_real_auroc(model_folder, Path(args.real_dir), args.rhythm_scoring)
        print(f"[{variant} {tag} seed {seed}] real macro AUROC {real['macro']:.4f} {real['per_label']}", flush=True)
    report = markdown(results)
    rates = positive_rates()
    report += "\nMeasured rate of the rate labels' positives (median R-R, beats/min): " + "; ".join(
        f"{name}: {', '.join(map(str, value['rates']))}"
        + (f" (outside its definition: {', '.join(map(str, value['outside_definition']))})" if value["outside_definition"] else "")
        for name, value in rates.items()) + "\n"
    if args.diagnostics:
        rule = rr_rule_baseline()
        report += ("\nR-peak rule baseline (no learning; rate and RR variation): real macro AUROC "
                   f"{rule['macro']:.3f} (" + ", ".join(f"{k} {v:.3f}" for k, v in rule["per_label"].items()) + ")"
                   + (f"; no rate on {rule['unreadable_records']} record(s), where the rule abstains" if rule["unreadable_records"] else "") + "\n")
    print("\n" + report)
    output_root.mkdir(parents=True, exist_ok=True)
    name = "results" + ("-dev" if args.protocol == "dev" else "") + ("-ablations" if args.ablations else f"-{args.tag}" if args.tag else "")
    (output_root / f"{name}.json").write_text(json.dumps(results, indent=2, default=float))
    (output_root / f"{name}.md").write_text(report)
    return results


if __name__ == "__main__":
    main()
