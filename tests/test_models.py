"""MixMAE: packed == separate, timm parity, the MAE loss definition, multi-task, errors, compile."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from _backends import tf32_off
from torch._dynamo.testing import CompileCounterWithBackend

from mixfast import random_masking
from mixfast.model import create_model, sincos_pos_embed
from mixfast.model.packed import _drop_path_packed

TINY = dict(img_size=16, patch_size=4, depth=2, embed_dim=32, num_heads=2)
DECODER = dict(decoder_dim=16, decoder_depth=1, decoder_heads=2)
ATOL = 1e-5


def tiny_model(**kwargs):
    config = dict(TINY, in_chans=1, num_classes=5, **DECODER)
    config.update(kwargs)
    return create_model("vit_tiny_patch16_224", **config)


def images(batch: int, chans: int = 1, size: int = 16) -> torch.Tensor:
    return torch.randn(batch, chans, size, size)


def labels(batch: int, classes: int = 5) -> torch.Tensor:
    return torch.randint(0, classes, (batch,))


def loss_and_grads(model, *args, **kwargs):
    model.zero_grad(set_to_none=True)
    loss, parts = model.forward_mixed(*args, **kwargs)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), {k: v.detach() for k, v in parts.items()}, grads


def assert_same_step(a, b, atol: float = ATOL, rtol: float = 1e-4) -> None:
    (loss_a, parts_a, grads_a), (loss_b, parts_b, grads_b) = a, b
    torch.testing.assert_close(loss_a, loss_b, atol=atol, rtol=rtol)
    assert parts_a.keys() == parts_b.keys()
    for key in parts_a:
        torch.testing.assert_close(parts_a[key], parts_b[key], atol=atol, rtol=rtol, msg=key)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=atol, rtol=rtol, msg=name)


# ------------------------------------------------------------------------------ packed path


@pytest.mark.parametrize("attention", ["varlen", "sdpa"])
@pytest.mark.parametrize("sl_view", ["full", "masked"])
@pytest.mark.parametrize(
    "n_ssl, n_sl, shared",
    [(3, 5, False), (4, 4, True), (1, 1, False), (0, 5, False), (3, 0, False)],
)
def test_packed_equals_separate(n_ssl, n_sl, shared, sl_view, attention):
    model = tiny_model(packed_attention=attention)
    sl = images(n_sl) if n_sl else None
    ssl = sl if shared else images(n_ssl)
    y = labels(n_sl) if n_sl else None
    kwargs = dict(alpha=0.3, mask_ratio=0.75, seed=7, offset=2, sl_view=sl_view)
    packed = loss_and_grads(model, ssl, sl, y, packed=True, **kwargs)
    separate = loss_and_grads(model, ssl, sl, y, packed=False, **kwargs)
    assert_same_step(packed, separate)
    assert packed[2], "no parameter got a gradient"


@pytest.mark.parametrize("attention", ["varlen", "sdpa"])
def test_packed_equals_separate_multitask_distinct_images(attention):
    model = tiny_model(task_classes=[5, 3], packed_attention=attention)
    ssl, sl = images(3), [images(4), images(2)]
    y = [labels(4, 5), labels(2, 3)]
    kwargs = dict(alpha=0.6, seed=1, task_weights=[0.25, 0.75])
    packed = loss_and_grads(model, ssl, sl, y, packed=True, **kwargs)
    separate = loss_and_grads(model, ssl, sl, y, packed=False, **kwargs)
    assert_same_step(packed, separate)
    assert "extra_heads.0.weight" in packed[2]


@pytest.mark.parametrize("shared", [True, False])
def test_mixed_parts_equal_single_forwards(shared):
    model = tiny_model()
    sl, y = images(6), labels(6)
    ssl = sl if shared else images(4)
    loss, parts = model.forward_mixed(ssl, sl, y, alpha=0.25, seed=3, offset=5)
    torch.testing.assert_close(parts["ssl"], model.forward_ssl(ssl, seed=3, offset=5))
    torch.testing.assert_close(parts["sl"], F.cross_entropy(model.forward_sl(sl), y))
    torch.testing.assert_close(parts["sl"], parts["sl_0"])
    torch.testing.assert_close(loss, 0.25 * parts["ssl"] + 0.75 * parts["sl"])
    _, parts = model.forward_mixed(ssl, sl, y, alpha=0.25, seed=3, label_smoothing=0.1)
    expected = F.cross_entropy(model.forward_sl(sl), y, label_smoothing=0.1)
    torch.testing.assert_close(parts["sl"], expected)


def test_masked_view_reads_cls_of_masked_encoding():
    model = tiny_model()
    x, y = images(5), labels(5)
    _, parts = model.forward_mixed(x, x, y, alpha=0.5, seed=2, sl_view="masked")
    masking = random_masking(5, model.num_patches, 0.75, seed=2)
    tokens = model.prepend_cls(model.embed_patches(x, masking.ids_keep))
    cls = model.encoder.norm(model.encoder.blocks(tokens))[:, 0]
    torch.testing.assert_close(parts["sl"], F.cross_entropy(model.head(cls), y))
    torch.testing.assert_close(parts["ssl"], model.forward_ssl(x, seed=2))


def test_pure_phases_through_forward_mixed():
    model = tiny_model()
    x, y = images(4), labels(4)
    loss, parts = model.forward_mixed(None, x, y, alpha=0.0, seed=0)
    torch.testing.assert_close(loss, F.cross_entropy(model.forward_sl(x), y))
    assert parts["ssl"].item() == 0.0
    loss, parts = model.forward_mixed(x, None, None, alpha=1.0, seed=0, task_weights=[0.5, 0.5])
    torch.testing.assert_close(loss, model.forward_ssl(x, seed=0))
    assert parts["sl"].item() == 0.0
    loss, _ = model.forward_mixed(x, x[:0], y[:0], alpha=1.0, seed=0)  # empty SL tensors
    torch.testing.assert_close(loss, model.forward_ssl(x, seed=0))


def test_multitask_default_weights_and_heads():
    model = tiny_model(task_classes=[5, 3, 2])
    x = images(4)
    y = [labels(4, 5), labels(4, 3), labels(4, 2)]
    loss, parts = model.forward_mixed(x, x, y, alpha=0.5, seed=0)
    ces = [F.cross_entropy(model.forward_sl(x, task=k), y[k]) for k in range(3)]
    for k in range(3):
        assert model.forward_sl(x, task=k).shape == (4, [5, 3, 2][k])
        torch.testing.assert_close(parts[f"sl_{k}"], ces[k])
    torch.testing.assert_close(parts["sl"], sum(ces) / 3)
    torch.testing.assert_close(loss, 0.5 * parts["ssl"] + 0.5 * parts["sl"])


def test_drop_path_packed_drops_whole_sequences():
    drop = timm.layers.DropPath(0.5).train()
    shapes = [(6, 5), (4, 3)]
    out = _drop_path_packed(torch.ones(6 * 5 + 4 * 3, 8), drop, shapes)
    rows = out.split([30, 12])
    for chunk, (b, length) in zip(rows, shapes):
        per_seq = chunk.view(b, length * 8)
        assert set(per_seq.unique().tolist()) <= {0.0, 2.0}
        assert (per_seq == per_seq[:, :1]).all(), "a sequence was partly dropped"
    assert _drop_path_packed(torch.ones(3, 2), drop.eval(), [(1, 3)]).eq(1).all()


def test_packed_path_trains_with_drop_path():
    model = tiny_model(drop_path_rate=0.5).train()
    x = images(4)
    loss, _ = model.forward_mixed(images(3), x, labels(4), alpha=0.5, seed=0)
    loss.backward()
    assert torch.isfinite(loss)


# ------------------------------------------------------------------------------ timm parity


def test_encoder_equals_timm_forward_features():
    model = tiny_model(in_chans=3).eval()
    x = images(3, chans=3)
    torch.testing.assert_close(
        model.forward_features(x), model.encoder.forward_features(x), atol=ATOL, rtol=1e-5
    )
    torch.testing.assert_close(model.forward_sl(x), model.encoder(x), atol=ATOL, rtol=1e-5)


def test_timm_round_trip():
    model = tiny_model().eval()
    x = images(3)
    exported = model.export_timm().eval()
    assert isinstance(exported, timm.models.VisionTransformer)
    torch.testing.assert_close(exported(x), model.forward_sl(x), atol=ATOL, rtol=1e-5)

    fresh = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, in_chans=1, num_classes=5, **TINY
    ).eval()
    fresh.load_state_dict(exported.state_dict())  # strict: key for key
    model.load_timm(fresh)
    torch.testing.assert_close(model.forward_sl(x), fresh(x), atol=ATOL, rtol=1e-5)
    assert model.encoder.state_dict().keys() == fresh.state_dict().keys()


def test_load_timm_names_mismatched_keys():
    model = tiny_model()
    other = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, in_chans=1, num_classes=7, **TINY
    )
    with pytest.raises(ValueError, match="head.weight"):
        model.load_timm(other)


def test_create_from_instance():
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, in_chans=1, **TINY)
    model = create_model(vit, num_classes=4, **DECODER)
    assert model.encoder is vit and model.forward_sl(images(2)).shape == (2, 4)
    with pytest.raises(ValueError, match="img_size"):
        create_model(vit, img_size=32)
    with pytest.raises(ValueError, match="depth"):
        create_model(vit, depth=3)


# ------------------------------------------------------------------------------ MAE loss


def mae_loss_reference(model, x, mask_ratio, seed, offset):
    """MAE by its definition, from timm's own modules; unshuffle by scatter, target by unfold."""
    vit, p = model.encoder, model.patch_size
    masking = random_masking(x.shape[0], model.num_patches, mask_ratio, seed=seed, offset=offset)
    tokens = vit.patch_embed(x) + vit.pos_embed[:, 1:]
    visible = torch.stack([tokens[b, masking.ids_keep[b]] for b in range(x.shape[0])])
    latent = torch.cat([(vit.cls_token + vit.pos_embed[:, :1]).expand(len(x), -1, -1), visible], 1)
    latent = vit.norm(vit.blocks(latent))

    dec = model.decoder_embed(latent)
    full = model.mask_token.repeat(len(x), model.num_patches, 1)
    for b in range(len(x)):
        full[b, masking.ids_keep[b]] = dec[b, 1:]
    dec = torch.cat([dec[:, :1], full], 1) + model.decoder_pos_embed
    pred = model.decoder_pred(model.decoder_norm(model.decoder_blocks(dec)))[:, 1:]

    target = F.unfold(x, kernel_size=p, stride=p).transpose(1, 2)  # [B, N, C*p*p]
    if model.norm_pix_loss:
        mean = target.mean(-1, keepdim=True)
        var = ((target - mean) ** 2).sum(-1, keepdim=True) / (target.shape[-1] - 1)
        target = (target - mean) / torch.sqrt(var + 1e-6)
    per_patch = ((pred - target) ** 2).mean(-1)
    masked = masking.mask.bool()
    assert masked.sum() == x.shape[0] * (model.num_patches - masking.ids_keep.shape[1])
    return per_patch[masked].mean()


