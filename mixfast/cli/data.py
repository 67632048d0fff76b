"""`mixfast data shard SRC DST`: image files into tar shards (mixfast.data.shards)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from mixfast.data.shards import check_shard_args, write_shards


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("data", help="prepare data", description="Prepare data.")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    shard = actions.add_parser(
        "shard",
        help="write tar shards (WebDataset layout, readable as --dataset DST)",
        description="Copy a folder or a .tar of class folders into shuffled tar shards with "
        "label metadata (DST/info.json); train with `--dataset DST`.",
    )
    shard.add_argument(
        "src", help="a folder (ROOT/<class>/..., or ROOT/train + ROOT/val) or a .tar"
    )
    shard.add_argument("dst", help="a new folder for the shards")
    shard.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    shard.set_defaults(handler=cmd_shard)


def cmd_shard(args: argparse.Namespace) -> Callable[[], int]:
    check_shard_args(args.src, args.dst, args.shard_size)

    def work() -> int:
        info = write_shards(args.src, args.dst, shard_size=args.shard_size)
        for split, record in info["splits"].items():
            count = len(record["shards"])
            print(f"{split}: {record['num_samples']} samples in {count} shard(s)", file=sys.stderr)
        print(f"wrote {args.dst}/info.json")
        return 0

    return work
