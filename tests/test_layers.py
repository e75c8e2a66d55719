"""The package's import structure: no import circles, and no module imports one of a higher layer.

Every import counts, including those inside functions (a lazy import up the layers is still an upward dependency).
The layers, lowest first, are those of docs/architecture.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fusion_ser"

# Lowest first. A module belongs to the most specific prefix that names it; the last layer is the package's
# own __init__ alone, so a module missing from the list fails the test instead of landing on top.
LAYERS: list[list[str]] = [
    ["fusion_ser.errors", "fusion_ser.files"],
    ["fusion_ser.device", "fusion_ser.packaged", "fusion_ser.typed_config", "fusion_ser.schema",
     "fusion_ser.onnx_exporter"],
    ["fusion_ser.config"],
    ["fusion_ser.rundir", "fusion_ser.segment", "fusion_ser.data.audio", "fusion_ser.data.augment",
     "fusion_ser.data.folds", "fusion_ser.data.manifest", "fusion_ser.data.corpora", "fusion_ser.data.sampler",
     "fusion_ser.data.context", "fusion_ser.data.sources", "fusion_ser.data.annotations", "fusion_ser.prediction_values",
     "fusion_ser.whisper_window"],
    ["fusion_ser.encoders"],
    ["fusion_ser.data.feature_cache", "fusion_ser.data.frame_store", "fusion_ser.data.dataset",
     "fusion_ser.data.selection", "fusion_ser.data.prepare"],
    ["fusion_ser.models"],
    ["fusion_ser.evaluation"],
    ["fusion_ser.training"],
    ["fusion_ser.transcribe"],
    ["fusion_ser.fusion"],
    ["fusion_ser.predict", "fusion_ser.shared_pass", "fusion_ser.export", "fusion_ser.adapt", "fusion_ser.crosscorpus"],
    ["fusion_ser.demo"],
    ["fusion_ser.cli"],
    ["fusion_ser"],
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Package modules that `name` imports anywhere in its body (absolute and relative imports)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def add(target: str) -> None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("fusion_ser"):
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("fusion_ser"):
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                add(full if full in known else base)
    return found


def layer_of(name: str) -> int:
    best, rank = -1, None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (name == p or (p != "fusion_ser" and name.startswith(p + "."))) and len(p) > best:
                best, rank = len(p), i
    assert rank is not None, f"{name} is in no layer; add it to LAYERS (and docs/architecture.md)"
    return rank


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), or a module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles() -> None:
    assert cycles(graph()) == []


def test_no_import_goes_up_a_layer() -> None:
    edges = graph()
    upward = sorted(f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
                    for a, targets in edges.items() for b in targets
                    if b != "fusion_ser" and layer_of(b) > layer_of(a))
    assert upward == []


def test_modules_stay_small() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert sizes["fusion_ser.training.trainer"] <= 400
    assert [f"{n}: {s} lines" for n, s in sorted(sizes.items()) if s > 450] == []


def test_the_checks_see_circles_and_upward_imports() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer_of("fusion_ser.training.job") > layer_of("fusion_ser.models.io") > layer_of("fusion_ser.encoders.base")
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("fusion_ser.somewhere_new")
    known = {"fusion_ser.models.io", "fusion_ser.models", "fusion_ser.training.job"}
    src = PACKAGE / "training" / "job.py"
    assert "fusion_ser.models.io" in imports_of("fusion_ser.training.job", src, known)
