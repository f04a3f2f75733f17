"""The four pre-training objectives against values computed by hand on tiny tensors."""

import math

import pytest
import torch

from modeling_dbeta import DBetaForPreTraining, ecg_patch_targets, ets_sigmoid_loss, masked_patch_mse
from tests.tiny import tiny_config


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


# ---------------------------------------------------------------------------------------------
# ETS
# ---------------------------------------------------------------------------------------------


def test_ets_loss_all_aligned_by_hand():
    logits = torch.tensor([[2.0, -1.0], [0.5, 1.0]])
    # y = +1 on the diagonal, -1 elsewhere; sum over pairs, divided by B = 2.
    expected = -(log_sigmoid(2.0) + log_sigmoid(1.0) + log_sigmoid(-0.5) + log_sigmoid(1.0)) / 2
    # (row 0, col 1): y=-1, z=-1 -> log sigmoid(+1); (row 1, col 0): y=-1, z=0.5 -> log sigmoid(-0.5)
    assert ets_sigmoid_loss(logits).item() == pytest.approx(expected, abs=1e-6)


def test_ets_loss_negative_pair_on_the_diagonal_is_a_negative():
    logits = torch.tensor([[2.0, -1.0, 0.0], [0.5, 1.0, -2.0], [1.5, 0.25, 3.0]])
    is_aligned = torch.tensor([1, 0, 1])
    labels = [[1, -1, -1], [-1, -1, -1], [-1, -1, 1]]  # row 1's text is an N3S negative
    expected = -sum(log_sigmoid(labels[i][j] * logits[i, j].item()) for i in range(3) for j in range(3)) / 3
    assert ets_sigmoid_loss(logits, is_aligned).item() == pytest.approx(expected, abs=1e-6)


def test_ets_logits_use_unnormalised_features_with_fixed_scale_and_no_bias():
    model = DBetaForPreTraining(tiny_config()).eval()
    ecg = torch.tensor([[0.5, -0.25], [0.1, 0.2]])
    text = torch.tensor([[1.0, 2.0], [-1.0, 0.5]])
    expected = torch.tensor([[0.5 - 0.5, -0.5 - 0.125], [0.1 + 0.4, -0.1 + 0.1]])
    torch.testing.assert_close(model.dbeta.ets_logits(ecg, text), expected)


# ---------------------------------------------------------------------------------------------
# MEM
# ---------------------------------------------------------------------------------------------


def test_mem_targets_are_normalised_per_lead_over_the_trimmed_trace_and_lead_major_per_patch():
    # 2 leads x 7 samples, 2 samples per token -> 3 tokens; sample 6 is never used.
    lead_0 = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 100.0]
    lead_1 = [0.0, 0.0, 0.0, 0.0, 0.0, 3.0, -50.0]
    ecg = torch.tensor([[lead_0, lead_1]])
    targets = ecg_patch_targets(ecg, num_tokens=3, samples_per_token=2, normalize=True)

    def standardise(values):
        mean = sum(values) / len(values)
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)  # unbiased
        return [(v - mean) / math.sqrt(var + 1e-6) for v in values]

    a, b = standardise(lead_0[:6]), standardise(lead_1[:6])
    expected = torch.tensor([[[a[0], a[1], b[0], b[1]], [a[2], a[3], b[2], b[3]], [a[4], a[5], b[4], b[5]]]])
    torch.testing.assert_close(targets, expected)
    raw = ecg_patch_targets(ecg, num_tokens=3, samples_per_token=2, normalize=False)
    torch.testing.assert_close(raw[0, 1], torch.tensor([3.0, 4.0, 0.0, 0.0]))


def test_mem_target_of_a_zeroed_lead_is_zero():
    ecg = torch.zeros(1, 2, 8)
    ecg[0, 0] = torch.arange(8.0)
    targets = ecg_patch_targets(ecg, num_tokens=4, samples_per_token=2, normalize=True)
    assert torch.all(targets.reshape(4, 2, 2)[:, 1] == 0)


def test_mem_loss_is_the_mean_over_masked_patches_only():
    prediction = torch.tensor([[[1.0, 1.0], [0.0, 2.0], [5.0, 5.0]]])
    target = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third patch was visible: its huge error is ignored
    # patch 0: mean(1, 1) = 1; patch 1: mean(0, 4) = 2 -> (1 + 2) / 2
    assert masked_patch_mse(prediction, target, mask).item() == pytest.approx(1.5)


# ---------------------------------------------------------------------------------------------
# MLM, ETM and the total, through the model
# ---------------------------------------------------------------------------------------------


