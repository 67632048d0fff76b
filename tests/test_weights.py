"""Pretrained weights in (mixfast/model/weights.py, --pretrained-path, --pretrained): every format
built here with its real layout (no downloads), adapted to the run's model, or refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import timm
import torch
from _tiny import TINY_KWARGS
from _weight_files import mae_state, random_vit, save_mae_checkpoint
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from timm.models._manipulate import adapt_input_conv

from mixfast import cli, create_model
from mixfast.checkpoint import export_encoder, save_checkpoint
from mixfast.checks import SettingError
from mixfast.model import load_weights, sincos_pos_embed

SMALL = TINY_KWARGS  # the tiny ViT of tests/_tiny.py


def small(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("vit_tiny_patch16_224", **{**SMALL, **overrides})


def encoder_of(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.encoder.state_dict().items() if not k.startswith("head.")}


def decoder_of(model) -> dict[str, torch.Tensor]:
    return {
        k: v for k, v in model.state_dict().items() if k.startswith("decoder_") or k == "mask_token"
    }


def assert_same(a: dict, b: dict, skip: tuple[str, ...] = ()) -> None:
    keys = [k for k in a if not k.startswith(skip)] if skip else list(a)
    assert keys and all(torch.equal(a[k], b[k]) for k in keys), [
        k for k in keys if not torch.equal(a[k], b[k])
    ]


# ------------------------------------------------------------------ MAE files


def test_mae_checkpoint_loads_encoder_decoder_and_reconstruction_target(tmp_path):
    source = small(seed=1)
    path = save_mae_checkpoint(source, tmp_path / "checkpoint-399.pth")
    model = small(seed=2, pretrained_path=path)
    fresh = small(seed=2)
    assert_same(encoder_of(source), encoder_of(model))
    assert_same(decoder_of(source), decoder_of(model))
    assert_same(fresh.encoder.head.state_dict(), model.encoder.head.state_dict())  # seeded fresh
    assert model.norm_pix_loss is True
    notes = "\n".join(model.pretrained_notes)
    assert "MAE main_pretrain.py checkpoint (epoch 399)" in notes
    assert "norm_pix_loss=True" in notes and "decoder_pos_embed is not loaded" in notes
    assert "head of task 0 (4 classes) starts fresh: the file has none" in notes
    assert "MAE decoder loaded" in notes
    # the whole MAE forward of the file's model, mapped key for key
    source.norm_pix_loss = True
    images = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        want = source.forward_mae(images, 0.75, seed=5)
        got = model.forward_mae(images, 0.75, seed=5)
    assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])


def test_mae_encoder_only_file_starts_the_decoder_fresh(tmp_path):
    source = small(seed=1)
    path = tmp_path / "mae_pretrain_vit_base.pth"
    torch.save({"model": mae_state(source, decoder=False)}, path)
    model = small(seed=2, pretrained_path=path)
    assert_same(encoder_of(source), encoder_of(model))
    assert_same(decoder_of(small(seed=2)), decoder_of(model))
    assert model.norm_pix_loss is False  # the file does not say: the run's setting stays
    notes = "\n".join(model.pretrained_notes)
    assert "MAE weights file ('model' only)" in notes
    assert "MAE decoder starts fresh: the file holds an encoder only" in notes
    assert "norm_pix_loss" not in notes


def test_mae_file_at_another_image_size_resamples_the_position_embedding(tmp_path):
    source = small(seed=1)
    path = save_mae_checkpoint(source, tmp_path / "mae.pth")
    model = small(seed=2, img_size=32, pretrained_path=path)
    want = resample_abs_pos_embed(
        source.encoder.pos_embed.detach(), new_size=[8, 8], old_size=[4, 4], num_prefix_tokens=1
    )
    assert torch.allclose(model.encoder.pos_embed, want)
    assert_same(encoder_of(source), encoder_of(model), skip=("pos_embed",))
    assert_same(decoder_of(source), decoder_of(model))  # same patch: decoder_pred loads too
    assert torch.equal(model.decoder_pos_embed[0], sincos_pos_embed(8, 8, 16))
    notes = "\n".join(model.pretrained_notes)
    assert "pos_embed resampled from a 4x4 to a 8x8 grid" in notes
    assert "fixed sin-cos of the run's 8x8 grid" in notes


def test_mae_file_at_another_patch_size_resamples_the_patch_embedding(tmp_path):
    source = small(seed=1)
    path = save_mae_checkpoint(source, tmp_path / "mae.pth")
    model = small(seed=2, patch_size=2, pretrained_path=path)
    proj = source.encoder.patch_embed.proj.weight.detach()
    assert torch.allclose(model.encoder.patch_embed.proj.weight, resample_patch_embed(proj, [2, 2]))
    want_pos = resample_abs_pos_embed(source.encoder.pos_embed.detach(), [8, 8], [4, 4])
    assert torch.allclose(model.encoder.pos_embed, want_pos)
    fresh = small(seed=2, patch_size=2)
    assert_same(decoder_of(fresh), decoder_of(model), skip=("decoder_embed", "mask", "decoder_b"))
    assert_same(decoder_of(source), decoder_of(model), skip=("decoder_pred",))
    notes = "\n".join(model.pretrained_notes)
    assert "resampled from 4x4 to 2x2 patches" in notes
    assert "decoder_pred starts fresh: the patch size changed" in notes


# ------------------------------------------------------------------ timm and mixfast files


def test_timm_safetensors_with_a_1000_class_head_is_adapted(tmp_path):
    vit = random_vit()  # 224 px, RGB, 1000 classes
    path = tmp_path / "vit_tiny_patch16_224.safetensors"
    save_file(vit.state_dict(), str(path))
    torch.manual_seed(0)
    model = create_model(
        "vit_tiny_patch16_224",
        img_size=32,
        patch_size=4,
        in_chans=1,
        num_classes=10,
        pretrained_path=path,
    )
    file = vit.state_dict()
    own = model.encoder.state_dict()
    for key in file:
        if key.startswith("blocks.") or key.startswith("norm.") or key == "cls_token":
            assert torch.equal(file[key], own[key]), key
    pos = resample_abs_pos_embed(file["pos_embed"], [8, 8], [14, 14], num_prefix_tokens=1)
    assert torch.allclose(own["pos_embed"], pos)
    proj = resample_patch_embed(adapt_input_conv(1, file["patch_embed.proj.weight"]), [4, 4])
    assert torch.allclose(own["patch_embed.proj.weight"], proj, atol=1e-5)
    assert own["head.weight"].shape == (10, 192)
    notes = "\n".join(model.pretrained_notes)
    assert "a safetensors state_dict" in notes
    assert "pos_embed resampled from a 14x14 to a 8x8 grid" in notes
    assert "adapted from 3 to 1 input channels" in notes
    assert "resampled from 16x16 to 4x4 patches" in notes
    assert (
        "head of task 0 (10 classes) starts fresh: 1000 classes in the file, 10 in the run" in notes
    )
    assert "MAE decoder starts fresh" in notes


def test_timm_pth_of_the_same_config_gives_timms_outputs(tmp_path):
    torch.manual_seed(3)
    kwargs = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs).eval()
    path = tmp_path / "vit.pth"
    torch.save(vit.state_dict(), path)
    model = create_model(
        "vit_tiny_patch16_224", **kwargs, pretrained_path=path, pretrained_head="keep"
    ).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.forward_sl(images), vit(images), atol=1e-5)
    loaded = "head of task 0 (1000 classes) loaded: --pretrained-head keep: the class count matches"
    assert loaded in model.pretrained_notes


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_mixfast_export_loads_encoder_and_head(tmp_path, suffix):
    source = small(seed=1)
    path = export_encoder(source, tmp_path / f"encoder{suffix}")
    model = small(seed=2, pretrained_path=path, pretrained_head="keep")
    assert_same(source.encoder.state_dict(), model.encoder.state_dict())
    assert_same(decoder_of(small(seed=2)), decoder_of(model))
    assert any(n.startswith("head of task 0 (4 classes) loaded") for n in model.pretrained_notes)


def test_mixfast_last_pt_loads_the_whole_model_with_extra_heads(tmp_path):
    source = small(seed=1, task_classes=[4, 3])
    path = tmp_path / "last.pt"
    state = dict(optimizer={}, stage="finetune", streams={}, config={}, resolved={})
    labels = [["a", "b", "c", "d"], ["x", "y", "z"]]
    position = {"global_step": 7}
    save_checkpoint(
        {"model": source.state_dict(), **state, "position": position, "head_labels": labels}, path
    )
    model = small(seed=2, task_classes=[4, 3], head_labels=labels, pretrained_path=path)
    assert_same(source.state_dict(), model.state_dict())
    notes = "\n".join(model.pretrained_notes)
    assert "a mixfast checkpoint after 7 optimizer steps" in notes
    assert "head of task 1 (3 classes) loaded: the same classes (x, y, z)" in notes
    # other task heads: head 0 of another count, head 1 of other classes: both fresh
    other = small(
        seed=2,
        num_classes=5,
        task_classes=[5, 3],
        head_labels=[list("abcde"), list("uvw")],
        pretrained_path=path,
    )
    notes = "\n".join(other.pretrained_notes)
    assert "head of task 0 (5 classes) starts fresh: 4 classes in the file, 5 in the run" in notes
    assert (
        "head of task 1 (3 classes) starts fresh: its classes (x, y, z) are not the run's (u, v, w)"
        in notes
    )
    fresh = small(seed=2, num_classes=5, task_classes=[5, 3])
    assert_same(fresh.extra_heads.state_dict(), other.extra_heads.state_dict())


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    "change, named",
    [
        (dict(embed_dim=48), ["encoder width 32 in the file, 48", "cls_token [1, 1, 32] in the file, [1, 1, 48]"]),
        (dict(depth=3), ["encoder depth 2 in the file, 3", "only in the model: blocks.2."]),
        (dict(depth=1), ["encoder depth 2 in the file, 1", "only in the file: blocks.1."]),
        (dict(mlp_ratio=2.0), ["MLP size 128 in the file, 64", "blocks.0.mlp.fc1.weight [128, 32]"]),
        (dict(decoder_dim=32), ["decoder width 16 in the file, 32", "mask_token [1, 1, 16]"]),
        (dict(decoder_depth=2), ["decoder depth 1 in the file, 2", "decoder_blocks.1."]),
    ],
)  # fmt: skip
def test_weights_that_do_not_fit_are_refused_naming_file_keys_and_shapes(tmp_path, change, named):
    path = save_mae_checkpoint(small(seed=1), tmp_path / "mae.pth")
    with pytest.raises(SettingError) as info:
        small(seed=2, pretrained_path=path, **change)
    message = str(info.value)
    assert str(path) in message and "do not fit the run's model" in message
    for text in named:
        assert text in message


def test_a_refused_file_leaves_the_model_untouched(tmp_path):
    path = save_mae_checkpoint(small(seed=1, embed_dim=48), tmp_path / "wide.pth")
    model = small(seed=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(SettingError):
        load_weights(model, path)
    assert_same(before, model.state_dict())
    assert model.norm_pix_loss is False


class RunsCode:
    """Unpickling it runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Custom:
    """A class of this test module: not a weight."""


