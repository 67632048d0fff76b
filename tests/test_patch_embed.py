"""masked_patch_embed / packed_patch_embed: reference parity with timm, the custom ops under
opcheck and torch.compile, and the Triton kernels (marked `triton`) against the reference."""

from __future__ import annotations

import pytest
import torch
from _backends import tf32_off
from timm.layers import PatchEmbed
from torch._dynamo.testing import CompileCounterWithBackend

from mixfast import ops
from mixfast.ops._backend import interpreter_on
from mixfast.ops.reference import masked_patch_embed_reference

DTYPE_TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-3}


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


def _mix_layout(batch, num_patches, keep):
    """Row offsets of the mix-step packing: [cls, N patches] x B, then [cls, K kept] x B."""
    full = torch.arange(batch) * (num_patches + 1) + 1
    kept = batch * (num_patches + 1) + torch.arange(batch) * (keep + 1) + 1
    return full, kept, batch * (num_patches + 2 + keep)


def packed_oracle(images, weight, bias, pos_embed, ids_keep, full_offsets, keep_offsets, rows):
    """Independent packed oracle: per image, copy its reference tokens into their rows."""
    tokens = masked_patch_embed_reference(images, weight, bias, pos_embed)
    out = tokens.new_zeros(rows, tokens.shape[-1])
    for b in range(images.shape[0]):
        if full_offsets is not None and full_offsets[b] >= 0:
            start = int(full_offsets[b])
            rows_b = torch.arange(start, start + tokens.shape[1], device=out.device)
            out = out.index_copy(0, rows_b, tokens[b])
        if keep_offsets is not None and keep_offsets[b] >= 0:
            start = int(keep_offsets[b])
            rows_b = torch.arange(start, start + ids_keep.shape[1], device=out.device)
            out = out.index_copy(0, rows_b, tokens[b, ids_keep[b]])
    return out


def _assert_op_matches(run, oracle, params, atol=1e-4, rtol=1e-4):
    """run/oracle take (weight, bias, pos_embed); compares outputs and all three gradients."""
    got_params, ref_params = _params(*params), _params(*params)
    out, ref = run(*got_params), oracle(*ref_params)
    torch.testing.assert_close(out, ref, atol=atol, rtol=rtol)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    for got, want in zip(got_params, ref_params):
        torch.testing.assert_close(got.grad, want.grad, atol=atol, rtol=rtol)


# ----------------------------------------------------------------------------------------------
# Reference path and the op (CPU)
# ----------------------------------------------------------------------------------------------


def timm_oracle(images, weight, bias, pos_embed, ids_keep=None):
    """Independent of mixfast: timm's PatchEmbed (its conv run with these weights, so autograd
    reaches them), the pos-embed added, the kept tokens gathered -> [B, K or N, D]."""
    dim, channels, patch = weight.shape[0], weight.shape[1], weight.shape[-1]
    embed = PatchEmbed(images.shape[-1], patch, channels, dim).to(images.device)
    params = {"proj.weight": weight, "proj.bias": bias}
    tokens = torch.func.functional_call(embed, params, (images,)) + pos_embed  # [B, N, D]
    if ids_keep is None:
        return tokens
    return torch.gather(tokens, 1, ids_keep[..., None].expand(-1, -1, dim))


# (batch, channels, size, patch, dim, keep): odd D, odd grids (3x3, 5x5), B = 1, K = 1, K = N
TIMM_SHAPES = [
    (3, 3, 16, 4, 40, 5),
    (1, 1, 28, 7, 40, 1),
    (3, 1, 28, 4, 24, 13),
    (2, 3, 21, 7, 37, 4),
    (2, 1, 15, 3, 9, 25),
    (2, 3, 32, 8, 40, 16),
]


