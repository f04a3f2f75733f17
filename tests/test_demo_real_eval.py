"""The vendored real-ECG evaluation set of the demo (LUDB) and its zero-shot scoring.

Checks: the set loads and its samples match the stored SHA-256; it is the documented split
(patients disjoint from the training part); real training pairs
never include an evaluation record; the in-training scoring equals the public pipeline's; the
demo's end-of-run summary prints the real-ECG table.
"""

from __future__ import annotations

import hashlib
import json
import io
import sys
from contextlib import redirect_stdout
from pathlib import Path
from dataclasses import replace

import numpy as np
import pytest

from dbeta.train.demo.real_ecg import (
    ALWAYS_TRAIN,
    CINC_LABELS,
    DEMO_RHYTHM_SCORING,
    LUDB_EVAL_DIR,
    LUDB_EVAL_FILE,
    LUDB_RHYTHM_LABELS,
    LUDB_TRAIN_FILE,
    PROTOCOL_ENV,
    EvaluationSetLocked,
    cinc_part,
    evaluate_real_zero_shot,
    label_scores,
    load_ludb_eval_set,
    load_ludb_train_set,
    ludb_training_record_ids,
    read_cinc_records,
    real_training_pairs,
    rhythm_columns,
    signals_sha256,
    split_cinc,
    split_ludb,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zero_shot_utils import save_tiny_zero_shot_folder  # noqa: E402

SHARED_LUDB = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "ludb" / "data"


@pytest.fixture(scope="module")
def eval_set():
    return load_ludb_eval_set()


def test_vendored_set_loads_and_matches_its_hashes(eval_set):
    assert LUDB_EVAL_FILE.is_file() and LUDB_EVAL_FILE.stat().st_size < 4_000_000
    recorded = dict(line.split()[::-1] for line in (LUDB_EVAL_DIR / "SHA256SUMS").read_text().splitlines())
    for path in (LUDB_EVAL_FILE, LUDB_TRAIN_FILE):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == recorded[path.name], path
    with np.load(LUDB_EVAL_FILE) as data:
        assert signals_sha256(data["signals_delta"]) == str(data["sha256"])
    n = len(eval_set.record_ids)
    assert eval_set.signals.shape == (n, 12, 5000) and eval_set.signals.dtype == np.float32
    assert np.isfinite(eval_set.signals).all()
    # LUDB v1.0.1 publishes every lead at 1 (header unit) peak-to-peak; the int16 round trip keeps it.
    np.testing.assert_allclose(np.ptp(eval_set.signals, axis=-1), 1.0, atol=2e-3)
    assert eval_set.lead_names == ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
    assert all(report.startswith("Rhythm: ") for report in eval_set.reports)


def test_every_rhythm_label_is_scored(eval_set):
    assert eval_set.scored_labels() == list(LUDB_RHYTHM_LABELS)
    positives = dict(zip(LUDB_RHYTHM_LABELS, eval_set.labels().sum(axis=0)))
    assert positives["sinus rhythm"] == 40 and positives["atrial fibrillation"] >= 5 and positives["sinus bradycardia"] >= 8


def test_evaluation_and_training_records_are_disjoint(eval_set):
    training = ludb_training_record_ids()
    assert not set(training) & set(eval_set.record_ids)
    # The vendored training part is exactly the other half, and proves the split from its side too.
    train_set = load_ludb_train_set()
    assert train_set.record_ids == training and len(training) + len(eval_set.record_ids) == 160
    with np.load(LUDB_TRAIN_FILE) as data:
        assert [str(v) for v in data["evaluation_record_ids"]] == eval_set.record_ids
    assert not set(train_set.reports) & set(eval_set.reports) or all(  # shared texts are generic rhythm lines
        report.startswith("Rhythm: ") for report in set(train_set.reports) & set(eval_set.reports))
    assert ALWAYS_TRAIN <= set(training)  # the tokenizer builder's default fixture record is never evaluated
    assert len(set(eval_set.record_ids)) == len(eval_set.record_ids)  # one record per LUDB patient


@pytest.mark.skipif(not SHARED_LUDB.is_dir(), reason="the shared real records are not on this machine")
def test_split_rebuilds_and_real_training_pairs_exclude_the_evaluation_records(eval_set):
    from dbeta.train.demo.real_ecg import read_ludb_folder

    records = read_ludb_folder(SHARED_LUDB)
    evaluation, training = split_ludb({record_id: value["rhythm"] for record_id, value in records.items()})
    assert evaluation == eval_set.record_ids and training == ludb_training_record_ids()
    for index, record_id in enumerate(eval_set.record_ids[:5]):
        np.testing.assert_allclose(eval_set.signals[index], records[record_id]["signal"], atol=6e-4)
    pairs = real_training_pairs(SHARED_LUDB.parents[1])
    ludb = {pair["record_id"]: pair for pair in pairs if pair["source"] == "ludb"}
    assert set(ludb) == set(training) and not set(ludb) & set(eval_set.record_ids)
    assert {pair["source"] for pair in pairs} == {"ludb", "cinc2021", "cpsc2018"}
    # The vendored training part decodes to the shared LUDB records (to the int16 encoding's step).
    for record_id in training[:5]:
        np.testing.assert_allclose(ludb[record_id]["record"].signal, records[record_id]["signal"], atol=6e-4)
        assert ludb[record_id]["report"] == records[record_id]["report"]


def test_a_training_part_that_overlaps_the_evaluation_set_is_refused(tmp_path, eval_set):
    with np.load(LUDB_TRAIN_FILE) as data:
        fields = {key: data[key] for key in data.files}
    fields["record_ids"] = fields["record_ids"].copy()
    fields["record_ids"][0] = eval_set.record_ids[0]
    np.savez_compressed(tmp_path / "bad.npz", **fields)
    with pytest.raises(ValueError, match="also in the evaluation set"):
        load_ludb_train_set(tmp_path / "bad.npz")


@pytest.mark.parametrize("rhythm_scoring", ["sigmoid", "softmax"])
def test_in_training_scoring_equals_the_public_pipeline(tmp_path, eval_set, rhythm_scoring):
    from transformers import AutoModel, AutoProcessor, pipeline

    folder = save_tiny_zero_shot_folder(tmp_path / "tiny")
    model = AutoModel.from_pretrained(str(folder), trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(str(folder), trust_remote_code=True)
    # The first 24 records still hold positives and negatives of several labels.
    small = replace(eval_set, record_ids=eval_set.record_ids[:24], signals=eval_set.signals[:24],
                    reports=eval_set.reports[:24], rhythms=eval_set.rhythms[:24])
    metrics = evaluate_real_zero_shot(model, processor, small, rhythm_scoring=rhythm_scoring)
    assert metrics["real_zero_shot_rhythm_softmax"] == float(rhythm_scoring == "softmax")

    from dbeta.train.evaluation.metrics import multilabel_auroc

    scored = small.scored_labels()
    classifier = pipeline("zero-shot-ecg-classification", model=str(folder), trust_remote_code=True)
    # Every LUDB label is a rhythm: the softmax scoring is the pipeline's multi_label=False.
    outputs = classifier(small.signals, candidate_labels=scored, sampling_rate=500, lead_names=list(small.lead_names),
                         multi_label=rhythm_scoring == "sigmoid")
    scores = np.array([[{o["label"]: o["score"] for o in output}[name] for name in scored] for output in outputs])
    if rhythm_scoring == "softmax":
        np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)
    expected = multilabel_auroc(small.labels({n: LUDB_RHYTHM_LABELS[n] for n in scored}), scores, scored)
    assert metrics["real_zero_shot_macro_auroc"] == pytest.approx(expected.macro, abs=1e-6)
    for label, value in expected.per_label.items():
        assert metrics[f"real_zero_shot_auroc/{label}"] == pytest.approx(value, abs=1e-6)


def test_rhythm_labels_share_one_softmax_and_other_labels_keep_their_sigmoid():
    names = ["sinus rhythm", "inverted T waves", "sinus bradycardia", "atrial fibrillation"]
    logits = np.array([[-6.0, -2.0, -5.0, -7.0], [-1.0, 0.5, -3.0, -2.0]], dtype=np.float32)
    assert rhythm_columns(names, "softmax") == [0, 2, 3] and rhythm_columns(names, "sigmoid") == []
    softmax = label_scores(logits, names, "softmax")
    sigmoid = label_scores(logits, names, "sigmoid")
    np.testing.assert_allclose(sigmoid, 1.0 / (1.0 + np.exp(-logits)), rtol=1e-6)
    np.testing.assert_allclose(softmax[:, 1], sigmoid[:, 1])  # a finding co-occurs with any rhythm
    np.testing.assert_allclose(softmax[:, [0, 2, 3]].sum(axis=1), 1.0, rtol=1e-6)
    # What the softmax is for: an offset common to a record's rhythm logits no longer moves its
    # rhythm scores (under independent sigmoids it moves all of them together).
    shifted = logits.copy()
    shifted[0, [0, 2, 3]] -= 3.0
    np.testing.assert_allclose(label_scores(shifted, names, "softmax")[:, [0, 2, 3]], softmax[:, [0, 2, 3]], rtol=1e-5)
    assert (label_scores(shifted, names, "sigmoid")[0, [0, 2, 3]] < sigmoid[0, [0, 2, 3]]).all()
    with pytest.raises(ValueError, match="rhythm_scoring must be one of"):
        label_scores(logits, names, "argmax")
    with pytest.raises(ValueError, match=r"logits must be \(N, 4\)"):
        label_scores(logits[:, :3], names, "softmax")


def test_demo_summary_prints_the_real_ecg_table(tmp_path, eval_set):
    from transformers import AutoModel, AutoProcessor

    from dbeta.train.demo.recipe import RECIPE_REAL_MACRO_AUROC
    from dbeta.train.pretraining.checkpoints import TrainingProgress
    from dbeta.train.pretraining.validation import print_summary

    folder = save_tiny_zero_shot_folder(tmp_path / "tiny")
    model = AutoModel.from_pretrained(str(folder), trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(str(folder), trust_remote_code=True)
    # The simulated part as a healthy run of the recipe would report it.
    metrics = {"zero_shot_macro_auroc": 0.8, "zero_shot_num_labels": 1, "zero_shot_auroc/sinus_rhythm": 0.8, "ecg_embedding_std": 0.1}
    metrics.update(evaluate_real_zero_shot(model, processor, eval_set, rhythm_scoring=DEMO_RHYTHM_SCORING))
    progress = TrainingProgress(completed_steps=1, samples_seen=32, train_seconds=1.0)
    label_set = {"sinus_rhythm": ("sinus rhythm", "sinus rhythm")}
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        print_summary(metrics, label_set, tmp_path, 1.0, progress)
    text = buffer.getvalue()
    assert f"Real ECGs (vendored LUDB evaluation set, {len(eval_set.record_ids)} patients" in text
    # The demo's figure scores the rhythm labels by a softmax over them (round 5 of demo_dev_choices.md), and says so.
    assert DEMO_RHYTHM_SCORING == "softmax" and "plain-text prompts, rhythm labels scored by a softmax over them:" in text
    for label in LUDB_RHYTHM_LABELS:
        assert f"zero-shot AUROC {label}" in text
    assert f"Real-ECG zero-shot macro AUROC: {metrics['real_zero_shot_macro_auroc']:.4f} (5 labels)" in text
    # One run is printed beside the recipe's multi-seed figure, so that nobody takes one for the other.
    recipe = RECIPE_REAL_MACRO_AUROC
    assert len(recipe["seeds"]) >= 5 and recipe["lowest"] <= recipe["mean"]
    assert f"the default recipe over {len(recipe['seeds'])} fresh seeds: {recipe['mean']:.3f} ± {recipe['sd']:.3f}, lowest {recipe['lowest']:.3f}" in text
    # A multi-seed figure scored otherwise than this run names its scoring.
    assert ("independent sigmoid scores; benchmarks" in text) == (recipe["rhythm_scoring"] == "sigmoid")
    assert "failed to train" not in text
    # The printed figure is the measured one: the headline table of demo_seeds.md.
    table = (Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "demo_seeds.md").read_text()
    assert f"| **real macro AUROC** | {recipe['mean']:.3f} ± {recipe['sd']:.3f} |" in table
    assert f"| lowest seed's real macro AUROC | {recipe['lowest']:.3f} |" in table


@pytest.mark.parametrize("spread, simulated, failed", [(0.042, 0.606, True), (0.069, 0.641, True), (0.055, 0.80, True), (0.073, 0.751, False)])
def test_demo_summary_flags_a_failed_run(spread, simulated, failed):
    from dbeta.train.demo.recipe import print_real_ecg_summary

    metrics = {"real_zero_shot_macro_auroc": 0.45, "real_zero_shot_num_records": 65, "real_zero_shot_num_labels": 5,
               "real_zero_shot_rhythm_softmax": 1.0, "real_zero_shot_auroc/sinus rhythm": 0.5,
               "ecg_embedding_std": spread, "zero_shot_macro_auroc": simulated}
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        print_real_ecg_summary(metrics)
    text = buffer.getvalue()
    warning = (f"WARNING: this run failed to train: on the simulated validation split its ECG embedding spread is {spread:.3f} "
               f"(failed below 0.06) and its zero-shot macro AUROC {simulated:.3f} (failed below 0.7)")
    assert (warning in text) == failed
    assert "Real-ECG zero-shot macro AUROC: 0.4500 (5 labels)" in text


def test_demo_real_pairs_ludb_adds_the_vendored_training_part_only(tmp_path, eval_set):
    """`--demo_real_pairs ludb`: the 95 vendored LUDB training patients, repeated, in the training
    split only; no evaluation record, and the validation split stays simulated."""
    import datasets
    from accelerate import PartialState

    from dbeta.train.demo.make_demo_corpus import make_demo_corpus
    from dbeta.train.demo.recipe import add_real_training_pairs
    from dbeta.train.data.mimic_iv_ecg import prepare_mimic_iv_ecg

    corpus = make_demo_corpus(tmp_path / "corpus", num_records=12, num_subjects=6, seed=0)
    prepare_mimic_iv_ecg(corpus, tmp_path / "simulated", num_proc=1, val_fraction=0.2, seed=0, progress=False)
    PartialState(cpu=True)  # the recipe logs through accelerate
    add_real_training_pairs(tmp_path / "simulated", tmp_path / "with_real", None, repeats=2)
    simulated = datasets.load_from_disk(str(tmp_path / "simulated"))
    combined = datasets.load_from_disk(str(tmp_path / "with_real"))
    training_ids = load_ludb_train_set().record_ids
    assert len(combined["train"]) == len(simulated["train"]) + 2 * len(training_ids)
    assert len(combined["validation"]) == len(simulated["validation"])
    listed = (tmp_path / "with_real" / "real_pairs.csv").read_text().split()[1:]
    assert listed == [f"ludb,{record_id}" for record_id in training_ids]
    assert not {entry.split(",")[1] for entry in listed} & set(eval_set.record_ids)
    real_rows = combined["train"].select(range(len(simulated["train"]), len(combined["train"])))
    assert all(path.startswith("real/ludb/") for path in real_rows["path"])
    assert all(report.startswith("rhythm") for report in real_rows["report"])  # normalised LUDB text


def test_a_demo_dataset_prepared_with_other_real_pairs_is_refused(tmp_path):
    """Re-using a prepared demo folder with another `--demo_real_pairs` would train on the wrong
    data without a word: it is refused, naming both settings."""
    from accelerate import PartialState

    from dbeta.train.demo.recipe import prepare_demo_dataset
    from dbeta.train.pretraining.args import parse_args

    PartialState(cpu=True)
    args = parse_args(["--demo_corpus_dir", str(tmp_path / "corpus"), "--demo_dataset_dir", str(tmp_path / "prepared"),
                                "--demo_num_records", "12", "--output_dir", str(tmp_path / "out")])
    assert args.demo_real_pairs == "none"
    dataset_dir = prepare_demo_dataset(args)
    assert json.loads((Path(dataset_dir) / "demo_real_pairs.json").read_text()) == {"demo_real_pairs": "none", "demo_real_repeats": 0}
    assert prepare_demo_dataset(args) == dataset_dir  # same settings: reused
    args.demo_real_pairs = "ludb"
    with pytest.raises(ValueError, match="was prepared with .*'none'.* not .*'ludb'"):
        prepare_demo_dataset(args)


# --------------------------------------------------------------------------------------------
# The dev protocol: choices on the dev split, the evaluation file locked
# --------------------------------------------------------------------------------------------


def test_dev_split_is_the_training_part_minus_the_beat_sources(eval_set):
    from dbeta.train.demo.make_demo_corpus import real_beat_library
    from dbeta.train.demo.real_ecg import load_ludb_dev_set, ludb_dev_record_ids

    dev = load_ludb_dev_set()
    sources = {beat.record_id for beat in real_beat_library()}
    training = load_ludb_train_set()
    assert dev.split == "dev" and dev.record_ids == ludb_dev_record_ids()
    assert set(dev.record_ids) == set(training.record_ids) - sources
    assert not set(dev.record_ids) & set(eval_set.record_ids)
    # Enough positives to judge the rhythm labels on (flutter has one: not scored there).
    assert dev.scored_labels() == ["sinus rhythm", "sinus bradycardia", "sinus tachycardia", "atrial fibrillation"]
    assert len(dev.record_ids) + len(sources) == len(training.record_ids)


def test_dev_protocol_locks_the_evaluation_file(monkeypatch, tmp_path):
    from dbeta.train.demo.real_ecg import PROTOCOL_ENV, EvaluationSetLocked, load_ludb_dev_set

    monkeypatch.setenv(PROTOCOL_ENV, "dev")
    with pytest.raises(EvaluationSetLocked, match="dev protocol"):
        load_ludb_eval_set()
    with pytest.raises(EvaluationSetLocked):
        ludb_training_record_ids()  # reads the evaluation file too
    # A copy under another name is recognised by its content, not its path.
    copy = tmp_path / "renamed.npz"
    copy.write_bytes(LUDB_EVAL_FILE.read_bytes())
    with pytest.raises(EvaluationSetLocked):
        load_ludb_eval_set(copy)
    # Real LUDB training pairs hold the dev split: refused under the protocol.
    with pytest.raises(EvaluationSetLocked, match="dev split"):
        real_training_pairs()
    # What choices need still loads: the training part (checked against the recorded evaluation ids) and the dev split.
    assert len(load_ludb_train_set().record_ids) == 95
    assert len(load_ludb_dev_set().record_ids) == 37
    monkeypatch.setenv(PROTOCOL_ENV, "held-out")
    with pytest.raises(ValueError, match="expected 'dev' or 'eval'"):
        load_ludb_eval_set()


def test_dev_split_scores_are_flagged_and_printed_as_dev(tmp_path):
    from transformers import AutoModel, AutoProcessor

    from dbeta.train.demo.real_ecg import load_ludb_dev_set
    from dbeta.train.demo.recipe import print_real_ecg_summary

    folder = save_tiny_zero_shot_folder(tmp_path / "tiny")
    model = AutoModel.from_pretrained(str(folder), trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(str(folder), trust_remote_code=True)
    metrics = evaluate_real_zero_shot(model, processor, load_ludb_dev_set())
    assert metrics["real_zero_shot_dev_split"] == 1.0 and metrics["real_zero_shot_num_records"] == 37
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        print_real_ecg_summary(metrics)
    assert "DEV split" in buffer.getvalue() and "not a held-out figure" in buffer.getvalue()
    with pytest.raises(ValueError, match="not an evaluation set"):
        evaluate_real_zero_shot(model, processor, load_ludb_train_set())


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module (the benchmarks folder is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sim_to_real_dev_mode_refuses_real_pairs_and_locks_its_children(monkeypatch):
    from dbeta.train.demo.real_ecg import PROTOCOL_ENV

    sim_to_real = load_benchmark("sim_to_real")
    # Set through monkeypatch so that the lock the benchmark sets in os.environ is undone after the test.
    monkeypatch.setenv(PROTOCOL_ENV, "eval")
    with pytest.raises(SystemExit):
        sim_to_real.main(["--protocol", "dev", "--variants", "sim", "sim+ludb"])
    # With nothing to train (--load on an empty root) it still sets the lock for itself and its children first.
    with pytest.raises(FileNotFoundError):
        sim_to_real.main(["--protocol", "dev", "--variants", "sim", "--load", "--output_root", "/nonexistent-dbeta-root"])
    import os

    assert os.environ[PROTOCOL_ENV] == "dev"
    assert sim_to_real.real_set().split == "dev"
    rates = sim_to_real.positive_rates()
    assert set(rates) == {"sinus bradycardia", "sinus tachycardia"}
    assert len(rates["sinus bradycardia"]["rates"]) == 3
    # One dev record has no detectable R peaks: the R-peak rule abstains there instead of failing on NaN.
    assert sum(np.isnan(rate) for rate in rates["sinus bradycardia"]["rates"]) == 1
    rule = sim_to_real.rr_rule_baseline()
    assert rule["unreadable_records"] >= 1 and np.isfinite(rule["macro"])
    assert set(rule["per_label"]) == {"sinus rhythm", "sinus bradycardia", "sinus tachycardia", "atrial fibrillation"}
    monkeypatch.undo()
    assert PROTOCOL_ENV not in os.environ or os.environ[PROTOCOL_ENV] != "dev"


def test_sim_to_real_passes_the_learning_rate_to_its_training_child(tmp_path, monkeypatch):
    """R's headline seeds (30-44) trained at 1e-3: reproducing them needs the flag to reach pretrain.py."""
    import subprocess

    sim_to_real = load_benchmark("sim_to_real")
    commands = []
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: commands.append(command))
    for extra in ([], ["--learning_rate", "1e-3"]):
        args = sim_to_real.build_parser().parse_args(["--variants", "sim", "--output_root", str(tmp_path), *extra])
        sim_to_real.train(args, "sim", 7)
    without, with_rate = (command[command.index("--") + 1 :] for command in commands)
    assert "--learning_rate" not in without  # the demo's own default
    assert with_rate[with_rate.index("--learning_rate") + 1] == "0.001" and with_rate[with_rate.index("--seed") + 1] == "7"


def test_sim_to_real_scores_the_cinc_records_through_the_pipeline(tmp_path, monkeypatch):
    real_dir = SHARED_LUDB.parents[1]
    if not (real_dir / "cinc2021" / "labels.csv").is_file():
        pytest.skip(f"the shared real records are not beside the checkout ({real_dir})")
    sim_to_real = load_benchmark("sim_to_real")
    folder = save_tiny_zero_shot_folder(tmp_path / "tiny")
    # A reported run scores the evaluation half (26 of the 49 records); counted from the labels
    # files: what can and cannot be measured on real millivolts.
    monkeypatch.delenv(PROTOCOL_ENV, raising=False)
    result = sim_to_real.cinc_real_auroc(folder, real_dir, "sigmoid")
    assert result["records"] == 26 and result["part"] == "evaluation" and result["rhythm_scoring"] == "sigmoid"
    assert result["positives"]["sinus tachycardia"] == 12 and result["positives"]["inverted T waves"] == 2
    assert result["positives"]["left bundle branch block"] == 0 and result["positives"]["low QRS voltages"] == 0
    assert set(result["per_label"]) == {name for name, count in result["positives"].items() if count >= 2}
    assert all(0.0 <= value <= 1.0 for value in result["per_label"].values())
    # A softmax over the rhythm labels changes their scores only: inverted T keeps its sigmoid.
    softmax = sim_to_real.cinc_real_auroc(folder, real_dir, "softmax")
    assert softmax["rhythm_scoring"] == "softmax" and set(softmax["per_label"]) == set(result["per_label"])
    assert softmax["per_label"]["inverted T waves"] == pytest.approx(result["per_label"]["inverted T waves"], abs=1e-9)
    # Under the dev protocol the same call scores the dev half, and the combined dev figure is the
    # mean over the labels of both dev parts.
    monkeypatch.setenv(PROTOCOL_ENV, "dev")
    dev = sim_to_real.cinc_real_auroc(folder, real_dir)
    assert dev["records"] == 23 and dev["part"] == "dev" and dev["positives"]["sinus tachycardia"] == 10
    ludb_dev = {"split": "dev", "per_label": {"sinus rhythm": 0.6, "atrial fibrillation": 0.9}}
    run = {"real": ludb_dev, "cinc": {"part": "dev", "per_label": {"sinus tachycardia": 0.3}}}
    assert sim_to_real.combined_dev_macro(run) == pytest.approx(0.6)
    assert sim_to_real.combined_dev_macro({"real": ludb_dev, "cinc": result}) is None


def test_cinc_records_split_into_a_dev_and_an_evaluation_half_and_the_dev_protocol_locks_one(monkeypatch, tmp_path):
    real_dir = SHARED_LUDB.parents[1]
    if not (real_dir / "cinc2021" / "labels.csv").is_file():
        pytest.skip(f"the shared real records are not beside the checkout ({real_dir})")
    records = read_cinc_records(real_dir)
    assert len(records) == 49 and {record.source for record in records} == {"cinc2021", "cpsc2018"}
    dev, evaluation = split_cinc(records)
    assert (len(dev), len(evaluation)) == (23, 26) and not set(dev) & set(evaluation)
    assert set(dev) | set(evaluation) == {record.key for record in records}
    # A pure function of the records, not of their order.
    assert split_cinc(list(reversed(records))) == (dev, evaluation)
    # Stratified on each record's rarest label: every label's positives divide within 2.
    for name in CINC_LABELS:
        in_dev = sum(record.labels([name])[0] for record in records if record.key in set(dev))
        in_eval = sum(record.labels([name])[0] for record in records if record.key in set(evaluation))
        assert 0 <= in_eval - in_dev <= 2, (name, in_dev, in_eval)

    monkeypatch.delenv(PROTOCOL_ENV, raising=False)
    assert [record.key for record in cinc_part(real_dir, "evaluation")] == [r.key for r in records if r.key in set(evaluation)]
    monkeypatch.setenv(PROTOCOL_ENV, "dev")
    assert sorted(record.key for record in cinc_part(real_dir, "dev")) == dev
    with pytest.raises(EvaluationSetLocked, match="evaluation half"):
        cinc_part(real_dir, "evaluation")
    with pytest.raises(ValueError, match="expected one of"):
        cinc_part(real_dir, "test")

    # A listed record without its signal file is an error, not a silently smaller split.
    (tmp_path / "cinc2021" / "records").mkdir(parents=True)
    header = (real_dir / "cinc2021" / "labels.csv").read_text(encoding="utf-8").splitlines()[0]
    (tmp_path / "cinc2021" / "labels.csv").write_text(header + "\nNOPE,x,500,5000,50,Male,426783006,NSR,sinus rhythm,,,\n", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="NOPE"):
        read_cinc_records(tmp_path)


def test_simulated_test_sets_score_every_model_on_every_simulator_version(tmp_path):
    """benchmarks/simulated_test_sets.py: one test set per simulator version, drawn from its seed
    alone (the same simulator under two names gives the same set and the same AUROCs)."""
    from dbeta.train.demo import make_demo_corpus

    module = load_benchmark("simulated_test_sets")
    folder = save_tiny_zero_shot_folder(tmp_path / "tiny")
    path = make_demo_corpus.__file__
    results = module.main(["--simulator", f"a={path}", "--simulator", f"b={path}", "--num_records", "60", "--seed", "5",
                           "--models", str(folder), "--output_json", str(tmp_path / "out.json")])  # fmt: skip
    rows = results["models"][str(folder)]
    assert rows["a"] == rows["b"]
    assert {"sinus rhythm", "atrial fibrillation"} <= set(rows["a"]["per_label"])
    assert all(0.0 <= value <= 1.0 for value in rows["a"]["per_label"].values())
    assert json.loads((tmp_path / "out.json").read_text())["num_records"] == 60
    with pytest.raises(SystemExit):
        module.main(["--simulator", "no-path", "--models", str(folder)])
