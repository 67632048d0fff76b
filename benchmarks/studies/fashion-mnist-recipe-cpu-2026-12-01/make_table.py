"""The recipe study's table (README.md) from its runs.jsonl, one row per run, then each run's
validation top-1 per epoch.

    python benchmarks/studies/fashion-mnist-recipe-cpu-2026-12-01/make_table.py [RUNS.jsonl]

RUNS.jsonl defaults to the study's, benchmarks/results/fashion-mnist-recipe-cpu-2026-12-01/.
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parents[1] / "results" / HERE.name  # benchmarks/results/<this folder's name>


def main(path: str | Path) -> None:
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    print(
        "| run | case | pipeline | labels | model (patch/width/depth/heads) | batch | blr "
        "| ssl_blr | epochs (ssl+sl) | warmup frac | ls | aug scale | layer_decay | final val % "
        "| test % | wall s (1 thread) | est. 2-thread s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s = r["settings"]
        ep = f"{s['ssl_epochs'] if s['pipeline'] != 'sl' else 0}+{s['epochs']}"
        ssl_blr = format(s["ssl_blr"], "g") if s["pipeline"] != "sl" else "n/a"
        layer_decay = s["layer_decay"] if s["layer_decay"] is not None else "default"
        print(
            f"| {r['tag']} | {r['case']} | {s['pipeline']} | {r['n_train_labeled']} "
            f"| {s['patch']}/{s['width']}/{s['depth']}/{s['heads']} | {s['batch']} "
            f"| {s['blr']:g} | {ssl_blr} | {ep} | {s['warmup_frac']:g} | {s['ls']:g} "
            f"| {s['aug'] or 'off'} | {layer_decay} | {100 * r['final_val']:.2f} "
            f"| {100 * r['test_top1']:.2f} | {r['wall_s']:.0f} | {0.55 * r['wall_s']:.0f} |"
        )
    print()
    for r in rows:
        curve = " ".join(
            f"{100 * e['val_top1']:.1f}" if e["val_top1"] is not None else f"({e['phase']})"
            for e in r["val_per_epoch"]
        )
        print(f"- {r['tag']}: val/epoch " + curve)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else RESULTS / "runs.jsonl")
