"""Checkpoints of a mixfast run: `DIR/last.pt`, written atomically, loaded with weights_only.

Layout (a dict; every value is a tensor or plain Python data, so `torch.load(path,
weights_only=True)` reads it):

    format         "mixfast-checkpoint-1"
    model          the full MixTraining model's state_dict (encoder under `encoder.*` with
                   timm's VisionTransformer keys, then the MAE decoder and the heads)
    optimizer      AdamW state_dict of the current stage ("pretrain" or "finetune")
    stage          the optimizer stage that `optimizer` belongs to
    position       {"epoch": index in the plan, "step_in_epoch": optimizer steps done in it,
                    "global_step": optimizer steps done in total, "micro_step": micro-batches
                    done in total (it keys the masking offsets), "finished": bool}
    streams        per data stream {"cycle": passes started, "pos": micro-batches done in the
                   current pass}: with the seed this fixes the data order exactly
    rng            {"torch": CPU generator state, "cuda": list of per-GPU states,
                    "python": random.getstate(), "numpy": numpy's MT19937 state as lists}
    augment_rng    state of the on-device augmentation's own generator (None without one)
    head_labels    what each head's classes mean, per task (lists of class names; None when the
                   model was built without them): --pretrained-path loads a head only into a
                   run whose classes are the same (mixfast/model/weights.py)
    model_ema      model_ema's {"started": bool, "weights": the EMA model's state_dict} (None
                   without it); the recipe's other draws are keyed, they have no state
    epoch_state    running sums of the epoch in progress (losses, micro-batches, seconds);
                   None at an epoch boundary
    totals         wall seconds per phase, evaluation seconds, sample-passes per objective
                   and skipped steps so far
    rows           the metrics.jsonl rows written so far (rewritten from here on resume)
    config         dataclasses.asdict(TrainConfig)
    shards         under --fsdp only: the DCP folder beside last.pt holding "model" and
                   "optimizer" (both None here; mixfast/train/sharded_checkpoint.py)
    resolved       what the run derived: absolute lrs, effective batch (per device x devices
                   x accumulation), warmup and total steps per stage, steps per epoch, plan,
                   budget, world size, device, compile and amp in effect

The encoder alone, for timm: `model.export_timm()` returns a timm VisionTransformer.

    vit = model.export_timm()
    torch.save(vit.state_dict(), "encoder.pt")       # load with timm.create_model(...).load_state_dict
    from safetensors.torch import save_file           # if safetensors is installed
    save_file(vit.state_dict(), "encoder.safetensors")

`export_encoder(model, path)` does exactly that (safetensors when the path ends in
.safetensors). From a checkpoint: build the model with the run's settings, then
`load_model_state(model, load_checkpoint(path)["model"])`, which names every missing or
unexpected key instead of ignoring it.
"""

from __future__ import annotations

import json
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mixfast.checks import SettingError

FORMAT = "mixfast-checkpoint-1"


MARKER = ".mixfast-run"  # written when a run folder is created: the folder belongs to mixfast
LOCK = ".lock"
_held_locks: dict[Path, int] = {}  # run folders this process holds the lock of -> fd


def check_run_folder(out: str | os.PathLike, resume: bool) -> Path:
    """A run folder `out` a run may use: a folder or nothing yet (never a file), writable, a
    mixfast run folder (its marker) or an empty one; holding a run only when resuming, and a
    checkpoint to resume from when resuming."""
    path = Path(out)
    if str(out) == "":
        raise SettingError("{out} must name a folder, got ''")
    if path.exists() and not path.is_dir():
        raise SettingError(f"{{out}} {path} is a file, not a folder")
    last, result = path / "last.pt", path / "result.json"
    if resume and not last.is_file():
        raise SettingError(f"{{resume}}: {last} does not exist (nothing to resume)")
    if not resume and (last.exists() or result.exists()):
        raise SettingError(
            f"{{out}} {str(path)!r} already holds a run ({last.name} / {result.name}); pass "
            "{resume} to continue it or choose another {out}"
        )
    if not resume and path.is_dir() and not (path / MARKER).exists() and any(path.iterdir()):
        raise SettingError(
            f"{{out}} {path} holds files but is not a mixfast run folder (no {MARKER}); "
            "choose a new or empty folder"
        )
    parent = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SettingError(f"{{out}} {path}: {parent} is not writable")
    return path


def claim_run_folder(out: str | os.PathLike) -> Path:
    """Create the run folder with its marker and hold its exclusive lock until this process
    ends (or `release_run_folder`); a second run on the same folder is refused."""
    import fcntl

    path = Path(out).resolve()
    if path in _held_locks:
        return path
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SettingError(
            f"{{out}} {path}: another mixfast run is writing to this folder (it holds {LOCK})"
        ) from None
    _held_locks[path] = fd
    if not (path / MARKER).exists():
        write_text(path / MARKER, "a mixfast run folder\n")
    return path


