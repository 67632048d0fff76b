"""Pretrained weights into a `MixMAE`, with timm's spellings: read a file (weight_files.py),
check that it fits the run's model, adapt what timm adapts, load, and say what was done (a list
of notes).

    notes = load_weights(model, "mae_pretrain_vit_base.pth")       # --pretrained-path FILE
    notes = load_timm_pretrained(model, "vit_base_patch16_224.mae")  # --pretrained

Adaptation (each step is a note): the position embedding resampled to the run's grid
(timm resample_abs_pos_embed, one prefix token); the patch embedding resampled to the run's patch
size (timm resample_patch_embed; decoder_pred then starts fresh) and adapted to its input
channels (timm adapt_input_conv); each task's head loaded by the `head` rule (HEAD_RULES: by
default only from a file that records the same class names, as mixfast checkpoints do; a head
that does not load starts fresh); the decoder loaded when present (its decoder_pos_embed is not: ours
is the fixed sin-cos of the run's grid), fresh otherwise. Anything else that differs (width,
depth, MLP size, decoder width or depth, layers one side lacks) is a `SettingError` naming the
file, the keys and their shapes, raised before the model is touched. Attention heads are not
stored in weights: they come from the run's settings. `args.norm_pix_loss` of an MAE checkpoint
sets the model's reconstruction target.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mixfast.checks import SettingError, check_choice
from mixfast.model.weight_files import (
    DECODER_KEYS,
    DECODER_PREFIXES,
    LISTED,
    WeightsSource,
    plain,
    read_weights,
    source_of_state,
)

__all__ = [
    "HEAD_RULES",
    "WeightsSource",
    "apply_weights",
    "load_timm_pretrained",
    "load_weights",
    "read_weights",
]

ADAPTED = ("pos_embed", "patch_embed.proj.weight", "head.weight", "head.bias")
# which heads of a file load: "auto" those recorded with the run's class names (a class count
# alone says nothing of what the classes mean: ten classes of one dataset are not another's
# ten); "keep" every head whose class count matches (timm's and MAE's fine-tuning rule);
# "reset" none. A head that does not load starts fresh, as the task's new head.
HEAD_RULES = ("auto", "keep", "reset")


# ---------------------------------------------------------------------------------- loading


def load_weights(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    setting: str = "pretrained_path",
    head: str = "auto",
) -> list[str]:
    """Read `path`, check that it fits `model`, adapt and load it (its heads by the `head`
    rule, HEAD_RULES). -> the notes, one line each.

    SettingError before the model is touched when the file is refused or does not fit.
    """
    return apply_weights(model, read_weights(path, setting), head=head)


def apply_weights(model: nn.Module, source: WeightsSource, *, head: str = "auto") -> list[str]:
    """Load a read `WeightsSource` into a MixMAE (see the module docstring). -> the notes."""
    check_choice("pretrained_head", head, HEAD_RULES)
    _check_fit(model, source)  # every refusal first: nothing is changed before
    state, notes = _adapt(model, source, head)
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:  # pragma: no cover - _adapt only makes the model's keys
        raise RuntimeError(f"internal: keys the model lacks {result.unexpected_keys}")
    if source.norm_pix_loss is not None:
        before = bool(model.norm_pix_loss)
        model.norm_pix_loss = source.norm_pix_loss
        target = "per-patch normalised pixels" if source.norm_pix_loss else "raw pixels"
        changed = "" if before == source.norm_pix_loss else f" (was {before})"
        notes.append(
            f"reconstruction target set from the file's args.norm_pix_loss: "
            f"norm_pix_loss={source.norm_pix_loss}, {target}{changed}"
        )
    return notes


def load_timm_pretrained(
    model: nn.Module,
    name: str,
    *,
    pretrained_cfg_overlay: Mapping[str, Any] | None = None,
    head: str = "auto",
) -> list[str]:
    """The pretrained weights of timm model `name` (a tag allowed: "vit_base_patch16_224.mae")
    through timm's own loader and cache (`timm.create_model(name, pretrained=True)`, the
    model's own config), then adapted and loaded as `load_weights` does. -> the notes.

    SettingError naming the model and where timm looked when it cannot load them (offline:
    when the file is not in the cache). `pretrained_cfg_overlay` is passed on to timm (e.g.
    dict(file=PATH) to load a local file).
    """
    import timm

    overlay = dict(pretrained_cfg_overlay or {})
    where = _where_timm_looks(name, overlay)
    kwargs = {"pretrained_cfg_overlay": overlay} if overlay else {}
    try:
        with torch.random.fork_rng(devices=[]):  # the run's own draws stay as without weights
            # no init to draw: every tensor comes from the file (timm loads strictly)
            vit = timm.create_model(name, pretrained=True, weight_init="skip", **kwargs)
    except Exception as exc:  # noqa: BLE001 - not cached, no network, no such tag, ...
        raise SettingError(
            f"{{pretrained}}: timm could not load the pretrained weights of {plain(name)} "
            f"(it looked in {plain(where)}): {type(exc).__name__}: "
            f"{plain(str(exc).strip().splitlines()[0] if str(exc).strip() else '')[:200]}; "
            "offline they load only when cached there; or give the file with "
            "{pretrained_path}"
        ) from exc
    cfg = getattr(vit, "pretrained_cfg", {}) or {}
    tag = cfg.get("tag") or ""
    full = f"{cfg.get('architecture', name)}.{tag}" if tag else name
    source = source_of_state(
        "pretrained", name, f"timm's pretrained {full} (from {where})", vit.state_dict()
    )
    del vit
    return apply_weights(model, source, head=head)


def _where_timm_looks(name: str, overlay: Mapping[str, Any]) -> str:
    """Where timm's loader finds the weights of `name` (its pretrained cfg, as timm resolves it)."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - an unknown name: timm's own error follows
        cfg = None
    cfg_dict = {**(cfg.to_dict() if cfg is not None else {}), **overlay}
    if cfg_dict.get("file"):
        return f"the file {cfg_dict['file']}"
    if cfg_dict.get("hf_hub_id"):
        from huggingface_hub import constants

        return f"the Hugging Face cache {constants.HF_HUB_CACHE} (hub id {cfg_dict['hf_hub_id']})"
    if cfg_dict.get("url"):
        return f"{Path(torch.hub.get_dir()) / 'checkpoints'} (download {cfg_dict['url']})"
    return "no source: timm lists no pretrained weights for it"