def pretraining_batch(batch_size=4, length=7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, 900, (batch_size, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    input_ids[1, -2:] = 0  # padding
    attention_mask[1, -2:] = 0
    mlm_labels = torch.full_like(input_ids, -100)
    mlm_labels[0, 1], mlm_labels[0, 4], mlm_labels[2, 0] = 17, 23, 99
    return {
        "input_values": torch.randn(batch_size, 12, 5000, generator=generator),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "mlm_labels": mlm_labels,
        "is_aligned": torch.tensor([1, 0, 1, 0][:batch_size]),
    }


@pytest.fixture(scope="module")
def model_and_output():
    torch.manual_seed(0)
    model = DBetaForPreTraining(tiny_config()).eval()
    batch = pretraining_batch()
    output = model(**batch, mask_generator=torch.Generator().manual_seed(1))
    return model, batch, output


def test_mlm_loss_covers_exactly_the_labelled_positions(model_and_output):
    model, batch, output = model_and_output
    assert output.mlm_logits.shape == (3, model.config.text_config.vocab_size)  # 3 labelled positions
    labels = [17, 23, 99]  # row-major order of the labelled positions
    by_hand = sum(
        torch.logsumexp(output.mlm_logits[row], 0).item() - output.mlm_logits[row, label].item()
        for row, label in enumerate(labels)
    ) / 3
    assert output.mlm_loss.item() == pytest.approx(by_hand, rel=1e-5)


def test_mlm_logits_come_from_the_fused_text_states_at_the_labelled_positions(model_and_output):
    model, batch, output = model_and_output
    with torch.no_grad():
        ecg = model.dbeta.ecg_model(batch["input_values"], mask_ratio=0.75, mask_generator=torch.Generator().manual_seed(1))
        text = model.dbeta.text_model(batch["input_ids"], batch["attention_mask"])
        fused = model.dbeta.fuse(ecg.last_hidden_state, text.last_hidden_state, batch["attention_mask"])
        expected = model.mlm_head(fused.text_hidden_state[batch["mlm_labels"] != -100])
    torch.testing.assert_close(output.mlm_logits, expected)


def test_etm_loss_is_two_way_cross_entropy_against_is_aligned(model_and_output):
    _, batch, output = model_and_output
    logits = output.etm_logits.tolist()
    by_hand = -sum(
        row[target] - math.log(math.exp(row[0]) + math.exp(row[1]))
        for row, target in zip(logits, batch["is_aligned"].tolist())
    ) / len(logits)
    assert output.etm_loss.item() == pytest.approx(by_hand, rel=1e-5)


def test_ets_loss_in_the_model_uses_the_pooled_features_of_the_masked_ecg(model_and_output):
    model, batch, output = model_and_output
    logits = output.ecg_embeds @ output.text_embeds.T
    torch.testing.assert_close(output.logits_per_ecg, logits)
    assert output.ets_loss.item() == pytest.approx(ets_sigmoid_loss(logits, batch["is_aligned"]).item(), rel=1e-6)
    assert output.mem_mask.sum(dim=1).tolist() == [234.0] * 4  # 75% of the 312 tokens


def test_total_loss_is_the_weighted_sum_of_the_four_terms():
    torch.manual_seed(0)
    weights = dict(mlm_loss_weight=0.5, mem_loss_weight=2.0, etm_loss_weight=0.25, ets_loss_weight=3.0)
    model = DBetaForPreTraining(tiny_config(**weights)).eval()
    output = model(**pretraining_batch(), mask_generator=torch.Generator().manual_seed(1))
    expected = 0.5 * output.mlm_loss + 2.0 * output.mem_loss + 0.25 * output.etm_loss + 3.0 * output.ets_loss
    assert output.loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_mlm_without_labelled_positions_is_zero_and_keeps_the_graph():
    torch.manual_seed(0)
    model = DBetaForPreTraining(tiny_config()).eval()
    batch = pretraining_batch()
    batch["mlm_labels"].fill_(-100)
    output = model(**batch)
    assert output.mlm_loss.item() == 0.0
    assert output.mlm_loss.requires_grad


def test_gradients_reach_every_trainable_parameter():
    torch.manual_seed(0)
    model = DBetaForPreTraining(tiny_config()).train()
    output = model(**pretraining_batch(), mask_generator=torch.Generator().manual_seed(1))
    output.loss.backward()
    without_gradient = [
        name
        for name, parameter in model.named_parameters()
        if parameter.requires_grad and (parameter.grad is None or not torch.any(parameter.grad != 0))
    ]
    assert without_gradient == []
    assert all(not torch.isnan(p.grad).any() for p in model.parameters() if p.grad is not None)


def test_each_objective_trains_its_own_head():
    """The ETM loss reaches the ETM head and the fusion stacks but not the MEM decoder, and so on."""
    torch.manual_seed(0)
    model = DBetaForPreTraining(tiny_config()).eval()
    output = model(**pretraining_batch(), mask_generator=torch.Generator().manual_seed(1))
    gradients = {}
    for term in ("mlm_loss", "mem_loss", "etm_loss", "ets_loss"):
        model.zero_grad()
        output[term].backward(retain_graph=True)
        gradients[term] = {n for n, p in model.named_parameters() if p.grad is not None and torch.any(p.grad != 0)}
    assert "dbeta.etm_head.weight" in gradients["etm_loss"] - gradients["mem_loss"] - gradients["ets_loss"]
    assert "mem_head.decoder_pred.weight" in gradients["mem_loss"] - gradients["etm_loss"]
    assert "mlm_head.decoder.weight" in gradients["mlm_loss"] - gradients["ets_loss"]
    # ETS trains the unimodal towers and poolers only, never the fusion stacks or heads.
    assert not any(name.startswith(("dbeta.text_fusion", "dbeta.ecg_fusion", "mlm_head", "mem_head")) for name in gradients["ets_loss"])
    assert "dbeta.ecg_model.pooler.dense.weight" in gradients["ets_loss"]
    assert "dbeta.text_model.pooler.dense.weight" in gradients["ets_loss"]


def test_ets_can_embed_the_whole_ecg_while_mem_keeps_the_masked_one():
    """`ets_unmasked_ecg=True`: the ETS embedding is the zero-shot one (whole ECG); MEM and ETM still
    read the masked pass."""
    torch.manual_seed(0)
    model = DBetaForPreTraining(tiny_config(ets_unmasked_ecg=True)).eval()
    batch = pretraining_batch()
    output = model(**batch, mask_generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = model.dbeta.ecg_model(batch["input_values"]).pooler_output
        masked = model.dbeta.ecg_model(batch["input_values"], mask_ratio=0.75, mask_generator=torch.Generator().manual_seed(1)).pooler_output
    torch.testing.assert_close(output.ecg_embeds, whole)
    assert not torch.allclose(whole, masked)
    assert output.mem_loss is not None and output.mem_mask.sum(dim=1).tolist() == [234.0] * 4
    logits = whole @ output.text_embeds.T
    assert output.ets_loss.item() == pytest.approx(ets_sigmoid_loss(logits, batch["is_aligned"]).item(), rel=1e-6)


def test_without_ecg_masking_there_is_no_mem_loss_and_the_training_log_reports_zero():
    """The no-MEM ablation (`ecg_config.mask_ratio=0`): no MEM term; pretrain.py logs it as 0."""
    from dbeta.train.pretraining.model import apply_config_overrides
    from dbeta.train.pretraining.validation import LOSS_NAMES, stack_losses

    torch.manual_seed(0)
    config = tiny_config()
    apply_config_overrides(config, "mem_loss_weight=0, ecg_config.mask_ratio=0")
    assert config.mem_loss_weight == 0 and config.ecg_config.mask_ratio == 0
    model = DBetaForPreTraining(config).eval()
    output = model(**pretraining_batch())
    assert output.mem_loss is None and output.mem_mask is None
    losses = dict(zip(LOSS_NAMES, stack_losses(output).tolist()))
    assert losses["mem_loss"] == 0.0
    assert losses["loss"] == pytest.approx(losses["mlm_loss"] + losses["etm_loss"] + losses["ets_loss"], rel=1e-5)


def test_ecg_tokens_computed_once_give_the_same_passes_as_the_raw_leads():
    """Pre-training runs the convolutions once and encodes their tokens twice (masked for MEM, whole for
    ETS): each pass equals the one from the raw leads, and exactly one of the two inputs is accepted."""
    torch.manual_seed(0)
    ecg_model = DBetaForPreTraining(tiny_config()).eval().dbeta.ecg_model
    leads = pretraining_batch()["input_values"]
    with torch.no_grad():
        tokens = ecg_model.embed_tokens(leads)
        for mask_ratio in (0.0, 0.75):
            from_leads = ecg_model(leads, mask_ratio=mask_ratio, mask_generator=torch.Generator().manual_seed(3))
            from_tokens = ecg_model(token_embeddings=tokens, mask_ratio=mask_ratio, mask_generator=torch.Generator().manual_seed(3))
            torch.testing.assert_close(from_tokens.last_hidden_state, from_leads.last_hidden_state)
    with pytest.raises(ValueError, match="exactly one"):
        ecg_model(leads, token_embeddings=tokens)
    with pytest.raises(ValueError, match="exactly one"):
        ecg_model()