@pytest.mark.parametrize("norm_pix_loss", [False, True])
@pytest.mark.parametrize("mask_ratio", [0.75, 0.5])
def test_mae_loss_matches_definition(norm_pix_loss, mask_ratio):
    model = tiny_model(in_chans=3, norm_pix_loss=norm_pix_loss).eval()
    x = images(3, chans=3)
    expected = mae_loss_reference(model, x, mask_ratio, seed=11, offset=4)
    loss = model.forward_ssl(x, mask_ratio, seed=11, offset=4)
    torch.testing.assert_close(loss, expected, atol=ATOL, rtol=1e-5)


def test_precomputed_masking_equals_seed_offset():
    model = tiny_model()
    x = images(3)
    masking = random_masking(3, model.num_patches, 0.5, seed=9, offset=1)
    expected = model.forward_ssl(x, 0.5, seed=9, offset=1)
    torch.testing.assert_close(model.forward_ssl(x, 0.5, masking=masking), expected)
    loss, parts = model.forward_mixed(x, None, None, alpha=1.0, mask_ratio=0.5, masking=masking)
    torch.testing.assert_close(parts["ssl"], expected)
    with pytest.raises(ValueError, match="masking must cover 2 samples"):
        model.forward_ssl(x[:2], masking=masking)
    with pytest.raises(ValueError, match="seed"):
        model.forward_ssl(x)