# ---------------------------------------------------------------------------------- checks


def _check_fit(model: nn.Module, source: WeightsSource) -> None:
    """SettingError naming the file, keys and shapes when the weights cannot be adapted."""
    own = model.encoder.state_dict()
    enc = source.encoder
    wrong = [
        (k, enc[k].shape, own[k].shape)
        for k in own
        if k in enc and k not in ADAPTED and enc[k].shape != own[k].shape
    ]
    wrong += _adaptable_problems(own, enc)
    missing = [k for k in own if k not in enc and not k.startswith("head.")]
    unexpected = [k for k in enc if k not in own]
    parts = _encoder_summary(own, enc)
    if source.decoder:
        dec_own = {k: v for k, v in model.state_dict().items() if _is_decoder(k)}
        dec = {k: v for k, v in source.decoder.items() if k != "decoder_pos_embed"}
        wrong += [
            (k, dec[k].shape, dec_own[k].shape)
            for k in dec_own
            if k in dec and not k.startswith("decoder_pred.") and dec[k].shape != dec_own[k].shape
        ]
        missing += [k for k in dec_own if k not in dec and not k.startswith("decoder_pred.")]
        unexpected += [k for k in dec if k not in dec_own]
        parts += _decoder_summary(dec_own, dec)
    if not (wrong or missing or unexpected):
        return
    keys = []
    if wrong:
        shown = ", ".join(
            f"{k} {list(a)} in the file, {list(b)} in the model" for k, a, b in wrong[:LISTED]
        )
        keys.append(f"shapes differ: {shown}{_more(wrong)}")
    if unexpected:
        keys.append(f"only in the file: {', '.join(unexpected[:LISTED])}{_more(unexpected)}")
    if missing:
        keys.append(f"only in the model: {', '.join(missing[:LISTED])}{_more(missing)}")
    raise source.error(
        "the weights do not fit the run's model ("
        + "; ".join(parts + keys)
        + "); only the position embedding, patch size, input channels and heads are adapted"
    )


def _adaptable_problems(own: Mapping, enc: Mapping) -> list[tuple[str, Any, Any]]:
    """The adapted tensors that cannot be adapted: another width, or no cls position."""
    wrong = []
    width = own["cls_token"].shape[-1]
    pos = enc.get("pos_embed")
    if pos is not None and (
        pos.ndim != 3
        or pos.shape[0] != 1
        or pos.shape[2] != width
        or not _is_square(pos.shape[1] - 1)
    ):
        wrong.append(("pos_embed", pos.shape, own["pos_embed"].shape))
    proj = enc.get("patch_embed.proj.weight")
    if proj is not None and (proj.ndim != 4 or proj.shape[0] != width):
        wrong.append(("patch_embed.proj.weight", proj.shape, own["patch_embed.proj.weight"].shape))
    for key in ("head.weight", "head.bias"):
        tensor = enc.get(key)
        if tensor is None:
            continue
        fits = tensor.ndim == own[key].ndim and (key == "head.bias" or tensor.shape[1] == width)
        if not fits:
            wrong.append((key, tensor.shape, own[key].shape))
    return wrong


