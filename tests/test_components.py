"""The trainer's components: each owns its own checkpoint keys, the checkpointer composes them
into the documented layout, the plan is frozen, and the run folder is claimed once."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from _tiny import tiny_data, tiny_model

from mixfast import checkpoint
from mixfast.checks import SettingError
from mixfast.schedule import MixSchedule
from mixfast.train import MixTrainer, TrainConfig
from mixfast.train.settings import DataConfig, ModelConfig, RunSpec

LAYOUT = {
    "format", "model", "optimizer", "stage", "position", "streams", "rng", "augment_rng",
    "epoch_state", "totals", "rows", "config", "resolved", "model_ema", "head_labels",
}  # fmt: skip


def stopped_trainer(tmp_path, stop_after: int = 3) -> MixTrainer:
    config = TrainConfig(
        ssl_epochs=2, sl_epochs=2, batch_size=16, out=str(tmp_path / "run"), progress=False,
        device="cpu", compile=False, stop_after=stop_after, log_every=1,
    )  # fmt: skip
    trainer = MixTrainer(tiny_model(), config)
    trainer.fit(None, tiny_data(64), tiny_data(16))
    return trainer


def test_components_own_disjoint_keys_that_make_the_documented_layout(tmp_path):
    trainer = stopped_trainer(tmp_path)
    owned = [set(c.state_dict()) for c in trainer.checkpointer.components]
    assert sum(len(keys) for keys in owned) == len(set().union(*owned)), "a key owned twice"
    saved = checkpoint.load_checkpoint(tmp_path / "run" / "last.pt")
    assert set(saved) == LAYOUT
    assert saved["epoch_state"] is not None  # stopped mid-epoch: the epoch's sums travel
    assert saved["resolved"] == trainer.plan.to_dict()


def test_a_checkpoint_between_epochs_holds_no_epoch_in_progress(tmp_path):
    trainer = stopped_trainer(tmp_path, stop_after=0)  # the whole run
    assert trainer.position.finished and trainer.position.step_in_epoch == 0
    assert checkpoint.load_checkpoint(tmp_path / "run" / "last.pt")["epoch_state"] is None


def test_the_plan_is_frozen_and_read_by_attribute(tmp_path):
    trainer = stopped_trainer(tmp_path)
    plan = trainer.plan
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.effective_batch = 1
    assert plan.stages["pretrain"].betas == (0.9, 0.95)
    assert plan.stage_steps_before(0) == 0
    assert plan.epoch_phases == ("ssl", "mix", "sl")


def test_sample_passes_are_one_rule_for_budget_and_epochs():
    schedule = MixSchedule(4, 3, 1.0, ssl_share=0.7)  # SSL x 1 -> MIX x 3
    budget = schedule.budget(ssl_steps=10, sl_steps=10, batch_size=8)["phases"]["mix"]
    per_epoch = [
        schedule.sample_passes("mix", 10 * e, 10 * e + 10, 30, 4, copies=2) for e in range(3)
    ]
    assert sum(ssl for ssl, _ in per_epoch) == budget["ssl_samples"]
    assert sum(sl for _, sl in per_epoch) == budget["sl_samples"]


def test_a_caller_owned_run_folder_is_claimed_and_released_by_the_caller(tmp_path):
    folder = checkpoint.RunFolder(tmp_path / "run", resume=False)
    config = TrainConfig(
        ssl_epochs=1, sl_epochs=1, batch_size=16, out=str(folder.path), progress=False,
        device="cpu", compile=False,
    )  # fmt: skip
    trainer = MixTrainer(tiny_model(), config)
    trainer.prepare(None, tiny_data(32), folder=folder)
    assert not (folder.path / checkpoint.MARKER).exists(), "prepare writes nothing"
    with folder.claim():
        trainer.run()
        assert folder.path.resolve() in checkpoint._held_locks  # the trainer left it held
    assert folder.path.resolve() not in checkpoint._held_locks


def test_resume_with_other_settings_is_refused_by_the_checkpointer(tmp_path):
    stopped_trainer(tmp_path)
    config = TrainConfig(
        ssl_epochs=2, sl_epochs=2, batch_size=16, out=str(tmp_path / "run"), progress=False,
        device="cpu", compile=False, resume=True, mix_ratio=1.0,
    )  # fmt: skip
    with pytest.raises(SettingError, match=r"made with other settings \(mix_ratio: 0.5 -> 1.0"):
        MixTrainer(tiny_model(), config).prepare(None, tiny_data(64), tiny_data(16))


def test_run_spec_validates_each_part():
    RunSpec().validate()
    with pytest.raises(SettingError, match="embed_dim"):
        RunSpec(model=ModelConfig(embed_dim=30, num_heads=4)).validate()
    with pytest.raises(SettingError, match="fraction"):
        RunSpec(data=DataConfig(fraction=0.0)).validate()
    changed = RunSpec().replace(data={"fraction": 0.5}, train={"seed": 3})
    assert changed.data.fraction == 0.5 and changed.train.seed == 3


def test_the_tracked_gradient_norm_is_the_norm_before_the_update():
    config = TrainConfig(
        ssl_epochs=1, sl_epochs=1, batch_size=16, progress=False, device="cpu", compile=False,
        tensorboard=True,
    )  # fmt: skip
    trainer = MixTrainer(tiny_model(), config)
    trainer.prepare(None, tiny_data(32))
    stages = trainer.stages
    stages.enter("sl")  # the plan is MIX x 1: the fine-tune stage
    norms = []
    for seed in (1, 2):
        images = tiny_data(8, seed=seed).tensors[0]
        trainer.model.forward_ssl(images, 0.75, seed=seed).backward()
        grads = [p.grad for p in stages.trainable if p.grad is not None]
        norms.append(float(torch.nn.utils.get_total_norm(grads)))
        stages.set_lr(0)
        assert stages.step()
    assert stages.take_mean_norm() == pytest.approx(sum(norms) / 2, rel=1e-6)
    assert stages.take_mean_norm() is None  # read since: nothing new