def release_run_folder(out: str | os.PathLike) -> None:
    fd = _held_locks.pop(Path(out).resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the lock


class RunFolder:
    """The folder of one run, owned by whoever starts the run: checked when made (see
    check_run_folder), claimed once (`claim`: created, marked, locked) before the first file is
    written, and released once (`release`, or leaving a `with` block). `checkpoint()` loads
    last.pt once for everyone who reads it. `resume="auto"` resumes when last.pt exists and
    starts the run otherwise (what a torchrun restart needs: the same command line)."""

    def __init__(self, out: str | os.PathLike, resume: bool | str) -> None:
        if resume == "auto":  # the same command line starts a run and continues it
            resume = (Path(out) / "last.pt").is_file()
        self.path = check_run_folder(out, resume)
        self.resume: bool = resume
        self._checkpoint: dict[str, Any] | None = None

    def claim(self) -> RunFolder:
        claim_run_folder(self.path)
        remove_stale_temporaries(self.path)
        return self

    def release(self) -> None:
        release_run_folder(self.path)

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()

    def checkpoint(self) -> dict[str, Any]:
        """DIR/last.pt (load_checkpoint), read once."""
        if self._checkpoint is None:
            self._checkpoint = load_checkpoint(self.path / "last.pt")
        return self._checkpoint

    def forget_checkpoint(self) -> None:
        """Drop the loaded checkpoint (its tensors) once the run has taken its state."""
        self._checkpoint = None


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temp files a kill during write_atomic left behind (`.NAME.*.tmp`)."""
    stale = [p for p in folder.glob(".*.tmp") if p.is_file() and not p.is_symlink()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def write_atomic(path: str | os.PathLike, write: Any, *, binary: bool = False) -> Path:
    """The one writer of every run-folder file: `write(handle)` fills a temp file created with
    a unique name in the same folder (O_EXCL: never a file or link already there), then
    os.replace puts it at `path`, so a reader or a kill never sees half a file. The temp file
    is created with mode 0o666 and the kernel applies the umask (and a folder's default ACL),
    as for a plain open(): no umask is read or changed, so threads cannot race on it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _create_temp(path: Path) -> tuple[int, str]:
    """(fd, name) of a new `.NAME.<random>.tmp` beside `path`, opened O_CREAT | O_EXCL with
    mode 0o666 (tempfile.mkstemp's fixed 0o600 would survive the rename)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{os.urandom(6).hex()}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{path.parent}: no unused temporary name for {path.name}")


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_atomic(path, lambda handle: handle.write(text))


def read_json(path: str | os.PathLike) -> Any:
    """A run-folder JSON file, or None when it is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write `state` to `path` atomically (write_atomic), with the format tag."""
    write_atomic(path, lambda handle: torch.save({"format": FORMAT, **state}, handle), binary=True)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and why."""


REQUIRED_KEYS = ("model", "optimizer", "stage", "position", "streams", "config", "resolved")


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu") -> dict[str, Any]:
    """DIR/last.pt as a dict (weights_only). CheckpointError: missing, empty or truncated,
    not a mixfast checkpoint, or one that would run code on load."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path} is empty (truncated): not a usable checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} is not a mixfast checkpoint (not a weights-only torch file; "
            f"torch says: {str(exc).splitlines()[0][:120]})"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - any parse failure: arbitrary bytes fail anyhow
        kind = "truncated" if isinstance(exc, EOFError) or "zip" in str(exc) else "unreadable"
        raise CheckpointError(
            f"{path} is {kind}: not a mixfast checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a mixfast checkpoint (format {FORMAT!r})")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{path} is not a complete mixfast checkpoint: no {missing}")
    return state


def load_model_state(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """load_state_dict that fails naming every missing and unexpected key, or every shape that
    differs (CheckpointError: the checkpoint was made by another model)."""
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as exc:  # shapes differ
        sizes = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        raise CheckpointError(
            "checkpoint made by another model (does not match this one); "
            + "; ".join(sizes[:5] or [str(exc)[:300]])
            + (f"; and {len(sizes) - 5} more" if len(sizes) > 5 else "")
        ) from exc
    problems = []
    if result.missing_keys:
        problems.append("missing keys: " + ", ".join(result.missing_keys))
    if result.unexpected_keys:
        problems.append("unexpected keys: " + ", ".join(result.unexpected_keys))
    if problems:
        raise CheckpointError(
            "checkpoint made by another model (does not match this one); " + "; ".join(problems)
        )


# the safetensors metadata key of an export's head-0 class names (JSON), which --pretrained-path
# reads as a last.pt's head_labels; a .pt export is a bare state_dict and names no classes
EXPORT_LABELS_KEY = "mixfast.head_labels"


def export_encoder(model: nn.Module, path: str | os.PathLike) -> Path:
    """Save the encoder as a timm VisionTransformer state_dict (.safetensors or torch.save);
    a .safetensors file also records head 0's class names (model.head_labels) in its metadata."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.export_timm().state_dict().items()}
    labels = getattr(model, "head_labels", None)
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import save_file
        except ImportError as err:
            raise ImportError(
                "saving .safetensors needs `pip install safetensors`; "
                "or use a .pt path (torch.save)"
            ) from err
        metadata = {EXPORT_LABELS_KEY: json.dumps(labels[:1])} if labels else None
        save_file(state, str(path), metadata=metadata)
    else:
        torch.save(state, path)
    return path


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
