"""The layering of the code: kernels/ never imports mixfast, nothing below the CLI imports it,
no package module imports a layer above its own, and no file grows past about 500 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Lower number = lower layer; a module may import only its own layer or lower ones.
LAYERS = {
    "mixfast.checks": 0,
    "mixfast.stats": 0,
    "mixfast._cuda_home": 0,
    "mixfast.provenance": 0,
    "mixfast.health": 0,
    "mixfast.budget": 0,
    "mixfast.ops": 1,
    "mixfast.kernels": 1,
    "mixfast.schedule": 2,
    "mixfast.optim": 2,
    "mixfast.data": 2,
    "mixfast.checkpoint": 2,
    "mixfast.info": 2,
    "mixfast.model": 3,
    "mixfast.train": 4,
    "mixfast.experiment": 5,
    "mixfast.compare": 6,
    "mixfast.report": 6,
    "mixfast.profile": 6,
    "mixfast.cli": 7,
    "mixfast.__main__": 8,
}


def layer(module: str) -> int | None:
    hits = [name for name in LAYERS if module == name or module.startswith(name + ".")]
    return LAYERS[max(hits, key=len)] if hits else None


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "kernels":
        parts = ["mixfast", "kernels", *parts[1:]]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            found += [f"{node.module}.{alias.name}" for alias in node.names]
    return [name for name in found if name.split(".")[0] == "mixfast"]


SOURCES = sorted((ROOT / "mixfast").rglob("*.py")) + sorted((ROOT / "kernels").glob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_down_the_layers(path):
    name = module_name(path)
    if name == "mixfast":
        return  # the lazy facade: it imports nothing at import time
    own = layer(name)
    assert own is not None, f"{name} has no layer in tests/test_layout.py"
    for target in imports(path):
        if path.parent.name == "kernels":
            pytest.fail(f"{name} imports {target}: kernels/ may import only torch and triton")
        target_layer = layer(target)
        if target_layer is None or target == "mixfast":
            continue
        assert target_layer <= own, f"{name} (layer {own}) imports {target} (layer {target_layer})"


MAX_LINES = 500  # a file past this is split by job, never trimmed to fit
MAX_TRAINER_LINES = 400  # the trainer reads as the plan of a run; its jobs are components


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_files_stay_short(path):
    lines = len(path.read_text().splitlines())
    cap = MAX_TRAINER_LINES if path == ROOT / "mixfast" / "train" / "trainer.py" else MAX_LINES
    assert lines <= cap, f"{path.relative_to(ROOT)} has {lines} lines (cap {cap}); split it by job"
