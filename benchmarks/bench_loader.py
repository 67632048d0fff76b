"""Loader throughput: images/s of one pass of the trainer's Stream over image files, streamed
(decoded in DataLoader workers every pass) with 0, 1 and 2 workers, from a folder and from tar
shards, against the same images decoded into memory once (InMemory index gathers).

The images are written first (PNG, --count of them, --size px, 10 classes) into a temporary
folder and sharded with `mixfast data shard`; each pass reads --batch images per micro-batch
on the CPU, normalisation included.

Script:  python benchmarks/bench_loader.py [--count 4000] [--size 64] [--json OUT.json]
pytest:  pytest benchmarks/bench_loader.py   (a few hundred small images)
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import harness
import torch
from harness import Column
from PIL import Image

from mixfast.data import open_dataset, prepare_training_data
from mixfast.data.shards import write_shards
from mixfast.train.streams import Stream

SOURCES = {  # name -> (folder under the temp root, data_mode)
    "in-memory": ("folder", "memory"),
    "folder": ("folder", "stream"),
    "shards": ("shards", "stream"),
}


def write_images(root: Path, count: int, size: int) -> None:
    gen = torch.Generator().manual_seed(0)
    for i in range(count):
        folder = root / "folder" / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = torch.randint(0, 256, (size, size, 3), generator=gen, dtype=torch.uint8)
        Image.fromarray(pixels.numpy()).save(folder / f"{i:06d}.png")
    write_shards(root / "folder", root / "shards", shard_size=500)


def images_per_s(root: Path, source: str, workers: int, batch: int) -> dict:
    folder, mode = SOURCES[source]
    data = prepare_training_data(open_dataset(str(root / folder), data_mode=mode), val_fraction=0)
    stream = Stream(data.sl_data, 1, batch_size=batch, world=1, rank=0, accum=1, seed=0,
                    device=torch.device("cpu"), num_workers=workers)  # fmt: skip
    start = time.perf_counter()
    for _ in range(stream.micro):
        images, _ = stream.next()
        stream.normalize(images)
    seconds = time.perf_counter() - start
    return {"images": stream.micro * batch, "seconds": seconds,
            "images_per_s": stream.micro * batch / seconds}  # fmt: skip


def points(root: Path, batch: int) -> Iterator[harness.Point]:
    yield dict(source="in-memory", workers=0), partial(images_per_s, root, "in-memory", 0, batch)
    for source in ("folder", "shards"):
        for workers in (0, 1, 2):
            labels = dict(source=source, workers=workers)
            yield labels, partial(images_per_s, root, source, workers, batch)


COLUMNS = (
    Column("source", "source", 10),
    Column("workers", "workers", 7, "d"),
    Column("images", "images", 7, "d"),
    Column("seconds", "seconds", 8, ".2f"),
    Column("images/s", "images_per_s", 9, ".0f"),
)


def main(argv: list[str] | None = None) -> int:
    parser = harness.BenchParser(__doc__, __file__, threads=False)
    parser.add_argument("--count", type=int, default=4000, help="images written")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=64, help="images per micro-batch")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_images(root, args.count, args.size)
        title = f"one pass, {args.count} PNG images {args.size}x{args.size}, batch {args.batch}"
        harness.run(args, points(root, args.batch), COLUMNS, title=title,
                    fields=dict(count=args.count, size=args.size, batch=args.batch))  # fmt: skip
    return 0


# ------------------------------------------------------------------------------ pytest-benchmark


def test_loader(benchmark, tmp_path):
    write_images(tmp_path, 300, 32)
    result = benchmark.pedantic(images_per_s, args=(tmp_path, "shards", 1, 32), rounds=1)
    benchmark.extra_info.update(result)


if __name__ == "__main__":
    sys.exit(main())
