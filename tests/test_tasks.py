"""Multi-task runs: `--task SPEC` parsing and its errors, the tasks' data (label maps, class
subsets, fractions, shared validation, the SSL pool), head gradients, equal passes across
pipelines, and train / resume / compare from the command line."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from test_cli import TINY, mixfast

from mixfast import cli, create_model
from mixfast.data import (
    DataError,
    ImageSplits,
    load_synthetic,
    parse_task_spec,
    prepare_task_data,
    prepare_training_data,
)
from mixfast.train import TrainConfig, train


def splits() -> ImageSplits:
    return load_synthetic(train_size=400, test_size=100, size=16, seed=0)


def rows(data) -> set[tuple]:
    return {tuple(x.flatten().tolist()) for x in data.images}


# ------------------------------------------------------------------ the spec


def test_parse_task_spec():
    spec = parse_task_spec("name=coarse,groups=g.json,fraction=0.25")
    assert (spec.name, spec.groups, spec.fraction, spec.classes) == ("coarse", "g.json", 0.25, None)
    assert parse_task_spec("classes=0-4").classes == (0, 1, 2, 3, 4)
    assert parse_task_spec("classes=7+2+5").classes == (7, 2, 5)
    assert parse_task_spec("dataset=synthetic,data_dir=/x").source == ("synthetic", "/x")


@pytest.mark.parametrize(
    "text, message",
    [
        ("fraction", "is not key=value"),
        ("colour=red", "unknown key 'colour'"),
        ("fraction=0", "fraction must be in"),
        ("fraction=half", "fraction must be a number"),
        ("classes=a-b", "classes must be A-B"),
        ("classes=1+1", "distinct"),
        ("classes=0-1,groups=g.json", "not both"),
        ("name=a,name=b", "given twice"),
        ("data_dir=/x", "needs dataset="),
        ("dataset=imagenet", "is not allowed"),
    ],
)
def test_bad_task_spec(text, message):
    with pytest.raises(DataError, match=message) as error:
        parse_task_spec(text)
    assert error.value.render(lambda name: f"--{name}").startswith(f"--task {text!r}")


def test_bad_group_maps(tmp_path):
    cases = {
        "short.json": ([0, 1], "lists 2 groups"),
        "gap.json": ([0, 2] * 5, "groups must be 0..G-1"),
        "negative.json": ([-1] * 10, "must be an int >= 0"),
        "class.json": ({"12": 0}, "is not in"),
        "broken.json": ("{", "cannot read"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        spec = parse_task_spec(f"groups={path}")
        with pytest.raises(DataError, match=message):
            prepare_task_data(splits(), [spec])
    with pytest.raises(DataError, match="classes must be < 10"):
        prepare_task_data(splits(), [parse_task_spec("classes=12")])
    with pytest.raises(DataError, match="names must differ"):
        prepare_task_data(splits(), [parse_task_spec("name=a"), parse_task_spec("name=a")])


# ------------------------------------------------------------------ the data


def test_second_label_set_over_the_same_images(tmp_path):
    groups = tmp_path / "coarse.json"
    groups.write_text(json.dumps([0, 0, 0, 1, 1, 1, 2, 2, 3, 3]))
    specs = [parse_task_spec("name=fine"), parse_task_spec(f"name=coarse,groups={groups}")]
    data = prepare_task_data(splits(), specs, fraction=0.25, seed=3)
    fine, coarse = data.tasks
    assert data.task_classes == [10, 4] and coarse.note == "groups of coarse.json"
    assert torch.equal(fine.sl_data.images, coarse.sl_data.images)  # same labeled images
    mapping = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 3])
    assert torch.equal(coarse.sl_data.labels, mapping[fine.sl_data.labels])
    assert torch.equal(coarse.val_data.labels, mapping[fine.val_data.labels])
    assert torch.equal(coarse.test_data.labels, mapping[fine.test_data.labels])
    assert data.ssl_data is None  # data-limited: the labeled images serve both objectives
    single = prepare_training_data(splits(), fraction=0.25, seed=3)
    assert torch.equal(single.sl_data.images, fine.sl_data.images)  # task 0 as without --task
    assert torch.equal(single.val_data.images, fine.val_data.images)


def test_disjoint_class_halves_with_their_own_fractions():
    specs = [parse_task_spec("classes=0-4,fraction=0.1"), parse_task_spec("classes=5-9")]
    for regime in ("data-limited", "semi-supervised"):
        data = prepare_task_data(splits(), specs, fraction=0.5, regime=regime, seed=1)
        low, high = data.tasks
        assert data.task_classes == [5, 5]
        assert low.sl_data.labels.unique().tolist() == [0, 1, 2, 3, 4]
        assert high.sl_data.labels.unique().tolist() == [0, 1, 2, 3, 4]  # 5..9 relabeled
        assert len(low.sl_data) == 20 and len(high.sl_data) == 90  # 10 % / 50 % of 180 each
        assert len(low.test_data) + len(high.test_data) == 100
        assert not rows(low.sl_data) & rows(high.sl_data)
        for task in (low, high):
            assert not rows(task.val_data) & rows(data.ssl_data)  # validation never trains
        if regime == "data-limited":  # SSL on the union of the labeled images
            assert rows(data.ssl_data) == rows(low.sl_data) | rows(high.sl_data)
        else:
            assert len(data.ssl_data) == 360


def test_another_source_is_brought_to_the_run_shape():
    def load(name, data_dir, size=None):
        other = load_synthetic(train_size=200, test_size=40, size=8, seed=5)
        rgb = lambda x: x.expand(-1, 3, -1, -1).contiguous()  # noqa: E731
        return ImageSplits("other", rgb(other.train_images), other.train_labels,
                           rgb(other.test_images), other.test_labels, 10)  # fmt: skip

    specs = [parse_task_spec("name=main"), parse_task_spec("name=side,dataset=synthetic")]
    data = prepare_task_data(splits(), specs, fraction=0.5, load=load)
    side = data.tasks[1]
    assert side.sl_data.images.shape[1:] == (1, 16, 16)
    assert "resized 8x8 -> 16x16" in side.note and "3 -> 1 channels" in side.note
    assert len(data.ssl_data) == len(data.tasks[0].sl_data) + len(side.sl_data)


# ------------------------------------------------------------------ training


def model(task_classes):
    torch.manual_seed(0)
    return create_model(
        "vit_tiny_patch16_224", img_size=16, patch_size=4, in_chans=1, task_classes=task_classes,
        depth=1, embed_dim=32, num_heads=2, decoder_dim=16, decoder_depth=1, decoder_heads=2,
    )  # fmt: skip


def test_each_head_learns_only_from_its_own_task():
    net = model([5, 3])
    x0, x1 = torch.randn(4, 1, 16, 16), torch.randn(6, 1, 16, 16)
    y0, y1 = torch.randint(0, 5, (4,)), torch.randint(0, 3, (6,))
    heads = (net.encoder.head, net.extra_heads[0])

    def head_grads(images1, labels1):
        net.zero_grad()
        loss, _ = net.forward_mixed(None, [x0, images1], [y0, labels1], alpha=0.0)
        loss.backward()
        return [h.weight.grad.clone() for h in heads]

    base = head_grads(x1, y1)
    other = head_grads(torch.randn(6, 1, 16, 16), (y1 + 1) % 3)
    assert torch.equal(base[0], other[0])  # head 0 does not see task 1's samples
    assert not torch.equal(base[1], other[1])
    net.zero_grad()
    logits = net.forward_sl(x1, task=1)
    (0.5 * F.cross_entropy(logits, y1)).backward()  # task 1 alone, weight 1/2
    assert torch.allclose(net.extra_heads[0].weight.grad, base[1], atol=1e-6)


@pytest.mark.parametrize("regime", ["data-limited", "semi-supervised"])
def test_equal_passes_across_pipelines_with_two_tasks(regime):
    specs = [parse_task_spec("classes=0-4,fraction=0.2"), parse_task_spec("classes=5-9")]
    data = prepare_task_data(splits(), specs, fraction=0.5, regime=regime)
    passes = {}
    for pipeline in ("ssl+sl", "mix"):
        config = TrainConfig(
            pipeline=pipeline, ssl_epochs=2, sl_epochs=2, batch_size=16, device="cpu",
            compile=False, progress=False, task_weights=[0.3, 0.7],
        )  # fmt: skip
        result = train(config, model(data.task_classes), *data.fit_inputs())
        passes[pipeline] = result.sample_passes
        assert len(result.top1_tasks) == 2 and len(result.test_top1_tasks) == 2
    assert passes["mix"] == passes["ssl+sl"]


# ------------------------------------------------------------------ the command line


def test_train_resume_and_compare_with_tasks(tmp_path):
    groups = tmp_path / "pairs.json"
    groups.write_text(json.dumps([0, 0, 1, 1, 2, 2, 3, 3, 4, 4]))
    tasks = ["--task", "name=fine", "--task", f"name=pairs,groups={groups}"]
    out = tmp_path / "run"
    done = mixfast("train", *TINY, *tasks, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "2 tasks" in done.stderr and "pairs (groups of pairs.json)" in done.stderr
    assert "fine: val top-1" in done.stdout and "pairs: val top-1" in done.stdout
    result = json.loads((out / "result.json").read_text())
    assert len(result["test_top1_tasks"]) == 2
    assert json.loads((out / "data.json").read_text())["task"] == tasks[1::2]
    changed = mixfast("train", *TINY, tasks[0], tasks[1], "--out", str(out), "--resume")
    assert changed.returncode == 2 and "--task" in changed.stderr
    stopped = tmp_path / "stopped"
    first = mixfast("train", *TINY, *tasks, "--out", str(stopped), "--stop-after", "1")
    assert first.returncode == 0 and not (stopped / "result.json").exists(), first.stderr
    resumed = mixfast("train", *TINY, *tasks, "--out", str(stopped), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads((stopped / "result.json").read_text())
    assert result["completed"] and len(result["test_top1_tasks"]) == 2
    report = tmp_path / "cmp"
    done = mixfast("compare", *TINY, *tasks, "--fractions", "0.5", "--seeds", "0", "1",
                   "--out", str(report), "--no-warmup")  # fmt: skip
    assert done.returncode == 0, done.stderr
    runs = json.loads((report / "compare.json").read_text())["runs"]
    assert all(len(r["top1_tasks"]) == 2 for r in runs)
    assert all(r["top1"] == pytest.approx(sum(r["top1_tasks"]) / 2) for r in runs)
    assert " / " in done.stdout  # the per-task figures in the table


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--task", "classes=0-4,groups=x.json"], "--task 'classes=0-4,groups=x.json'"),
        (["--task", "name=a", "--per-class", "3"], "--per-class does not apply with --task"),
        (["--task", "name=a", "--task", "name=b", "--task-weights", "1"], "--task-weights has 1"),
    ],
)
def test_bad_tasks_exit_2(tmp_path, capsys, extra, message):
    assert cli.main(["train", *TINY, *extra, "--out", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
