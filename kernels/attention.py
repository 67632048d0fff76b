"""Shared varlen attention: Triton forward and backward kernels and their launchers.

Layout (flash-attention's varlen convention): q, k, v [T, H, Dh] with the last dim contiguous,
`cu_seqlens` int32 [S+1], `max_seqlen` a host int. The forward saves lse [H, T] (fp32, natural
log); the backward recomputes the probabilities from it (FlashAttention-2), never a T x T matrix.

Scheduling. A ViT mix step has hundreds of short sequences (17-197 tokens) whose attention is
bandwidth- and latency-bound: the whole call moves a few tens of MB. So:
- One launch per direction and group of sequences: grid (sequences * H, tiles of the group's
  longest sequence); each program reads its own sequence's bounds from `cu_seqlens` and loops
  only over that sequence's tiles; programs past the end of a short sequence exit at once.
  Groups (`seq_groups`, flat (count, longest) pairs) come from what the host already knows,
  never from reading cu_seqlens (a device sync): a packed ViT step passes its two groups (e.g.
  256 SSL sequences of 17 tokens and 256 SL sequences of 65), so the 17-token sequences get a
  32-row tile instead of the 128 of the longest (about 3.5 % of the MMA work useful before).
  Without groups, one launch serves all with the tile of `max_seqlen`.
- Backward: a program owns one key/value tile of BLOCK_N rows (next power of two of the length,
  16 at least, at most 128). When the sequence fits that tile (every mix-step length up to 128)
  the program holds all of the sequence's keys, so while it walks the query tiles it also
  finishes each query tile's dq: dq, dk and dv in one pass, delta = rowsum(dO * O) computed on
  the fly, no atomics, no preprocess kernel, no dq accumulator. Longer sequences fall back to
  FA2 tiling without atomics: the same program then also computes dq for its own BLOCK_N query
  rows by a second loop over the key tiles (some recomputation instead of atomics).
- Launch configs (attention_configs.py): two to four spill-free candidates per (tile, head dim,
  dtype), timed once per process on the GPU at the first call (a few compiles;
  MIXFAST_AUTOTUNE=0 takes the first).
  Sequences of at most 64 tokens with at most 4 heads (ViT-Tiny's 17-token SSL sequences have
  3) also get a candidate whose program takes every head of its sequence (HEADS constexpr,
  a static loop over heads): a few times fewer, larger programs. The tuner keeps it only where
  it times faster, so one head per program stays wherever it wins.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from .attention_configs import _bwd_candidates, _fwd_candidates, _pick_config, _tile

LOG2E = math.log2(math.e)


@triton.jit
def _load_tile(base, rows, length, stride_t, offs_d, HEAD_DIM: tl.constexpr):
    """Rows `rows` (< length) of one head of a [T, H, Dh] tensor -> [len(rows), BLOCK_D]."""
    ptrs = base + rows[:, None] * stride_t + offs_d[None, :]
    mask = (rows[:, None] < length) & (offs_d[None, :] < HEAD_DIM)
    return tl.load(ptrs, mask=mask, other=0.0)


@triton.jit
def _store_tile(base, value, rows, length, stride_t, offs_d, HEAD_DIM: tl.constexpr):
    ptrs = base + rows[:, None] * stride_t + offs_d[None, :]
    mask = (rows[:, None] < length) & (offs_d[None, :] < HEAD_DIM)
    tl.store(ptrs, value.to(base.dtype.element_ty), mask=mask)


@triton.jit
def _seq_bounds(cu_seqlens, num_heads, seq_base, HEADS: tl.constexpr):
    """(first row, first head) of this program's sequence (seq_base + program / (heads / HEADS):
    a launch serves one group of sequences; a program takes HEADS consecutive heads) as int64,
    for the global offsets; its length as int32: offsets inside one sequence stay 32-bit (half
    the registers of 64-bit ones)."""
    pid = tl.program_id(0).to(tl.int64)
    head_blocks = num_heads // HEADS
    seq = seq_base + pid // head_blocks
    head = (pid % head_blocks) * HEADS
    start = tl.load(cu_seqlens + seq)
    length = tl.load(cu_seqlens + seq + 1) - start
    return start.to(tl.int64), length, head


@triton.jit
def _varlen_attn_fwd_kernel(
    Q, K, V, O, LSE, CU_SEQLENS,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    stride_lh,
    num_heads, seq_base, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    HEADS: tl.constexpr,
):  # fmt: skip
    start, length, head0 = _seq_bounds(CU_SEQLENS, num_heads, seq_base, HEADS)
    m_start = tl.program_id(1) * BLOCK_M
    if m_start >= length:
        return
    qk_scale = tl.cast(qk_scale, tl.float32)  # softmax scale * log2(e): exp2 below
    for h in tl.static_range(HEADS):
        _fwd_head(
            Q, K, V, O, LSE, start, length, head0 + h, m_start,
            stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
            stride_lh, qk_scale, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, INPUT_PRECISION,
        )  # fmt: skip


@triton.jit
def _fwd_head(
    Q, K, V, O, LSE, start, length, head, m_start,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    stride_lh, qk_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Output and lse of one head's query rows [m_start, m_start + BLOCK_M) of one sequence."""
    q_base = Q + start * stride_qt + head * stride_qh
    k_base = K + start * stride_kt + head * stride_kh
    v_base = V + start * stride_vt + head * stride_vh
    offs_m = m_start + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_tile(q_base, offs_m, length, stride_qt, offs_d, HEAD_DIM)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for n_start in range(0, length, BLOCK_N):
        cols = n_start + offs_n
        k = _load_tile(k_base, cols, length, stride_kt, offs_d, HEAD_DIM)
        v = _load_tile(v_base, cols, length, stride_vt, offs_d, HEAD_DIM)
        s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION) * qk_scale
        s = tl.where(cols[None, :] < length, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=INPUT_PRECISION)
        m_i = m_new

    acc = acc / l_i[:, None]
    o_base = O + start * stride_ot + head * stride_oh
    _store_tile(o_base, acc, offs_m, length, stride_ot, offs_d, HEAD_DIM)
    lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453  # log2 -> natural log
    tl.store(LSE + head * stride_lh + start + offs_m, lse, mask=offs_m < length)


