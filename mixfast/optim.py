"""AdamW parameter groups (no decay on norms/biases/tokens, layer-wise lr decay), one AdamW
update for all groups, and the per-stage warmup + cosine learning rate, as MAE uses them."""

from __future__ import annotations

import math
import re

import torch
from torch import nn

# Parameters that MAE / timm keep out of weight decay besides every 1-D tensor.
NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token", "reg_token", "dist_token")
_BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
_EMBED = ("patch_embed", "pos_embed", "cls_token", "reg_token", "dist_token")


def encoder_depth(model: nn.Module) -> int:
    """Number of encoder blocks: `model.encoder.blocks` (or `model.blocks`)."""
    encoder = getattr(model, "encoder", model)
    blocks = getattr(encoder, "blocks", None)
    return len(blocks) if blocks is not None else 0


def layer_id(name: str, depth: int) -> int:
    """0 for the embeddings, i + 1 for encoder block i, depth + 1 for the rest (norm, heads,
    decoder): the BEiT / MAE assignment. Decoder blocks (`decoder_blocks.N`) are not encoder
    blocks, so they land in the last group."""
    if name.startswith("decoder") or ".decoder" in name:
        return depth + 1
    match = _BLOCK.search(name)
    if match:
        return int(match.group(1)) + 1
    leaf = name.split(".")
    if any(part in _EMBED for part in leaf):
        return 0
    return depth + 1


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """AdamW groups; each carries `lr_scale` = layer_decay ** (depth + 1 - layer_id)."""
    depth = encoder_depth(model)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim <= 1 or any(part in NO_DECAY_NAMES for part in name.split("."))
        layer = layer_id(name, depth) if layer_decay != 1.0 else depth + 1
        key = (layer, no_decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "names": [],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": layer_decay ** (depth + 1 - layer),
            }
        groups[key]["params"].append(param)
        groups[key]["names"].append(name)
    return [groups[key] for key in sorted(groups)]


class GroupedAdamW(torch.optim.Optimizer):
    """AdamW whose step updates every parameter group at once: a fixed number of multi-tensor
    (`torch._foreach_*`) calls per step however many groups layer decay makes (torch's AdamW
    runs its update once per group: 28 groups with ViT-Tiny's layer decay). Each group's
    `lr_scale` and `weight_decay` become per-parameter constants; the learning rate is a 0-dim
    device tensor (`set_lr` writes it in place), so no step reads a Python float that a captured
    graph would freeze. The math is torch's AdamW (decoupled weight decay, bias correction);
    the state (step, exp_avg, exp_avg_sq per parameter) and state_dict are torch's too.

    `fused` (default: on CPU) runs torch's fused AdamW kernel once per group instead: on a CPU
    every `_foreach_*` op loops over the tensors one by one, so the multi-tensor update costs
    about 14 small ops per parameter there, the fused kernel one pass per group.
    """

    def __init__(
        self,
        groups: list[dict],
        betas: tuple[float, float],
        eps: float = 1e-8,
        fused: bool | None = None,
    ):
        super().__init__(groups, dict(lr=0.0, betas=betas, eps=eps, weight_decay=0.0))
        device = self.param_groups[0]["params"][0].device
        self.lr = torch.zeros((), dtype=torch.float32, device=device)
        self.fused = device.type == "cpu" if fused is None else fused

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - torch's Optimizer.step contract
        params, grads, scales, decays = [], [], [], []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    params.append(p)
                    grads.append(p.grad)
                    scales.append(group.get("lr_scale", 1.0))
                    decays.append(group["weight_decay"] * group.get("lr_scale", 1.0))
        if not params:
            return None
        beta1, beta2 = self.param_groups[0]["betas"]
        eps = self.param_groups[0]["eps"]
        for p in params:
            if not self.state[p]:
                self.state[p].update(
                    step=torch.zeros((), dtype=torch.float32, device=p.device),
                    exp_avg=torch.zeros_like(p, memory_format=torch.preserve_format),
                    exp_avg_sq=torch.zeros_like(p, memory_format=torch.preserve_format),
                )
        states = [self.state[p] for p in params]
        steps = [s["step"] for s in states]
        exp_avgs, exp_avg_sqs = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
        torch._foreach_add_(steps, 1.0)
        if self.fused:
            return self._fused_step(beta1, beta2, eps)
        step = steps[0]  # every parameter steps together
        torch._foreach_lerp_(exp_avgs, grads, 1.0 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1.0 - beta2)
        bias1 = 1.0 - torch.pow(beta1, step)
        bias2_sqrt = (1.0 - torch.pow(beta2, step)).sqrt()
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, bias2_sqrt)
        torch._foreach_add_(denom, eps)
        update = torch._foreach_div(exp_avgs, denom)
        torch._foreach_div_(update, bias1)
        torch._foreach_mul_(update, scales)  # layer-wise lr scale
        torch._foreach_add_(update, torch._foreach_mul(params, decays))  # decoupled decay
        torch._foreach_mul_(update, self.lr)
        torch._foreach_sub_(params, update)
        return None

    def _fused_step(self, beta1: float, beta2: float, eps: float) -> None:
        """torch's fused AdamW per group (steps already counted): lr x the group's scale."""
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            states = [self.state[p] for p in params]
            torch._fused_adamw_(
                params,
                [p.grad for p in params],
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                [],
                [s["step"] for s in states],
                lr=self.lr * group.get("lr_scale", 1.0),
                beta1=beta1,
                beta2=beta2,
                weight_decay=group["weight_decay"],
                eps=eps,
                amsgrad=False,
                maximize=False,
            )


def make_adamw(
    model: nn.Module,
    *,
    weight_decay: float,
    layer_decay: float,
    betas: tuple[float, float],
    fused: bool | None = None,
) -> GroupedAdamW:
    """GroupedAdamW over `param_groups` (`fused`: see GroupedAdamW; default on CPU)."""
    groups = param_groups(model, weight_decay, layer_decay)
    for group in groups:
        group.pop("names")
    return GroupedAdamW(groups, betas=betas, fused=fused)


def warmup_cosine(step: int, total: int, warmup: int, peak: float, floor: float = 0.0) -> float:
    """Linear warmup to `peak` over `warmup` steps, then half-cosine down to `floor`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    span = max(total - warmup, 1)
    t = min((step - warmup) / span, 1.0)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The stage's lr: GroupedAdamW's device tensor (in place), and each group's `lr` (its
    scaled value, for reading and for torch optimizers)."""
    if isinstance(getattr(optimizer, "lr", None), torch.Tensor):
        optimizer.lr.fill_(lr)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
