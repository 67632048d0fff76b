"""mixfast.random_masking: the C++ kernel against the PyTorch oracle bit for bit, MAE semantics,
determinism, uniformity (chi-square), errors, the fallback path and torch.compile."""

from __future__ import annotations

import importlib.util
import itertools
import math
import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch._dynamo.testing

import mixfast
from mixfast.ops import _extension, masking, reference
from mixfast.ops.masking import random_masking, random_masking_reference

EXTENSION = masking._EXTENSION
needs_extension = pytest.mark.skipif(
    not EXTENSION.loaded, reason=f"mixfast._C not loaded: {EXTENSION.reason}"
)
CPP_OP = "mixfast._C cpu kernel"

# (num_patches, mask_ratio): ViT shapes, odd sizes, K = 1 and K = N, the largest N.
SHAPES = [(1, 0.0), (2, 0.5), (7, 0.3), (16, 0.75), (64, 0.75), (196, 0.75), (257, 0.9)]
SHAPES += [(100, 0.99), (50, 0.0), (4096, 0.75)]


def _signed(seed: int) -> int:
    return seed - 2**64 if seed >= 2**63 else seed


def _assert_same(got, want) -> None:
    for name, a, b in zip(("ids_keep", "ids_restore", "mask"), got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert torch.equal(a, b), name


# ----------------------------------------------------------------------------------------------
# The generator and the kernel against the oracle
# ----------------------------------------------------------------------------------------------


def test_philox_known_answers():
    """Random123's known-answer vectors for Philox4x32-10."""
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((2**32 - 1,) * 4, (2**32 - 1,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ]
    for counter, key, expected in cases:
        words = reference.philox4x32_10(tuple(torch.tensor([c]) for c in counter), key)
        assert tuple(int(w) for w in words) == expected


@needs_extension
@pytest.mark.parametrize("num_patches,mask_ratio", SHAPES)
@pytest.mark.parametrize("sorted_keep", [False, True])
def test_cpu_kernel_matches_oracle_bitwise(num_patches, mask_ratio, sorted_keep):
    batch = 3 if num_patches > 1000 else 13
    samples = torch.tensor([0, 1, 5, 2**32 - 1, 2**32 + 7] + list(range(10, 10 + batch)))
    for seed, offset in [(0, 0), (2**64 - 1, 1), (123456789, 2**40 + 3)]:
        args = (num_patches, mask_ratio, _signed(seed), offset, sorted_keep)
        got = torch.ops.mixfast.random_masking(samples, *args)
        _assert_same(got, random_masking_reference(samples, *args))


@needs_extension
def test_cpu_kernel_matches_oracle_many_seeds():
    samples = torch.arange(64)
    for seed in range(20):
        args = (196, 0.75, seed, 3 * seed, seed % 2 == 0)
        got = torch.ops.mixfast.random_masking(samples, *args)
        _assert_same(got, random_masking_reference(samples, *args))


@needs_extension
def test_cpu_kernel_independent_of_threads():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = random_masking(100, 64, 0.75, seed=9)
        torch.set_num_threads(max(2, before))
        _assert_same(random_masking(100, 64, 0.75, seed=9), one)
    finally:
        torch.set_num_threads(before)


def test_uses_the_extension_when_built():
    """CI builds the extension: it must load there (set MIXFAST_DISABLE_EXTENSION=1 to opt out)."""
    if os.environ.get("MIXFAST_DISABLE_EXTENSION") == "1":
        pytest.skip("MIXFAST_DISABLE_EXTENSION=1")
    if importlib.util.find_spec("mixfast._C") is None:
        pytest.skip("mixfast._C is not built in this checkout")
    assert EXTENSION.loaded, EXTENSION.reason
    assert masking.implementation("cpu") == CPP_OP


# ----------------------------------------------------------------------------------------------
# MAE semantics and determinism
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sorted_keep", [False, True])
@pytest.mark.parametrize("num_patches,mask_ratio", [(16, 0.75), (49, 0.6), (196, 0.75), (5, 0.0)])
def test_mae_semantics(num_patches, mask_ratio, sorted_keep):
    batch, dim = 6, 3
    num_keep = int(num_patches * (1 - mask_ratio))
    ids_keep, ids_restore, mask = random_masking(
        batch, num_patches, mask_ratio, seed=1, offset=2, sorted_keep=sorted_keep
    )
    assert ids_keep.shape == (batch, num_keep) and ids_keep.dtype == torch.int64
    assert ids_restore.shape == (batch, num_patches) and ids_restore.dtype == torch.int64
    assert mask.shape == (batch, num_patches) and mask.dtype == torch.float32
    arange = torch.arange(num_patches).expand(batch, -1)
    assert torch.equal(ids_restore.sort(dim=1).values, arange)  # a permutation
    assert torch.equal(mask.sum(1), torch.full((batch,), float(num_patches - num_keep)))
    assert torch.all(mask.gather(1, ids_keep) == 0)
    if sorted_keep:
        assert torch.all(ids_keep[:, 1:] > ids_keep[:, :-1])
    # MAE's decoder: kept tokens then mask tokens, unshuffled by ids_restore.
    x = torch.randn(batch, num_patches, dim)
    kept = x.gather(1, ids_keep[..., None].expand(-1, -1, dim))
    filler = torch.full((batch, num_patches - num_keep, dim), float("nan"))
    restored = torch.cat([kept, filler], dim=1).gather(
        1, ids_restore[..., None].expand(-1, -1, dim)
    )
    visible = (mask == 0)[..., None].expand(-1, -1, dim)
    assert torch.equal(restored[visible], x[visible])
    assert torch.isnan(restored[~visible]).all()


def test_sorted_keep_keeps_the_same_patches():
    plain = random_masking(8, 64, 0.75, seed=4, offset=1)
    ordered = random_masking(8, 64, 0.75, seed=4, offset=1, sorted_keep=True)
    assert torch.equal(plain.ids_keep.sort(dim=1).values, ordered.ids_keep)
    assert torch.equal(plain.mask, ordered.mask)


def test_deterministic_and_keyed_by_seed_offset_sample():
    base = random_masking(8, 64, 0.75, seed=3, offset=5)
    _assert_same(random_masking(8, 64, 0.75, seed=3, offset=5), base)
    # sample b's mask does not depend on the batch size
    _assert_same(random_masking(3, 64, 0.75, seed=3, offset=5), [t[:3] for t in base])
    for other in (
        random_masking(8, 64, 0.75, seed=4, offset=5),
        random_masking(8, 64, 0.75, seed=3, offset=6),
    ):
        assert not torch.equal(other.ids_keep, base.ids_keep)
    assert len({tuple(row.tolist()) for row in base.ids_keep}) == 8  # samples differ


def test_empty_batch():
    ids_keep, ids_restore, mask = random_masking(0, 16, 0.5, seed=0)
    assert ids_keep.shape == (0, 8) and ids_restore.shape == (0, 16) and mask.shape == (0, 16)


# ----------------------------------------------------------------------------------------------
# Uniformity: chi-square tests with a fixed seed (deterministic, so they cannot flake). The
# threshold is the chi-square quantile at p = 1e-4 (Wilson-Hilferty approximation): a correct
# sampler passes a given seed with probability 0.9999, and the biased sampler below must fail.
# ----------------------------------------------------------------------------------------------

Z_1E4 = 3.719  # standard normal quantile at 1 - 1e-4


def chi2_threshold(dof: int) -> float:
    h = 2 / (9 * dof)
    return dof * (1 - h + Z_1E4 * math.sqrt(h)) ** 3


def chi2(counts: torch.Tensor, expected: float) -> float:
    return float(((counts.double() - expected) ** 2 / expected).sum())


def uniformity_statistics(ids_keep: torch.Tensor, num_patches: int) -> dict[str, tuple]:
    """(statistic, threshold) of the per-position, pairwise and whole-subset frequencies."""
    trials, num_keep = ids_keep.shape
    kept = torch.zeros(trials, num_patches, dtype=torch.float64)
    kept.scatter_(1, ids_keep, 1.0)
    per_position = kept.sum(0)
    pairs = kept.T @ kept  # [N, N] co-occurrence counts
    upper = torch.triu_indices(num_patches, num_patches, offset=1)
    pair_counts = pairs[upper[0], upper[1]]
    codes = (kept * 2.0 ** torch.arange(num_patches)).sum(1).long()
    subsets = torch.bincount(codes, minlength=2**num_patches)
    subset_codes = [
        sum(1 << i for i in c) for c in itertools.combinations(range(num_patches), num_keep)
    ]
    n_subsets = len(subset_codes)
    n_pairs = pair_counts.numel()
    return {
        "position": (
            chi2(per_position, trials * num_keep / num_patches),
            chi2_threshold(num_patches - 1),
        ),
        "pair": (
            chi2(
                pair_counts, trials * num_keep * (num_keep - 1) / (num_patches * (num_patches - 1))
            ),
            chi2_threshold(n_pairs - 1),
        ),
        "subset": (chi2(subsets[subset_codes], trials / n_subsets), chi2_threshold(n_subsets - 1)),
    }


@pytest.mark.parametrize("num_patches,mask_ratio", [(8, 0.75), (8, 0.5), (10, 0.7)])
def test_every_subset_equally_likely(num_patches, mask_ratio):
    trials = 60_000
    ids_keep = random_masking(trials, num_patches, mask_ratio, seed=2024).ids_keep
    for name, (stat, threshold) in uniformity_statistics(ids_keep, num_patches).items():
        assert stat < threshold, f"{name}: chi2 {stat:.1f} >= {threshold:.1f}"


def test_chi_square_rejects_a_biased_sampler():
    """The same statistics flag a sampler with 4-bit noise and index tiebreak (favours low ids)."""
    trials, num_patches, num_keep = 60_000, 8, 2
    generator = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 16, (trials, num_patches), generator=generator) * num_patches
    ids_keep = torch.argsort(noise + torch.arange(num_patches), dim=1)[:, :num_keep]
    stats = uniformity_statistics(ids_keep, num_patches)
    assert all(stat > threshold for stat, threshold in stats.values()), stats


# ----------------------------------------------------------------------------------------------
# Errors: from Python before any work, and from the C++ op itself
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"mask_ratio": 1.0}, r"mask_ratio must be a float in \[0, 1\), got 1.0"),
        ({"mask_ratio": -0.1}, r"mask_ratio must be a float in \[0, 1\)"),
        ({"mask_ratio": float("nan")}, r"mask_ratio must be a float in \[0, 1\)"),
        ({"num_patches": 0}, r"num_patches must be an int in \[1, 4097\), got 0"),
        ({"num_patches": 5000}, r"num_patches must be an int in \[1, 4097\)"),
        ({"batch_size": -1}, r"batch_size must be an int in \[0, "),
        ({"batch_size": 2.0}, r"batch_size must be an int"),
        ({"seed": -1}, r"seed must be an int in \[0, 18446744073709551616\)"),
        ({"offset": -3}, r"offset must be an int in \[0, "),
        (
            {"num_patches": 10, "mask_ratio": 0.95},
            r"keeps int\(num_patches \* \(1 - mask_ratio\)\) = 0",
        ),
    ],
)
def test_python_errors(kwargs, match):
    args = {"batch_size": 2, "num_patches": 16, "mask_ratio": 0.5, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=match):
        random_masking(**args)