def test_decoder_pos_embed_is_mae_sincos():
    """MAE's get_2d_sincos_pos_embed written out: [sin w, cos w, sin h, cos h] per patch."""
    grid_h, grid_w, dim = 3, 5, 8
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows = []
    for h in range(grid_h):
        for w in range(grid_w):
            parts = [f(pos * omega) for pos in (w, h) for f in (torch.sin, torch.cos)]
            rows.append(torch.cat(parts))
    expected = torch.cat([torch.zeros(1, dim), torch.stack(rows).float()])
    torch.testing.assert_close(sincos_pos_embed(grid_h, grid_w, dim), expected)


def test_mae_masks_differ_by_seed_and_offset():
    model = tiny_model()
    x = images(2)
    base = model.forward_mae(x, seed=1, offset=0)[2]
    assert not torch.equal(base, model.forward_mae(x, seed=2, offset=0)[2])
    assert not torch.equal(base, model.forward_mae(x, seed=1, offset=1)[2])
    assert base.sum(1).eq(model.num_patches - int(model.num_patches * 0.25)).all()


# ------------------------------------------------------------------------------ errors


def test_image_size_not_divisible_by_patch():
    with pytest.raises(ValueError, match="divisible"):
        tiny_model(img_size=18)


def test_channel_and_size_mismatch():
    model = tiny_model()
    with pytest.raises(ValueError, match="in_chans"):
        model.forward_sl(images(2, chans=3))
    with pytest.raises(ValueError, match="ssl_images"):
        model.forward_mixed(images(2, size=20), images(2), labels(2), alpha=0.5, seed=0)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, 0.999])
