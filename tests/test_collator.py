"""The pre-training collator: lead masking, N3S substitution before MLM, MLM rules, determinism."""

import numpy as np
import pytest
import torch

from dbeta.train.pretraining.collator import (
    MLM_MASK_TOKEN,
    DBetaPretrainingCollator,
    EpochShuffleSampler,
    PretrainingBatchSettings,
    lead_order_indices,
)
from dbeta.train.data.mimic_iv_ecg import decode_ecg
from dbeta.train.pretraining.n3s import build_n3s_index
from tests.pretraining_helpers import MIMIC_ORDER, REPORTS, demo_tokenizer, prepared_rows, tiny_pretraining_config


@pytest.fixture(scope="module")
def tokenizer():
    return demo_tokenizer()


@pytest.fixture(scope="module")
def settings(tokenizer):
    return PretrainingBatchSettings.from_config(tiny_pretraining_config(tokenizer))


@pytest.fixture(scope="module")
def negatives():
    return build_n3s_index(REPORTS)


@pytest.fixture(scope="module")
def rows():
    return prepared_rows(64)


def make_collator(tokenizer, settings, negatives, seed=0, **kwargs):
    return DBetaPretrainingCollator(tokenizer, settings, negatives, seed=seed, **kwargs)


def decoded_text(tokenizer, ids, attention_mask):
    return tokenizer.decode(ids[attention_mask.bool()], skip_special_tokens=True)


def test_batch_shapes_and_dynamic_padding(tokenizer, settings, negatives, rows):
    batch = make_collator(tokenizer, settings, negatives)(rows[:8])
    assert batch["input_values"].shape == (8, 12, 5000) and batch["input_values"].dtype == torch.float32
    length = batch["input_ids"].shape[1]
    assert batch["attention_mask"].sum(dim=1).max().item() == length  # padded to the longest only
    assert batch["mlm_labels"].shape == batch["input_ids"].shape
    assert batch["sample_index"].tolist() == list(range(8))
    assert batch["is_aligned"].dtype == torch.int64


