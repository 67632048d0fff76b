"""One packed mixed step against one SSL step + one SL step on the same samples.

Every step is forward + backward + AdamW step of a ViT-Tiny MixMAE. Variants:
  mae+timm    the peer, written as users run the two steps today, eager: an MAE step as in
              facebookresearch/mae models_mae.py (timm patch_embed, argsort-of-noise masking,
              gather, timm Blocks, its light decoder), then a timm VisionTransformer SL step;
              two optimizer steps, the same weights and FLOPs as ssl+sl
  ssl+sl      mixfast's forward_ssl step, then a cross-entropy(forward_sl) step
  mix         forward_mixed(x, x, y, sl_view="full"): both sub-batches in one packed pass
  mix-unpacked  forward_mixed(..., packed=False): one loss, one backward, one optimizer step,
              but each sub-batch through timm's batched blocks on its own (shared embedding)
  mix-masked  forward_mixed(..., sl_view="masked"): the SL head reads the masked view's cls
The variants run round-robin inside one loop (A, B, C, A, B, C, ...; harness.round_robin_ms) so
that drift hits them all alike; the table gives medians and the speedup of each mix variant over
ssl+sl. Masks are computed outside the loss functions and passed as `masking=`, so the compiled
runs (torch.compile fullgraph) never recompile for a new offset. CUDA runs use bf16 autocast.

Script:  python benchmarks/bench_mixed_step.py --device cuda --json OUT.json
         python benchmarks/bench_mixed_step.py --configs 64x64/8 --batch 256 --profile
         (--profile: each variant's top ops by self CPU time, one step under torch.profiler)
         (add --modes eager compiled cudagraphs for CUDA-graph replays of the compiled steps)
         (CPU default: 28x28/4, batch 32 + 32; CUDA default: 64x64/8 and 28x28/4, 256 + 256)
pytest:  pytest benchmarks/bench_mixed_step.py   (tiny CPU shapes, pytest-benchmark, eager)
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import harness
import pytest
import torch
import torch.nn.functional as F
from harness import Column

from mixfast import random_masking
from mixfast.model import MixMAE, create_model
from mixfast.ops.reference import mae_random_masking, patchify_images

CONFIGS = {
    "64x64/8": dict(img_size=64, patch_size=8, in_chans=3, classes=200),
    "28x28/4": dict(img_size=28, patch_size=4, in_chans=1, classes=10),
}
VARIANTS = ("mae+timm", "ssl+sl", "mix", "mix-unpacked", "mix-masked")
MODES = ("eager", "compiled", "cudagraphs")
SEED, ALPHA, MASK_RATIO = 0, 0.5, 0.75


def build(config: str, batch: int, device: str, **overrides: Any) -> dict[str, Any]:
    cfg = CONFIGS[config]
    model = create_model(
        "vit_tiny_patch16_224",
        img_size=cfg["img_size"],
        patch_size=cfg["patch_size"],
        in_chans=cfg["in_chans"],
        num_classes=cfg["classes"],
        **overrides,
    ).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device == "cuda")
    size = cfg["img_size"]
    x = torch.randn(batch, cfg["in_chans"], size, size, device=device)
    y = torch.randint(0, cfg["classes"], (batch,), device=device)
    return dict(model=model, opt=opt, x=x, y=y)


def make_steps(setup: dict[str, Any], mode: str) -> dict[str, Callable[[int], None]]:
    """variant -> step(i): forward + backward + optimizer step(s) on the same samples."""
    model: MixMAE = setup["model"]
    opt, x, y = setup["opt"], setup["x"], setup["y"]
    device = x.device
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )
    alpha = torch.tensor(ALPHA, device=device)

    def ssl_loss(images, masking):
        return model.forward_ssl(images, MASK_RATIO, masking=masking)

    def sl_loss(images, labels):
        return F.cross_entropy(model.forward_sl(images).float(), labels)

    def peer_ssl_loss(images):
        return mae_peer_loss(model, images, MASK_RATIO)

    def peer_sl_loss(images, labels):
        return F.cross_entropy(model.encoder(images).float(), labels)

    def mix_loss(images, labels, masking, sl_view, packed=True):
        return model.forward_mixed(
            images, images, labels, alpha=alpha, masking=masking, sl_view=sl_view, packed=packed
        )[0]

    if mode != "eager":
        options = dict(fullgraph=True, mode="reduce-overhead" if mode == "cudagraphs" else None)
        ssl_loss, sl_loss, mix_loss, peer_ssl_loss, peer_sl_loss = (
            torch.compile(f, **options)
            for f in (ssl_loss, sl_loss, mix_loss, peer_ssl_loss, peer_sl_loss)
        )

    def masks(i: int):
        return random_masking(
            x.shape[0], model.num_patches, MASK_RATIO, seed=SEED, offset=i, device=device
        )

    def update(loss_fn: Callable[[], torch.Tensor]) -> None:
        if mode == "cudagraphs":
            torch.compiler.cudagraph_mark_step_begin()
        with autocast:
            loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def separate(i: int) -> None:
        update(lambda: ssl_loss(x, masks(i)))
        update(lambda: sl_loss(x, y))

    def peer(i: int) -> None:
        update(lambda: peer_ssl_loss(x))
        update(lambda: peer_sl_loss(x, y))

    return {
        "mae+timm": peer,
        "ssl+sl": separate,
        "mix": lambda i: update(lambda: mix_loss(x, y, masks(i), "full")),
        "mix-unpacked": lambda i: update(lambda: mix_loss(x, y, masks(i), "full", False)),
        "mix-masked": lambda i: update(lambda: mix_loss(x, y, masks(i), "masked")),
    }


def mae_peer_loss(model: MixMAE, images: torch.Tensor, mask_ratio: float) -> torch.Tensor:
    """MAE's forward_encoder / forward_decoder / forward_loss (models_mae.py) on the model's
    timm encoder and decoder modules: what a user who runs MAE and timm today executes."""
    vit = model.encoder
    x = vit.patch_embed(images) + vit.pos_embed[:, 1:]
    batch, patches, dim = x.shape
    ids_keep, ids_restore, mask = mae_random_masking(batch, patches, mask_ratio, device=x.device)
    x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
    cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(batch, -1, -1)
    latent = vit.norm(vit.blocks(torch.cat([cls, x], dim=1)))
    pred = model.forward_decoder(latent, ids_restore)
    target = patchify_images(images, model.patch_size)
    loss = (pred.float() - target).pow(2).mean(dim=-1)
    return (loss * mask).sum() / mask.sum()


def speedups(times: dict[str, Any]) -> dict[str, float]:
    """Each variant's speed over ssl+sl, and mix's over the peer (the figure users compare)."""
    base = times["ssl+sl"]["median_ms"]
    out = {name: base / times[name]["median_ms"] for name in VARIANTS if name != "ssl+sl"}
    peer = times["mae+timm"]["median_ms"]
    out["mix_vs_peer"] = peer / times["mix"]["median_ms"]
    out["unpacked_vs_peer"] = peer / times["mix-unpacked"]["median_ms"]
    return out


def profile(config: str, batch: int, device: str, top: int = 12) -> None:
    """Print each variant's top ops by self CPU time over one step (after one warm-up step)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.manual_seed(0)
    setup = build(config, batch, device)
    for name, step in make_steps(setup, "eager").items():
        step(0)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            step(1)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)
        print(f"\n== {name} ({config}, {batch}+{batch}, {device})\n{table}")


