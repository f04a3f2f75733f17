"""The opt-in speed levers of train/pretrain.py (issue 12) on a tiny model, on the CPU: each gives
the losses of the plain path. Regional compilation is checked with the "aot_eager" backend (the
same graphs dynamo and AOTAutograd capture, run without inductor's code generation, whose C++
compilation takes minutes on a shared CPU runner); `benchmarks/pretrain_levers.py` times inductor."""

import copy
from types import SimpleNamespace

import pytest
import torch

from dbeta.train.pretraining.args import parse_args
from dbeta.train.pretraining.checkpoints import TrainingProgress, rescale_to_processes
from dbeta.train.pretraining.collator import DBetaPretrainingCollator, PretrainingBatchSettings
from dbeta.train.pretraining.model import build_scheduler, optimizer_parameter_groups
from dbeta.train.pretraining.speed_levers import build_adamw, check_fused_adamw_devices, compile_repeated_layers
from modeling_dbeta import DBetaForPreTraining
from tests.pretraining_helpers import demo_tokenizer, prepared_rows, tiny_pretraining_config

LOSSES = ("loss", "mlm_loss", "mem_loss", "etm_loss", "ets_loss")


@pytest.fixture(scope="module")
def tokenizer():
    return demo_tokenizer()


def no_dropout_config(tokenizer):
    """The tiny configuration on 2 s ECGs, without dropout (a training step is then deterministic)."""
    config = tiny_pretraining_config(tokenizer, num_samples=1000)
    config.ecg_config.hidden_dropout = config.ecg_config.attention_dropout = config.ecg_config.feat_proj_dropout = 0.0
    config.text_config.dropout_rate = 0.0
    config.fusion_dropout = 0.0
    return config


def batches(tokenizer, settings, count=2, batch_size=4):
    """Collated batches of the helper rows; with 4 rows each, the two batches' reports differ in length."""
    collator = DBetaPretrainingCollator(tokenizer, settings, seed=0)
    rows = prepared_rows(count * batch_size, num_samples=settings.num_samples)
    return [collator(rows[i * batch_size : (i + 1) * batch_size]) for i in range(count)]


def train_steps(model, step_batches, fused=False):
    """Forward, backward, clipping and an AdamW update per batch; returns the losses of each step."""
    optimizer = build_adamw(optimizer_parameter_groups(model, 0.01), 1e-3, (0.9, 0.98), 1e-6, fused=fused)
    history = []
    for step, batch in enumerate(step_batches):
        batch = {name: value for name, value in batch.items() if name != "sample_index"}
        outputs = model(**batch, mask_generator=torch.Generator().manual_seed(step))
        outputs.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        history.append({name: float(outputs[name].detach()) for name in LOSSES})
    return history


def assert_same_history(actual, expected, tolerance):
    for step, (got, want) in enumerate(zip(actual, expected, strict=True)):
        for name in LOSSES:
            assert got[name] == pytest.approx(want[name], abs=tolerance), f"step {step} {name}: {got[name]} vs {want[name]}"


def test_speed_levers_default_off():
    args = parse_args([])
    assert not args.compile and not args.fused_adamw
    assert args.text_length_buckets is None and args.pad_to_multiple_of is None
    args = parse_args(["--compile", "--compile_backend", "aot_eager", "--text_length_buckets", "64", "128", "--pad_to_multiple_of", "8", "--fused_adamw"])
    assert args.compile and args.fused_adamw and args.compile_backend == "aot_eager"
    assert args.text_length_buckets == [64, 128] and args.pad_to_multiple_of == 8


def test_padded_text_length_rounds_up_to_the_next_bucket_and_multiple():
    settings = PretrainingBatchSettings(lead_names=["I"], num_samples=10, max_text_length=256, text_length_buckets=[128, 32, 64])
    assert settings.text_length_buckets == [32, 64, 128]
    assert [settings.padded_text_length(n) for n in (1, 32, 33, 64, 100, 128, 129, 254)] == [32, 32, 64, 64, 128, 128, 254, 254]
    settings = PretrainingBatchSettings(lead_names=["I"], num_samples=10, pad_to_multiple_of=8)
    assert [settings.padded_text_length(n) for n in (1, 8, 9, 17)] == [8, 8, 16, 24]
    settings = PretrainingBatchSettings(lead_names=["I"], num_samples=10, text_length_buckets=[20], pad_to_multiple_of=16)
    assert settings.padded_text_length(5) == 32
    assert PretrainingBatchSettings(lead_names=["I"], num_samples=10).padded_text_length(13) == 13
    with pytest.raises(ValueError, match="text_length_buckets"):
        PretrainingBatchSettings(lead_names=["I"], num_samples=10, text_length_buckets=[0, 8])
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        PretrainingBatchSettings(lead_names=["I"], num_samples=10, pad_to_multiple_of=0)