def _check_against_timm(shape, device):
    """The masked op (kept tokens and all tokens) and the packed op against timm: forward and
    the gradients of weight, bias and pos_embed."""
    batch, channels, size, patch, dim, keep = shape
    images, weight, bias, pos_embed, ids_keep = _inputs(
        batch, channels, size, patch, dim, keep, device=device
    )
    params = (weight, bias, pos_embed)
    for ids in (ids_keep, None):
        run = lambda *p, ids=ids: ops.masked_patch_embed(images, *p, ids)
        oracle = lambda *p, ids=ids: timm_oracle(images, *p, ids)
        _assert_op_matches(run, oracle, params)
    num_patches = (size // patch) ** 2
    full, kept, rows = (
        t if isinstance(t, int) else t.to(device) for t in _mix_layout(batch, num_patches, keep)
    )

    def run_packed(*p):
        return ops.packed_patch_embed(
            images, *p, rows, ids_keep=ids_keep, full_offsets=full, keep_offsets=kept
        )

    def timm_packed(*p):  # the packing by hand: [cls, N tokens] x B, then [cls, K kept] x B
        out = torch.zeros(rows, dim, device=device)
        for offsets, tokens in (
            (full, timm_oracle(images, *p)),
            (kept, timm_oracle(images, *p, ids_keep)),
        ):
            index = (offsets[:, None] + torch.arange(tokens.shape[1], device=device)).reshape(-1)
            out = out.index_put((index,), tokens.reshape(-1, dim))
        return out

    _assert_op_matches(run_packed, timm_packed, params)


@pytest.mark.parametrize("shape", TIMM_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_op_matches_timm_patch_embed(shape):
    """On CPU the op runs the reference path: checked here against timm, not against itself."""
    _check_against_timm(shape, "cpu")


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


def _opcheck_backward_op(device="cpu"):
    images, weight, _, _, ids_keep = _inputs(device=device)
    for ids, length in ((ids_keep, ids_keep.shape[1]), (None, 16)):
        grad = torch.randn(images.shape[0], length, weight.shape[0], device=device)
        args = (grad, images, weight, ids)
        torch.library.opcheck(torch.ops.mixfast.patch_embed_backward.default, args)


def test_backward_op_opcheck():
    _opcheck_backward_op()


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


def _check_empty(batch, keep, device="cpu"):
    images, weight, bias, pos_embed, ids_keep = _inputs(batch=batch, keep=keep, device=device)
    weight, bias, pos_embed = _params(weight, bias, pos_embed)
    out = ops.masked_patch_embed(images, weight, bias, pos_embed, ids_keep)
    assert out.shape == (batch, keep, 8)
    offsets = torch.arange(batch, device=device) * (keep + 1) + 1
    packed = ops.packed_patch_embed(
        images, weight, bias, pos_embed, batch * (keep + 1), ids_keep=ids_keep, keep_offsets=offsets
    )
    assert packed.abs().sum() == 0
    grads = torch.autograd.grad(out.sum() + packed.sum(), (weight, bias, pos_embed))
    assert all(g.abs().sum() == 0 for g in grads)


@pytest.mark.parametrize("batch,keep", [(0, 3), (2, 0)])
def test_empty_batch_or_no_kept_patch(batch, keep):
    _check_empty(batch, keep)


def test_autocast_casts_inputs():
    images, weight, bias, pos_embed, ids_keep = _inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ops.masked_patch_embed(images, weight, bias, pos_embed, ids_keep)
    assert out.dtype == torch.bfloat16
    ref = masked_patch_embed_reference(images, weight, bias, pos_embed, ids_keep)
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.05)


def test_autocast_under_compile_keeps_fp32_param_grads():
    images, weight, bias, pos_embed, ids_keep = _inputs()
    weight, bias, pos_embed = _params(weight, bias, pos_embed)

    offsets = torch.tensor([0, 5])  # the 2 x 5 kept tokens back to back: rows 0-9

    @torch.compile(backend="aot_eager", fullgraph=True)
    def step(images, weight, bias, pos_embed, ids_keep, offsets):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            kept = ops.masked_patch_embed(images, weight, bias, pos_embed, ids_keep)
            rows = ops.packed_patch_embed(
                images, weight, bias, pos_embed, 10, ids_keep=ids_keep, keep_offsets=offsets
            )
        return kept, rows

    kept, rows = step(images, weight, bias, pos_embed, ids_keep, offsets)
    assert kept.dtype == rows.dtype == torch.bfloat16
    torch.testing.assert_close(rows, kept.reshape(10, 8), atol=0, rtol=0)
    (kept.float().sum() + rows.float().sum()).backward()
    assert weight.grad.dtype == torch.float32 and pos_embed.grad.dtype == torch.float32


PACKED_CASES = ["full+keep", "full", "keep", "skips"]


def _packed_case(case, batch, num_patches, keep):
    full, kept, rows = _mix_layout(batch, num_patches, keep)
    if case == "full":
        return full, None, rows
    if case == "keep":
        return None, kept - batch * (num_patches + 1), batch * (keep + 1)
    if case == "skips":  # image 0 has no full view, image 1 no kept view
        full, kept = full.clone(), kept.clone()
        full[0], kept[1 % batch] = -1, -1
    return full, kept, rows


@pytest.mark.parametrize("case", PACKED_CASES)
def test_packed_reference_path(case):
    images, weight, bias, pos_embed, ids_keep = _inputs(batch=3, dim=40, keep=5)
    full, kept, rows = _packed_case(case, 3, 16, 5)

    def run(*params):
        return ops.packed_patch_embed(
            images, *params, rows, ids_keep=ids_keep, full_offsets=full, keep_offsets=kept
        )

    oracle = lambda *params: packed_oracle(images, *params, ids_keep, full, kept, rows)
    _assert_op_matches(run, oracle, (weight, bias, pos_embed))


@pytest.mark.parametrize("case", ["full+keep", "keep"])
def test_packed_opcheck(case):
    images, weight, bias, pos_embed, ids_keep = _inputs(batch=2)
    full, kept, rows = _packed_case(case, 2, 16, 5)
    weight, bias, pos_embed = _params(weight, bias, pos_embed)
    args = (images, weight, bias, pos_embed, ids_keep, full, kept, rows)
    torch.library.opcheck(torch.ops.mixfast.packed_patch_embed.default, args)


def test_packed_compile_fullgraph_no_recompile_on_batch_change():
    counter = CompileCounterWithBackend("aot_eager")

    @torch.compile(backend=counter, fullgraph=True)
    def step(images, weight, bias, pos_embed, ids_keep):
        batch, num_patches, keep = images.shape[0], pos_embed.shape[0], ids_keep.shape[1]
        full = torch.arange(batch) * (num_patches + 1) + 1
        kept = batch * (num_patches + 1) + torch.arange(batch) * (keep + 1) + 1
        rows = batch * (num_patches + 2 + keep)
        x = ops.packed_patch_embed(
            images,
            weight,
            bias,
            pos_embed,
            rows,
            ids_keep=ids_keep,
            full_offsets=full,
            keep_offsets=kept,
        )
        return x.square().mean()

    _, weight, bias, pos_embed, _ = _inputs()
    weight, bias, pos_embed = _params(weight, bias, pos_embed)
    for batch in (2, 3, 5):
        images, *_, ids_keep = _inputs(batch=batch)
        torch._dynamo.mark_dynamic(images, 0)
        torch._dynamo.mark_dynamic(ids_keep, 0)
        loss = step(images, weight, bias, pos_embed, ids_keep)
        grads = torch.autograd.grad(loss, (weight, bias, pos_embed))
        ref_params = _params(weight, bias, pos_embed)
        full, kept, rows = _mix_layout(batch, 16, 5)
        ref = packed_oracle(images, *ref_params, ids_keep, full, kept, rows).square().mean()
        torch.testing.assert_close(loss, ref)
        for got, want in zip(grads, torch.autograd.grad(ref, ref_params)):
            torch.testing.assert_close(got, want)
    assert counter.frame_count == 1


# ----------------------------------------------------------------------------------------------
# Triton kernels (CUDA, or CPU under TRITON_INTERPRET=1) against the reference
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def force_triton(monkeypatch):
    """Run the op bodies on the Triton kernels whatever MIXFAST_BACKEND says outside, against
    an fp32 reference that does not use TF32 (cuDNN convs do by default)."""
    monkeypatch.setenv("MIXFAST_BACKEND", "triton")
    with tf32_off():
        yield


# (batch, channels, size, patch, dim, keep): C*p*p = 48, 49, 16, 147, 192; odd D; B = 1; K = 1
TRITON_SHAPES = [
    (2, 3, 16, 4, 40, 5),
    (1, 1, 28, 7, 40, 1),
    (3, 1, 28, 4, 24, 13),
    (2, 3, 21, 7, 40, 4),
    (2, 3, 64, 8, 40, 16),
]


@pytest.mark.triton
@pytest.mark.parametrize("shape", TRITON_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("with_ids", [True, False], ids=["kept", "all"])
def test_triton_masked_matches_reference(shape, with_ids, triton_device, force_triton):
    batch, channels, size, patch, dim, keep = shape
    images, weight, bias, pos_embed, ids_keep = _inputs(
        batch, channels, size, patch, dim, keep, device=triton_device
    )
    ids_keep = ids_keep if with_ids else None
    run = lambda *params: ops.masked_patch_embed(images, *params, ids_keep)
    oracle = lambda *params: masked_patch_embed_reference(images, *params, ids_keep)
    _assert_op_matches(run, oracle, (weight, bias, pos_embed))


@pytest.mark.triton
@pytest.mark.parametrize(
    "shape", [TIMM_SHAPES[1], TIMM_SHAPES[3]], ids=lambda s: "x".join(map(str, s))
)
def test_triton_matches_timm_patch_embed(shape, triton_device, force_triton):
    """The kernels against timm directly (the tests above check them against the reference)."""
    _check_against_timm(shape, triton_device)


@pytest.mark.triton
@pytest.mark.parametrize("case", PACKED_CASES)
def test_triton_packed_matches_reference(case, triton_device, force_triton):
    images, weight, bias, pos_embed, ids_keep = _inputs(3, 3, 28, 7, 40, 4, device=triton_device)
    full, kept, rows = (
        t if isinstance(t, int) or t is None else t.to(triton_device)
        for t in _packed_case(case, 3, 16, 4)
    )

    def run(*params):
        return ops.packed_patch_embed(
            images, *params, rows, ids_keep=ids_keep, full_offsets=full, keep_offsets=kept
        )

    oracle = lambda *params: packed_oracle(images, *params, ids_keep, full, kept, rows)
    _assert_op_matches(run, oracle, (weight, bias, pos_embed))


@pytest.mark.triton
def test_triton_strided_images_and_int32_ids(triton_device, force_triton):
    images, weight, bias, pos_embed, ids_keep = _inputs(2, 3, 16, 4, 40, 6, device=triton_device)
    images = images.to(memory_format=torch.channels_last)
    ids_keep = ids_keep.int()
    run = lambda *params: ops.masked_patch_embed(images, *params, ids_keep)
    oracle = lambda *params: masked_patch_embed_reference(images, *params, ids_keep.long())
    _assert_op_matches(run, oracle, (weight, bias, pos_embed))


@pytest.mark.triton
@pytest.mark.parametrize("batch,keep", [(0, 3), (2, 0)])
def test_triton_empty_batch_or_no_kept_patch(batch, keep, triton_device, force_triton):
    _check_empty(batch, keep, triton_device)


@pytest.mark.triton
def test_triton_ops_opcheck(triton_device, force_triton):
    images, weight, bias, pos_embed, ids_keep = _inputs(device=triton_device)
    full, kept, rows = _mix_layout(2, 16, 5)
    full, kept = full.to(triton_device), kept.to(triton_device)
    weight, bias, pos_embed = _params(weight, bias, pos_embed)
    torch.library.opcheck(
        torch.ops.mixfast.masked_patch_embed.default, (images, weight, bias, pos_embed, ids_keep)
    )
    packed_args = (images, weight, bias, pos_embed, ids_keep, full, kept, rows)
    torch.library.opcheck(torch.ops.mixfast.packed_patch_embed.default, packed_args)
    _opcheck_backward_op(triton_device)


@pytest.mark.triton
def test_triton_kernel_is_the_one_running(triton_device, force_triton):
    from mixfast.kernels import patch_embed as kernels

    images, weight, bias, pos_embed, ids_keep = _inputs(device=triton_device)
    direct = kernels.masked_patch_embed_fwd(images, weight, bias, pos_embed, ids_keep)
    torch.testing.assert_close(
        direct, masked_patch_embed_reference(images, weight, bias, pos_embed, ids_keep)
    )
    torch.testing.assert_close(
        ops.masked_patch_embed(images, weight, bias, pos_embed, ids_keep), direct, atol=0, rtol=0
    )


@pytest.mark.triton
def test_triton_op_compiles_fullgraph(triton_device, force_triton):
    images, weight, bias, pos_embed, ids_keep = _inputs(device=triton_device)
    step = torch.compile(
        lambda *a: ops.masked_patch_embed(*a).square().mean(), backend="aot_eager", fullgraph=True
    )
    run = lambda *params: step(images, *params, ids_keep)
    oracle = lambda *params: masked_patch_embed_reference(images, *params, ids_keep).square().mean()
    _assert_op_matches(run, oracle, (weight, bias, pos_embed))


_INT_ARGS = (
    "num_tokens num_rows num_patches length tokens_per_split grid_w dim kdim "
    "stride_b stride_c stride_h"
).split()


def _compile_for_sm90(kernel, dtype: str, constexprs: dict) -> str:
    """PTX of `kernel` compiled offline for sm_90 (no GPU needed), args specialized as a real
    launch on contiguous images would be (stride_w = 1, strides and pointers 16-aligned)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = kernel.arg_names
    constexprs = dict(constexprs, stride_w=1)
    types = {n: "i32" for n in _INT_ARGS}
    types.update(ids_ptr="*i64", off_a_ptr="*i64", slot_ptr="*i64", off_b_ptr="*i64")
    types.update(dw_ptr="*fp32")
    signature = {n: "constexpr" if n in constexprs else types.get(n, f"*{dtype}") for n in names}
    aligned = [
        n for n in names if n.endswith("_ptr") or n.startswith("stride") or n in ("dim", "kdim")
    ]
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in aligned if n not in constexprs}
    source = ASTSource(
        fn=kernel,
        signature=signature,
        constexprs={(names.index(n),): v for n, v in constexprs.items()},
        attrs=attrs,
    )
    compiled = triton.compile(
        source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4, num_stages=3)
    )
    return compiled.asm["ptx"]


@pytest.mark.parametrize(
    "kernel,dtype,flags",
    [
        ("fwd", "bf16", dict(PATCH=16, PATCH_FROM_IDS=True, HAS_OFF_A=False, HAS_SLOT=False)),
        ("fwd", "fp16", dict(PATCH=8, PATCH_FROM_IDS=False, HAS_OFF_A=True, HAS_SLOT=True)),
        ("fwd", "fp32", dict(PATCH=7, PATCH_FROM_IDS=True, HAS_OFF_A=True, HAS_SLOT=False)),
        ("dw", "bf16", dict(PATCH=16, PATCH_FROM_IDS=True)),
        ("dw", "fp32", dict(PATCH=4, PATCH_FROM_IDS=False)),
    ],
)
def test_kernels_compile_for_sm90_with_tensor_cores(kernel, dtype, flags):
    """The interpreter runs no GPU compiler: this catches kernels that would not compile."""
    if interpreter_on():
        pytest.skip("the compiler is not used under TRITON_INTERPRET=1")
    pytest.importorskip("triton.backends.nvidia")
    from mixfast.kernels import patch_embed as kernels

    fn = kernels._patch_embed_fwd_kernel if kernel == "fwd" else kernels._patch_embed_bwd_dw_kernel
    blocks = dict(BLOCK_T=64, BLOCK_D=64, BLOCK_K=64, IEEE=dtype == "fp32")
    ptx = _compile_for_sm90(fn, dtype, dict(flags, **blocks))
    if dtype != "fp32":  # bf16/fp16 must run on the tensor cores (Hopper: wgmma)
        assert "wgmma.mma_async" in ptx


def _error_relative_check(got, ref_lowp, ref_fp32, dtype):
    """The kernel's error against fp32 is at most ~2x that of the same-precision torch path."""
    err = (got.float() - ref_fp32).abs().max().item()
    base = (ref_lowp.float() - ref_fp32).abs().max().item()
    assert err <= 2 * base + DTYPE_TOL[dtype], (err, base)


@pytest.mark.triton
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "shape", [(64, 3, 64, 8, 192, 16), (8, 3, 224, 16, 192, 49), (4, 1, 28, 7, 40, 7)]
)
def test_triton_low_precision_cuda(dtype, shape, force_triton):
    batch, channels, size, patch, dim, keep = shape
    inputs = _inputs(batch, channels, size, patch, dim, keep, device="cuda")
    ids_keep = inputs[-1]
    fp32 = [t.detach().clone().requires_grad_(True) for t in inputs[1:4]]
    lowp = [t.to(dtype).requires_grad_(True) for t in inputs[1:4]]
    mine = [t.to(dtype).requires_grad_(True) for t in inputs[1:4]]
    images = inputs[0]
    ref_fp32 = masked_patch_embed_reference(images, *fp32, ids_keep)
    ref_lowp = masked_patch_embed_reference(images.to(dtype), *lowp, ids_keep)
    got = ops.masked_patch_embed(images.to(dtype), *mine, ids_keep)
    _error_relative_check(got, ref_lowp, ref_fp32, dtype)
    grad = torch.randn_like(ref_fp32)
    ref_fp32.backward(grad)
    ref_lowp.backward(grad.to(dtype))
    got.backward(grad.to(dtype))
    for m, lo, hi in zip(mine, lowp, fp32):
        scale = hi.grad.abs().max().item()
        _error_relative_check(m.grad / scale, lo.grad / scale, hi.grad / scale, dtype)


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


def test_rejects_bad_packed_input():
    images, weight, bias, pos_embed, ids_keep = _inputs(batch=2)
    full, kept, rows = _mix_layout(2, 16, 5)
    call = lambda **kw: ops.packed_patch_embed(images, weight, bias, pos_embed, rows, **kw)
    with pytest.raises(ValueError, match="give full_offsets, keep_offsets or both"):
        call(ids_keep=ids_keep)
    with pytest.raises(ValueError, match="keep_offsets needs ids_keep"):
        call(keep_offsets=kept)
    with pytest.raises(ValueError, match=r"full_offsets must have shape \[2\]"):
        call(full_offsets=full[:1])
    with pytest.raises(ValueError, match="full_offsets values must be in"):
        call(full_offsets=full + rows)
    with pytest.raises(ValueError, match="keep_offsets values must be in"):
        call(ids_keep=ids_keep, keep_offsets=kept - 10 * rows)
    with pytest.raises(ValueError, match="total_rows must be >= 0"):
        ops.packed_patch_embed(images, weight, bias, pos_embed, -1, full_offsets=full)
