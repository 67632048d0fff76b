"""`python -m mixfast` for the demo screen; MIXFAST_SCREEN=gap classifies from the mean of the
patch tokens (after the final norm) instead of the cls token."""

import os
import sys


def patch_gap() -> None:
    """Make MixMAE.forward_sl classify from the mean of the normed patch tokens."""
    import mixfast.model.mae as mae

    def forward_sl(self, images, task=0):
        x = self.encoder.blocks(self.prepend_cls(self.embed_patches(images)))
        return self.head(self.encoder.norm(x)[:, 1:].mean(1), task)

    mae.MixMAE.forward_sl = forward_sl


if __name__ == "__main__":
    if "gap" in os.environ.get("MIXFAST_SCREEN", ""):
        patch_gap()

    from mixfast.cli import main

    sys.exit(main())