def measure(config: str, batch: int, device: str, mode: str, warmup: int, iters: int) -> dict:
    torch.manual_seed(0)
    setup = build(config, batch, device)
    steps = make_steps(setup, mode)
    times = harness.round_robin_ms(steps, setup["x"].device, warmup, iters)
    return dict(times=times, speedup=speedups(times))


def points(
    configs, batch: int, device: str, modes, warmup: int, iters: int
) -> Iterator[harness.Point]:
    for config in configs:
        for mode in modes:
            labels = dict(config=config, batch=batch, mode=mode)
            yield labels, partial(measure, config, batch, device, mode, warmup, iters)


COLUMNS = (
    Column("config", "config", 8),
    Column("batch", lambda row: f"{row['batch']}+{row['batch']}", 7),
    Column("mode", "mode", 10),
    Column("peer ms", ("times", "mae+timm", "median_ms"), 9, ".2f"),
    Column("ssl+sl ms", ("times", "ssl+sl", "median_ms"), 9, ".2f"),
    Column("mix ms", ("times", "mix", "median_ms"), 9, ".2f"),
    Column("speedup", ("speedup", "mix"), 7, ".2f", "x"),
    Column("vs peer", ("speedup", "mix_vs_peer"), 7, ".2f", "x"),
    Column("unpacked ms", ("times", "mix-unpacked", "median_ms"), 11, ".2f"),
    Column("vs peer", ("speedup", "unpacked_vs_peer"), 7, ".2f", "x"),
    Column("masked ms", ("times", "mix-masked", "median_ms"), 9, ".2f"),
    Column("speedup", ("speedup", "mix-masked"), 7, ".2f", "x"),
)


def main(argv: list[str] | None = None) -> int:
    parser = harness.BenchParser(__doc__, __file__, time_budget=130.0)
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=None)
    parser.add_argument("--batch", type=int, default=None, help="images per sub-batch")
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        default=None,
        help="default: eager compiled (cudagraphs = compile mode='reduce-overhead', CUDA only)",
    )
    parser.add_argument("--iters", type=int, default=None, help="default 20 on CUDA, 10 on CPU")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="print top ops, time nothing")
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible")
    if not cuda and "cudagraphs" in (args.modes or []):
        parser.error("--modes cudagraphs needs --device cuda")
    configs = args.configs or (["64x64/8", "28x28/4"] if cuda else ["28x28/4"])
    batch = args.batch or (256 if cuda else 32)
    modes = args.modes or ["eager", "compiled"]
    iters = args.iters or (20 if cuda else 10)
    if args.profile:
        for config in configs:
            profile(config, batch, args.device)
        return 0
    harness.run(
        args,
        points(configs, batch, args.device, modes, args.warmup, iters),
        COLUMNS,
        title=f"ViT-Tiny, fwd+bwd+AdamW, medians of {iters} round-robin reps",
        fields=dict(warmup=args.warmup, iters=iters),
        markdown=True,
    )
    return 0


# ------------------------------------------------------------------------------ pytest-benchmark


@pytest.mark.parametrize("variant", VARIANTS)
def test_mixed_step(benchmark, bench_device, synced, variant):
    batch = 64 if bench_device == "cuda" else 8
    setup = build("28x28/4", batch, bench_device, depth=2)
    step = synced(make_steps(setup, "eager")[variant])
    benchmark.extra_info.update(config="28x28/4", batch=batch, depth=2, variant=variant)
    benchmark.pedantic(step, args=(0,), rounds=5, warmup_rounds=1)


if __name__ == "__main__":
    sys.exit(main())
