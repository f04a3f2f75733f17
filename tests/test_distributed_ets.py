"""ETS across processes: two real gloo processes, each holding half of a global batch, give the
one-process loss and (after DDP's gradient averaging) the one-process gradient.

`accelerate launch --cpu --num_processes 2` would start a single process, so the processes are
spawned here with `torch.multiprocessing`."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from modeling_dbeta import DBetaForPreTraining
from tests.tiny import tiny_config

GLOBAL_BATCH = 4
WORLD_SIZE = 2


def global_batch():
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, 900, (GLOBAL_BATCH, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, -3:] = 0
    return {
        "input_values": torch.randn(GLOBAL_BATCH, 12, 5000, generator=generator),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "is_aligned": torch.tensor([1, 0, 1, 0]),  # N3S negatives on the diagonal of both shards
    }


def build_model():
    torch.manual_seed(0)
    return DBetaForPreTraining(tiny_config()).eval()  # eval: no dropout, so both runs see the same net


def mem_generator(first_row: int, num_tokens: int = 312):
    """A generator positioned where row `first_row` of the one-process MEM noise starts, so that each
    shard masks exactly the tokens the one-process run masks for the same samples."""
    generator = torch.Generator().manual_seed(1)
    if first_row:
        torch.rand(first_row, num_tokens, generator=generator)
    return generator


def ets_loss_and_gradients(model, batch, generator):
    output = model(**batch, mask_generator=generator)
    model.zero_grad()
    output.ets_loss.backward()
    gradients = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return output.ets_loss.detach(), output.logits_per_ecg.detach(), gradients


def run_shard(rank: int, init_file: str, result_file: str):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        torch.set_num_threads(1)
        model = build_model()
        shard = slice(rank * GLOBAL_BATCH // WORLD_SIZE, (rank + 1) * GLOBAL_BATCH // WORLD_SIZE)
        batch = {key: value[shard] for key, value in global_batch().items()}
        loss, logits, gradients = ets_loss_and_gradients(model, batch, mem_generator(shard.start))
        for gradient in gradients.values():  # what DDP does: average over processes
            dist.all_reduce(gradient)
            gradient /= WORLD_SIZE
        torch.save({"loss": loss, "logits": logits, "gradients": gradients}, f"{result_file}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ets")
    # One thread per child process; restored afterwards so later subprocesses keep the defaults.
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        mp.spawn(run_shard, args=(str(folder / "init"), str(folder / "result")), nprocs=WORLD_SIZE, join=True)
    finally:
        if previous is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = previous
    return [torch.load(folder / f"result.{rank}") for rank in range(WORLD_SIZE)]


@pytest.fixture(scope="module")
def one_process_result():
    return ets_loss_and_gradients(build_model(), global_batch(), mem_generator(0))


def test_each_process_computes_the_global_ets_loss(two_process_results, one_process_result):
    loss, logits, _ = one_process_result
    assert logits.shape == (GLOBAL_BATCH, GLOBAL_BATCH)
    for result in two_process_results:
        assert result["logits"].shape == (GLOBAL_BATCH, GLOBAL_BATCH)  # gathered features: global logits
        torch.testing.assert_close(result["logits"], logits, atol=1e-5, rtol=1e-5)
        assert abs(result["loss"].item() - loss.item()) < 1e-5


def test_averaged_gradients_equal_the_one_process_gradients(two_process_results, one_process_result):
    _, _, gradients = one_process_result
    assert len(gradients) > 10
    for result in two_process_results:
        assert result["gradients"].keys() == gradients.keys()
        for name, gradient in gradients.items():
            torch.testing.assert_close(result["gradients"][name], gradient, atol=1e-5, rtol=1e-4, msg=name)