@pytest.mark.parametrize("payload", ["reduce", "class"])
def test_a_file_that_would_run_code_on_load_is_refused(tmp_path, payload):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    obj = RunsCode(marker) if payload == "reduce" else Custom()
    torch.save({"model": {"cls_token": torch.zeros(1)}, "args": obj}, path)
    with pytest.raises(SettingError) as info:
        small(pretrained_path=path)
    message = str(info.value)
    assert str(path) in message and "refused: loading it would run code" in message
    assert ("system" if payload == "reduce" else "Custom") in message  # what it would run
    assert not marker.exists()


def test_unreadable_and_foreign_files_are_setting_errors(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(SettingError, match="not a readable torch file"):
        small(pretrained_path=garbage)
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(SettingError, match="holds a list"):
        small(pretrained_path=listed)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 10)
    with pytest.raises(SettingError, match="not a readable safetensors file"):
        small(pretrained_path=broken)
    with pytest.raises(SettingError, match="no such file"):
        small(pretrained_path=tmp_path / "missing.pth")


# ------------------------------------------------------------------ --pretrained (timm's loader)


def test_pretrained_loads_through_timm_with_a_file_overlay(tmp_path):
    vit = random_vit()
    path = tmp_path / "weights.safetensors"
    save_file(vit.state_dict(), str(path))
    state = torch.get_rng_state()
    model = create_model(
        "vit_tiny_patch16_224.augreg_in21k_ft_in1k",  # a tag: the architecture builds ours
        img_size=28,
        patch_size=7,
        in_chans=1,
        num_classes=10,
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(path)),
    )
    after = torch.get_rng_state()
    torch.set_rng_state(state)
    create_model("vit_tiny_patch16_224", img_size=28, patch_size=7, in_chans=1, num_classes=10)
    assert torch.equal(after, torch.get_rng_state())  # timm's own model drew nothing of ours
    assert torch.equal(model.encoder.blocks[3].mlp.fc1.weight, vit.blocks[3].mlp.fc1.weight)
    notes = "\n".join(model.pretrained_notes)
    assert "timm's pretrained vit_tiny_patch16_224.augreg_in21k_ft_in1k" in notes
    assert f"from the file {path}" in notes
    assert "resampled from 16x16 to 7x7 patches" in notes


