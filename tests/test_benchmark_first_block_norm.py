"""`benchmarks/first_block_norm.py`: the replaced GroupNorm computes what today's does, and the
benchmark times both and leaves the model's own forward in place."""

import torch


def _load():
    from tests.test_demo_real_eval import load_benchmark

    return load_benchmark("first_block_norm")


def test_fused_group_norm_matches_the_strided_reduction_it_replaced():
    from configuration_dbeta import DBetaECGConfig
    from modeling_dbeta import DBetaFeatureEncoder

    benchmark = _load()
    torch.manual_seed(0)
    config = DBetaECGConfig(conv_dim=[16, 16], conv_kernel=[2, 3], conv_stride=[2, 2], hidden_size=32,
                            num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)  # fmt: skip
    encoder = DBetaFeatureEncoder(config)
    first = encoder.conv_layers[0]
    with torch.no_grad():
        first.layer_norm.weight.normal_()  # test-local weights, not a model's init
        first.layer_norm.bias.normal_()
    signal = 0.5 * torch.randn(3, 1000, 12, requires_grad=True)
    today = first(signal)
    replaced = benchmark.strided_reduction_forward(first, signal)
    torch.testing.assert_close(today, replaced, atol=1e-5, rtol=1e-5)
    assert today.shape == (3, 500, 16) and today.is_contiguous()
    (grad_today,) = torch.autograd.grad(today.square().sum(), signal)
    (grad_replaced,) = torch.autograd.grad(replaced.square().sum(), signal)
    torch.testing.assert_close(grad_today, grad_replaced, atol=1e-4, rtol=1e-4)


def test_benchmark_times_both_and_restores_the_forward():
    from modeling_dbeta import DBetaFeatureEncoderLayer

    benchmark = _load()
    forward = DBetaFeatureEncoderLayer.forward
    threads = torch.get_num_threads()
    try:
        result = benchmark.main(["--threads", "1", "--rounds", "1", "--num_batches", "1"])
    finally:
        torch.set_num_threads(threads)  # later tests compare bit-exactly with subprocesses at the default
    assert DBetaFeatureEncoderLayer.forward is forward
    assert set(result["seconds_per_step"]) == {"fused kernel", "strided reduction"}
    assert all(value > 0 for value in result["seconds_per_step"].values())
    assert len(result["ratio_per_round"]) == 1 and result["ratio_per_round"][0] > 0
    assert result["max_abs_output_difference"] < 1e-4