def test_mask_ratio_out_of_range(ratio):
    model = tiny_model()
    with pytest.raises(ValueError, match="mask_ratio"):
        model.forward_ssl(images(2), ratio, seed=0)
    with pytest.raises(ValueError, match="mask_ratio"):
        model.forward_mixed(images(2), images(2), labels(2), alpha=0.5, mask_ratio=ratio, seed=0)


def test_label_out_of_range():
    model = tiny_model(task_classes=[5, 3])
    x = images(2)
    with pytest.raises(ValueError, match=r"task 1 must be in \[0, 3\)"):
        model.check_labels(torch.tensor([0, 3]), task=1)
    with pytest.raises(ValueError, match=r"task 0 must be in \[0, 5\)"):
        model.forward_mixed(x, x, torch.tensor([-1, 0]), alpha=0.5, seed=0, validate=True)
    model.check_labels(torch.tensor([0, 4]), task=0)  # in range: no error


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sl_view="half"), "sl_view"),
        (dict(task_weights=[1.0, 2.0]), "task_weights"),
    ],
)
def test_bad_mixed_arguments(kwargs, match):
    model = tiny_model()
    x = images(2)
    with pytest.raises(ValueError, match=match):
        model.forward_mixed(x, x, labels(2), alpha=0.5, seed=0, **kwargs)


def test_bad_batches():
    model = tiny_model(task_classes=[5, 3])
    x = images(2)
    with pytest.raises(ValueError, match="non-empty"):
        model.forward_mixed(None, None, None, alpha=0.5, seed=0)
    with pytest.raises(ValueError, match="one tensor per task"):
        model.forward_mixed(x, x, [labels(2)], alpha=0.5, seed=0)
    with pytest.raises(ValueError, match="shape"):
        model.forward_mixed(x, x, labels(3), alpha=0.5, seed=0)
    with pytest.raises(ValueError, match="task must be"):
        model.forward_sl(x, task=2)
    with pytest.raises(ValueError, match="packed_attention"):
        tiny_model(packed_attention="flash")


# ------------------------------------------------------------------------------ compile


def compiled_matches_eager(backend: str, steps: int, distinct: bool) -> None:
    model = tiny_model(packed_attention="varlen")  # the custom op, as on a GPU
    counter = CompileCounterWithBackend(backend)
    step = torch.compile(model.forward_mixed, fullgraph=True, backend=counter)
    sl, y, other = images(4), labels(4), images(3)

    def check(ssl, **kwargs):
        kwargs.update(alpha=torch.tensor(0.4))
        eager = loss_and_grads(model, ssl, sl, y, **kwargs)
        model.zero_grad(set_to_none=True)
        loss, parts = step(ssl, sl, y, **kwargs)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        compiled = (loss.detach(), {k: v.detach() for k, v in parts.items()}, grads)
        assert_same_step(compiled, eager, atol=1e-4)

    for offset in range(steps):  # precomputed masks: new masks every step, one graph
        check(sl, masking=random_masking(4, model.num_patches, 0.75, seed=5, offset=offset))
    assert counter.frame_count == 1
    if distinct:  # distinct SSL images, masks from seed/offset inside the graph
        check(other, seed=5, offset=3)


def test_forward_mixed_compiles_fullgraph():
    """Dynamo + AOT autograd with no graph break (fast; Inductor is the slow test below)."""
    compiled_matches_eager("aot_eager", steps=3, distinct=True)


@pytest.mark.slow
def test_forward_mixed_compiles_fullgraph_inductor():
    compiled_matches_eager("inductor", steps=1, distinct=False)


# ------------------------------------------------------------------------------ on the kernels