@needs_extension
@pytest.mark.parametrize(
    "args,match",
    [
        ((torch.arange(2), 16, 1.0, 0, 0, False), r"mask_ratio must be in \[0, 1\), got 1"),
        ((torch.arange(2), 16, float("nan"), 0, 0, False), r"mask_ratio must be in \[0, 1\)"),
        ((torch.arange(2), 0, 0.5, 0, 0, False), r"num_patches must be in \[1, 4096\], got 0"),
        (
            (torch.arange(2), 10, 0.95, 0, 0, False),
            r"keeps int\(num_patches \* \(1 - mask_ratio\)\) = 0",
        ),
        ((torch.arange(2), 16, 0.5, 0, -1, False), r"offset must be in \[0, 2\^63\), got -1"),
        (
            (torch.zeros(2, 2, dtype=torch.long), 16, 0.5, 0, 0, False),
            r"sample_ids must be a 1-D int64",
        ),
        ((torch.arange(2.0), 16, 0.5, 0, 0, False), r"sample_ids must be a 1-D int64"),
    ],
)
def test_cpp_errors(args, match):
    with pytest.raises(ValueError, match=match):
        torch.ops.mixfast.random_masking(*args)


# ----------------------------------------------------------------------------------------------
# Fallback, build_info, torch.library integration
# ----------------------------------------------------------------------------------------------


