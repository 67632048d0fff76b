"""The recipe study's 1-thread step-time probe: SL forward + backward + AdamW on random data, per
model shape and batch (OMP_NUM_THREADS threads).

    OMP_NUM_THREADS=1 python benchmarks/studies/fashion-mnist-recipe-cpu-2026-12-01/bench_step.py
"""

import os
import time

SHAPES = [  # patch, width, depth, heads, batch
    (7, 64, 3, 2, 64),
    (7, 64, 3, 2, 256),
    (7, 128, 4, 4, 128),
    (7, 128, 4, 4, 256),
    (7, 96, 4, 3, 256),
    (4, 64, 3, 2, 256),
    (4, 96, 4, 3, 256),
]


def main() -> None:
    os.environ.setdefault("MIXFAST_DISABLE_EXTENSION", "1")
    import torch
    import torch.nn.functional as F

    from mixfast import create_model

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    for patch, width, depth, heads, batch in SHAPES:
        m = create_model(
            "vit_tiny_patch16_224",
            img_size=28,
            patch_size=patch,
            in_chans=1,
            num_classes=10,
            depth=depth,
            embed_dim=width,
            num_heads=heads,
            decoder_dim=64,
            decoder_depth=1,
        )
        opt = torch.optim.AdamW(m.parameters(), 1e-3)
        x = torch.randn(batch, 1, 28, 28)
        y = torch.randint(0, 10, (batch,))
        for i in range(13):
            if i == 3:
                t = time.perf_counter()
            loss = F.cross_entropy(m.forward_sl(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        dt = (time.perf_counter() - t) / 10
        print(
            f"p{patch} w{width} d{depth} h{heads} b{batch}: {dt * 1000:.0f} ms/step, "
            f"{batch / dt:.0f} img/s, 55k epoch {55000 / (batch / dt):.0f}s",
            flush=True,
        )


if __name__ == "__main__":
    main()
