"""The pre-training step with the optimisations switched off (`--reference` in the benchmarks).

Same parameters and losses as `DBetaForPreTraining`; only the work done differs:
- eager attention (attention probabilities materialised) instead of SDPA;
- MLM logits over the full vocabulary at every text position, then the loss on the masked ones;
- text padded to the fixed `max_text_length` instead of the longest report in the batch.
"""

import copy

import torch
import torch.nn.functional as F

from modeling_dbeta import DBetaForPreTraining


class ReferenceDBetaForPreTraining(DBetaForPreTraining):
    def masked_language_modeling(self, text_hidden_state, mlm_labels):
        all_logits = self.mlm_head(text_hidden_state)  # (batch, length, vocab)
        loss = F.cross_entropy(all_logits.flatten(0, 1).float(), mlm_labels.flatten(), ignore_index=-100)
        return all_logits[mlm_labels != -100], loss


def reference_model_from(model: DBetaForPreTraining) -> ReferenceDBetaForPreTraining:
    """A reference-mode copy of `model` (eager attention, same weights)."""
    config = copy.deepcopy(model.config)
    config._attn_implementation = "eager"
    reference = ReferenceDBetaForPreTraining(config)
    reference.load_state_dict(model.state_dict())
    return reference.train(model.training)


def pad_text_to(batch: dict, length: int, pad_token_id: int = 0) -> dict:
    """Pad `input_ids` / `attention_mask` / `mlm_labels` to a fixed `length` (the reference's padding)."""
    padded = dict(batch)
    extra = length - batch["input_ids"].shape[1]
    if extra <= 0:
        return padded
    rows = batch["input_ids"].shape[0]
    padded["input_ids"] = torch.cat([batch["input_ids"], torch.full((rows, extra), pad_token_id)], dim=1)
    padded["attention_mask"] = torch.cat([batch["attention_mask"], torch.zeros(rows, extra, dtype=batch["attention_mask"].dtype)], dim=1)
    if batch.get("mlm_labels") is not None:
        padded["mlm_labels"] = torch.cat([batch["mlm_labels"], torch.full((rows, extra), -100)], dim=1)
    return padded
