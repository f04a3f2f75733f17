"""train/pretrain.py end to end on a tiny model: exact resume, the Hub folder (fresh-process
loading, model card with the measured numbers), pushes to a stand-in Hub, TensorBoard logging,
streaming and a real 2-process run."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from dbeta.train import pretrain
from dbeta.train.demo.recipe import DEMO_DEFAULTS
from dbeta.train.pretraining.args import parse_args
from dbeta.train.pretraining.checkpoints import (
    HUB_STAGING_FOLDER,
    list_checkpoints,
    publish_checkpoint,
    remove_incomplete_checkpoints,
    resolve_checkpoint,
    rotate_checkpoints,
)
from dbeta.train.pretraining.data import keyword_labels, zero_shot_label_set
from dbeta.train.pretraining.model import step_seed, text_encoder_source, tri_stage_lambda
from dbeta.train.pretraining.processes import cpu_threads_per_process
from tests.pretraining_helpers import demo_tokenizer, write_tiny_config

REPO_ROOT = Path(__file__).resolve().parents[1]
LOSS_TERMS = ("loss", "mlm_loss", "mem_loss", "etm_loss", "ets_loss")
HUB_FILES = {
    "README.md",
    "config.json",
    "configuration_dbeta.py",
    "model.safetensors",
    "modeling_dbeta.py",
    "preprocessor_config.json",
    "processing_dbeta.py",
    "processor_config.json",
    "results.json",
    "tokenizer.json",
    "tokenizer_config.json",
}
if (REPO_ROOT / "pipeline_dbeta.py").is_file():
    HUB_FILES |= {"pipeline_dbeta.py", "label_descriptions.json"}


# ---------------------------------------------------------------------------------------------
# Fast unit tests
# ---------------------------------------------------------------------------------------------


def test_tri_stage_schedule_by_hand():
    multiplier = tri_stage_lambda(100, warmup_ratio=0.1, hold_ratio=0.4, init_lr_scale=0.01, final_lr_scale=0.01)
    assert multiplier(0) == pytest.approx(0.01)
    assert multiplier(5) == pytest.approx(0.01 + 0.99 * 0.5)
    assert multiplier(10) == multiplier(49) == 1.0
    assert multiplier(50) == 1.0
    assert multiplier(75) == pytest.approx(math.exp(math.log(0.01) * 25 / 50))
    assert multiplier(100) == pytest.approx(0.01) and multiplier(150) == pytest.approx(0.01)


def test_demo_and_paper_defaults():
    demo = parse_args([])
    assert demo.is_demo and demo.output_dir == "outputs/dbeta-demo" and demo.zero_shot_labels == "demo"
    assert demo.learning_rate == DEMO_DEFAULTS["learning_rate"]
    paper = parse_args(["--dataset_dir", "data/mimic_prepared"])
    assert not paper.is_demo
    assert (paper.learning_rate, paper.adam_beta1, paper.adam_beta2, paper.adam_epsilon, paper.weight_decay) == (5e-5, 0.9, 0.98, 1e-6, 0.01)
    assert (paper.lr_scheduler_type, paper.warmup_ratio, paper.hold_ratio) == ("tri_stage", 0.1, 0.4)
    assert paper.zero_shot_labels == "mimic" and paper.n3s_mode == "far" and paper.n3s_num_candidates == 64
    with pytest.raises(ValueError, match="max_train_steps"):
        parse_args(["--dataset_dir", "x", "--streaming"])
    with pytest.raises(ValueError, match="hub_model_id"):
        parse_args(["--push_to_hub"])


def test_step_seed_depends_on_seed_step_and_process_only():
    assert step_seed(0, 5, 1) == step_seed(0, 5, 1)
    assert len({step_seed(0, 5, 1), step_seed(1, 5, 1), step_seed(0, 6, 1), step_seed(0, 5, 0)}) == 4


def test_cpu_threads_are_shared_by_the_local_processes(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert cpu_threads_per_process(None, num_processes=1) == 8
    assert cpu_threads_per_process(None, num_processes=3) == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # several machines: only this machine's processes share
    assert cpu_threads_per_process(None, num_processes=16) == 2
    assert cpu_threads_per_process(5, num_processes=16) == 5


def test_checkpoint_rotation_and_latest(tmp_path):
    for step in (2, 10, 4, 8):
        (tmp_path / "checkpoints" / f"step_{step}").mkdir(parents=True)
    (tmp_path / "checkpoints" / "not_a_checkpoint").mkdir()
    assert resolve_checkpoint("latest", str(tmp_path)).name == "step_10"
    rotate_checkpoints(str(tmp_path), keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["not_a_checkpoint", "step_10", "step_8"]
    assert resolve_checkpoint("latest", str(tmp_path / "elsewhere")) is None
    assert resolve_checkpoint(None, str(tmp_path)) is None


def test_real_runs_default_to_the_papers_pretrained_encoders():
    real = parse_args(["--dataset_dir", "data/mimic_prepared"])
    assert real.text_encoder == "google/flan-t5-base" and real.n3s_encoder == "google/flan-t5-small"
    assert text_encoder_source(real) == "google/flan-t5-base (pretrained)"
    scratch = parse_args(["--dataset_dir", "d", "--text_encoder_from_scratch", "--n3s_encoder", "tfidf"])
    assert scratch.text_encoder is None and scratch.n3s_encoder == "tfidf"
    assert text_encoder_source(scratch) == "random initialisation (--text_encoder_from_scratch)"
    continued = parse_args(["--dataset_dir", "d", "--model_name_or_path", "some/dbeta"])
    assert continued.text_encoder is None and continued.n3s_encoder == "google/flan-t5-small"
    demo = parse_args([])
    assert demo.text_encoder is None and demo.n3s_encoder == "tfidf"
    assert text_encoder_source(demo) == "random initialisation (demo: trained from scratch)"
    with pytest.raises(ValueError, match="--text_encoder_from_scratch"):
        parse_args(["--dataset_dir", "d", "--text_encoder_from_scratch", "--text_encoder", "t5-small"])
    with pytest.raises(ValueError, match="--overwrite_output_dir"):
        parse_args(["--dataset_dir", "d", "--overwrite_output_dir", "--resume_from_checkpoint", "latest"])


def test_checkpoint_saves_are_published_whole_and_removed_whole(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    for name in ("step_2", "step_4", "step_6.tmp", "step_1.deleting"):
        (checkpoints / name).mkdir(parents=True)
        (checkpoints / name / "model.safetensors").write_text(name)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_2", "step_4"]
    assert resolve_checkpoint("latest", str(tmp_path)).name == "step_4"
    with pytest.raises(ValueError, match="incomplete checkpoint"):
        resolve_checkpoint(str(checkpoints / "step_6.tmp"), str(tmp_path))
    publish_checkpoint(checkpoints / "step_6.tmp", checkpoints / "step_6")
    rotate_checkpoints(str(tmp_path), keep=2)
    remove_incomplete_checkpoints(tmp_path)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_4", "step_6"]
    (checkpoints / "step_4.tmp").mkdir()
    (checkpoints / "step_4.tmp" / "model.safetensors").write_text("new")
    publish_checkpoint(checkpoints / "step_4.tmp", checkpoints / "step_4")  # a re-run of step 4 replaces it
    assert (checkpoints / "step_4" / "model.safetensors").read_text() == "new"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_4", "step_6"]


def test_keyword_labels_respect_word_boundaries():
    labels = zero_shot_label_set("mimic")
    reports = ["Sinus rhythm. Abnormal ECG", "sinus rhythm normal ecg", "atrial fibrillation with pvcs"]
    matrix = keyword_labels(reports, labels)
    names = list(labels)
    assert matrix[0, names.index("normal ecg")] == 0  # "abnormal ecg" is not "normal ecg"
    assert matrix[1, names.index("normal ecg")] == 1
    assert matrix[2, names.index("ventricular premature complexes")] == 1
    demo = zero_shot_label_set("demo")
    assert demo["atrial_fibrillation"][0] == "atrial fibrillation"


# ---------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared_dataset(tmp_path_factory):
    from dbeta.train.demo.make_demo_corpus import make_demo_corpus
    from dbeta.train.data.mimic_iv_ecg import prepare_mimic_iv_ecg

    root = tmp_path_factory.mktemp("corpus")
    make_demo_corpus(root / "raw", num_records=60, num_subjects=30, seed=0)
    prepare_mimic_iv_ecg(root / "raw", root / "prepared", val_fraction=0.2, seed=0, progress=False)
    return root / "prepared"


@pytest.fixture(scope="module")
def tiny_setup(prepared_dataset, tmp_path_factory):
    tokenizer = demo_tokenizer()
    folder = tmp_path_factory.mktemp("setup")
    tokenizer.save_pretrained(folder / "tokenizer")
    config = write_tiny_config(tokenizer, folder / "tiny_config.json")
    return SimpleNamespace(dataset=prepared_dataset, config=config, tokenizer=folder / "tokenizer")


def common_args(setup, output_dir, *extra):
    return [
        "--dataset_dir", str(setup.dataset), "--config_name", str(setup.config), "--tokenizer_name", str(setup.tokenizer),
        "--output_dir", str(output_dir), "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16",
        "--gradient_accumulation_steps", "2", "--max_train_steps", "6", "--learning_rate", "1e-3",
        "--checkpointing_steps", "2", "--eval_steps", "0", "--logging_steps", "1", "--report_to", "none",
        *(() if "--text_encoder" in extra else ("--text_encoder_from_scratch",)),
        *(() if "--n3s_encoder" in extra else ("--n3s_encoder", "tfidf")), *extra,
    ]  # fmt: skip


def run_main(argv):
    """pretrain.main in this process, with accelerate's process-wide singletons reset around it."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    try:
        return pretrain.main(argv)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