def test_bucketed_padding_gives_the_losses_and_updates_of_dynamic_padding(tokenizer):
    config = no_dropout_config(tokenizer)
    dynamic = PretrainingBatchSettings.from_config(config)
    bucketed = PretrainingBatchSettings.from_config(config, text_length_buckets=[24, 48, 96], pad_to_multiple_of=16)
    plain_batches, bucket_batches = batches(tokenizer, dynamic), batches(tokenizer, bucketed)
    for plain, padded in zip(plain_batches, bucket_batches):
        length = plain["input_ids"].shape[1]
        assert padded["input_ids"].shape[1] == bucketed.padded_text_length(length) > length
        # The same reports, MLM masks and labels; only padding added.
        assert torch.equal(padded["input_ids"][:, :length], plain["input_ids"])
        assert torch.equal(padded["mlm_labels"][:, :length], plain["mlm_labels"])
        assert not padded["attention_mask"][:, length:].any() and (padded["mlm_labels"][:, length:] == -100).all()
        assert torch.equal(padded["input_values"], plain["input_values"]) and torch.equal(padded["is_aligned"], plain["is_aligned"])

    torch.manual_seed(0)
    eager = DBetaForPreTraining(config).train()
    bucketed_model = copy.deepcopy(eager)
    assert_same_history(train_steps(bucketed_model, bucket_batches), train_steps(eager, plain_batches), tolerance=1e-5)
    # Padding changes no gradient: the updated parameters agree.
    for (name, parameter), bucketed_parameter in zip(eager.named_parameters(), bucketed_model.parameters()):
        torch.testing.assert_close(bucketed_parameter, parameter, atol=1e-5, rtol=1e-4, msg=name)


def test_regional_compilation_gives_the_eager_losses(tokenizer):
    from torch._dynamo.testing import CompileCounterWithBackend

    config = no_dropout_config(tokenizer)
    # Two batches with different text lengths: the second exercises the recompilation with dynamic shapes.
    step_batches = batches(tokenizer, PretrainingBatchSettings.from_config(config))
    assert step_batches[0]["input_ids"].shape[1] != step_batches[1]["input_ids"].shape[1]
    torch.manual_seed(0)
    eager = DBetaForPreTraining(config).train()
    compiled = copy.deepcopy(eager)
    counter = CompileCounterWithBackend("aot_eager")
    count = compile_repeated_layers(compiled, backend=counter)
    layers = (config.ecg_config.num_hidden_layers + config.text_config.num_layers + 2 * config.num_fusion_layers + config.mem_decoder_num_layers)
    assert count == layers
    assert list(compiled.state_dict()) == list(eager.state_dict())  # in place: checkpoints keep their names

    torch._dynamo.reset()
    assert_same_history(train_steps(compiled, step_batches), train_steps(eager, step_batches), tolerance=1e-5)
    assert counter.frame_count > 0  # the layers really ran compiled
    for compiled_parameter, parameter in zip(compiled.parameters(), eager.parameters()):
        torch.testing.assert_close(compiled_parameter, parameter, atol=1e-5, rtol=1e-4)


def test_fused_adamw_step_equals_the_default_adamw(tokenizer):
    config = no_dropout_config(tokenizer)
    step_batches = batches(tokenizer, PretrainingBatchSettings.from_config(config))
    torch.manual_seed(0)
    default = DBetaForPreTraining(config).train()
    fused = copy.deepcopy(default)
    check_fused_adamw_devices(fused)  # the CPU has the fused kernel in this torch
    assert_same_history(train_steps(fused, step_batches, fused=True), train_steps(default, step_batches), tolerance=1e-5)
    for fused_parameter, parameter in zip(fused.parameters(), default.parameters()):
        torch.testing.assert_close(fused_parameter, parameter, atol=1e-6, rtol=1e-5)


