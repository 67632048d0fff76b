"""Pictures of a run (mixfast/train/pictures.py, RunLog): the reconstruction grids (their
geometry, masks and pasting, norm_pix_loss un-normalisation), curves.png, and --tensorboard
event files that read back; structural checks, nothing timed."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from mixfast import cli
from mixfast.ops.reference import patchify_images
from mixfast.schedule import EpochSpec
from mixfast.train import TrainConfig
from mixfast.train.pictures import (
    MASKED_GREY,
    PAD,
    PICTURE_IMAGES,
    ROWS,
    Pictures,
    grid_array,
    grid_size,
    picture_images,
    pixel_prediction,
    reconstruction_rows,
    to_display,
    unpatchify,
)

TINY = (
    "--dataset synthetic --img-size 16 --train-limit 80 --test-limit 20 --depth 1 "
    "--embed-dim 32 --num-heads 2 --decoder-dim 32 --decoder-depth 1 --ssl-epochs 1 "
    "--sl-epochs 1 --batch-size 16 --device cpu --no-compile --no-progress"
).split()
# 16x16 images of 4x4 patches (16 patches), each scaled x4 to a 64-pixel cell
CELL, PATCH_PX, PATCHES = 64, 16, 16
GRID = (3 * CELL + 4 * PAD, PICTURE_IMAGES * CELL + (PICTURE_IMAGES + 1) * PAD)  # (200, 530)


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        return np.asarray(image)


def cell(grid: np.ndarray, row: int, col: int) -> np.ndarray:
    top, left = PAD + row * (CELL + PAD), PAD + col * (CELL + PAD)
    return grid[top : top + CELL, left : left + CELL]


def blocks(picture: np.ndarray) -> list[np.ndarray]:
    """The 16 patch blocks (16 x 16 pixels each) of one cell, row-major."""
    n = CELL // PATCH_PX
    return [
        picture[i * PATCH_PX : (i + 1) * PATCH_PX, j * PATCH_PX : (j + 1) * PATCH_PX]
        for i in range(n)
        for j in range(n)
    ]


def check_grid(grid: np.ndarray, mask_ratio: float = 0.75) -> None:
    """A rows x columns grid of 64-pixel cells, white between them; in each column the masked
    row greys mask_ratio of the patches and shows the original elsewhere, and the
    reconstruction row shows the original on the visible patches."""
    assert grid.shape == GRID == grid_size(len(ROWS), PICTURE_IMAGES, 16, 16)
    for r in range(len(ROWS) + 1):  # the white separators
        assert (grid[r * (CELL + PAD) : r * (CELL + PAD) + PAD] == 255).all()
    for c in range(PICTURE_IMAGES + 1):
        assert (grid[:, c * (CELL + PAD) : c * (CELL + PAD) + PAD] == 255).all()
    grey = round(255 * MASKED_GREY)
    for col in range(PICTURE_IMAGES):
        original, masked, recon = (blocks(cell(grid, r, col)) for r in range(3))
        hidden = [(b == grey).all() for b in masked]
        assert sum(hidden) == int(PATCHES * mask_ratio)
        for k, is_hidden in enumerate(hidden):
            if not is_hidden:
                np.testing.assert_array_equal(masked[k], original[k])
                np.testing.assert_array_equal(recon[k], original[k])


def events(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted((run / "tensorboard").glob("events.out.tfevents.*"))
    assert files, "no event file"
    guidance = {"scalars": 0, "images": 0, "tensors": 0}
    accumulator = EventAccumulator(str(run / "tensorboard"), size_guidance=guidance)
    accumulator.Reload()
    return accumulator


# --------------------------------------------------------------------------------------------
# a short run end to end


@pytest.mark.slow
def test_train_writes_pictures_curves_and_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    args = ["--ssl-epochs", "2", "--sl-epochs", "2", "--mix-ratio", "0.5", "--log-every", "2"]
    assert cli.main(["train", *TINY, *args, "--tensorboard", "--out", str(run)]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["ssl", "mix", "sl"]
    recon = sorted(p.name for p in run.glob("*recon*"))
    assert recon == ["recon-epoch001.png", "recon-epoch002.png", "recon-last.png"]
    grids = {name: read_png(run / name) for name in recon}
    for grid in grids.values():
        check_grid(grid)
    # fixed masks: the same patches are grey in every picture of the run
    grey = [grids[name][CELL + 2 * PAD : 2 * CELL + 2 * PAD] for name in recon]
    assert all(((g == 128) == (grey[0] == 128)).all() for g in grey)
    curves = read_png(run / "curves.png")
    assert curves.ndim == 3 and min(curves.shape[:2]) > 300

    acc = events(run)
    tags = acc.Tags()
    epoch_tags = {"loss", "loss_ssl", "loss_sl", "val_top1", "alpha", "lr", "images_per_s"}
    assert {f"epoch/{t}" for t in epoch_tags} <= set(tags["scalars"])
    step_tags = {"loss", "lr", "loss_ssl", "loss_sl", "grad_norm"}
    assert {f"step/{t}" for t in step_tags} <= set(tags["scalars"])
    norms = [e.value for e in acc.Scalars("step/grad_norm")]
    assert len(norms) == len(acc.Scalars("step/loss")) and all(v > 0 for v in norms)
    assert "final/test_top1" in tags["scalars"]
    assert [e.step for e in acc.Scalars("epoch/loss")] == [r["global_step"] for r in rows]
    assert [e.value for e in acc.Scalars("epoch/loss")] == pytest.approx([r["loss"] for r in rows])
    last_step = rows[-1]["global_step"]
    assert [e.step for e in acc.Scalars("step/loss")] == list(range(2, last_step + 1, 2))
    assert [e.step for e in acc.Scalars("epoch/alpha")] == [rows[1]["global_step"]]  # mix only
    assert tags["images"] == ["recon"]
    images = acc.Images("recon")
    assert [i.step for i in images] == [r["global_step"] for r in rows]
    assert {(i.height, i.width) for i in images} == {GRID}
    assert "config/text_summary" in tags["tensors"]
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert json.loads(text) == json.loads((run / "config.json").read_text())


@pytest.mark.slow
def test_a_resumed_run_purges_the_events_after_its_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "run"
    args = [*TINY, "--ssl-epochs", "2", "--sl-epochs", "2", "--log-every", "1", "--tensorboard"]
    assert cli.main(["train", *args, "--out", str(run), "--stop-after", "6"]) == 0
    time.sleep(1.1)  # event files are read in name order: the time in seconds, first
    with SummaryWriter(str(run / "tensorboard")) as stale:  # what a kill after step 6 leaves
        stale.add_scalar("step/loss", -1.0, 7)
    time.sleep(1.1)
    assert cli.main(["train", *args, "--out", str(run), "--resume"]) == 0
    acc = events(run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [e.step for e in acc.Scalars("step/loss")]
    assert steps == list(range(1, rows[-1]["global_step"] + 1))  # each step once
    assert -1.0 not in [e.value for e in acc.Scalars("step/loss")]
    assert [e.step for e in acc.Scalars("epoch/loss")] == [r["global_step"] for r in rows]


@pytest.mark.slow
def test_train_without_tensorboard_writes_no_event_file(tmp_path):
    run = tmp_path / "run"
    assert cli.main(["train", *TINY, "--out", str(run)]) == 0
    assert not (run / "tensorboard").exists()
    assert not [p for p in tmp_path.rglob("*") if "tfevents" in p.name]
    assert (run / "curves.png").is_file()
    # one mix epoch, the last: drawn once, under both names
    assert (run / "recon-epoch001.png").read_bytes() == (run / "recon-last.png").read_bytes()
    check_grid(read_png(run / "recon-last.png"))


def test_missing_tensorboard_names_the_flag(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard: ImportError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    run = tmp_path / "run"
    assert cli.main(["train", *TINY, "--tensorboard", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert "--tensorboard" in err and "pip install tensorboard" in err
    assert not run.exists()  # refused before anything is written


def test_settings_are_checked_and_resumable():
    with pytest.raises(ValueError, match="recon_every"):
        TrainConfig(recon_every=-1).validate()
    with pytest.raises(ValueError, match="tensorboard"):
        TrainConfig(tensorboard="yes").validate()
    saved = TrainConfig().to_dict()
    assert TrainConfig(tensorboard=True, recon_every=5).changed_on_resume(saved) == []


# --------------------------------------------------------------------------------------------
# the pieces


def test_norm_pix_prediction_is_unnormalised_per_patch():
    """One 2x2 patch of 1 channel: the prediction maps back with the patch's own mean and
    unbiased variance, pred * sqrt(var + 1e-6) + mean (MAE's visualisation)."""
    images = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]]]])  # [B=1, C=1, 2, 2], one patch
    pred = torch.tensor([[[1.0, -1.0, 0.5, 0.0]]])  # [B, N=1, p*p*C=4]
    mean = (1 + 2 + 3 + 6) / 4  # 3
    var = ((1 - 3) ** 2 + (2 - 3) ** 2 + 0 + (6 - 3) ** 2) / 3  # 14 / 3, unbiased
    expected = [v * (var + 1e-6) ** 0.5 + mean for v in (1.0, -1.0, 0.5, 0.0)]
    target, pixels = pixel_prediction(pred, images, 2, norm_pix=True)
    assert target.flatten().tolist() == [1.0, 2.0, 3.0, 6.0]
    assert pixels.flatten().tolist() == pytest.approx(expected, rel=1e-6)
    _, raw = pixel_prediction(pred, images, 2, norm_pix=False)
    assert torch.equal(raw, pred)