class StandInHub:
    """Records what `HfApi.create_repo` / `upload_folder` would send (no network)."""

    def __init__(self):
        self.repos, self.commits = [], []

    def install(self, monkeypatch):
        import huggingface_hub
        from huggingface_hub.utils import filter_repo_objects

        hub = self

        def create_repo(api, repo_id, *, private=None, exist_ok=False, **kwargs):
            hub.repos.append({"repo_id": repo_id, "private": private, "exist_ok": exist_ok})
            return SimpleNamespace(repo_id=repo_id)

        def upload_folder(api, *, repo_id, folder_path, commit_message=None, allow_patterns=None, ignore_patterns=None, **kwargs):
            folder = Path(folder_path)
            files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
            uploaded = list(filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))
            results = json.loads((folder / "results.json").read_text())
            hub.commits.append({"repo_id": repo_id, "message": commit_message, "files": uploaded, "results": results})
            return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/{len(hub.commits)}")

        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
        monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)


@pytest.fixture(scope="module")
def full_run(tiny_setup, tmp_path_factory):
    """6 steps (2 epochs, gradient accumulation 2), checkpoints every 2 steps, TensorBoard, pushes."""
    monkeypatch = pytest.MonkeyPatch()
    hub = StandInHub()
    hub.install(monkeypatch)
    output_dir = tmp_path_factory.mktemp("full") / "dbeta-tiny"
    try:
        result = run_main(
            common_args(tiny_setup, output_dir, "--report_to", "tensorboard", "--push_to_hub", "--hub_model_id", "test-user/dbeta-tiny")
        )
    finally:
        monkeypatch.undo()
    return SimpleNamespace(result=result, output_dir=output_dir, hub=hub)