@triton.jit
def _probs_t(k, q, lse2, rows, cols, length, qk_scale, INPUT_PRECISION: tl.constexpr):
    """P^T [BLOCK_N, BLOCK_M] for key rows `cols` and query rows `rows` (0 outside)."""
    st = tl.dot(k, tl.trans(q), input_precision=INPUT_PRECISION) * qk_scale
    pt = tl.math.exp2(st - lse2[None, :])
    valid = (cols[:, None] < length) & (rows[None, :] < length)
    return tl.where(valid, pt, 0.0)


@triton.jit
def _load_row_stats(lse_base, o_base, do, rows, length, stride_ot, offs_d, HEAD_DIM: tl.constexpr):
    """lse in log2 units and delta = rowsum(dO * O) for query rows `rows`."""
    o = _load_tile(o_base, rows, length, stride_ot, offs_d, HEAD_DIM)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    lse2 = tl.load(lse_base + rows, mask=rows < length, other=0.0) * 1.4426950408889634
    return lse2, delta


@triton.jit
def _varlen_attn_bwd_kernel(
    Q, K, V, O, DO, LSE, DQ, DK, DV, CU_SEQLENS,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    stride_dot, stride_doh, stride_dqt, stride_dqh, stride_dkt, stride_dkh, stride_dvt, stride_dvh,
    stride_lh,
    num_heads, seq_base, softmax_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    HEADS: tl.constexpr,
):  # fmt: skip
    start, length, head0 = _seq_bounds(CU_SEQLENS, num_heads, seq_base, HEADS)
    n_start = tl.program_id(1) * BLOCK_N
    if n_start >= length:
        return
    softmax_scale = tl.cast(softmax_scale, tl.float32)
    for h in tl.static_range(HEADS):
        _bwd_head(
            Q, K, V, O, DO, LSE, DQ, DK, DV, start, length, head0 + h, n_start,
            stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
            stride_dot, stride_doh, stride_dqt, stride_dqh, stride_dkt, stride_dkh, stride_dvt,
            stride_dvh, stride_lh, softmax_scale,
            HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, INPUT_PRECISION,
        )  # fmt: skip