def test_fallback_runs_the_reference(monkeypatch):
    want = random_masking(5, 64, 0.75, seed=7, offset=1, sorted_keep=True)
    monkeypatch.setattr(masking, "_EXTENSION", _extension.ExtensionState(None, "simulated"))
    assert masking.implementation("cpu") == "reference"
    assert mixfast.build_info()["masking"] == "reference" or torch.cuda.is_available()
    _assert_same(random_masking(5, 64, 0.75, seed=7, offset=1, sorted_keep=True), want)


def test_load_warns_once_with_the_rebuild_command(monkeypatch):
    monkeypatch.delenv("MIXFAST_DISABLE_EXTENSION", raising=False)
    monkeypatch.setattr(_extension, "_read_record", lambda origin: {"torch": "2.11.0+cu128"})
    monkeypatch.setattr(_extension.importlib.util, "find_spec", lambda name: _FakeSpec())
    _extension.load.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first, second = _extension.load(), _extension.load()
    finally:
        _extension.load.cache_clear()
    assert not first.loaded and second is first
    assert "built against torch 2.11.0+cu128" in first.reason
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "pip install --no-build-isolation -e" in message and "2.11.0+cu128" in message


class _FakeSpec:
    origin = "/nonexistent/mixfast/_C.so"


def test_version_mismatch_messages():
    assert _extension._version_mismatch(torch.__version__, torch.version.cuda) == ""
    assert "built against torch 0.1" in _extension._version_mismatch("0.1", None)
    assert "CUDA 1.0" in _extension._version_mismatch(torch.__version__, "1.0")