class OracleMAE(torch.nn.Module):
    """Predicts every patch exactly (normalised per patch when norm_pix_loss), so a
    reconstruction must give the images back."""

    def __init__(self, norm_pix: bool, size: int = 8, patch: int = 4, channels: int = 3):
        super().__init__()
        self.norm_pix_loss, self.patch_size = norm_pix, patch
        self.grid_size = (size // patch, size // patch)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.modes: list[bool] = []

    def forward_mae(self, images, mask_ratio, *, masking):
        self.modes.append(self.training)
        target = patchify_images(images, self.patch_size)
        if self.norm_pix_loss:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        return target.sum(), target, masking.mask


@pytest.mark.parametrize("norm_pix", [True, False])
def test_a_perfect_prediction_reconstructs_the_images(norm_pix):
    model = OracleMAE(norm_pix)
    images = torch.randn(5, 3, 8, 8)
    originals, pixels, pasted = reconstruction_rows(model, images, 0.75)
    assert model.modes == [False] and model.training  # drawn in eval mode, train mode back
    torch.testing.assert_close(pasted, images, atol=1e-5, rtol=1e-5)
    assert torch.equal(originals, images)
    assert pixels.shape == (5, 1, 8, 8) and pixels.sum() == 5 * 3 * 16  # 3 of 4 patches
    again = reconstruction_rows(model, images, 0.75)[1]
    assert torch.equal(again, pixels)  # fixed masks


def test_display_undoes_the_dataset_normalisation():
    pixels = torch.rand(2, 3, 4, 4)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    normalised = (pixels - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(to_display(normalised, mean, std), pixels)
    span = to_display(torch.tensor([[[[-2.0, 0.0], [1.0, 2.0]]]]), None, None)
    assert span.flatten().tolist() == [0.0, 0.5, 0.75, 1.0]  # no mean/std: the images' range


def test_rgb_grid_geometry():
    rows = [torch.rand(3, 3, 32, 48) for _ in ROWS]  # scale 2: 64 x 96 cells
    grid = grid_array(rows)
    assert grid.shape == (*grid_size(3, 3, 32, 48), 3) == (3 * 64 + 4 * PAD, 3 * 96 + 4 * PAD, 3)
    first = grid[PAD : PAD + 64, PAD : PAD + 96]
    expected = (rows[0][0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(first[::2, ::2], expected)
    patches = torch.arange(2 * 4 * 12, dtype=torch.float32).view(2, 4, 12)
    images = unpatchify(patches, 2, 3, (2, 2))
    assert torch.equal(patchify_images(images, 2), patches)


def test_picture_images_leave_the_run_random_numbers_alone():
    data = TensorDataset(torch.randn(20, 1, 8, 8), torch.zeros(20, dtype=torch.long))
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    images, mean, std = picture_images(DataLoader(data, batch_size=3, shuffle=True))
    assert images.shape == (PICTURE_IMAGES, 1, 8, 8) and mean is None and std is None
    assert torch.equal(torch.rand(3), expected)  # the shuffle drew from a forked generator


def test_pictures_are_drawn_every_n_pretraining_epochs_and_at_the_end():
    phases = ("ssl", "ssl", "ssl", "mix", "sl", "sl")
    specs = [EpochSpec(i, p, 0) for i, p in enumerate(phases)]

    def drawn(every, folder="DIR", model=None, plan_phases=phases):
        log = SimpleNamespace(folder=folder, plan=SimpleNamespace(epoch_phases=plan_phases))
        config = TrainConfig(recon_every=every)
        pictures = Pictures(model or OracleMAE(False), config, log, [None, "data"])
        return [name for spec in specs for name in pictures.names(spec)]

    assert drawn(1) == [f"recon-epoch00{k}.png" for k in (1, 2, 3, 4)] + ["recon-last.png"]
    assert drawn(2) == ["recon-epoch002.png", "recon-epoch004.png", "recon-last.png"]
    assert drawn(0) == []  # off
    assert drawn(1, folder=None) == []  # not the main rank, or no run folder
    assert drawn(1, plan_phases=("sl",) * 6) == []  # nothing pre-trains the decoder
    assert drawn(1, model=torch.nn.Linear(1, 1)) == []  # no forward_mae


def test_a_picture_that_cannot_be_drawn_warns_and_never_stops_the_run():
    class Unreadable(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, index):
            raise OSError("cannot decode")

    drawn = []
    plan = SimpleNamespace(epoch_phases=("ssl", "sl"), device="cpu", amp=False)
    log = SimpleNamespace(folder="DIR", plan=plan, add_picture=lambda *a: drawn.append(a))
    pictures = Pictures(OracleMAE(False, size=16), TrainConfig(), log, [Unreadable()])
    with pytest.warns(UserWarning, match="no reconstruction pictures.*cannot decode"):
        pictures.after_epoch(EpochSpec(0, "ssl", 0), 4)
    pictures.after_epoch(EpochSpec(1, "sl", 0), 8)  # off now: no second warning
    assert drawn == [] and not pictures.enabled
    good = Pictures(OracleMAE(False, size=16, channels=1), TrainConfig(), log, [None, tiny()])
    good.after_epoch(EpochSpec(0, "ssl", 0), 4)
    (names, grid, step), *_ = drawn
    assert names == ["recon-epoch001.png"] and step == 4
    check_grid(grid)


def tiny() -> TensorDataset:
    return TensorDataset(torch.randn(10, 1, 16, 16), torch.zeros(10, dtype=torch.long))