@pytest.mark.parametrize("batch_size", [1, 2, 7, 8, 16])
def test_about_half_of_the_batch_gets_an_n3s_negative(tokenizer, settings, negatives, rows, batch_size):
    collator = make_collator(tokenizer, settings, negatives)
    counts = set()
    for start in range(0, 64 - batch_size + 1, batch_size):
        batch = collator(rows[start : start + batch_size])
        counts.add(int((batch["is_aligned"] == 0).sum()))
    # n_neg = int(0.5 * B + U[0, 1))
    assert counts <= {batch_size // 2, (batch_size + 1) // 2}
    if batch_size % 2 == 1 and batch_size > 1:
        assert counts == {batch_size // 2, batch_size // 2 + 1}


def test_negative_reports_are_never_identical_to_the_positive(tokenizer, settings, negatives, rows):
    collator = make_collator(tokenizer, settings, negatives)
    seen_negatives = 0
    for epoch in range(5):
        collator.set_epoch(epoch)
        for start in range(0, 64, 8):
            batch = collator(rows[start : start + 8])
            for row in range(8):
                text = decoded_text(tokenizer, batch["input_ids"][row], batch["attention_mask"][row])
                original = rows[start + row]["report"]
                if batch["is_aligned"][row] == 0:
                    seen_negatives += 1
                    assert text != original
                    assert text in negatives.negatives_of(original)
    assert seen_negatives == 5 * 8 * 4


def test_mlm_masks_only_regular_tokens_of_aligned_rows(tokenizer, settings, negatives, rows):
    collator = make_collator(tokenizer, settings, negatives)
    special = set(tokenizer.all_special_ids)
    mask_id = tokenizer.convert_tokens_to_ids(MLM_MASK_TOKEN)
    picked = real = 0
    actions = {"mask": 0, "random": 0, "kept": 0}
    for epoch in range(8):
        collator.set_epoch(epoch)
        for start in range(0, 64, 8):
            batch = collator(rows[start : start + 8])
            unmasked = make_collator(tokenizer, settings, negatives, augment=False)(rows[start : start + 8])
            labels, ids, attention = batch["mlm_labels"], batch["input_ids"], batch["attention_mask"]
            for row in range(8):
                if batch["is_aligned"][row] == 0:
                    assert (labels[row] == -100).all()  # negative rows are never MLM-masked
                    assert mask_id not in ids[row].tolist()
                    continue
                original = unmasked["input_ids"][row]
                length = int(attention[row].sum())
                assert (labels[row, length:] == -100).all()  # padding is never picked
                assert (ids[row, length:] == tokenizer.pad_token_id).all()
                for position in range(length):
                    token = int(original[position])
                    if token in special:
                        assert labels[row, position] == -100 and ids[row, position] == token
                        continue
                    real += 1
                    if labels[row, position] == -100:
                        assert ids[row, position] == token  # unpicked tokens are untouched
                        continue
                    picked += 1
                    assert labels[row, position] == token
                    new = int(ids[row, position])
                    if new == mask_id:
                        actions["mask"] += 1
                    elif new == token:
                        actions["kept"] += 1
                    else:
                        assert new not in special
                        actions["random"] += 1
    assert 0.2 < picked / real < 0.3  # mlm_probability = 0.25
    assert 0.7 < actions["mask"] / picked < 0.9
    assert actions["random"] > 0 and actions["kept"] > 0


def test_lead_masking_zeroes_whole_leads_with_probability_one_half(tokenizer, settings, negatives, rows):
    collator = make_collator(tokenizer, settings, negatives)
    batch = collator(rows)
    reference = np.stack([decode_ecg(row) for row in rows])
    zeroed = batch["input_values"].abs().sum(dim=-1) == 0
    assert 0.4 < zeroed.float().mean().item() < 0.6
    kept = ~zeroed.numpy()
    np.testing.assert_array_equal(batch["input_values"].numpy()[kept], reference[kept])


def test_leads_are_put_in_the_model_order(tokenizer, settings, negatives):
    standard_order = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    row = prepared_rows(1, lead_names=standard_order)[0]
    batch = make_collator(tokenizer, settings, negatives, augment=False)([row])
    signal = decode_ecg(row)
    np.testing.assert_array_equal(batch["input_values"][0].numpy(), signal[lead_order_indices(standard_order, MIMIC_ORDER)])
    np.testing.assert_array_equal(batch["input_values"][0, 4].numpy(), signal[5])  # aVF comes before aVL
    with pytest.raises(ValueError, match="missing"):
        lead_order_indices(standard_order[:11], MIMIC_ORDER)


def test_same_seed_epoch_and_indices_give_the_same_batch(tokenizer, settings, negatives, rows):
    first = make_collator(tokenizer, settings, negatives, seed=3)
    second = make_collator(tokenizer, settings, negatives, seed=3)
    first.set_epoch(2)
    second.set_epoch(2)
    second(rows[8:16])  # another batch in between changes nothing
    a, b = first(rows[:8]), second(rows[:8])
    assert all(torch.equal(a[key], b[key]) for key in a)

    second.set_epoch(3)
    c = second(rows[:8])
    assert not torch.equal(a["input_values"], c["input_values"])
    other_seed = make_collator(tokenizer, settings, negatives, seed=4)
    other_seed.set_epoch(2)
    assert not torch.equal(a["input_values"], other_seed(rows[:8])["input_values"])


def test_a_samples_lead_mask_and_mlm_depend_on_its_index_not_its_batch(tokenizer, settings, rows):
    collator = make_collator(tokenizer, settings, None)  # no negatives: every row is MLM-masked
    alone = collator([rows[5]])
    within = collator([rows[9], rows[5], rows[2]])
    assert torch.equal(alone["input_values"][0], within["input_values"][1])
    length = int(alone["attention_mask"][0].sum())
    assert torch.equal(alone["input_ids"][0, :length], within["input_ids"][1, :length])
    assert torch.equal(alone["mlm_labels"][0, :length], within["mlm_labels"][1, :length])


def test_without_augmentation_the_batch_is_the_clean_pair(tokenizer, settings, negatives, rows):
    batch = make_collator(tokenizer, settings, negatives, augment=False)(rows[:6])
    assert batch["is_aligned"].tolist() == [1] * 6
    assert (batch["mlm_labels"] == -100).all()
    np.testing.assert_array_equal(batch["input_values"].numpy(), np.stack([decode_ecg(row) for row in rows[:6]]))
    texts = [decoded_text(tokenizer, i, m) for i, m in zip(batch["input_ids"], batch["attention_mask"])]
    assert texts == [row["report"] for row in rows[:6]]


def test_tokenizer_without_the_mask_token_is_rejected(settings):
    class NoSentinel:
        unk_token_id = 2

        def convert_tokens_to_ids(self, token):
            return 2

    with pytest.raises(ValueError, match="extra_id_0"):
        DBetaPretrainingCollator(NoSentinel(), settings)


def test_epoch_shuffle_sampler_is_a_function_of_seed_and_epoch():
    sampler = EpochShuffleSampler(100, seed=7)
    sampler.set_epoch(1)
    first = list(sampler)
    assert sorted(first) == list(range(100))
    assert list(sampler) == first
    sampler.set_epoch(2)
    assert list(sampler) != first
    again = EpochShuffleSampler(100, seed=7)
    again.set_epoch(1)
    assert list(again) == first
    assert list(EpochShuffleSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]


def test_training_crop_is_a_random_window_of_every_lead_drawn_per_epoch_and_row(tokenizer, settings, negatives, rows):
    """`crop_samples` (`--train_crop_seconds`): each ECG becomes one window of the whole trace, the
    same for all its leads, drawn from (seed, epoch, row index); lead masking still applies."""
    whole = make_collator(tokenizer, settings, negatives, augment=False)(rows[:8])["input_values"].numpy()
    collator = make_collator(tokenizer, settings, negatives, crop_samples=2500)
    cropped = collator(rows[:8])["input_values"].numpy()
    assert cropped.shape == (8, 12, 2500)
    starts = []
    for crop, trace in zip(cropped, whole):
        kept = np.flatnonzero(np.abs(crop).sum(axis=1) > 0)  # leads not zeroed by lead masking
        assert kept.size > 0
        lead = kept[0]
        matches = [start for start in range(trace.shape[1] - 2500 + 1) if np.array_equal(trace[lead, start : start + 2500], crop[lead])]
        assert matches, "the crop is not a window of the trace"
        start = matches[0]
        np.testing.assert_array_equal(crop[kept], trace[kept, start : start + 2500])  # one window for every lead
        starts.append(start)
    assert len(set(starts)) > 1
    np.testing.assert_array_equal(collator(rows[:8])["input_values"].numpy(), cropped)  # same epoch: same windows
    collator.set_epoch(1)
    assert not np.array_equal(collator(rows[:8])["input_values"].numpy()[:, :, :10], cropped[:, :, :10])
    with pytest.raises(ValueError, match="crop_samples must be between 1 and the input length 5000"):
        make_collator(tokenizer, settings, negatives, crop_samples=5001)