def step_on(device: str, model, ssl, sl, y, **kwargs):
    model.zero_grad(set_to_none=True)
    loss, parts = model.forward_mixed(ssl, sl, y, alpha=0.3, seed=4, **kwargs)
    loss.backward()
    grads = {n: p.grad.float().cpu() for n, p in model.named_parameters() if p.grad is not None}
    return (
        loss.detach().float().cpu(),
        {k: v.detach().float().cpu() for k, v in parts.items()},
        grads,
    )


@pytest.mark.triton
@pytest.mark.parametrize("shared", [True, False])
def test_packed_step_on_triton_kernels(triton_device, monkeypatch, shared):
    """The packed step with the Triton attention and patch-embed kernels (a GPU, or the
    interpreter on CPU) equals the separate path (timm SDPA blocks)."""
    monkeypatch.setenv("MIXFAST_BACKEND", "triton")
    model = tiny_model(packed_attention="varlen").to(triton_device)
    sl, y = images(4).to(triton_device), labels(4).to(triton_device)
    ssl = sl if shared else images(3).to(triton_device)
    packed = step_on(triton_device, model, ssl, sl, y, packed=True)
    separate = step_on(triton_device, model, ssl, sl, y, packed=False)
    if triton_device == "cpu":
        assert_same_step(packed, separate, atol=1e-4)
    else:  # fp32 dots of Triton may run in TF32 on a GPU
        assert_same_step(packed, separate, atol=5e-3, rtol=1e-2)


def assert_error_relative(name, got, same, exact, dtype):
    """The kernels' error against fp32 is at most 2x that of plain PyTorch in the same
    precision, plus one unit in the last place of the largest value (the kernel tests' rule,
    tests/test_attention.py): a `dtype` rounding either side may happen to round better."""
    assert torch.isfinite(got).all(), name
    kernel_err = (got - exact).abs().max().item()
    torch_err = (same - exact).abs().max().item()
    ulp = torch.finfo(dtype).eps * exact.abs().max().item()
    assert kernel_err <= 2 * torch_err + ulp, f"{name}: {kernel_err} vs torch {torch_err}"


@pytest.mark.cuda
@pytest.mark.parametrize("sl_view", ["full", "masked"])
def test_packed_step_cuda_bf16_autocast(sl_view, monkeypatch):
    """The packed step on the Triton kernels under bf16 autocast against an fp32 run, with the
    error of plain PyTorch (the separate path, reference patch embedding) under the same autocast
    as the yardstick: loss, its parts and every gradient. Same weights, images and masks."""
    pytest.importorskip("triton")
    model = tiny_model(in_chans=3).cuda()
    x, y = images(8, chans=3).cuda(), labels(8).cuda()
    bf16 = torch.autocast("cuda", dtype=torch.bfloat16)
    with tf32_off():
        monkeypatch.setenv("MIXFAST_BACKEND", "reference")  # plain PyTorch: conv, SDPA, matmuls
        exact = step_on("cuda", model, x, x, y, sl_view=sl_view, packed=False)
        with bf16:
            same = step_on("cuda", model, x, x, y, sl_view=sl_view, packed=False)
        monkeypatch.setenv("MIXFAST_BACKEND", "triton")  # the packed step on the kernels
        with bf16:
            packed = step_on("cuda", model, x, x, y, sl_view=sl_view, packed=True)
    assert_error_relative("loss", packed[0], same[0], exact[0], torch.bfloat16)
    assert packed[1].keys() == same[1].keys() == exact[1].keys()
    for key in exact[1]:
        assert_error_relative(key, packed[1][key], same[1][key], exact[1][key], torch.bfloat16)
    assert packed[2].keys() == same[2].keys() == exact[2].keys()
    for name in exact[2]:
        assert_error_relative(name, packed[2][name], same[2][name], exact[2][name], torch.bfloat16)


@pytest.mark.cuda
@pytest.mark.parametrize("shared", [True, False])
def test_mixed_step_has_no_host_sync(shared):
    model = tiny_model(in_chans=3).cuda()
    x, y = images(8, chans=3).cuda(), labels(8).cuda()
    ssl = x if shared else images(5, chans=3).cuda()
    masking = random_masking(ssl.shape[0], model.num_patches, 0.75, seed=0, device="cuda")
    alpha = torch.tensor(0.5, device="cuda")
    model.forward_mixed(ssl, x, y, alpha=alpha, masking=masking)[0].backward()  # warm up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = model.forward_mixed(ssl, x, y, alpha=alpha, masking=masking)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
