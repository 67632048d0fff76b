"""docs/results.md's H100 table, from the run's JSON: one row per measurement the JSON holds
(attention and patch embedding each in fwd and fwd+bwd, masking per N, the mixed step per
config, mode and SL view), mixfast's median beside the fastest peer's and their ratio
(peer / mixfast: above 1 mixfast is faster, below 1 slower).

    python benchmarks/studies/h100-2026-11-25-first/table.py \
        [benchmarks/results/h100-2026-11-25-first]
"""

import json
import sys
from pathlib import Path

DEFAULT = Path(__file__).resolve().parents[2] / "results" / Path(__file__).parent.name
PEERS = {  # the JSON's implementation names as the table writes them
    "varlen_attn": "torch varlen_attn",
    "sdpa_grouped": "SDPA per length",
    "flex_document": "FlexAttention",
    "timm_conv": "timm conv + gather",
}
ATTENTION_CASES = {"tin64_65+17": "256x65 + 256x17 tokens", "in224_197+50": "256x197 + 256x50"}
PATCH_CASES = {"tin64_p8_k16": "64/8, 16 of 64 kept", "in224_p16_k49": "224/16, 49 of 196 kept"}
VIEWS = {"ssl": "SSL view", "sl": "SL view", "mix": "mix (both views packed)"}
GOALS = {  # the goals the table has carried: attention fwd+bwd, patch embed SSL fwd, mixed step
    ("attention", "fwd+bwd"): "1.2x",
    ("patch", "ssl", "fwd"): "3x",
    ("step", "mix"): "1.5x",
}


def _ms(ms: float) -> str:
    return f"{ms:.1f} ms" if ms >= 10 else f"{ms:.3f} ms"


def _row(what: str, ms: float, peer_ms: float, peer: str, goal: str = "") -> str:
    ratio = peer_ms / ms
    return f"| {what} | {_ms(ms)} | {_ms(peer_ms)} ({peer}) | {ratio:.2f}x | {goal} |"


def _fastest_peer(rows: list[dict]) -> dict:
    return min((r for r in rows if r["impl"] != "mixfast"), key=lambda r: r["median_ms"])


def attention_rows(data: dict) -> list[str]:
    out = []
    for case, label in ATTENTION_CASES.items():
        for mode in ("fwd", "fwd+bwd"):
            rows = [r for r in data["results"] if r["case"] == case and r["mode"] == mode]
            mine = next(r for r in rows if r["impl"] == "mixfast")
            peer = _fastest_peer(rows)
            what = f"attention {mode}, {label}, H={data['heads']}, Dh={data['head_dim']}"
            goal = GOALS.get(("attention", mode), "")
            out.append(_row(what, mine["median_ms"], peer["median_ms"], PEERS[peer["impl"]], goal))
    return out


def patch_rows(data: dict) -> list[str]:
    out = []
    for case, label in PATCH_CASES.items():
        for view, view_label in VIEWS.items():
            for mode in ("fwd", "fwd+bwd"):
                rows = [
                    r
                    for r in data["results"]
                    if r["case"] == case and r["view"] == view and r["mode"] == mode
                ]
                mine = next(r for r in rows if r["impl"] == "mixfast")
                peer = _fastest_peer(rows)
                what = f"masked patch embed, {view_label} {mode}, {label}, B={data['batch']}"
                goal = GOALS.get(("patch", view, mode), "")
                out.append(
                    _row(what, mine["median_ms"], peer["median_ms"], PEERS[peer["impl"]], goal)
                )
    return out


def masking_rows(data: dict) -> list[str]:
    return [
        _row(
            f"patch masking, B={r['batch']}, N={r['num_patches']}, ratio {r['mask_ratio']}",
            r["mixfast"]["median_ms"],
            r["mae"]["median_ms"],
            "MAE argsort of noise",
        )
        for r in data["results"]
    ]


def step_rows(data: dict) -> list[str]:
    out = []
    for r in data["results"]:
        base = r["times"]["ssl+sl"]["median_ms"]
        for arm, label in (("mix", ""), ("mix-masked", ', `sl_view="masked"`')):
            what = (
                f"mixed step vs SSL step + SL step, {r['config']}, "
                f"{r['batch']}+{r['batch']}, {r['mode']}{label}"
            )
            goal = GOALS.get(("step", arm), "")
            out.append(_row(what, r["times"][arm]["median_ms"], base, "the two steps", goal))
    return out


def table(folder: Path) -> str:
    def load(name: str) -> dict:
        return json.loads((folder / f"{name}.json").read_text())

    lines = [
        "| what (ViT-Tiny layouts, bf16, medians) | mixfast | fastest peer | ratio | goal |",
        "|---|---|---|---|---|",
        *attention_rows(load("attention")),
        *patch_rows(load("patch_embed")),
        *masking_rows(load("masking")),
        *step_rows(load("mixed_step")),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT))