@pytest.mark.slow
def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(full_run, tiny_setup, tmp_path):
    uninterrupted = full_run.result
    assert [entry["step"] for entry in uninterrupted.history] == [1, 2, 3, 4, 5, 6]
    # A second run that finds step 2's checkpoint in its own folder and continues from "latest".
    resumed_dir = tmp_path / "resumed"
    (resumed_dir / "checkpoints").mkdir(parents=True)
    import shutil

    shutil.copytree(full_run.output_dir / "checkpoints" / "step_2", resumed_dir / "checkpoints" / "step_2")
    resumed = run_main(common_args(tiny_setup, resumed_dir, "--resume_from_checkpoint", "latest"))
    assert [entry["step"] for entry in resumed.history] == [3, 4, 5, 6]
    assert resumed.history == uninterrupted.history[2:]  # every loss term, bit for bit
    final, final_resumed = load_file(full_run.output_dir / "model.safetensors"), load_file(resumed_dir / "model.safetensors")
    assert final.keys() == final_resumed.keys()
    assert all(torch.equal(final[key], final_resumed[key]) for key in final)
    assert resumed.metrics == uninterrupted.metrics


@pytest.mark.slow
def test_a_checkpoint_save_cut_short_is_ignored_and_training_resumes_bit_exact(full_run, tiny_setup, tmp_path, monkeypatch):
    """A save killed mid-way (here: after the model, before the optimizer state) leaves no `step_4`:
    "latest" is step 2, and the resumed run reproduces the uninterrupted one exactly."""
    from accelerate import Accelerator

    save_state = Accelerator.save_state

    def save_state_killed_at_step_4(self, output_dir=None, **kwargs):
        if "step_4" in str(output_dir):
            save_state(self, output_dir, **kwargs)
            (Path(output_dir) / "optimizer.bin").unlink()
            raise KeyboardInterrupt("killed while saving")
        return save_state(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", save_state_killed_at_step_4)
    output_dir = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        run_main(common_args(tiny_setup, output_dir))
    monkeypatch.undo()
    assert sorted(p.name for p in (output_dir / "checkpoints").iterdir()) == ["step_2", "step_4.tmp"]
    assert resolve_checkpoint("latest", str(output_dir)).name == "step_2"

    resumed = run_main(common_args(tiny_setup, output_dir, "--resume_from_checkpoint", "latest"))
    assert resumed.history == full_run.result.history[2:]  # steps 3..6, every loss term bit for bit
    final, final_resumed = load_file(full_run.output_dir / "model.safetensors"), load_file(output_dir / "model.safetensors")
    assert all(torch.equal(final[key], final_resumed[key]) for key in final)
    assert sorted(p.name for p in (output_dir / "checkpoints").iterdir()) == ["step_2", "step_4", "step_6"]


def test_a_fresh_run_refuses_an_output_dir_that_holds_checkpoints(tiny_setup, tmp_path):
    old = tmp_path / "out" / "checkpoints" / "step_5000"
    old.mkdir(parents=True)
    (old / "model.safetensors").write_text("another run")
    with pytest.raises(FileExistsError, match="step_5000") as raised:
        run_main(common_args(tiny_setup, tmp_path / "out"))
    assert "--resume_from_checkpoint latest" in str(raised.value) and "--overwrite_output_dir" in str(raised.value)
    assert [p.name for p in (tmp_path / "out" / "checkpoints").iterdir()] == ["step_5000"]
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.slow
def test_overwrite_output_dir_starts_afresh(tiny_setup, tmp_path):
    old = tmp_path / "out" / "checkpoints" / "step_5000"
    old.mkdir(parents=True)
    result = run_main(common_args(tiny_setup, tmp_path / "out", "--overwrite_output_dir", "--max_train_steps", "2"))
    assert result.completed_steps == 2
    assert [p.name for p in (tmp_path / "out" / "checkpoints").iterdir()] == ["step_2"]


def offline_args(setup, output_dir, *extra):
    """common_args without the test's own encoder choices: the defaults of a real run."""
    args = common_args(setup, output_dir, "--text_encoder", "placeholder", "--n3s_encoder", "placeholder")
    args = args[: args.index("--text_encoder")]
    return [*args, *extra]


@pytest.fixture
def hub_offline(monkeypatch):
    """No Hub access, as on a machine without internet (HF_HUB_OFFLINE=1)."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_an_unreachable_flan_t5_stops_a_real_run_before_training(tiny_setup, tmp_path, hub_offline):
    with pytest.raises(OSError) as raised:
        run_main(offline_args(tiny_setup, tmp_path / "out", "--n3s_encoder", "tfidf"))
    message = str(raised.value)
    assert "--text_encoder 'google/flan-t5-base' could not be loaded" in message and "--text_encoder_from_scratch" in message
    assert not (tmp_path / "out" / "model.safetensors").exists() and not (tmp_path / "out" / "checkpoints").exists()

    with pytest.raises(OSError) as raised:
        run_main(offline_args(tiny_setup, tmp_path / "out", "--text_encoder_from_scratch"))
    message = str(raised.value)
    assert "--n3s_encoder 'google/flan-t5-small' could not be loaded" in message and "--n3s_encoder tfidf" in message
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_the_n3s_command_names_its_encoder_flag_when_offline(tiny_setup, hub_offline):
    from dbeta.train.pretraining import n3s

    with pytest.raises(SystemExit, match="--encoder 'google/flan-t5-small': the N3S text encoder") as raised:
        n3s.main(["--dataset_dir", str(tiny_setup.dataset), "--encoder", "google/flan-t5-small", "--splits", "validation"])
    assert '"tfidf"' in str(raised.value)
    assert not (tiny_setup.dataset / "n3s" / "validation" / "google--flan-t5-small-far-k64").exists()


@pytest.fixture(scope="module")
def tiny_pretrained_t5(tmp_path_factory):
    """A small pretrained-style T5 encoder folder (weights + config + the demo tokenizer)."""
    from transformers import T5Config, T5EncoderModel

    tokenizer = demo_tokenizer()
    torch.manual_seed(123)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("tiny-flan-t5")
    T5EncoderModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_the_run_states_and_uses_its_text_and_n3s_encoders(tiny_setup, tiny_pretrained_t5, tmp_path, caplog):
    """--text_encoder / --n3s_encoder as local folders: the T5 tower starts from those weights (lr 0 keeps
    them), and the log, results.json, tracker config and model card name both encoders."""
    from transformers import T5EncoderModel

    from modeling_dbeta import DBetaForPreTraining

    output_dir = tmp_path / "pretrained"
    caplog.set_level("INFO")
    run_main(
        common_args(
            tiny_setup, output_dir, "--text_encoder", str(tiny_pretrained_t5), "--n3s_encoder", str(tiny_pretrained_t5),
            "--max_train_steps", "1", "--checkpointing_steps", "0", "--learning_rate", "0", "--report_to", "tensorboard",
        )
    )  # fmt: skip
    expected_text = f"{tiny_pretrained_t5} (pretrained)"
    assert f"Text encoder: {expected_text}; N3S encoder: {tiny_pretrained_t5}" in caplog.text
    results = json.loads((output_dir / "results.json").read_text())
    assert results["text_encoder"] == expected_text and results["n3s_encoder"] == str(tiny_pretrained_t5)
    card = (output_dir / "README.md").read_text()
    assert f"Text encoder: {expected_text}." in card and f"N3S negative reports chosen with `{tiny_pretrained_t5}` embeddings." in card
    assert f"| text encoder init | {expected_text} |" in card
    hparams = next((output_dir / "runs").rglob("hparams.yml"), None)
    if hparams is not None:  # the tracker's copy of the run's configuration
        assert "text_encoder_source" in hparams.read_text()
    n3s_cache = tiny_setup.dataset / "n3s" / "train"
    assert any(p.name.startswith(str(tiny_pretrained_t5).replace("/", "--")) for p in n3s_cache.iterdir())

    pretrained = T5EncoderModel.from_pretrained(tiny_pretrained_t5).state_dict()
    trained = DBetaForPreTraining.from_pretrained(output_dir).dbeta.text_model.t5.state_dict()
    assert all(torch.equal(trained[name], pretrained[name]) for name in pretrained if name in trained)
    assert torch.equal(trained["shared.weight"], pretrained["shared.weight"])


@pytest.mark.slow
def test_checkpoints_hold_the_training_state(full_run):
    checkpoints = sorted(p.name for p in (full_run.output_dir / "checkpoints").iterdir())
    assert checkpoints == ["step_2", "step_4", "step_6"]  # checkpoints_total_limit defaults to 3
    files = {p.name for p in (full_run.output_dir / "checkpoints" / "step_4").iterdir()}
    assert {"model.safetensors", "optimizer.bin", "scheduler.bin", "custom_checkpoint_0.pkl"} <= files


@pytest.mark.slow
def test_hub_folder_is_complete_and_loads_in_a_fresh_process(full_run, tmp_path):
    folder = full_run.output_dir
    assert HUB_FILES <= {p.name for p in folder.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_dbeta.DBetaModel"
    assert config["architectures"] == ["DBetaForPreTraining"]

    script = r"""
import json, sys, torch
from transformers import AutoModel, AutoProcessor
folder = sys.argv[1]
model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
ecg = torch.linspace(-1, 1, 12 * 5000).reshape(12, 5000).numpy()
inputs = processor(ecg=ecg, sampling_rate=500, text=["sinus rhythm"], return_tensors="pt")
with torch.no_grad():
    output = model(**inputs)
print(json.dumps({"module": type(model).__module__, "class": type(model).__name__,
                  "ecg": output.ecg_embeds[0].tolist(), "logit": output.logits_per_ecg.item()}))
"""
    completed = subprocess.run(
        [sys.executable, "-c", script, str(folder)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert completed.returncode == 0, completed.stderr
    loaded = json.loads(completed.stdout.strip().splitlines()[-1])
    assert loaded["class"] == "DBetaModel"
    assert loaded["module"].startswith("transformers_modules")  # the folder's remote code, not the package

    from modeling_dbeta import DBetaForPreTraining
    from processing_dbeta import DBetaProcessor

    model = DBetaForPreTraining.from_pretrained(folder).eval()
    processor = DBetaProcessor.from_pretrained(folder, trust_remote_code=True)
    ecg = torch.linspace(-1, 1, 12 * 5000).reshape(12, 5000).numpy()
    inputs = processor(ecg=ecg, sampling_rate=500, text=["sinus rhythm"], return_tensors="pt")
    with torch.no_grad():
        ecg_embeds = model.get_ecg_features(inputs["input_values"]).pooler_output
        text_embeds = model.get_text_features(inputs["input_ids"], inputs["attention_mask"]).pooler_output
    torch.testing.assert_close(torch.tensor(loaded["ecg"]), ecg_embeds[0], atol=1e-5, rtol=1e-5)
    assert loaded["logit"] == pytest.approx((ecg_embeds @ text_embeds.T).item(), abs=1e-4)


@pytest.mark.slow
def test_model_card_renders_the_measured_numbers(full_run, tmp_path):
    from huggingface_hub import ModelCard

    from dbeta.model_card import _format_value

    folder = full_run.output_dir
    results = json.loads((folder / "results.json").read_text())
    metrics = results["metrics"]
    assert metrics == pytest.approx(full_run.result.metrics)
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "transformers" and card.data.license == "cc-by-nc-4.0"
    zero_shot = card.data.eval_results[0]
    assert zero_shot.metric_type == "roc_auc" and zero_shot.dataset_split == "validation"
    assert zero_shot.metric_value == round(metrics["zero_shot_macro_auroc"], 4)
    text = card.text
    assert f"| zero-shot macro AUROC ({metrics['zero_shot_num_labels']} labels) | {_format_value(metrics['zero_shot_macro_auroc'])} |" in text
    assert f"| validation ets loss | {_format_value(metrics['ets_loss'])} |" in text
    assert f"| retrieval ECG -> report recall@1 | {_format_value(metrics['ecg_to_text_recall@1'])} |" in text
    assert "| learning rate | 0.001 |" in text and "| optimiser steps | 6 |" in text
    assert "for 6 optimiser steps" in text and "@inproceedings{pham2025dbeta" in text
    assert re.search(r"\| train records \| \d+ \|", text)

    # The usage snippet runs as written against the folder (remote code, fresh process).
    snippet = re.search(r"```python\n(.*?)```", text, re.S).group(1).replace("test-user/dbeta-tiny", str(folder))
    completed = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr


@pytest.mark.slow
def test_push_uploads_a_commit_per_checkpoint_and_the_final_folder(full_run):
    hub = full_run.hub
    assert hub.repos == [{"repo_id": "test-user/dbeta-tiny", "private": False, "exist_ok": True}]
    assert [commit["message"] for commit in hub.commits] == [
        "Training in progress, step 2",
        "Training in progress, step 4",
        "Training in progress, step 6",
        "End of training (step 6)",
    ]
    for commit in hub.commits[:3]:
        assert set(commit["files"]) == HUB_FILES  # exactly the Hub folder, nothing else
    final = set(hub.commits[-1]["files"])
    assert HUB_FILES <= final
    assert {name for name in final - HUB_FILES if not name.startswith("runs/")} == set()
    assert not any(name.startswith(("checkpoints/", ".hub_staging/")) for name in final)
    assert hub.commits[-1]["results"]["completed_steps"] == 6
    assert [commit["results"]["completed_steps"] for commit in hub.commits[:3]] == [2, 4, 6]
    staging = full_run.output_dir / HUB_STAGING_FOLDER
    assert not staging.exists() or not any(staging.iterdir())  # staged copies removed after upload


@pytest.mark.slow
def test_tensorboard_logs_every_loss_term_lr_and_throughput(full_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(full_run.output_dir / "runs" / "dbeta-pretrain")).Reload()
    tags = set(events.Tags()["scalars"])
    expected = {f"train/{term}" for term in LOSS_TERMS} | {"train/learning_rate", "train/samples_per_second"}
    expected |= {f"validation/{term}" for term in LOSS_TERMS} | {"validation/zero_shot_macro_auroc", "validation/ecg_to_text_recall@1"}
    assert expected <= tags
    assert [event.step for event in events.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    losses = [event.value for event in events.Scalars("train/ets_loss")]
    assert losses == pytest.approx([entry["ets_loss"] for entry in full_run.result.history], rel=1e-6)


@pytest.mark.slow
def test_streaming_training(tiny_setup, tmp_path):
    result = run_main(common_args(tiny_setup, tmp_path / "streamed", "--streaming", "--max_train_steps", "3", "--checkpointing_steps", "0"))
    assert result.completed_steps == 3
    assert all(math.isfinite(entry["loss"]) for entry in result.history)
    assert (tmp_path / "streamed" / "model.safetensors").is_file()


@pytest.mark.slow
def test_two_real_processes_train_with_gathered_ets(tiny_setup, tmp_path):
    """torchrun starts 2 gloo processes (accelerate launch --cpu --num_processes 2 would start one)."""
    output_dir = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(REPO_ROOT / "train" / "pretrain.py"), "--cpu",
        *common_args(tiny_setup, output_dir, "--max_train_steps", "2", "--gradient_accumulation_steps", "1"),
    ]  # fmt: skip
    completed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert completed.returncode == 0, completed.stderr[-4000:]
    results = json.loads((output_dir / "results.json").read_text())
    assert results["completed_steps"] == 2
    assert results["samples_seen"] == 2 * 8 * 2  # 2 steps x 8 per process x 2 processes
    assert "| processes | 2 |" in (output_dir / "README.md").read_text()


@pytest.mark.parametrize("name", ["single_gpu", "multi_gpu", "fsdp", "cpu_2_processes"])
def test_accelerate_configs_parse(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(REPO_ROOT / "train" / "configs" / f"{name}.yaml"))
    assert config.compute_environment.value == "LOCAL_MACHINE"
    if name == "fsdp":
        assert config.distributed_type.value == "FSDP"
        assert "DBetaFusionLayer" in config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"]
        import modeling_dbeta

        for class_name in config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"].split(","):
            assert class_name == "T5Block" or hasattr(modeling_dbeta, class_name)
    if name == "cpu_2_processes":
        assert config.num_processes == 2
