"""Stop requests: SIGINT / SIGTERM ask the loop to save a checkpoint and exit at a step
boundary (a second signal gives up at once); `stop_after` stops after N optimizer steps. Under
DDP every rank stops at the same step (the flag is all-reduced at check points)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

import torch

from mixfast.train.distributed import Dist


class StopRequests:
    def __init__(self, stop_after: int, log_every: int) -> None:
        self.stop_after, self.log_every = stop_after, log_every
        self.signal: int | None = None

    @contextlib.contextmanager
    def catching_signals(self) -> Iterator[None]:
        """Turn SIGINT / SIGTERM into a request while the block runs (main thread only)."""
        self.signal = None
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum, frame):
            if self.signal is not None:  # a second signal: give up at once
                raise KeyboardInterrupt
            self.signal = signum

        for s in previous:
            signal.signal(s, handler)
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def should_stop(self, global_step: int, last_in_epoch: bool, dist: Dist, device) -> bool:
        if self.stop_after and global_step >= self.stop_after:
            return True
        if dist.enabled:
            if global_step % self.log_every and not last_in_epoch:
                return False
            flag = torch.tensor(int(self.signal is not None), device=device)
            return bool(dist.all_max(flag).item())
        return self.signal is not None

    def exit_code(self) -> int | None:
        """None after stop_after; else how the process should end (raised by the trainer)."""
        return None if self.signal is None else 128 + self.signal