def test_fused_adamw_on_an_unsupported_device_fails_clearly(monkeypatch):
    import torch.utils._foreach_utils as foreach_utils

    monkeypatch.setattr(foreach_utils, "_get_fused_kernels_supported_devices", lambda: ["cuda"])
    with pytest.raises(ValueError, match="--fused_adamw: .* no fused AdamW"):
        check_fused_adamw_devices(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------------------------------------
# train/pretrain.py end to end with every lever on
# ---------------------------------------------------------------------------------------------

from tests.test_pretrain import common_args, prepared_dataset, run_main, tiny_setup  # noqa: E402, F401  (fixtures)


@pytest.mark.slow
def test_pretrain_with_every_lever_trains_as_the_plain_run(tiny_setup, tmp_path):
    """Two optimiser steps of train/pretrain.py: compiled layers (aot_eager), bucketed text and fused
    AdamW give the per-step losses of the plain run."""
    # Without dropout: its masks depend on the (padded) shapes, and compiled code draws them otherwise.
    config = no_dropout_config(demo_tokenizer())
    config.num_samples = 5000
    config.to_json_file(str(tmp_path / "config.json"))
    tiny_setup = SimpleNamespace(**{**vars(tiny_setup), "config": tmp_path / "config.json"})
    steps = ["--max_train_steps", "2", "--checkpointing_steps", "0"]
    plain = run_main(common_args(tiny_setup, tmp_path / "plain", *steps))
    levers = run_main(
        common_args(
            tiny_setup, tmp_path / "levers", *steps, "--compile", "--compile_backend", "aot_eager",
            "--text_length_buckets", "32", "64", "--pad_to_multiple_of", "16", "--fused_adamw",
        )
    )  # fmt: skip
    assert len(levers.history) == len(plain.history) == 2
    assert_same_history(levers.history, plain.history, tolerance=1e-4)


# ---------------------------------------------------------------------------------------------
# Resuming on another number of processes (another node count)
# ---------------------------------------------------------------------------------------------


def prepared_scheduler(num_processes, total_steps, completed_steps):
    """The run's tri-stage schedule as accelerate drives it: `num_processes` scheduler steps per optimiser step."""
    args = parse_args(["--dataset_dir", "unused", "--lr_scheduler_type", "tri_stage", "--learning_rate", "1e-3", "--config_name", "x"])
    optimizer = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=args.learning_rate)
    scheduler = build_scheduler(args, optimizer, total_steps, num_processes)
    for _ in range(completed_steps * num_processes):
        optimizer.step()
        scheduler.step()
    return scheduler


@pytest.mark.parametrize("old, new", [((2, 8), (4, 8)), ((4, 8), (1, 32)), ((1, 16), (2, 16))])
def test_resuming_on_another_process_count_keeps_the_data_position_and_the_schedule(old, new):
    (old_processes, old_batch), (new_processes, new_batch) = old, new
    total, done = 100, 37
    saved = prepared_scheduler(old_processes, total, done)
    progress = TrainingProgress(completed_steps=done, epoch=1, batches_in_epoch=12, num_processes=old_processes, per_device_batch_size=old_batch)
    resumed = prepared_scheduler(new_processes, total, 0)
    resumed.load_state_dict(saved.state_dict())  # what load_state restores
    assert rescale_to_processes(progress, resumed, new_processes, new_batch)
    # The same samples read in this epoch (rounded up to whole new global batches) ...
    read = 12 * old_processes * old_batch
    assert progress.batches_in_epoch * new_processes * new_batch >= read > (progress.batches_in_epoch - 1) * new_processes * new_batch
    # ... and the learning rate of the same optimiser step, which then follows the new run's own schedule.
    assert resumed.get_last_lr() == pytest.approx(saved.get_last_lr())
    reference = prepared_scheduler(new_processes, total, done + 1)
    for _ in range(new_processes):
        resumed.optimizer.step()
        resumed.step()
    assert resumed.get_last_lr() == pytest.approx(reference.get_last_lr())
    assert (progress.num_processes, progress.per_device_batch_size) == new


def test_resuming_on_the_same_layout_changes_nothing():
    scheduler = prepared_scheduler(2, 100, 10)
    state = scheduler.state_dict()
    progress = TrainingProgress(completed_steps=10, batches_in_epoch=5, num_processes=2, per_device_batch_size=8)
    assert not rescale_to_processes(progress, scheduler, 2, 8)
    assert progress.batches_in_epoch == 5 and scheduler.state_dict() == state


@pytest.mark.slow
def test_a_run_resumes_with_another_per_device_batch(tiny_setup, tmp_path, capsys):
    """train/pretrain.py resumes a checkpoint written with another layout (here the per-device batch
    of one process; another process count goes through the same restatement) and finishes."""
    output_dir = tmp_path / "out"
    first = run_main(common_args(tiny_setup, output_dir, "--max_train_steps", "2", "--checkpointing_steps", "2"))
    assert first.completed_steps == 2
    resumed = run_main(
        common_args(tiny_setup, output_dir, "--max_train_steps", "4", "--checkpointing_steps", "2", "--resume_from_checkpoint", "latest",
                    "--per_device_train_batch_size", "4")
    )  # fmt: skip
    assert resumed.completed_steps == 4 and [entry["step"] for entry in resumed.history] == [3, 4]
    assert "written by 1 process(es) x batch 8; continuing on 1 x 4" in capsys.readouterr().out