def hf_cache(root: Path, state: dict[str, torch.Tensor]) -> Path:
    """The Hugging Face cache layout of timm/vit_tiny_patch16_224's default tag."""
    repo = root / "models--timm--vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(state, str(repo / "snapshots" / commit / "model.safetensors"))
    return root


PRETRAINED_RUN = (
    "--dataset synthetic --img-size 16 --train-limit 40 --test-limit 20 --pipeline sl "
    "--sl-epochs 1 --batch-size 16 --device cpu --no-compile --no-progress --pretrained"
).split()


@pytest.mark.slow
def test_cli_pretrained_offline_uses_timms_cache_or_exits_2(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    empty = tmp_path / "empty-cache"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(empty))
    out = tmp_path / "missing"
    assert cli.main(["train", *PRETRAINED_RUN, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--pretrained" in err and "vit_tiny_patch16_224" in err and str(empty) in err
    assert not out.exists()

    vit = random_vit()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_cache(tmp_path / "hf", vit.state_dict())))
    out = tmp_path / "cached"
    assert cli.main(["train", *PRETRAINED_RUN, "--out", str(out)]) == 0
    data = json.loads((out / "data.json").read_text())
    assert data["pretrained"] is True and data["pretrained_path"] is None
    assert any("vit_tiny_patch16_224.augreg_in21k_ft_in1k" in n for n in data["pretrained_notes"])