def _encoder_summary(own: Mapping, enc: Mapping) -> list[str]:
    parts = []
    width = _dim(enc, "cls_token", -1) or _dim(enc, "pos_embed", -1)
    if width is not None and width != own["cls_token"].shape[-1]:
        parts.append(
            f"encoder width {width} in the file, {own['cls_token'].shape[-1]} in the model "
            "(set {embed_dim} or another {model})"
        )
    depth, own_depth = _depth(enc, "blocks."), _depth(own, "blocks.")
    if depth and depth != own_depth:
        parts.append(f"encoder depth {depth} in the file, {own_depth} in the model ({{depth}})")
    mlp, own_mlp = _dim(enc, "blocks.0.mlp.fc1.weight", 0), _dim(own, "blocks.0.mlp.fc1.weight", 0)
    if mlp is not None and own_mlp is not None and mlp != own_mlp and not parts:
        parts.append(f"MLP size {mlp} in the file, {own_mlp} in the model (the {{model}}'s)")
    return parts


def _decoder_summary(own: Mapping, dec: Mapping) -> list[str]:
    parts = []
    width, own_width = _dim(dec, "mask_token", -1), _dim(own, "mask_token", -1)
    if width is not None and width != own_width:
        parts.append(
            f"decoder width {width} in the file, {own_width} in the model ({{decoder_dim}})"
        )
    depth, own_depth = _depth(dec, "decoder_blocks."), _depth(own, "decoder_blocks.")
    if depth and depth != own_depth:
        parts.append(
            f"decoder depth {depth} in the file, {own_depth} in the model ({{decoder_depth}})"
        )
    return parts


# ---------------------------------------------------------------------------------- adapting