def test_disabled_by_env_in_a_fresh_process():
    code = (
        "import warnings, torch, mixfast\n"
        "warnings.simplefilter('error')\n"
        "info = mixfast.build_info()\n"
        "assert info['extension'] is False and info['masking'] == 'reference', info\n"
        "r = mixfast.random_masking(4, 16, 0.75, seed=5, offset=2)\n"
        "print(r.ids_keep.tolist())\n"
    )
    env = dict(os.environ, MIXFAST_DISABLE_EXTENSION="1", CUDA_VISIBLE_DEVICES="")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(
        random_masking(4, 16, 0.75, seed=5, offset=2).ids_keep.tolist()
    )


def test_build_info_keys():
    info = mixfast.build_info()
    for key in ("extension", "cuda_kernels", "masking", "torch", "cuda", "built_against"):
        assert key in info
    assert info["extension"] == EXTENSION.loaded
    assert info["cuda_kernels"] == EXTENSION.cuda_kernels


def _ops():
    ops = [torch.ops.mixfast.random_masking_reference.default]
    if EXTENSION.loaded:
        ops.append(torch.ops.mixfast.random_masking.default)
    return ops


@pytest.mark.parametrize("sorted_keep", [False, True])
def test_opcheck(sorted_keep):
    for op in _ops():
        torch.library.opcheck(op, (torch.arange(4), 16, 0.75, 3, 1, sorted_keep))


@pytest.mark.parametrize("use_extension", [True, False])
def test_compile_fullgraph(monkeypatch, use_extension):
    if use_extension and not EXTENSION.loaded:
        pytest.skip(f"mixfast._C not loaded: {EXTENSION.reason}")
    if not use_extension:
        monkeypatch.setattr(masking, "_EXTENSION", _extension.ExtensionState(None, "simulated"))

    def visible_tokens(x: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        batch, num_patches, dim = x.shape
        ids_keep, ids_restore, mask = mixfast.random_masking(
            batch, num_patches, 0.75, seed=11, offset=step, device=x.device
        )
        return x.gather(1, ids_keep[..., None].expand(-1, -1, dim)), mask

    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(visible_tokens, fullgraph=True, backend=counter)
    x = torch.randn(3, 16, 4)
    for step in range(4):
        got, want = compiled(x, step), visible_tokens(x, step)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert counter.frame_count <= 2  # the step stays symbolic after one recompile


# ----------------------------------------------------------------------------------------------
# GPU: the CUDA kernel against the CPU kernel, bit for bit
# ----------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("num_patches,mask_ratio", SHAPES)
@pytest.mark.parametrize("sorted_keep", [False, True])
def test_cuda_matches_cpu_bitwise(num_patches, mask_ratio, sorted_keep):
    assert EXTENSION.cuda_kernels, (
        f"CUDA kernels not built/loaded: {EXTENSION.reason or 'CPU-only build'}"
    )
    assert masking.implementation("cuda") == "mixfast._C cuda kernel"
    for seed, offset in [(0, 0), (2**64 - 1, 1), (987654321, 2**40 + 3)]:
        for batch in (1, 37, 300):
            kwargs = {"seed": seed, "offset": offset, "sorted_keep": sorted_keep}
            cpu = random_masking(batch, num_patches, mask_ratio, **kwargs)
            gpu = random_masking(batch, num_patches, mask_ratio, device="cuda", **kwargs)
            assert all(t.is_cuda for t in gpu)
            _assert_same([t.cpu() for t in gpu], cpu)


@pytest.mark.cuda
def test_cuda_reference_matches():
    samples = torch.arange(50, device="cuda")
    got = random_masking_reference(samples, 196, 0.75, 5, 9, False)
    _assert_same(
        [t.cpu() for t in got], random_masking_reference(samples.cpu(), 196, 0.75, 5, 9, False)
    )
