"""Weights files as the parts of a MixMAE: read, recognise, split (encoder / decoder / extra
heads), nothing loaded into a model yet (mixfast/model/weights.py adapts and loads them).

Files read (torch.load with weights_only=True, argparse.Namespace allow-listed; .safetensors
with safetensors; a file whose loading would run other code is refused):

* MAE main_pretrain.py checkpoints (facebookresearch/mae util/misc.py `save_model`):
  {"model", "optimizer", "epoch", "scaler", "args"}; "model" holds models_mae.py's keys: the
  encoder's (cls_token, pos_embed, patch_embed.proj, blocks.N, norm: timm's names) and the
  decoder's (decoder_embed, mask_token, decoder_pos_embed, decoder_blocks.N, decoder_norm,
  decoder_pred: ours). `args.norm_pix_loss` is the reconstruction target.
* MAE's released encoders ({"model": {encoder keys}}, e.g. mae_pretrain_vit_base.pth).
* timm state_dicts (.pth / .bin / .safetensors, or a timm train checkpoint's "state_dict").
* mixfast's DIR/last.pt ("model": MixMAE keys) and `export_encoder` files (timm state_dicts).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mixfast.checks import SettingError

__all__ = [
    "DECODER_KEYS",
    "DECODER_PREFIXES",
    "LISTED",
    "WeightsSource",
    "plain",
    "read_weights",
    "source_of_state",
]

DECODER_PREFIXES = ("decoder_embed.", "decoder_blocks.", "decoder_norm.", "decoder_pred.")
DECODER_KEYS = ("mask_token", "decoder_pos_embed")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers
LISTED = 6  # keys (or entries) named per kind of mismatch


@dataclass
class WeightsSource:
    """A weights file split into the parts of a MixMAE (keys as the model spells them).

    `encoder`: timm VisionTransformer keys (head 0 is `head.*`); `decoder`: MAE decoder keys
    (empty: an encoder-only file); `extra_heads`: `extra_heads.*` keys without the prefix;
    `norm_pix_loss`: the reconstruction target the file was trained with, when it says;
    `head_labels`: what each head's classes mean, per task, when it says (mixfast checkpoints).
    """

    setting: str  # the setting that named it: "pretrained_path" or "pretrained"
    name: str  # the file (or timm model) as the user gave it
    kind: str  # what the file is, in words
    encoder: dict[str, torch.Tensor]
    decoder: dict[str, torch.Tensor] = field(default_factory=dict)
    extra_heads: dict[str, torch.Tensor] = field(default_factory=dict)
    norm_pix_loss: bool | None = None
    head_labels: list[list[str]] | None = None
    notes: list[str] = field(default_factory=list)  # what reading it found

    def error(self, text: str) -> SettingError:
        return SettingError(f"{{{self.setting}}} {plain(self.name)}: {text}")


# ---------------------------------------------------------------------------------- reading


def read_weights(path: str | os.PathLike, setting: str = "pretrained_path") -> WeightsSource:
    """Read a weights file (see the module's docstring for the formats) without running code.

    SettingError (naming the file): missing, unreadable, refused (it would run code on load),
    or not a layout this reader knows.
    """
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise SettingError(f"{{{setting}}} {plain(name)}: no such file")
    if path.suffix == ".safetensors":
        state, metadata = _load_safetensors(path, setting)
        source = source_of_state(setting, name, "a safetensors state_dict", state)
        source.head_labels = _export_labels(metadata)
        return source
    obj = _torch_load(path, setting)
    if not isinstance(obj, Mapping):
        raise SettingError(
            f"{{{setting}}} {plain(name)}: holds a {type(obj).__name__}, not a state_dict or a "
            "checkpoint (a dict of weights)"
        )
    return _from_object(setting, name, obj)


def _load_safetensors(path: Path, setting: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(the tensors, the file's metadata), in one read."""
    try:
        from safetensors import safe_open
    except ImportError as err:  # pragma: no cover - safetensors ships with timm
        raise SettingError(
            f"{{{setting}}} {plain(str(path))}: reading .safetensors needs "
            "`pip install safetensors`"
        ) from err
    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            return {key: file.get_tensor(key) for key in file.keys()}, file.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - any parse failure names the file
        raise SettingError(
            f"{{{setting}}} {plain(str(path))}: not a readable safetensors file "
            f"({type(exc).__name__}: {plain(str(exc))[:200]})"
        ) from exc


def _torch_load(path: Path, setting: str) -> Any:
    """torch.load(weights_only=True) with argparse.Namespace allowed (MAE's and timm's
    checkpoints store their args as one); memory-mapped when the file is a zip archive."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(
                path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
            )
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found is None:  # not a pickle torch writes: garbage, another format
            raise SettingError(
                f"{{{setting}}} {plain(str(path))}: not a readable torch file "
                f"({plain(_unpickler_error(str(exc)))[:200]})"
            ) from exc
        raise SettingError(
            f"{{{setting}}} {plain(str(path))}: refused: loading it would run code, not only "
            f"read weights (it needs {plain(found.group(1))}, which a weights-only load does "
            "not allow); only weights-only torch files and .safetensors are read (re-save its "
            "state_dict with torch.save or safetensors where you trust the file)"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - truncated, not a torch file, ...
        raise SettingError(
            f"{{{setting}}} {plain(str(path))}: not a readable torch file "
            f"({type(exc).__name__}: {plain(str(exc))[:200]})"
        ) from exc


def _unpickler_error(text: str) -> str:
    """The line of torch's weights-only error that says what failed."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for index, line in enumerate(lines):
        if "WeightsUnpickler error" in line:
            rest = line.split("WeightsUnpickler error:", 1)[-1].strip()
            return rest or (lines[index + 1] if index + 1 < len(lines) else line)
    return lines[0] if lines else "unpickling failed"


def _from_object(setting: str, name: str, obj: Mapping) -> WeightsSource:
    """The layout of a loaded torch file: a mixfast checkpoint, an MAE checkpoint (or encoder),
    a timm train checkpoint or a plain state_dict."""
    from mixfast.checkpoint import FORMAT, REQUIRED_KEYS

    if obj.get("format") == FORMAT:
        missing = [key for key in REQUIRED_KEYS if key not in obj]
        if missing:
            raise SettingError(
                f"{{{setting}}} {plain(name)}: an incomplete mixfast checkpoint (no {missing})"
            )
        if obj["model"] is None and obj.get("shards"):
            raise SettingError(
                f"{{{setting}}} {plain(name)}: a sharded (--fsdp) checkpoint, its weights in "
                f"{obj['shards']}/ beside it; make one file first: "
                "mixfast.train.sharded_checkpoint.consolidate(RUN_DIR, FILE) (docs/checkpoints.md)"
            )
        position = obj.get("position") or {}
        step = position.get("global_step") if isinstance(position, Mapping) else None
        at = f" after {step} optimizer steps" if step is not None else ""
        source = source_of_state(setting, name, f"a mixfast checkpoint{at}", obj["model"])
        source.head_labels = _head_labels(obj.get("head_labels"))
        source.notes.append("its optimizer, position and settings are not used: a new run starts")
        if obj.get("model_ema") is not None:
            source.notes.append("its EMA weights (model_ema) are not used: the raw weights load")
        return source
    if isinstance(obj.get("model"), Mapping):  # facebookresearch/mae save_model / releases
        state = obj["model"]
        extras = sorted(k for k in obj if k != "model")
        epoch = obj.get("epoch")
        if "optimizer" in obj or "args" in obj:
            kind = "an MAE main_pretrain.py checkpoint"
            kind += f" (epoch {epoch})" if isinstance(epoch, int) else ""
        else:
            kind = "an MAE weights file ('model' only)"
        source = source_of_state(setting, name, kind, state)
        if extras:
            source.notes.append(
                f"its {', '.join(map(str, extras))} are not used (args: norm_pix_loss only)"
                if "args" in extras
                else f"its {', '.join(map(str, extras))} are not used"
            )
        args = obj.get("args")
        norm_pix = getattr(args, "norm_pix_loss", None)
        if isinstance(norm_pix, bool):
            source.norm_pix_loss = norm_pix
        return source
    if isinstance(obj.get("state_dict"), Mapping):  # timm train.py checkpoints
        return source_of_state(
            setting, name, "a timm train checkpoint ('state_dict')", obj["state_dict"]
        )
    return source_of_state(setting, name, "a state_dict", obj)


def _export_labels(metadata: Mapping[str, str]) -> list[list[str]] | None:
    """Head 0's class names a mixfast export recorded in its safetensors metadata (else None)."""
    from mixfast.checkpoint import EXPORT_LABELS_KEY

    text = metadata.get(EXPORT_LABELS_KEY)
    try:
        return _head_labels(json.loads(text)) if text else None
    except ValueError:  # not JSON: the classes stay unknown
        return None


def _head_labels(value: Any) -> list[list[str]] | None:
    """A checkpoint's head_labels when well formed (lists of strings), else None (unknown)."""
    if not isinstance(value, list) or not all(isinstance(task, list) for task in value):
        return None
    if not all(isinstance(label, str) for task in value for label in task):
        return None
    return [list(task) for task in value]


def source_of_state(setting: str, name: str, kind: str, state: Mapping) -> WeightsSource:
    """Split a flat state_dict into encoder (timm keys), decoder and extra heads."""
    bad = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
    if bad or not state:
        what = f"non-tensor entries {bad[:LISTED]}" if bad else "no tensors"
        raise SettingError(
            f"{{{setting}}} {plain(name)}: {kind} with {plain(what)}: not a layout of weights "
            "this reader knows (a state_dict, an MAE or mixfast checkpoint)"
        )
    source = WeightsSource(setting, name, kind, encoder={})
    for key, value in state.items():
        key = _unwrap(str(key))
        if key.startswith("encoder."):
            source.encoder[key[len("encoder.") :]] = value
        elif key.startswith("extra_heads."):
            source.extra_heads[key[len("extra_heads.") :]] = value
        elif key in DECODER_KEYS or key.startswith(DECODER_PREFIXES):
            source.decoder[key] = value
        else:
            source.encoder[key] = value
    return source


def _unwrap(key: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        while key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def plain(text: str) -> str:
    """Foreign text in a SettingError template: braces would read as setting names."""
    return text.replace("{", "(").replace("}", ")")