def _adapt(
    model: nn.Module, source: WeightsSource, head: str
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The model's keys -> the tensors to load (adapted), and the notes of every step."""
    from timm.layers import resample_abs_pos_embed, resample_patch_embed
    from timm.models._manipulate import adapt_input_conv

    notes = [f"read {source.name}: {source.kind}", *source.notes]
    own = model.encoder.state_dict()
    enc = dict(source.encoder)
    grid = list(model.grid_size)

    pos = enc.get("pos_embed")
    if pos is not None and pos.shape != own["pos_embed"].shape:
        side = math.isqrt(pos.shape[1] - 1)
        enc["pos_embed"] = resample_abs_pos_embed(
            pos.float(), new_size=grid, old_size=[side, side], num_prefix_tokens=1
        )
        notes.append(
            f"encoder pos_embed resampled from a {side}x{side} to a {grid[0]}x{grid[1]} grid "
            "(timm resample_abs_pos_embed, bicubic; the cls position kept)"
        )
    proj = enc.get("patch_embed.proj.weight")
    patch_changed = False
    if proj is not None:
        _, chans, *size = own["patch_embed.proj.weight"].shape
        if proj.shape[1] != chans:
            notes.append(
                f"encoder patch_embed.proj.weight adapted from {proj.shape[1]} to {chans} input "
                "channels (timm adapt_input_conv)"
            )
            proj = adapt_input_conv(chans, proj.float(), base_chans=proj.shape[1])
        if list(proj.shape[2:]) != size:
            patch_changed = True
            notes.append(
                f"encoder patch_embed.proj.weight resampled from {proj.shape[2]}x{proj.shape[3]} "
                f"to {size[0]}x{size[1]} patches (timm resample_patch_embed)"
            )
            proj = resample_patch_embed(proj.float(), size)
        enc["patch_embed.proj.weight"] = proj
    state = {f"encoder.{k}": v for k, v in enc.items() if not k.startswith("head.")}
    loaded = len(state)
    notes.append(f"encoder loaded: {loaded} tensors ({_count(_depth(own, 'blocks.'), 'block')})")
    notes += _heads(model, source, head, state)
    notes += _decoder(model, source, state, patch_changed)
    heads = model.encoder.blocks[0].attn.num_heads
    dec_heads = model.decoder_blocks[0].attn.num_heads
    notes.append(
        f"attention heads are not stored in weights: {heads} encoder and {dec_heads} decoder "
        "heads, from the run's settings"
    )
    return state, notes


def _heads(model: nn.Module, source: WeightsSource, rule: str, state: dict) -> list[str]:
    """Each task's head into `state` when the `rule` (HEAD_RULES) lets it load; a note per task."""
    file_heads = {0: _file_head(source.encoder, "head.")}
    for k in range(1, model.num_tasks):
        file_heads[k] = _file_head(source.extra_heads, f"{k - 1}.")
    notes = []
    for task, classes in enumerate(model.task_classes):
        tensors = file_heads[task]
        names = _labels(source.head_labels, task), _labels(model.head_labels, task)
        why_not = _head_refusal(model, rule, classes, tensors, names)
        what = f"head of task {task} ({classes} classes)"
        if why_not:
            notes.append(f"{what} starts fresh: {why_not}")
            continue
        prefix = "encoder.head." if task == 0 else f"extra_heads.{task - 1}."
        state.update({prefix + name: tensor for name, tensor in tensors.items()})
        notes.append(f"{what} loaded: {_head_reason(rule, names)}")
    return notes


def _file_head(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """{"weight", "bias"} of one head of the file ({} unless it holds both)."""
    head = {name: tensors.get(prefix + name) for name in ("weight", "bias")}
    return head if all(t is not None for t in head.values()) else {}


Names = tuple[list[str] | None, list[str] | None]  # a head's class names: (the file's, the run's)


def _head_refusal(model: nn.Module, rule: str, classes: int, tensors: dict, names: Names) -> str:
    """Why the file's head (`tensors`) does not load ("" when it does)."""
    if rule == "reset":
        return "--pretrained-head reset"
    if not tensors:
        return "the file has none"
    if tensors["weight"].shape[0] != classes:
        return f"{tensors['weight'].shape[0]} classes in the file, {classes} in the run"
    width = model.encoder.embed_dim
    if tensors["weight"].shape[1:] != (width,) or tensors["bias"].shape != (classes,):
        shape = list(tensors["weight"].shape)
        return f"its weight is {shape} in the file, [{classes}, {width}] in the run"
    if rule == "keep":
        return ""
    file_labels, run_labels = names
    if file_labels is None:
        return (
            "the file does not record what its classes mean (only mixfast checkpoints do); "
            "--pretrained-head keep loads a head whose class count matches"
        )
    if run_labels is None:
        return "the run's classes are not named (create_model's head_labels)"
    return _other_classes(names) if file_labels != run_labels else ""


def _head_reason(rule: str, names: Names) -> str:
    """Why a head loaded (the rule let it: _head_refusal)."""
    file_labels, run_labels = names
    if rule == "auto":
        return f"the same classes ({_shown(run_labels)})"
    if file_labels is not None and run_labels is not None and file_labels != run_labels:
        return f"--pretrained-head keep, though {_other_classes(names)}"
    return "--pretrained-head keep: the class count matches"


def _other_classes(names: Names) -> str:
    file_labels, run_labels = names
    return f"its classes ({_shown(file_labels)}) are not the run's ({_shown(run_labels)})"


def _labels(labels: list[list[str]] | None, task: int) -> list[str] | None:
    return list(labels[task]) if labels is not None and task < len(labels) else None


def _shown(labels: list[str] | None, listed: int = 4) -> str:
    labels = labels or []
    more = f", ... ({len(labels)})" if len(labels) > listed else ""
    return ", ".join(labels[:listed]) + more


def _decoder(
    model: nn.Module, source: WeightsSource, state: dict, patch_changed: bool
) -> list[str]:
    if not source.decoder:
        return ["MAE decoder starts fresh: the file holds an encoder only"]
    notes = []
    own = {k: v for k, v in model.state_dict().items() if _is_decoder(k)}
    dec = source.decoder
    pred_fits = all(
        k in dec and dec[k].shape == own[k].shape for k in own if k.startswith("decoder_pred.")
    )
    for key in own:
        if key.startswith("decoder_pred.") and not pred_fits:
            continue
        state[key] = dec[key]
    depth = _depth(own, "decoder_blocks.")
    notes.append(
        f"MAE decoder loaded (width {own['mask_token'].shape[-1]}, {_count(depth, 'block')})"
    )
    if not pred_fits:
        p, c = model.patch_size, model.in_chans
        why = "the patch size changed" if patch_changed else "its pixels per patch differ"
        have = dec.get("decoder_pred.weight")
        size = f"{have.shape[0]} outputs in the file, " if have is not None else ""
        notes.append(
            f"decoder_pred starts fresh: {why} ({size}{p}x{p}x{c} = {p * p * c} in the run)"
        )
    if "decoder_pos_embed" in dec:
        gh, gw = model.grid_size
        notes.append(
            "the file's decoder_pos_embed is not loaded: the decoder's position embedding is the "
            f"fixed sin-cos of the run's {gh}x{gw} grid (as MAE's own)"
        )
    return notes


# ---------------------------------------------------------------------------------- helpers


def _is_decoder(key: str) -> bool:
    return key in DECODER_KEYS or key.startswith(DECODER_PREFIXES)


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def _dim(state: Mapping, key: str, axis: int) -> int | None:
    tensor = state.get(key)
    if tensor is None or tensor.ndim == 0:
        return None
    return int(tensor.shape[axis])


def _depth(state: Iterable[str], prefix: str) -> int:
    found = [re.match(re.escape(prefix) + r"(\d+)\.", k) for k in state]
    return 1 + max((int(m.group(1)) for m in found if m), default=-1)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _more(items: list) -> str:
    return f" and {len(items) - LISTED} more" if len(items) > LISTED else ""
