"""The model's outer contracts: the MixModel protocol the trainer relies on, and the state_dict
keys that checkpoints (last.pt) and MAE-format weights rely on."""

from __future__ import annotations

import inspect

import torch

from mixfast import random_masking
from mixfast.model import MixMAE, MixModel, create_model

SMALL = dict(
    img_size=16,
    patch_size=4,
    in_chans=1,
    depth=1,
    embed_dim=32,
    num_heads=2,
    task_classes=[5, 3],
    decoder_dim=16,
    decoder_depth=1,
    decoder_heads=2,
)


def small_model() -> MixMAE:
    return create_model("vit_tiny_patch16_224", **SMALL)


def block_keys(prefix: str) -> list[str]:
    names = ["norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"]
    return [f"{prefix}.{name}.{kind}" for name in names for kind in ("weight", "bias")]


# The keys (in order: optimizer states index the parameters in this order) as of issue 24.
EXPECTED_KEYS = [
    "mask_token",
    "encoder.cls_token",
    "encoder.pos_embed",
    "encoder.patch_embed.proj.weight",
    "encoder.patch_embed.proj.bias",
    *block_keys("encoder.blocks.0"),
    "encoder.norm.weight",
    "encoder.norm.bias",
    "encoder.head.weight",
    "encoder.head.bias",
    "extra_heads.0.weight",
    "extra_heads.0.bias",
    "decoder_embed.weight",
    "decoder_embed.bias",
    *block_keys("decoder_blocks.0"),
    "decoder_norm.weight",
    "decoder_norm.bias",
    "decoder_pred.weight",
    "decoder_pred.bias",
]


def test_state_dict_keys_are_unchanged():
    model = small_model()
    assert list(model.state_dict()) == EXPECTED_KEYS
    assert [name for name, _ in model.named_parameters()] == EXPECTED_KEYS


def test_state_dict_round_trips_into_a_fresh_model():
    source, target = small_model(), small_model()
    target.load_state_dict(source.state_dict())  # strict: every key matches
    for name, tensor in source.state_dict().items():
        torch.testing.assert_close(target.state_dict()[name], tensor, rtol=0, atol=0)


def test_create_model_is_a_mix_model():
    assert isinstance(small_model(), MixModel)


def test_object_lacking_forward_mixed_is_not_a_mix_model():
    class NoMixedStep:
        num_patches = 16
        task_classes = [5]

        def forward_ssl(self, images, mask_ratio, *, masking):
            return images.sum()

        def forward_sl(self, images, task=0):
            return images

        def check_labels(self, labels, task=0):
            pass

        def set_grad_checkpointing(self, enable=True):
            pass

        def export_timm(self):
            return None

    assert not isinstance(NoMixedStep(), MixModel)

    class WithMixedStep(NoMixedStep):
        def forward_mixed(self, ssl_images, sl_images, labels, **kwargs):
            return ssl_images.sum(), {}

    assert isinstance(WithMixedStep(), MixModel)


def test_trainer_calls_of_the_protocol_run():
    """The calls the trainer makes, keyword for keyword as MixModel declares them."""
    model, x = small_model(), torch.randn(4, 1, 16, 16)
    y = [torch.randint(0, c, (4,)) for c in model.task_classes]
    masking = random_masking(4, model.num_patches, 0.75, seed=0, offset=3)
    ssl = model.forward_ssl(x, 0.75, masking=masking)
    torch.testing.assert_close(ssl, model.forward_mae(x, 0.75, seed=0, offset=3)[0])
    assert model.forward_sl(x, task=1).shape == (4, 3)
    loss, parts = model.forward_mixed(
        x,
        x,
        y,
        alpha=0.5,
        mask_ratio=0.75,
        masking=masking,
        sl_view="full",
        task_weights=None,
        label_smoothing=0.1,
    )
    assert loss.ndim == 0 and set(parts) == {"ssl", "sl", "sl_0", "sl_1"}
    model.check_labels(y[1], task=1)
    assert set(model.export_timm().state_dict()) == {
        k.removeprefix("encoder.") for k in EXPECTED_KEYS if k.startswith("encoder.")
    }


def test_forward_ssl_shares_forward_mae_parameters():
    ssl = inspect.signature(MixMAE.forward_ssl).parameters
    assert ssl == inspect.signature(MixMAE.forward_mae).parameters
    assert list(ssl) == ["self", "images", "mask_ratio", "seed", "offset", "masking"]
