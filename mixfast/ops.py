"""Public ops of mixfast. Each is a torch.library custom op (namespace `mixfast`) that picks
the Triton kernel or the plain-PyTorch reference (see mixfast/_backend.py)."""

from mixfast._attention import varlen_attention  # noqa: F401
from mixfast._patch_embed import masked_patch_embed, packed_patch_embed  # noqa: F401
