"""masked_patch_embed / packed_patch_embed: reference parity with timm, the custom ops under
opcheck and torch.compile, and the Triton kernels (marked `triton`) against the reference."""

from __future__ import annotations

import pytest
import torch
from timm.layers import PatchEmbed
from torch._dynamo.testing import CompileCounterWithBackend

from mixfast import ops
from mixfast.reference import masked_patch_embed_reference


def _inputs(
    batch=2, channels=3, size=16, patch=4, dim=8, keep=5, dtype=torch.float32, device="cpu"
):
    num_patches = (size // patch) ** 2
    images = torch.randn(batch, channels, size, size, dtype=dtype, device=device)
    weight = torch.randn(dim, channels, patch, patch, dtype=dtype, device=device) * 0.1
    bias = torch.randn(dim, dtype=dtype, device=device)
    pos_embed = torch.randn(num_patches, dim, dtype=dtype, device=device)
    ids_keep = torch.rand(batch, num_patches, device=device).argsort(1)[:, :keep]
    return images, weight, bias, pos_embed, ids_keep


def _params(*tensors):
    return [t.detach().clone().requires_grad_(True) for t in tensors]


# ----------------------------------------------------------------------------------------------
# Reference path and the op (CPU)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size,patch,channels", [(16, 4, 3), (28, 7, 1), (28, 4, 1), (32, 8, 3)])
def test_reference_matches_timm_patch_embed(size, patch, channels):
    images, weight, bias, pos_embed, ids_keep = _inputs(
        batch=3, channels=channels, size=size, patch=patch, dim=40
    )
    timm_embed = PatchEmbed(size, patch, channels, 40)
    with torch.no_grad():
        timm_embed.proj.weight.copy_(weight)
        timm_embed.proj.bias.copy_(bias)
        tokens = timm_embed(images) + pos_embed  # [B, N, D]
    expected = torch.gather(tokens, 1, ids_keep[..., None].expand(-1, -1, 40))
    torch.testing.assert_close(
        ops.masked_patch_embed(images, weight, bias, pos_embed, ids_keep), expected
    )
    torch.testing.assert_close(ops.masked_patch_embed(images, weight, bias, pos_embed), tokens)


@pytest.mark.parametrize("with_ids", [True, False])
def test_op_grads_match_reference(with_ids):
    images, weight, bias, pos_embed, ids_keep = _inputs(batch=3, dim=40, keep=7)
    ids_keep = ids_keep if with_ids else None
    params = _params(weight, bias, pos_embed)
    ref_params = _params(weight, bias, pos_embed)
    out = ops.masked_patch_embed(images, *params, ids_keep)
    ref = masked_patch_embed_reference(images, *ref_params, ids_keep)
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    for param, ref_param in zip(params, ref_params):
        torch.testing.assert_close(param.grad, ref_param.grad)


@pytest.mark.parametrize("with_ids", [True, False])
def test_opcheck(with_ids):
    images, weight, bias, pos_embed, ids_keep = _inputs()
    weight, bias, pos_embed = _params(weight, bias, pos_embed)
    args = (images, weight, bias, pos_embed, ids_keep if with_ids else None)
    torch.library.opcheck(torch.ops.mixfast.masked_patch_embed.default, args)


def test_compile_fullgraph_no_recompile_on_batch_change():
    counter = CompileCounterWithBackend("aot_eager")

    @torch.compile(backend=counter, fullgraph=True)
    def step(images, weight, bias, pos_embed, ids_keep):
        return ops.masked_patch_embed(images, weight, bias, pos_embed, ids_keep).square().mean()

    _, weight, bias, pos_embed, _ = _inputs()
    weight, bias, pos_embed = _params(weight, bias, pos_embed)
    for batch in (2, 3, 5):
        images, *_, ids_keep = _inputs(batch=batch)
        torch._dynamo.mark_dynamic(images, 0)
        torch._dynamo.mark_dynamic(ids_keep, 0)
        loss = step(images, weight, bias, pos_embed, ids_keep)
        grads = torch.autograd.grad(loss, (weight, bias, pos_embed))
        ref_params = _params(weight, bias, pos_embed)
        ref_loss = masked_patch_embed_reference(images, *ref_params, ids_keep).square().mean()
        ref_grads = torch.autograd.grad(ref_loss, ref_params)
        torch.testing.assert_close(loss, ref_loss)
        for got, want in zip(grads, ref_grads):
            torch.testing.assert_close(got, want)
    assert counter.frame_count == 1


def test_autocast_casts_inputs():
    images, weight, bias, pos_embed, ids_keep = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ops.masked_patch_embed(images, weight, bias, pos_embed, ids_keep)
    assert out.dtype == torch.bfloat16
    ref = masked_patch_embed_reference(images, weight, bias, pos_embed, ids_keep)
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.05)


# ----------------------------------------------------------------------------------------------
# Input validation
# ----------------------------------------------------------------------------------------------


def test_rejects_image_not_divisible_by_patch():
    images, weight, bias, _, _ = _inputs(size=16, patch=4)
    images = images[..., :15, :15]
    with pytest.raises(ValueError, match="15x15.*patch size 4"):
        ops.masked_patch_embed(images, weight, bias, torch.randn(9, 8))


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda a: {**a, "weight": a["weight"][:, :2]}, "input channels"),
        (lambda a: {**a, "bias": a["bias"][:3]}, "bias must have shape"),
        (lambda a: {**a, "pos_embed": a["pos_embed"][:3]}, "pos_embed must be"),
        (lambda a: {**a, "images": a["images"].double()}, "images dtype"),
        (lambda a: {**a, "bias": a["bias"].half()}, "bias dtype"),
        (lambda a: {**a, "ids_keep": a["ids_keep"].float()}, "ids_keep must be int32 or int64"),
        (lambda a: {**a, "ids_keep": a["ids_keep"][:1]}, "ids_keep must be"),
        (lambda a: {**a, "ids_keep": a["ids_keep"] + 16}, r"ids_keep values must be in \[0, 16\)"),
        (lambda a: {**a, "images": a["images"][0]}, "images must be"),
    ],
)
def test_rejects_bad_input(change, match):
    names = ("images", "weight", "bias", "pos_embed", "ids_keep")
    args = change(dict(zip(names, _inputs())))
    with pytest.raises(ValueError, match=match):
        ops.masked_patch_embed(**args)
