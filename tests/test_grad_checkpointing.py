"""Gradient checkpointing (timm's `set_grad_checkpointing`, `--grad-checkpointing`): the encoder
blocks recompute their activations in the backward, in timm's batched path and in the packed
mixed step alike, with the gradients of the run without it."""

from __future__ import annotations

import pytest
import torch
from _tiny import tiny_data, tiny_model

from mixfast import random_masking
from mixfast.train import TrainConfig, train


def grads(model, loss_of) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss_of(model).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def mixed_loss(model):
    gen = torch.Generator().manual_seed(3)
    images = torch.randn(6, 1, 16, 16, generator=gen)
    labels = torch.randint(0, 4, (6,), generator=gen)
    masking = random_masking(6, model.num_patches, 0.75, seed=0)
    loss, _ = model.forward_mixed(
        images, images, labels, alpha=0.4, mask_ratio=0.75, masking=masking
    )
    return loss


def ssl_loss(model):
    images = torch.randn(5, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    return model.forward_ssl(images, 0.75, seed=1)


@pytest.mark.parametrize("loss_of", [mixed_loss, ssl_loss], ids=["packed mix", "ssl"])
def test_same_gradients_with_and_without(loss_of):
    plain = tiny_model(drop_path=0.1)  # drop path: the recompute must replay the same RNG
    checkpointed = tiny_model(drop_path=0.1)
    checkpointed.set_grad_checkpointing(True)
    assert checkpointed.checkpointing() and not plain.checkpointing()
    torch.manual_seed(7)
    want = grads(plain, loss_of)
    torch.manual_seed(7)
    got = grads(checkpointed, loss_of)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)


def saved_for_backward(model) -> int:
    """Tensors the autograd graph of one packed mixed loss keeps for its backward."""
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        mixed_loss(model)
    return len(saved)


def test_checkpointing_keeps_fewer_activations():
    """The blocks keep their inputs only (measured: 63 against 119 tensors at depth 2; the
    embedding, decoder and heads keep theirs either way)."""
    plain, checkpointed = tiny_model(drop_path=0.0), tiny_model(drop_path=0.0)
    checkpointed.set_grad_checkpointing(True)
    assert saved_for_backward(checkpointed) < 0.6 * saved_for_backward(plain)


def test_evaluation_does_not_checkpoint():
    model = tiny_model()
    model.set_grad_checkpointing(True)
    model.eval()
    assert not model.checkpointing()


def test_a_run_with_grad_checkpointing_equals_one_without():
    base = dict(
        ssl_epochs=2, sl_epochs=2, mix_ratio=0.5, batch_size=16, progress=False, device="cpu",
        compile=False,
    )  # fmt: skip
    results, weights = {}, {}
    for enabled in (False, True):
        model = tiny_model()
        results[enabled] = train(TrainConfig(**base, grad_checkpointing=enabled), model, None,
                                 tiny_data(64), tiny_data(16))  # fmt: skip
        weights[enabled] = model.state_dict()
    assert results[True].resolved["world_size"] == 1
    for name, value in weights[False].items():
        torch.testing.assert_close(weights[True][name], value, rtol=1e-4, atol=1e-5, msg=name)
