"""The `mixfast` command, run as `python -m mixfast` in a subprocess on tiny synthetic data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mixfast import cli, experiment
from mixfast.cli.compare import check_compare_args
from mixfast.compare import run_name
from mixfast.report import format_table, pareto_front

TINY = [
    "--dataset", "synthetic", "--img-size", "16", "--train-limit", "40", "--test-limit", "20",
    "--depth", "1", "--embed-dim", "32", "--num-heads", "2",
    "--decoder-dim", "32", "--decoder-depth", "1",
    "--ssl-epochs", "1", "--sl-epochs", "1", "--batch-size", "16",
    "--device", "cpu", "--no-compile",
]  # fmt: skip


def mixfast(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    return subprocess.run(
        [sys.executable, "-m", "mixfast", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


# ------------------------------------------------------------------ in-process: parsing


@pytest.mark.parametrize("command", ["train", "compare", "bench", "info"])
def test_help_for_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"mixfast {command}" in capsys.readouterr().out


def test_config_yaml_gives_defaults_that_flags_override(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("ssl-epochs: 7\nembed_dim: 48\nfraction: 0.5\n")
    args = cli.parse_args(["train", "--config", str(config), "--embed-dim", "64"])
    assert (args.ssl_epochs, args.embed_dim, args.fraction) == (7, 64, 0.5)


def test_config_yaml_unknown_key_is_usage_error(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("ssl_epoch: 7\n")
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(["train", "--config", str(config)])
    assert exit_info.value.code == 2
    assert "unknown option 'ssl_epoch'" in capsys.readouterr().err


def test_patch_grid_checks():
    assert experiment.default_patch_size(28) == 7
    assert experiment.default_patch_size(64) == 8
    assert experiment.default_patch_size(224) == 16
    assert experiment.default_patch_size(16) == 4
    with pytest.warns(UserWarning, match="fewer than 16|< 16"):
        experiment.check_patch_grid(28, 14)
    with pytest.raises(ValueError, match="patch_size 5 must divide img_size 28"):
        experiment.check_patch_grid(28, 5)


def test_failure_during_training_exits_1(monkeypatch, tmp_path, capsys):
    import mixfast.train.trainer

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(mixfast.train.trainer.MixTrainer, "run", broken)
    assert cli.main(["train", *TINY, "--out", str(tmp_path / "run")]) == 1
    assert "failed: RuntimeError: boom" in capsys.readouterr().err


def test_table_and_pareto_front():
    runs = [
        {"pipeline": p, "fraction": 0.1, "seed": s, "top1": t, "wall_s": w}
        for p, s, t, w in [
            ("sl", 0, 0.50, 1.0),
            ("ssl+sl", 0, 0.60, 4.0),
            ("mix", 0, 0.70, 2.0),
            ("ssl+sl", 1, 0.62, 4.0),
            ("mix", 1, 0.66, 2.0),
        ]
    ]
    table = format_table(runs)
    assert "0.50" in table  # time ratio: mix wall 2.0 / ssl+sl wall 4.0
    assert "+7.00" in table  # (0.68 - 0.61) in points
    assert "68.00 ± 25.41" in table  # 2 seeds: t_{0.975,1} x std / sqrt(2)
    assert pareto_front([(r["wall_s"], r["top1"]) for r in runs]) == [(1.0, 0.5), (2.0, 0.7)]
    assert run_name("ssl+sl", 0.25, 3) == "ssl+sl-f0.25-s3"
    assert run_name("mix", 0.02, 1) != run_name("mix", 0.020000001, 1)
    assert run_name("mix", 0.1, 0, "semi-supervised", 8) == "mix-f0.1-s0-semi-e8"


# ------------------------------------------------------------ subprocess: the real command


def test_train_end_to_end(tmp_path):
    out = tmp_path / "run"
    proc = mixfast("train", *TINY, "--pipeline", "mix", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    for name in ("metrics.jsonl", "last.pt", "result.json", "data.json"):
        assert (out / name).is_file(), name
    result = json.loads((out / "result.json").read_text())
    assert 0.0 <= result["top1"] <= 1.0
    data = json.loads((out / "data.json").read_text())
    assert (
        data["labeled"] == 30
        and data["validation"] == 10
        and data["model_kwargs"]["patch_size"] == 4
    )


def test_compare_end_to_end_refuses_overwrite_and_resumes(tmp_path):
    out = tmp_path / "cmp"
    args = ["compare", *TINY, "--fractions", "0.5", "--seeds", "3", "--out", str(out)]
    proc = mixfast(*args)
    assert proc.returncode == 0, proc.stderr
    assert "Protocol:" in proc.stderr and "verdict" in proc.stdout
    report = json.loads((out / "compare.json").read_text())
    assert [r["pipeline"] for r in report["runs"]] == ["sl", "ssl+sl", "mix"]
    for run in report["runs"]:
        assert run["fraction"] == 0.5 and run["seed"] == 3
        assert 0.0 <= run["top1"] <= 1.0 and run["wall_s"] > 0
        assert (out / run_name(run["pipeline"], 0.5, 3) / "result.json").is_file()
    assert (out / "compare.png").stat().st_size > 1000
    assert (out / "compare-curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = (out / "compare.json").read_bytes()

    again = mixfast(*args)
    assert again.returncode == 2
    assert "refusing to overwrite" in again.stderr and "--resume" in again.stderr
    assert (out / "compare.json").read_bytes() == before

    resumed = mixfast(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr.count("reusing") == 3
    assert json.loads((out / "compare.json").read_text())["runs"] == report["runs"]

    forced = mixfast(*args, "--force", "--pipelines", "sl")
    assert forced.returncode == 0, forced.stderr
    assert "reusing" not in forced.stderr
    assert [r["pipeline"] for r in json.loads((out / "compare.json").read_text())["runs"]] == ["sl"]


def test_compare_from_weights_resumes(tmp_path):
    """compare --pretrained-path --resume reuses its finished runs: they record
    pretrained_weights=True (set when the run starts), which the stale-run check applies too."""
    pre = tmp_path / "pre"
    trained = mixfast("train", *TINY, "--pipeline", "ssl+sl", "--out", str(pre))
    assert trained.returncode == 0, trained.stderr
    out = tmp_path / "cmp"
    args = ["compare", *TINY, "--fractions", "0.5", "--seeds", "3", "--pipelines", "sl",
            "--pretrained-path", str(pre / "last.pt"), "--out", str(out)]  # fmt: skip
    first = mixfast(*args)
    assert first.returncode == 0, first.stderr
    resumed = mixfast(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr.count("reusing") == 1


def test_compare_with_a_smaller_ssl_share_keeps_passes_equal(tmp_path):
    out = tmp_path / "cmp"
    args = ["compare", *TINY, "--ssl-epochs", "2", "--sl-epochs", "2", "--ssl-share", "0.5",
            "--batch-size", "8",
            "--pipelines", "ssl+sl", "mix", "--fractions", "1.0", "--seeds", "0", "1",
            "--out", str(out)]  # fmt: skip
    proc = mixfast(*args)  # the untimed warm-up included
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "compare.json").read_text())
    mix = [r for r in report["runs"] if r["pipeline"] == "mix"]
    phase = mix[0]["result"]["budget"]["phases"]["mix"]  # 3 steps of 8: 5, 5, 6 SSL rows
    assert (phase["steps"], phase["sl_samples"], phase["ssl_samples"]) == (3, 24, 16)
    assert report["summary"][0]["passes_equal"]


def test_compare_refuses_run_folders_it_would_overwrite(tmp_path):
    args = cli.parse_args(["compare", "--out", str(tmp_path), "--fractions", "0.5", "--seeds", "3"])
    check_compare_args(args)
    (tmp_path / "mix-f0.5-s3").mkdir()
    (tmp_path / "mix-f0.5-s3" / "result.json").write_text("{}")
    with pytest.raises(ValueError, match="mix-f0.5-s3 already holds a run"):
        check_compare_args(args)
    args.resume = True
    check_compare_args(args)
    args.force = True
    with pytest.raises(ValueError, match="not both"):
        check_compare_args(args)
    args.resume, args.fractions = False, [0.5, 1.5]
    with pytest.raises(ValueError, match=r"--fractions values must be in \(0, 1\]"):
        check_compare_args(args)


def test_compare_under_torchrun_exits_2_before_any_work(tmp_path, monkeypatch, capsys):
    """Every process would run the whole grid into the same folders (it hung at the warm-up)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "cmp"
    assert (
        cli.main(["compare", *TINY, "--fractions", "0.5", "--seeds", "3", "--out", str(out)]) == 2
    )
    err = capsys.readouterr().err
    assert "not under torchrun (WORLD_SIZE=2)" in err and "mixfast train --pipeline" in err
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--fraction", "0"], "--fraction must be in (0, 1]"),
        (["--dataset", "imagefolder"], "--dataset imagefolder needs --data-dir"),
        (["--patch-size", "5"], "--patch-size 5 must divide --img-size 16"),
        (["--dataset", "mnist"], "--dataset 'mnist' is neither one of"),
    ],
)
def test_train_bad_usage_exits_2(tmp_path, extra, message):
    out = tmp_path / "run"
    proc = mixfast("train", *TINY, "--out", str(out), *extra)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not (out / "last.pt").exists()


def test_missing_fashion_mnist_exits_2_with_instructions(tmp_path):
    proc = mixfast("train", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path))
    assert proc.returncode == 2
    assert "apt-get install dataset-fashion-mnist" in proc.stderr


def test_info_prints_versions():
    script = shutil.which("mixfast")  # the console script, where the install made one
    if script is None:
        proc = mixfast("info")
    else:
        proc = subprocess.run([script, "info"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for key in ("python", "torch.version.cuda", "triton", "timm", "nvcc", "CUDA_HOME", "device"):
        assert key in proc.stdout


def test_bench_runs_pytest_benchmark(tmp_path):
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    (bench / "bench_tiny.py").write_text(
        "def test_tiny(benchmark):\n    benchmark(sum, range(10))\n"
    )
    proc = mixfast("bench", "--path", str(bench), "--", "-p", "no:cacheprovider",
                   "-o", "python_files=bench_*.py")  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "test_tiny" in proc.stdout
    missing = mixfast("bench", "--path", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "--path" in missing.stderr
