"""FLOP counts of a step: FlopCounterMode with mixfast's formulas equals an analytic count."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mixfast import create_model
from mixfast.ops.flops import register

B, N, D, H, C, P, K, DEPTH = 4, 16, 32, 2, 1, 4, 10, 2  # batch, patches, width, heads, ...


def tiny(**overrides):
    torch.manual_seed(0)
    kwargs = dict(img_size=16, patch_size=P, in_chans=C, num_classes=K, depth=DEPTH, embed_dim=D)
    kwargs.update(num_heads=H, decoder_dim=16, decoder_depth=1, decoder_heads=2, **overrides)
    return create_model("vit_tiny_patch16_224", **kwargs)


def encoder_flops(batch: int, lengths: list[int]) -> int:
    """Linear layers on every token, attention within each sequence, for DEPTH blocks."""
    tokens = batch * sum(lengths)
    linear = 2 * tokens * D * (3 * D + D + 4 * D + 4 * D)
    attention = 4 * batch * sum(length**2 for length in lengths) * D
    return DEPTH * (linear + attention)


def counted(fn) -> int:
    register()
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_sl_forward_matches_the_analytic_count():
    model, images = tiny(), torch.randn(B, C, 16, 16)
    embed = 2 * B * N * D * C * P * P
    head = 2 * B * D * K
    assert counted(lambda: model.forward_sl(images)) == embed + encoder_flops(B, [N + 1]) + head


@pytest.mark.parametrize("packed_attention", ["sdpa", "varlen"])
def test_mixed_forward_counts_both_views_once(packed_attention):
    """The packed mix step: every patch embedded once, the encoder over full + kept sequences,
    the same FLOPs whichever attention runs it (varlen is a custom op with its own formula)."""
    model, images = tiny(packed_attention=packed_attention), torch.randn(B, C, 16, 16)
    labels = torch.randint(0, K, (B,))
    alpha = torch.tensor(0.5)

    def mixed():
        model.forward_mixed(images, images, labels, alpha=alpha, mask_ratio=0.75, seed=0)

    kept = N // 4
    embed = 2 * B * N * D * C * P * P
    encoder = encoder_flops(B, [N + 1, kept + 1])
    head = 2 * B * D * K
    total = counted(mixed)
    # the MAE decoder (dim 16, 1 block, full length) and its embed / prediction layers
    decoder_dim, pixels = 16, C * P * P
    dec_tokens = B * (N + 1)
    decoder = 2 * B * (kept + 1) * D * decoder_dim
    decoder += 2 * dec_tokens * decoder_dim * 12 * decoder_dim + 4 * B * (N + 1) ** 2 * decoder_dim
    decoder += 2 * dec_tokens * decoder_dim * pixels
    assert total == embed + encoder + head + decoder


def test_backward_is_counted_too():
    model, images = tiny(), torch.randn(B, C, 16, 16)
    forward = counted(lambda: model.forward_sl(images))

    def step():
        torch.autograd.grad(
            model.forward_sl(images).sum(), list(model.parameters()), allow_unused=True
        )

    assert 2 * forward < counted(step) < 4 * forward
