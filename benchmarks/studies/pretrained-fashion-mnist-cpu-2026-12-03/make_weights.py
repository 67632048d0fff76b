"""The pre-trained weights the study starts from: DIR/last.pt of the pre-training run without
its classification heads, as a plain state_dict (MixMAE keys: encoder and MAE decoder).

The pre-training labels classes 0-4 and the study fine-tunes on classes 5-9: five classes
each. When the study ran, `--pretrained-path` loaded a head whose number of classes matched, so
last.pt's head 0 would have loaded; since then last.pt records its class names and the default
`--pretrained-head auto` leaves a head of other classes fresh (docs/weights.md). The head is
still left out here, so the study's file is what it was. An MAE checkpoint carries no head;
without one the run's head starts fresh, as from MAE's weights.

    python make_weights.py RUN_DIR/last.pt OUT.pt
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch


def strip_heads(checkpoint: Path, out: Path) -> list[str]:
    """Write `checkpoint`'s model weights without head keys to `out`; return the dropped keys."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = saved["model"]
    dropped = [k for k in model if k.startswith(("encoder.head.", "extra_heads."))]
    kept = {k: v.contiguous() for k, v in model.items() if k not in dropped}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(kept, out)
    return dropped


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    dropped = strip_heads(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"{sys.argv[2]}: {sys.argv[1]}'s weights without {', '.join(dropped) or 'no keys'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
