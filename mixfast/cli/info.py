"""`mixfast info`: versions, device, build: what a bug report needs."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from mixfast.info import info_lines


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "info", help="versions, device, build", description="Print what a bug report needs."
    )
    parser.set_defaults(handler=cmd_info)


def cmd_info(args: argparse.Namespace) -> Callable[[], int]:
    def work() -> int:
        for key, value in info_lines():
            print(f"{key:<27} {value}")
        return 0

    return work
