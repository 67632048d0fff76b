"""Recipe study driver for mixfast on Fashion-MNIST (validation-selected, test evaluated once).

Carves a stratified, seeded validation split (500 per class = 5,000 images) from the 60k
Fashion-MNIST training images, trains on the rest (or a stratified subset of it), passes the
validation set as val_data (val top-1 per epoch), then evaluates the full 10k test split ONCE
with model.forward_sl (top-1). Appends one JSON line per run to --results.

Cases:
  full   55,000 training images (all that remain after the val carve)
  demo   a stratified 10,000-image subset of those (1,000 per class), label --fraction of it
  small  a stratified 1,500-image subset (150 per class)

The study ran from a snapshot of the repository in /work/study (see scripts/batch*.sh and
benchmarks/results/fashion-mnist-recipe-cpu-2026-12-01/README.md); from a checkout:

    python benchmarks/studies/fashion-mnist-recipe-cpu-2026-12-01/study_recipe.py \
        --results runs/recipe/runs.jsonl --case demo --tag D1 --epochs 10

The compiled extension is off (MIXFAST_DISABLE_EXTENSION=1 unless set), as in the study.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

DATA_DIR = "/usr/share/datasets/fashion-mnist"
VAL_SEED = 12345  # fixed: every run sees the same validation split
POOL_SEED = 7919  # fixed: every run of a case draws from the same training pool


def mean_std(images: torch.Tensor) -> tuple[tuple[float], tuple[float]]:
    x = images.double() / 255.0
    return (float(x.mean()),), (float(x.std()),)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--case", choices=("full", "demo", "small"), required=True)
    p.add_argument("--pipeline", choices=("sl", "ssl+sl", "mix"), default="sl")
    p.add_argument("--fraction", type=float, default=1.0, help="labeled fraction of the pool")
    p.add_argument("--patch", type=int, default=7)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--decoder-dim", type=int, default=64)
    p.add_argument("--decoder-depth", type=int, default=1)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--blr", type=float, default=1e-2)
    p.add_argument("--ssl-blr", type=float, default=1.5e-4)
    p.add_argument("--epochs", type=int, default=10, help="SL epochs")
    p.add_argument("--ssl-epochs", type=int, default=0)
    p.add_argument("--mix-ratio", type=float, default=0.5)
    p.add_argument(
        "--warmup-frac", type=float, default=0.1, help="warmup as a fraction of each stage's epochs"
    )
    p.add_argument("--ls", type=float, default=0.1, help="label smoothing")
    p.add_argument("--wd", type=float, default=0.05)
    p.add_argument("--layer-decay", type=float, default=None)
    p.add_argument(
        "--aug",
        type=float,
        default=0.0,
        help="0 = no augmentation; else BatchAugment scale=(AUG, 1), hflip 0.5",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tag", default="")
    p.add_argument("--results", default="study/runs.jsonl")
    a = p.parse_args(argv)

    # the library, imported only now: the extension's switch must be set before its ops load
    os.environ.setdefault("MIXFAST_DISABLE_EXTENSION", "1")
    import mixfast
    from mixfast import create_model
    from mixfast.data import BatchAugment, ImageDataset, load_fashion_mnist, stratified_subset

    try:
        from mixfast.train import MixTrainer, TrainConfig
    except ImportError:  # a revision from before mixfast/train/ (the study's snapshot)
        from mixfast.trainer import MixTrainer, TrainConfig
    try:
        from mixfast.provenance import git_commit
    except ImportError:  # a revision from before mixfast/provenance.py

        def git_commit(path=None):
            return None

    torch.set_num_threads(a.threads)

    splits = load_fashion_mnist(DATA_DIR)
    images, labels = splits.train_images, splits.train_labels
    val_idx = stratified_subset(labels, per_class=500, seed=VAL_SEED)
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[val_idx] = False
    pool_images, pool_labels = images[keep], labels[keep]  # 55,000
    if a.case == "demo":
        sub = stratified_subset(pool_labels, per_class=1000, seed=POOL_SEED)
        pool_images, pool_labels = pool_images[sub], pool_labels[sub]
    elif a.case == "small":
        sub = stratified_subset(pool_labels, per_class=150, seed=POOL_SEED)
        pool_images, pool_labels = pool_images[sub], pool_labels[sub]
    if a.fraction < 1.0:
        lab = stratified_subset(pool_labels, fraction=a.fraction, seed=a.seed)
    else:
        lab = torch.arange(len(pool_labels))
    mean, std = mean_std(pool_images)
    sl_data = ImageDataset(pool_images[lab], pool_labels[lab], mean, std)
    val_data = ImageDataset(images[val_idx], labels[val_idx], mean, std)
    test_data = ImageDataset(splits.test_images, splits.test_labels, mean, std)

    ssl_epochs = a.ssl_epochs if a.pipeline != "sl" else 0
    n_ep = max(a.epochs, 1)
    augment = None
    if a.aug > 0:
        augment = BatchAugment(28, mean, std, scale=(a.aug, 1.0), hflip=0.5, seed=a.seed)
    config = TrainConfig(
        pipeline=a.pipeline,
        ssl_epochs=ssl_epochs,
        sl_epochs=a.epochs,
        mix_ratio=a.mix_ratio,
        batch_size=a.batch,
        blr=a.blr,
        ssl_blr=a.ssl_blr,
        warmup_epochs=a.warmup_frac * n_ep,  # the trainer caps it at each stage's length
        weight_decay=a.wd,
        layer_decay=a.layer_decay,
        label_smoothing=a.ls,
        seed=a.seed,
        device="cpu",
        progress=False,
        augment=augment,
    )
    torch.manual_seed(a.seed)
    model = create_model(
        "vit_tiny_patch16_224",
        img_size=28,
        patch_size=a.patch,
        in_chans=1,
        num_classes=10,
        depth=a.depth,
        embed_dim=a.width,
        num_heads=a.heads,
        decoder_dim=a.decoder_dim,
        decoder_depth=a.decoder_depth,
    )
    nparams = sum(p.numel() for p in model.parameters())
    print(
        f"[{a.tag}] train {len(sl_data)} labeled (pool {len(pool_labels)}), val {len(val_data)},"
        f" params {nparams}",
        flush=True,
    )
    t0 = time.perf_counter()
    result = MixTrainer(model, config).fit(ssl_data=None, sl_data=sl_data, val_data=val_data)
    train_wall = time.perf_counter() - t0

    # the test split, once
    model.eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(test_data), 500):
            x = test_data.images[i : i + 500]
            x = (x.float() / 255.0 - mean[0]) / std[0]
            pred = model.forward_sl(x).argmax(-1)
            correct += int((pred == test_data.labels[i : i + 500]).sum())
    test_top1 = correct / len(test_data)
    wall = time.perf_counter() - t0

    val_curve = [(r["phase"], r["epoch"], r["val_top1"]) for r in result.epochs]
    threads_env = os.environ.get("OMP_NUM_THREADS")
    record = {
        "tag": a.tag,
        "case": a.case,
        "settings": vars(a),
        "resolved": {
            k: result.resolved.get(k) for k in ("stages", "budget") if k in result.resolved
        },
        "params": nparams,
        "n_train_labeled": len(sl_data),
        "n_pool": len(pool_labels),
        "n_val": len(val_data),
        "n_test": len(test_data),
        "val_per_epoch": [
            {
                "phase": ph,
                "epoch": ep,
                "val_top1": v,
                "loss": r["loss"],
                "lr": r["lr"],
                "train_s": r["train_s"],
            }
            for (ph, ep, v), r in zip(val_curve, result.epochs)
        ],
        "final_val": result.top1,
        "test_top1": test_top1,
        "train_wall_s": train_wall,
        "trainer_wall_s": result.wall_s,
        "phase_wall_s": result.phase_wall_s,
        "wall_s": wall,
        "threads": a.threads,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_avg_end": os.getloadavg(),
        "command": f"cd {shlex.quote(os.getcwd())} && OMP_NUM_THREADS={threads_env} "
        f"MIXFAST_DISABLE_EXTENSION={os.environ.get('MIXFAST_DISABLE_EXTENSION')} "
        f"PYTHONPATH={shlex.quote(os.environ.get('PYTHONPATH', ''))} "
        f"{shlex.join(['python', *sys.argv])}",
        "commit": git_commit(Path(mixfast.__file__).parent),
        "mixfast": mixfast.__file__,
        "torch": torch.__version__,
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.results)), exist_ok=True)
    with open(a.results, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")
    curve = " ".join(f"{v:.3f}" for _, _, v in val_curve if v is not None)
    print(f"[{a.tag}] val/epoch {curve}", flush=True)
    print(
        f"[{a.tag}] final val {result.top1:.4f} test {test_top1:.4f} wall {wall:.1f}s "
        f"(threads {a.threads})",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