@triton.jit
def _bwd_head(
    Q, K, V, O, DO, LSE, DQ, DK, DV, start, length, head, n_start,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    stride_dot, stride_doh, stride_dqt, stride_dqh, stride_dkt, stride_dkh, stride_dvt, stride_dvh,
    stride_lh, softmax_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):  # fmt: skip
    """dk, dv of one head's key rows [n_start, n_start + BLOCK_N) of one sequence, and dq of
    the rows it completes (all of them when the sequence fits the key tile)."""
    qk_scale = softmax_scale * 1.4426950408889634
    q_base = Q + start * stride_qt + head * stride_qh
    k_base = K + start * stride_kt + head * stride_kh
    v_base = V + start * stride_vt + head * stride_vh
    o_base = O + start * stride_ot + head * stride_oh
    do_base = DO + start * stride_dot + head * stride_doh
    dq_base = DQ + start * stride_dqt + head * stride_dqh
    lse_base = LSE + head * stride_lh + start
    offs_d = tl.arange(0, BLOCK_D)
    offs_m = tl.arange(0, BLOCK_M)
    cols = n_start + tl.arange(0, BLOCK_N)
    k = _load_tile(k_base, cols, length, stride_kt, offs_d, HEAD_DIM)
    v = _load_tile(v_base, cols, length, stride_vt, offs_d, HEAD_DIM)
    # The whole sequence's keys are in this tile: each query tile's dq is complete in one visit.
    whole = length <= BLOCK_N

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for m_start in range(0, length, BLOCK_M):
        rows = m_start + offs_m
        q = _load_tile(q_base, rows, length, stride_qt, offs_d, HEAD_DIM)
        do = _load_tile(do_base, rows, length, stride_dot, offs_d, HEAD_DIM)
        lse2, delta = _load_row_stats(
            lse_base, o_base, do, rows, length, stride_ot, offs_d, HEAD_DIM
        )
        pt = _probs_t(k, q, lse2, rows, cols, length, qk_scale, INPUT_PRECISION)
        dv = tl.dot(pt.to(do.dtype), do, dv, input_precision=INPUT_PRECISION)
        dpt = tl.dot(v, tl.trans(do), input_precision=INPUT_PRECISION)
        dst = (pt * (dpt - delta[None, :])).to(q.dtype)
        dk = tl.dot(dst, q, dk, input_precision=INPUT_PRECISION)
        if whole:
            dq = tl.dot(tl.trans(dst), k, input_precision=INPUT_PRECISION) * softmax_scale
            _store_tile(dq_base, dq, rows, length, stride_dqt, offs_d, HEAD_DIM)

    dk_base = DK + start * stride_dkt + head * stride_dkh
    dv_base = DV + start * stride_dvt + head * stride_dvh
    _store_tile(dk_base, dk * softmax_scale, cols, length, stride_dkt, offs_d, HEAD_DIM)
    _store_tile(dv_base, dv, cols, length, stride_dvt, offs_d, HEAD_DIM)
    if length > BLOCK_N:
        # Tiled fallback: dq of this program's own BLOCK_N query rows, over every key tile.
        for m_start in range(n_start, tl.minimum(n_start + BLOCK_N, length), BLOCK_M):
            _dq_rows(
                q_base, k_base, v_base, o_base, do_base, dq_base, lse_base, m_start,
                length, stride_qt, stride_kt, stride_vt, stride_ot, stride_dot, stride_dqt,
                qk_scale, softmax_scale, HEAD_DIM, BLOCK_D, BLOCK_M, BLOCK_N, INPUT_PRECISION,
            )  # fmt: skip


@triton.jit
def _dq_rows(
    q_base, k_base, v_base, o_base, do_base, dq_base, lse_base, m_start,
    length, stride_qt, stride_kt, stride_vt, stride_ot, stride_dot, stride_dqt,
    qk_scale, softmax_scale,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, INPUT_PRECISION: tl.constexpr,
):  # fmt: skip
    """dq for query rows [m_start, m_start + BLOCK_M), looping over all key tiles."""
    offs_d = tl.arange(0, BLOCK_D)
    rows = m_start + tl.arange(0, BLOCK_M)
    q = _load_tile(q_base, rows, length, stride_qt, offs_d, HEAD_DIM)
    do = _load_tile(do_base, rows, length, stride_dot, offs_d, HEAD_DIM)
    lse2, delta = _load_row_stats(lse_base, o_base, do, rows, length, stride_ot, offs_d, HEAD_DIM)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for n_start in range(0, length, BLOCK_N):
        cols = n_start + tl.arange(0, BLOCK_N)
        k = _load_tile(k_base, cols, length, stride_kt, offs_d, HEAD_DIM)
        v = _load_tile(v_base, cols, length, stride_vt, offs_d, HEAD_DIM)
        pt = _probs_t(k, q, lse2, rows, cols, length, qk_scale, INPUT_PRECISION)
        dpt = tl.dot(v, tl.trans(do), input_precision=INPUT_PRECISION)
        dst = (pt * (dpt - delta[None, :])).to(q.dtype)
        dq = tl.dot(tl.trans(dst), k, dq, input_precision=INPUT_PRECISION)
    _store_tile(dq_base, dq * softmax_scale, rows, length, stride_dqt, offs_d, HEAD_DIM)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------


