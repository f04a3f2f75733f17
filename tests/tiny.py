"""Tiny D-BETA configurations for fast offline tests (same shapes as the parity reference)."""
from configuration_dbeta import DBetaConfig


def tiny_config(**overrides) -> DBetaConfig:
    """A 2-layer, 64-d D-BETA: every module of the real one, ~1M parameters."""
    kwargs = dict(
        ecg_config=dict(
            conv_dim=[32] * 4,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            num_conv_pos_embeddings=16,
            projection_dim=64,
        ),
        text_config=dict(vocab_size=1000, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4),
        hidden_size=64,
        num_fusion_layers=2,
        fusion_num_attention_heads=4,
        fusion_intermediate_size=256,
        mem_decoder_hidden_size=32,
        mem_decoder_num_layers=2,
        mem_decoder_num_attention_heads=4,
        mem_fusion_layer=1,
    )
    kwargs.update(overrides)
    return DBetaConfig(**kwargs)


def tokenizer_of_size(size: int) -> str:
    """A folder with the demo tokenizer grown to `size` tokens (filler tokens after its own), for
    checkpoints whose T5 embedding has about that many rows (the converter refuses a tokenizer
    much smaller than the embedding). Made once per size and process."""
    import tempfile
    from pathlib import Path

    from dbeta.train.demo.build_demo_tokenizer import load_demo_tokenizer

    folder = Path(tempfile.gettempdir()) / f"dbeta-test-tokenizer-{size}-{__import__('os').getpid()}"
    if not (folder / "tokenizer.json").is_file():
        tokenizer = load_demo_tokenizer()
        tokenizer.add_tokens([f"<filler_{index}>" for index in range(size - len(tokenizer))])
        tokenizer.save_pretrained(folder)
    return str(folder)
