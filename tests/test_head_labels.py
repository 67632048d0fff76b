"""What a weights file's heads predict: mixfast checkpoints record each head's class names
(`head_labels`), and `--pretrained-head` (auto | keep | reset) decides which heads load.

The case this guards: a checkpoint trained on five classes of a dataset holds a 5-class head; a
run on five *other* classes has the same head shape, and loading it by count would start
fine-tuning from a confident, wrong classifier."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _tiny import TINY_KWARGS
from _weight_files import TINY

from mixfast import cli, create_model
from mixfast.checkpoint import load_checkpoint, save_checkpoint
from mixfast.checks import SettingError
from mixfast.data.training import class_labels
from mixfast.model.weights import apply_weights, read_weights
from mixfast.train.settings import ModelConfig

SYNTHETIC = [f"synthetic:{i}" for i in range(10)]


def test_class_labels_name_classes_subsets_and_groups():
    named = SimpleNamespace(name="fm", num_classes=4, classes=("shirt", "shoe", "bag", "coat"))
    assert class_labels(named, torch.arange(4), 4) == ("shirt", "shoe", "bag", "coat")
    subset = torch.tensor([-1, 0, -1, 1])  # classes=1+3
    assert class_labels(named, subset, 2) == ("shoe", "coat")
    groups = torch.tensor([1, 0, 0, 1])  # a class -> group map
    assert class_labels(named, groups, 2) == ("shoe+bag", "shirt+coat")
    unnamed = SimpleNamespace(name="synthetic", num_classes=3, classes=())
    assert class_labels(unnamed, torch.arange(3), 3) == (
        "synthetic:0",
        "synthetic:1",
        "synthetic:2",
    )


@pytest.fixture(scope="module")
def first_five(tmp_path_factory) -> Path:
    """last.pt of a run on synthetic classes 0-4."""
    out = tmp_path_factory.mktemp("heads") / "first"
    args = ["train", *TINY, "--task", "classes=0-4", "--out", str(out), "--stop-after", "1"]
    assert cli.main(args) == 0
    return out / "last.pt"


def notes_of(tmp_path: Path, last: Path, name: str, *flags: str) -> tuple[str, dict]:
    out = tmp_path / name
    args = ["train", *TINY, "--pipeline", "sl", "--out", str(out), "--stop-after", "1"]
    assert cli.main([*args, "--pretrained-path", str(last), *flags]) == 0
    record = json.loads((out / "data.json").read_text())
    return "\n".join(record["pretrained_notes"]), record


def test_the_checkpoint_records_its_head_labels(first_five):
    assert load_checkpoint(first_five)["head_labels"] == [SYNTHETIC[:5]]


def test_a_head_of_other_classes_starts_fresh_unless_kept(first_five, tmp_path):
    notes, record = notes_of(tmp_path, first_five, "other", "--task", "classes=5-9")
    assert record["pretrained_head"] == "auto"
    assert (
        "head of task 0 (5 classes) starts fresh: its classes (synthetic:0, synthetic:1, "
        "synthetic:2, synthetic:3, ... (5)) are not the run's (synthetic:5," in notes
    )
    notes, record = notes_of(
        tmp_path, first_five, "kept", "--task", "classes=5-9", "--pretrained-head", "keep"
    )
    assert record["pretrained_head"] == "keep"
    assert "head of task 0 (5 classes) loaded: --pretrained-head keep, though its classes" in notes


def test_a_head_of_the_same_classes_loads_unless_reset(first_five, tmp_path):
    notes, _ = notes_of(tmp_path, first_five, "same", "--task", "classes=0-4")
    assert "head of task 0 (5 classes) loaded: the same classes (synthetic:0," in notes
    notes, _ = notes_of(
        tmp_path, first_five, "reset", "--task", "classes=0-4", "--pretrained-head", "reset"
    )
    assert "head of task 0 (5 classes) starts fresh: --pretrained-head reset" in notes


def test_the_rule_decides_the_weights_not_only_the_notes(tmp_path):
    torch.manual_seed(1)
    source = create_model("vit_tiny_patch16_224", **TINY_KWARGS)
    labels = [[f"c{i}" for i in range(source.task_classes[0])]]
    state = dict(optimizer={}, stage="finetune", streams={}, config={}, resolved={}, position={})
    path = tmp_path / "last.pt"
    save_checkpoint({"model": source.state_dict(), **state, "head_labels": labels}, path)

    def head_after(rule: str, run_labels: list[list[str]]) -> dict[str, torch.Tensor]:
        torch.manual_seed(2)
        model = create_model("vit_tiny_patch16_224", **TINY_KWARGS, head_labels=run_labels)
        apply_weights(model, read_weights(path), head=rule)
        return model.encoder.head.state_dict()

    torch.manual_seed(2)
    fresh = create_model("vit_tiny_patch16_224", **TINY_KWARGS).encoder.head.state_dict()
    other = [[f"d{i}" for i in range(len(labels[0]))]]
    expected = {
        ("auto", "same"): source.encoder.head.state_dict(),
        ("auto", "other"): fresh,
        ("keep", "other"): source.encoder.head.state_dict(),
        ("reset", "same"): fresh,
    }
    for (rule, which), want in expected.items():
        got = head_after(rule, labels if which == "same" else other)
        assert all(torch.equal(got[k], want[k]) for k in want), (rule, which)


def test_a_bad_rule_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(SettingError, match="pretrained_head"):
        ModelConfig(pretrained_head="load").validate()
    model = create_model("vit_tiny_patch16_224", **TINY_KWARGS)
    with pytest.raises(SettingError, match=r"pretrained_head.*'auto', 'keep', 'reset'"):
        apply_weights(model, read_weights(_any_weights(tmp_path)), head="sometimes")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", *TINY, "--pretrained-head", "load", "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2 and not (tmp_path / "x").exists()
    assert "--pretrained-head" in capsys.readouterr().err


def test_head_labels_must_match_the_heads():
    with pytest.raises(ValueError, match="one label per class of each head"):
        create_model("vit_tiny_patch16_224", **TINY_KWARGS, head_labels=[["a", "b"]])


def _any_weights(tmp_path: Path) -> Path:
    path = tmp_path / "w.pt"
    torch.save(create_model("vit_tiny_patch16_224", **TINY_KWARGS).state_dict(), path)
    return path


def test_a_safetensors_export_records_head_0s_classes(tmp_path):
    from mixfast.checkpoint import export_encoder

    torch.manual_seed(1)
    labels = [[f"c{i}" for i in range(TINY_KWARGS["num_classes"])]]
    source = create_model("vit_tiny_patch16_224", **TINY_KWARGS, head_labels=labels)
    exported = export_encoder(source, tmp_path / "encoder.safetensors")
    bare = export_encoder(source, tmp_path / "encoder.pt")  # a bare state_dict: no names
    assert read_weights(exported).head_labels == labels and read_weights(bare).head_labels is None
    for path, loads in ((exported, True), (bare, False)):
        model = create_model(
            "vit_tiny_patch16_224", **TINY_KWARGS, head_labels=labels, pretrained_path=path
        )
        same = torch.equal(model.encoder.head.weight, source.encoder.head.weight)
        assert same is loads, path.name
