"""Whole-step CUDA graphs: each phase's training step (forward, backward, gradient clipping,
optimizer update) captured once and replayed, so a step costs one graph launch on the host.

What a replay reads lives in static buffers that the eager code writes in place before each
replay: the micro-batch (images, labels), the MAE masks (made by the masking op outside the
graph), a(t), and the learning rate (GroupedAdamW's 0-dim device tensor, `set_lr`). The step
counters of the optimizer are device tensors too, so nothing a step needs is a Python number
frozen into the graph.

Capture follows torch's whole-network recipe: `WARMUP` eager steps of the phase on a side
stream (allocator, cuBLAS workspaces, Triton autotuning and torch.compile all settle there),
then gradients set to None and the step captured into a pool shared by every phase's graph;
the captured step is then replayed for the step that triggered the capture. After every step
the gradients are set to None again, as the eager step leaves them, so an eager step of another
phase never accumulates into a graph's buffers.

Used only where it can work: CUDA, one micro-batch per step (no accumulation), one process
(DDP's reducer is not captured here), `nonfinite="stop"` (skipping a step reads the gradient
norm on the host); the masks are made outside the graph, as the trainer always makes them.
Elsewhere `cuda_graph_blockers` says why and the trainer steps eagerly. Batches have fixed shapes: streams drop the last partial batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map_only

WARMUP = 3  # eager steps of a phase before its capture (torch's recipe uses >= 3 on a side stream)
Step = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]


def cuda_graph_blockers(
    device: torch.device, *, accum_steps: int, world: int, nonfinite: str
) -> list[str]:
    """Why a run cannot capture its steps (empty: it can)."""
    reasons = []
    if device.type != "cuda":
        reasons.append(f"device {device} is not CUDA")
    if accum_steps != 1:
        reasons.append(f"accum_steps {accum_steps} (graphs capture one micro-batch a step)")
    if world != 1:
        reasons.append(f"{world} processes (DDP's gradient reducer is not captured)")
    if nonfinite != "stop":
        reasons.append(f'nonfinite "{nonfinite}" (a skipped step reads the norm on the host)')
    return reasons


def make_step_graphs(config, device: torch.device, world: int):
    """StepGraphs when `config.cuda_graph` asks for them and the run can capture its steps;
    otherwise None, with one warning saying why when they were asked for."""
    if not config.cuda_graph:
        return None
    blockers = cuda_graph_blockers(
        device,
        accum_steps=config.accum_steps,
        world=world,
        nonfinite=config.nonfinite,
    )
    if blockers:
        warnings.warn(f"cuda_graph: stepping eagerly: {'; '.join(blockers)}", stacklevel=3)
        return None
    return StepGraphs(device)


def whole_step(loss_fn, net, optimizer, params, clip_grad: float | None, autocast) -> Step:
    """One training step as a function of its inputs (batch, a(t), masks), what a graph
    captures: forward, backward, gradient clipping and the optimizer update."""

    def run(batch, alpha, mask):
        with autocast():
            loss, parts = loss_fn(net, batch, alpha, mask)
        loss.backward()
        if clip_grad:
            grads = [p for p in params if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(grads, clip_grad, foreach=True)
        optimizer.step()
        return loss.detach(), {k: v.detach() for k, v in parts.items()}

    return run


def tree_clone(tree: Any) -> Any:
    """The same nesting (torch's pytree: tuples, lists, dicts, NamedTuples), each tensor cloned
    (a static buffer). A tensor met twice is cloned once: the step may test identity (a mix step
    whose SSL and SL images are one tensor embeds them once)."""
    clones: dict[int, torch.Tensor] = {}

    def clone(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in clones:
            clones[id(t)] = t.clone()
        return clones[id(t)]

    return tree_map_only(torch.Tensor, clone, tree)


def tree_copy_(dst: Any, src: Any) -> None:
    """Write every tensor of `src` into the tensor at the same place of `dst` (same nesting,
    shapes and dtypes; other leaves, such as ints, were captured and must be equal)."""
    dst_leaves, dst_spec = tree_flatten(dst)
    src_leaves, src_spec = tree_flatten(src)
    if dst_spec != src_spec:
        raise ValueError(f"a captured step got inputs nested as {src_spec}, captured {dst_spec}")
    for d, s in zip(dst_leaves, src_leaves, strict=True):
        if not isinstance(d, torch.Tensor):
            if d != s:
                raise ValueError(f"a captured step got {s!r} where it was captured with {d!r}")
        elif d.shape != s.shape or d.dtype != s.dtype:
            raise ValueError(f"a captured step got {s.dtype}{list(s.shape)}, "
                             f"captured {d.dtype}{list(d.shape)}")  # fmt: skip
        else:
            d.copy_(s, non_blocking=True)


class StepGraphs:
    """One captured step per key (the phase and its optimizer), replayed on every later step.

    `step(key, run, inputs, params)`: `run(*inputs)` does one whole training step and returns
    (loss, parts); `params` are the trainable parameters (their gradients are set to None
    before capture and after every step). `graph_factory` makes the graph objects
    (torch.cuda.CUDAGraph; tests pass a stand-in that runs the step again on replay).
    """

    def __init__(
        self, device: torch.device, graph_factory: Callable[[], Any] | None = None
    ) -> None:
        self.device = device
        self.graph_factory = graph_factory or torch.cuda.CUDAGraph
        self.pool = None
        self.warm: dict[Any, int] = {}
        self.captured: dict[Any, tuple[Any, Any, Any]] = {}  # key -> (graph, inputs, outputs)
        self.replays = 0

    def step(self, key: Any, run: Step, inputs: tuple, params: list[torch.Tensor]):
        if key in self.captured:
            graph, static_in, static_out = self.captured[key]
            tree_copy_(static_in, inputs)
            graph.replay()
            self.replays += 1
            _drop_grads(params)
            return static_out
        if self.warm.get(key, 0) < WARMUP:
            self.warm[key] = self.warm.get(key, 0) + 1
            out = self._side_stream(lambda: run(*inputs))
            _drop_grads(params)
            return out
        static_in = tree_clone(inputs)
        _drop_grads(params)
        graph = self.graph_factory()
        static_out = self._capture(graph, lambda: run(*static_in))
        self.captured[key] = (graph, static_in, static_out)
        graph.replay()  # capturing records the step; this replay makes it
        self.replays += 1
        _drop_grads(params)
        return static_out

    def forget(self, keep: Callable[[Any], bool]) -> None:
        """Drop the graphs (and warm-up counts) whose key `keep` refuses, e.g. the previous
        optimizer's after a stage change."""
        self.captured = {k: v for k, v in self.captured.items() if keep(k)}
        self.warm = {k: v for k, v in self.warm.items() if keep(k)}

    def _side_stream(self, fn: Callable[[], Any]) -> Any:
        if self.device.type != "cuda":
            return fn()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            out = fn()
        torch.cuda.current_stream(self.device).wait_stream(side)
        return out

    def _capture(self, graph: Any, fn: Callable[[], Any]) -> Any:
        if not isinstance(graph, torch.cuda.CUDAGraph):
            return graph.capture(fn)
        torch.cuda.synchronize(self.device)
        with torch.cuda.graph(graph, pool=self.pool):
            out = fn()
        self.pool = graph.pool()
        return out


def _drop_grads(params: list[torch.Tensor]) -> None:
    for p in params:
        p.grad = None


__all__ = [
    "WARMUP",
    "StepGraphs",
    "cuda_graph_blockers",
    "make_step_graphs",
    "tree_clone",
    "tree_copy_",
    "whole_step",
]