def launch_groups(
    seq_groups: list[int] | None, num_seqs: int, max_seqlen: int
) -> list[tuple[int, int, int]]:
    """(first sequence, sequences, longest length) of each launch. `seq_groups` lists
    consecutive groups of sequences as flat (count, longest length) pairs, known on the host
    (a packed ViT step: its SSL and its SL sequences); each group gets its own launch and the
    tile of its own length (neighbours with the same tile share a launch). None or []: one
    launch for all, with the tile of max_seqlen."""
    if not seq_groups:
        return [(0, num_seqs, max_seqlen)]
    groups, first = [], 0
    for count, longest in zip(seq_groups[::2], seq_groups[1::2]):
        if (
            groups
            and _tile(longest) == _tile(groups[-1][2])
            and groups[-1][0] + groups[-1][1] == first
        ):
            start, size, most = groups[-1]
            groups[-1] = (start, size + count, max(most, longest))
        elif count and longest:
            groups.append((first, count, longest))
        first += count
    return groups


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs get true fp32 products (the tests hold them to tight tolerances), not tf32:
    # an exact, slower path (smaller tiles, some register spills); train in bf16/fp16.
    return "ieee" if dtype == torch.float32 else "tf32"


def _run_config(config: dict, interpret: bool) -> dict:
    """Launch options: num_warps only means something on a GPU."""
    if interpret:
        return {k: v for k, v in config.items() if k != "num_warps"}
    return config


def _block_d(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


def varlen_attn_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    softmax_scale: float,
    seq_groups: list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """out [T, H, Dh] contiguous and lse [H, T] fp32 (natural log). `seq_groups`: see
    launch_groups."""
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    cu_seqlens = cu_seqlens.contiguous()
    total, heads, head_dim = q.shape
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((heads, total), dtype=torch.float32, device=q.device)
    num_seqs = cu_seqlens.shape[0] - 1
    if total == 0 or num_seqs == 0 or max_seqlen == 0:
        return out, lse

    def launch(config: dict, first: int, count: int, longest: int) -> None:
        grid = (count * heads // config["HEADS"], triton.cdiv(longest, config["BLOCK_M"]))
        _varlen_attn_fwd_kernel[grid](
            q, k, v, out, lse, cu_seqlens,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            out.stride(0), out.stride(1), lse.stride(0),
            heads, first, softmax_scale * LOG2E,
            HEAD_DIM=head_dim, BLOCK_D=_block_d(head_dim), INPUT_PRECISION=_precision(q.dtype),
            **_run_config(config, not q.is_cuda),
        )  # fmt: skip

    for first, count, longest in launch_groups(seq_groups, num_seqs, max_seqlen):
        tile = _tile(longest)
        key = ("fwd", tile, head_dim, q.dtype, q.device, heads)
        group = functools.partial(launch, first=first, count=count, longest=longest)
        candidates = _fwd_candidates(tile, head_dim, q.dtype, heads)
        group(_pick_config(key, candidates, group, q.is_cuda))
    return out, lse


def varlen_attn_bwd(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    softmax_scale: float,
    grads: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    seq_groups: list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv, contiguous, or written into `grads` (three [T, H, Dh] tensors with the last
    dim contiguous, e.g. dqkv.unbind(1)). grad_out may be any view (e.g. expanded, stride 0)."""
    q, k, v, out = (_last_dim_contiguous(t) for t in (q, k, v, out))
    grad_out = grad_out.to(q.dtype).contiguous()
    lse, cu_seqlens = lse.contiguous(), cu_seqlens.contiguous()
    if grads is None:
        grads = tuple(torch.empty(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
    dq, dk, dv = grads
    total, heads, head_dim = q.shape
    num_seqs = cu_seqlens.shape[0] - 1
    if total == 0 or num_seqs == 0 or max_seqlen == 0:
        return dq, dk, dv

    def launch(config: dict, first: int, count: int, longest: int) -> None:
        grid = (count * heads // config["HEADS"], triton.cdiv(longest, config["BLOCK_N"]))
        _varlen_attn_bwd_kernel[grid](
            q, k, v, out, grad_out, lse, dq, dk, dv, cu_seqlens,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
            out.stride(0), out.stride(1), grad_out.stride(0), grad_out.stride(1),
            dq.stride(0), dq.stride(1), dk.stride(0), dk.stride(1), dv.stride(0), dv.stride(1),
            lse.stride(0),
            heads, first, softmax_scale,
            HEAD_DIM=head_dim, BLOCK_D=_block_d(head_dim), INPUT_PRECISION=_precision(q.dtype),
            **_run_config(config, not q.is_cuda),
        )  # fmt: skip

    for first, count, longest in launch_groups(seq_groups, num_seqs, max_seqlen):
        tile = _tile(longest)
        key = ("bwd", tile, head_dim, q.dtype, q.device, heads)
        group = functools.partial(launch, first=first, count=count, longest=longest)
        candidates = _bwd_candidates(tile, head_dim, q.dtype, heads)
        group(_pick_config(key, candidates, group, q.is_cuda))
    return dq, dk, dv
