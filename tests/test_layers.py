"""The package's layers, read from its import graph: no import circle, no import that runs
up a layer, every folder placed, and ARCHITECTURE.md naming the folders in layer order and
every module in them. Nothing here is a list of modules kept by hand: LAYERS orders the
folders, and the graph comes from the source (imports inside functions included)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Bottom to top: a module may import its own layer or a lower one. The modules directly
# in ftjax/ are the entry points (`python -m ftjax.X`), above every folder.
LAYERS = (
    "core",
    "data",
    "models",
    "tasks",
    "methods",
    "interop",
    "training",
    "planning",
    "studies",
)
ENTRY = "entry points"


def modules(package: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under `package`."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def import_edges(package: Path) -> list[tuple[str, str, int]]:
    """(importer, imported, line) for every import of one module of `package` by another.
    An import names the deepest module it reaches (`from a import b` is a.b when b is a
    module). A submodule importing its own package's __init__ is an edge too: the
    __init__ imports its submodules, so that is a circle."""
    mods = modules(package)
    edges = []
    for name, path in mods.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.append((name, target, node.lineno))
    return edges


def layer_of(module: str, package: str) -> str:
    parts = module.split(".")
    if len(parts) == 2 and parts[1] in LAYERS:  # the folder's own __init__
        return parts[1]
    return parts[1] if len(parts) > 2 else ENTRY


def rank(layer: str) -> int:
    return len(LAYERS) if layer == ENTRY else LAYERS.index(layer)


def circles(edges: list[tuple[str, str, int]]) -> list[list[str]]:
    """The strongly connected sets of more than one module (Tarjan), plus self-loops."""
    graph: dict[str, set[str]] = {}
    for a, b, _ in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def upward_imports(package: Path) -> list[str]:
    """Each import that runs up a layer, as 'file:line: a (layer) imports b (layer)'."""
    mods = modules(package)
    out = []
    for a, b, line in import_edges(package):
        la, lb = layer_of(a, package.name), layer_of(b, package.name)
        if lb != la and rank(lb) > rank(la):
            where = mods[a].relative_to(package.parent)
            out.append(f"{where}:{line}: {a} ({la}) imports {b} ({lb})")
    return sorted(set(out))


def unplaced_folders(package: Path) -> list[str]:
    return sorted(
        p.name
        for p in package.iterdir()
        if p.is_dir() and (p / "__init__.py").is_file() and p.name not in LAYERS
    )


def test_no_import_circle_in_ftjax():
    found = circles(import_edges(ROOT / "ftjax"))
    assert not found, "import circles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_no_import_runs_up_a_layer():
    found = upward_imports(ROOT / "ftjax")
    assert not found, (
        "upward imports (LAYERS, bottom to top: " + ", ".join(LAYERS) + "):\n" + ("\n".join(found))
    )


def test_every_folder_is_a_layer():
    assert not unplaced_folders(ROOT / "ftjax"), "place these folders in tests/test_layers.LAYERS"


def test_the_checks_catch_a_circle_and_an_upward_import(tmp_path: Path):
    """The checks on a planted tree: models imports training (up), and tasks and core
    import each other (a circle through two layers)."""
    pkg = tmp_path / "ftjax"
    files = {
        "__init__.py": "",
        "main.py": "from ftjax.training import loop\n",
        "core/__init__.py": "",
        "core/errors.py": "from ftjax.tasks import base\n",
        "tasks/__init__.py": "",
        "tasks/base.py": "from ftjax.core import errors\n",
        "models/__init__.py": "",
        "models/hub.py": "def f():\n    from ftjax.training.loop import run\n",
        "training/__init__.py": "",
        "training/loop.py": "from ftjax.models import hub\n",
        "methods/__init__.py": "from ftjax.methods.catalog import resolve\n",
        "methods/catalog.py": "from ftjax import methods\n",
    }
    for rel, text in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    found = circles(import_edges(pkg))
    assert ["ftjax.core.errors", "ftjax.tasks.base"] in found
    assert ["ftjax.methods", "ftjax.methods.catalog"] in found  # a package and its child
    assert ["ftjax.models.hub", "ftjax.training.loop"] in found
    up = upward_imports(pkg)
    assert up == [
        "ftjax/core/errors.py:1: ftjax.core.errors (core) imports ftjax.tasks.base (tasks)",
        "ftjax/models/hub.py:2: ftjax.models.hub (models) imports ftjax.training.loop (training)",
    ]
    (pkg / "extras").mkdir()
    (pkg / "extras" / "__init__.py").write_text("")
    assert unplaced_folders(pkg) == ["extras"]


def test_architecture_names_the_layers_in_order_and_every_module():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    table = text[text.index("## Layers") :]
    rows = re.findall(r"^\| `(\w+)/` \|", table, re.M)
    assert rows == list(LAYERS), "ARCHITECTURE.md's layer table, bottom to top"
    missing = [
        str(path.relative_to(ROOT / "ftjax"))
        for path in modules(ROOT / "ftjax").values()
        if path.name != "__init__.py" and f"{path.stem}" not in text
    ]
    assert not missing, f"modules ARCHITECTURE.md does not name: {missing}"
