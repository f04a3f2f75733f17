# Copyright 2026 The dbeta authors. Licensed under the Apache License, Version 2.0.
"""Validation during pre-training: the losses on fixed validation batches, zero-shot AUROC from the
reports' keywords (scored by `dbeta.zero_shot`), ECG <-> report retrieval, and, for the demo, the
zero-shot AUROC on real ECGs; plus the summary printed at the end of a run."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch.utils.data import DataLoader

from dbeta.text import normalize_report
from dbeta.train.demo.recipe import print_real_ecg_summary
from dbeta.train.evaluation.metrics import multilabel_auroc, recall_at_k
from dbeta.train.pretraining.checkpoints import TrainingProgress
from dbeta.train.pretraining.data import PretrainingLoaders, keyword_labels
from dbeta.train.pretraining.hub import build_processor
from dbeta.train.pretraining.model import step_seed
from dbeta.zero_shot import embed_label_texts, zero_shot_logits

#: The loss terms logged per optimiser step and at validation, in this order.
LOSS_NAMES = ("loss", "mlm_loss", "mem_loss", "etm_loss", "ets_loss")

#: Offsets the process index in the seeds of validation batches (kept apart from training's).
VALIDATION_SEED_STREAM = 1 << 20


@contextmanager
def full_parameters(accelerator: Accelerator, model):
    """Under FSDP, make the root module's own (sharded) parameters whole, so that its sub-modules
    (`get_ecg_features`, `get_text_features`) can be called outside its `forward`."""
    if accelerator.distributed_type != DistributedType.FSDP:
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):  # FSDP2: wrapped blocks unshard themselves when called
        model.unshard()
        try:
            yield
        finally:
            model.reshard()
    else:
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(model, writeback=False):
            yield


def stack_losses(outputs) -> torch.Tensor:
    """The LOSS_NAMES values of a forward pass, detached; 0 for an objective it did not compute
    (MEM when the ECG is not masked: `ecg_config.mask_ratio=0`)."""
    zero = outputs["loss"].detach().new_zeros(())
    return torch.stack([outputs[name].detach() if outputs.get(name) is not None else zero for name in LOSS_NAMES])


@torch.no_grad()
def evaluate(
    accelerator: Accelerator,
    model,
    loss_loader: DataLoader,
    embedding_loader: DataLoader,
    validation_reports: Sequence[str],
    label_set: Mapping[str, tuple[str, str]],
    tokenizer,
    seed: int,
    recall_ks: Sequence[int],
    real_eval_set=None,
) -> dict[str, float]:
    """Validation losses (fixed negatives and masks), zero-shot AUROC and retrieval recall@k; with
    `real_eval_set` (a `dbeta.train.demo.real_ecg.RealEvalSet`), also the zero-shot AUROC on those real
    ECGs with plain-text rhythm prompts, computed as the public pipeline does."""
    was_training = model.training
    model.eval()
    unwrapped = accelerator.unwrap_model(model)
    generator = torch.Generator(device=accelerator.device)

    # Sums over samples: the five losses, correct ETM decisions, number of samples.
    totals = torch.zeros(len(LOSS_NAMES) + 2, dtype=torch.float64, device=accelerator.device)
    for batch_index, batch in enumerate(loss_loader):
        generator.manual_seed(step_seed(seed, batch_index, VALIDATION_SEED_STREAM + accelerator.process_index))
        batch_size = batch.pop("sample_index").shape[0]
        outputs = model(**batch, mask_generator=generator)
        losses = stack_losses(outputs).double()
        correct = (outputs.etm_logits.argmax(-1) == batch["is_aligned"]).sum().double()
        totals += torch.cat([losses * batch_size, correct[None], totals.new_tensor([batch_size])])
    totals = accelerator.reduce(totals, "sum")
    metrics = {name: float(totals[i] / totals[-1]) for i, name in enumerate(LOSS_NAMES)}
    metrics["etm_accuracy"] = float(totals[-2] / totals[-1])

    ecg_embeds, text_embeds, indices = [], [], []
    for batch in embedding_loader:
        with full_parameters(accelerator, model):
            ecg = unwrapped.get_ecg_features(batch["input_values"]).pooler_output
            text = unwrapped.get_text_features(batch["input_ids"], batch["attention_mask"]).pooler_output
        gathered = accelerator.gather_for_metrics((ecg.float(), text.float(), batch["sample_index"]))
        ecg_embeds.append(gathered[0].cpu())
        text_embeds.append(gathered[1].cpu())
        indices.append(gathered[2].cpu())
    ecg_embeds, text_embeds, indices = torch.cat(ecg_embeds), torch.cat(text_embeds), torch.cat(indices).numpy()
    # Spread of the embeddings over the validation set: near 0 means a tower collapsed to a constant.
    metrics["ecg_embedding_std"] = float(ecg_embeds.std(dim=0).mean())
    metrics["text_embedding_std"] = float(text_embeds.std(dim=0).mean())
    reports = [normalize_report(validation_reports[i]) for i in indices]

    prompts = [prompt for prompt, _ in label_set.values()]
    with full_parameters(accelerator, model):
        # The package's one zero-shot scorer: normalised prompts -> text tower -> the model's ETS logits.
        prompt_embeds = embed_label_texts(unwrapped, tokenizer, prompts, normalize=True)
        scores = zero_shot_logits(unwrapped, ecg_embeds, prompt_embeds)
    auroc = multilabel_auroc(keyword_labels(reports, label_set), scores.numpy(), list(label_set))
    metrics["zero_shot_macro_auroc"] = auroc.macro
    metrics["zero_shot_num_labels"] = len(auroc.per_label)
    metrics.update({f"zero_shot_auroc/{label}": value for label, value in auroc.per_label.items()})

    # Retrieval over the distinct reports: an ECG finds its report among the unique validation
    # reports, and a report finds any ECG that carries it (identical reports count as one).
    unique_reports, first_row = np.unique(np.array(reports, dtype=object), return_index=True)
    unique_text_embeds = text_embeds[torch.as_tensor(first_row)].numpy()
    similarity = ecg_embeds.numpy() @ unique_text_embeds.T
    ks = [k for k in recall_ks if k <= len(unique_reports)] or [1]
    recall = {
        "ecg_to_text": recall_at_k(similarity, ks, query_groups=reports, gallery_groups=list(unique_reports)),
        "text_to_ecg": recall_at_k(similarity.T, ks, query_groups=list(unique_reports), gallery_groups=reports),
    }
    for direction, values in recall.items():
        metrics.update({f"{direction}_recall@{k}": value for k, value in values.items()})
    if real_eval_set is not None:
        from dbeta.train.demo.real_ecg import DEMO_RHYTHM_SCORING, evaluate_real_zero_shot

        with full_parameters(accelerator, model):
            processor = build_processor(unwrapped.config, tokenizer)
            metrics.update(evaluate_real_zero_shot(unwrapped, processor, real_eval_set, rhythm_scoring=DEMO_RHYTHM_SCORING))
    if was_training:
        model.train()
    return metrics


def run_validation(
    accelerator: Accelerator,
    model,
    loaders: PretrainingLoaders,
    label_set: Mapping[str, tuple[str, str]],
    tokenizer,
    args: argparse.Namespace,
    real_eval_set,
    progress: TrainingProgress,
) -> dict[str, float]:
    """`evaluate`, logged to the trackers at the current step and summed up in one printed line."""
    values = evaluate(
        accelerator, model, loaders.loss_loader, loaders.embedding_loader, loaders.validation_reports, label_set, tokenizer,
        args.seed, args.recall_ks, real_eval_set,
    )  # fmt: skip
    accelerator.log({f"validation/{name}": value for name, value in values.items()}, step=progress.completed_steps)
    accelerator.print(
        f"step {progress.completed_steps}: validation loss {values['loss']:.4f}, zero-shot macro AUROC "
        f"{values['zero_shot_macro_auroc']:.4f}, ECG->report recall@1 {values.get('ecg_to_text_recall@1', float('nan')):.3f}, "
        f"ETM accuracy {values['etm_accuracy']:.3f}"
        + (f", real-ECG zero-shot macro AUROC {values['real_zero_shot_macro_auroc']:.4f}" if "real_zero_shot_macro_auroc" in values else "")
    )
    return values


def print_summary(metrics: Mapping[str, float], label_set, output_dir: Path, wall_seconds: float, progress: TrainingProgress) -> None:
    print(f"\nPre-training finished: {progress.completed_steps} steps, {progress.samples_seen} samples, "
          f"{progress.train_seconds / 60:.1f} min training, {wall_seconds / 60:.1f} min in total.")
    for label in label_set:
        value = metrics.get(f"zero_shot_auroc/{label}")
        if value is not None:
            print(f"  zero-shot AUROC {label:<28} {value:.4f}")
    print(f"  retrieval ECG->report recall@1/5/10: " + " / ".join(f"{metrics.get(f'ecg_to_text_recall@{k}', float('nan')):.3f}" for k in (1, 5, 10)))
    print(f"Validation zero-shot macro AUROC: {metrics['zero_shot_macro_auroc']:.4f} ({int(metrics['zero_shot_num_labels'])} labels)")
    print_real_ecg_summary(metrics)  # the demo's real ECGs, when measured
    print(f"Hub folder: {output_dir.resolve()}")
