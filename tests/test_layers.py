"""The layers' arrows: serving and evaluation read checkpoints without importing the training stack."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest


def test_serving_a_checkpoint_imports_no_training_code(checkpoint: Path) -> None:
    code = (
        "import sys\n"
        "from imgclf.inference.server import create_app\n"
        "from imgclf.inference.predictor import Predictor\n"
        f"create_app(Predictor.load({str(checkpoint)!r}, device='cpu'))\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('imgclf.training'))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


class _Payload:
    """Pickles to a call that writes a marker file: what a hostile .pt would run on a full unpickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.write_text, (self.marker, "ran"))


def test_checkpoints_load_without_running_pickled_code(tmp_path: Path, checkpoint: Path) -> None:
    import torch

    from imgclf.errors import UserError
    from imgclf.models.checkpoint import FORMAT, load_checkpoint, model_from_checkpoint

    marker = tmp_path / "marker"
    hostile = tmp_path / "hostile.pt"
    torch.save({"format": FORMAT, "model": {}, "payload": _Payload(marker)}, hostile)
    with pytest.raises(UserError, match="not an imgclf checkpoint"):
        load_checkpoint(hostile)
    assert not marker.exists()

    ckpt = load_checkpoint(checkpoint)  # a real one loads with weights_only=True, RNG states included
    assert set(ckpt["rng"]) >= {"torch", "numpy", "python"}
    torch.save({k: v for k, v in ckpt.items() if k != "model"}, tmp_path / "no-model.pt")
    with pytest.raises(UserError, match="without model"):
        load_checkpoint(tmp_path / "no-model.pt")
    with pytest.raises(UserError, match="do not fit"):
        model_from_checkpoint({**ckpt, "classes": ckpt["classes"] + ["extra"]})


# -- the import graph: layers only point down -------------------------------------------------------------

SRC = Path(__file__).resolve().parents[1] / "src"
LIBRARY = "imgclf.evaluation"  # a library: imports none of the layers that use it
ABOVE_LIBRARY = ("imgclf.training", "imgclf.inference", "imgclf.reporting", "imgclf.commands")


def _modules() -> dict[str, Path]:
    """imgclf's modules by dotted name (a package by its own name, not `.__init__`)."""
    found = {}
    for path in sorted((SRC / "imgclf").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST, type_checking: bool = False) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement anywhere in the file (module level, functions, classes, try blocks); the body
    of `if TYPE_CHECKING:` only when `type_checking` (it never runs; its `else:` does)."""
    found, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test) and not type_checking:
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return found


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The module an ImportFrom names, relative imports (`from . import x`) resolved against `module`."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """`name` if it is an imgclf module, else its longest prefix that is one."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in modules:
            return ".".join(parts[:n])
    return None


def import_graph(type_checking: bool = False) -> dict[str, set[str]]:
    """module -> the imgclf modules it imports, anywhere in the file. `from imgclf.x import y` is an edge to
    imgclf.x.y where that is a module, else to imgclf.x; `import imgclf.x.y` to imgclf.x.y."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in _import_nodes(ast.parse(path.read_text(), str(path)), type_checking):
            if isinstance(node, ast.Import):
                targets = [_known(a.name, modules) for a in node.names]
            else:
                source = _absolute(node, module, is_package)
                targets = [_known(f"{source}.{a.name}", modules) for a in node.names]
            graph[module].update(t for t in targets if t is not None and t != module)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module, each sorted (iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def package_cycles(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Pairs of top-level parts (imgclf.X) that import each other, module by module."""
    top = {m: ".".join(m.split(".")[:2]) for m in graph}
    edges = {(top[a], top[b]) for a, targets in graph.items() for b in targets if top[a] != top[b]}
    return sorted((a, b) for a, b in edges if (b, a) in edges and a < b)


def test_import_graph_reads_every_kind_of_import() -> None:
    """The counter itself: in-function imports count, `if TYPE_CHECKING:` does not, `from pkg import module`
    is an edge to the module, and both checks see the whole package."""
    graph = import_graph()
    assert "imgclf.data.listing" in graph["imgclf.data.sources"]
    assert "imgclf.inference.predictor" in graph["imgclf.cli"]  # imported inside a command function
    assert "imgclf.config" not in graph["imgclf.training.finetune"]  # only under TYPE_CHECKING
    assert "imgclf.config" in import_graph(type_checking=True)["imgclf.training.finetune"]
    assert "imgclf.evaluation.scores" in graph["imgclf.evaluation.metrics"]  # `from imgclf.evaluation import scores`
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    """Layers only point down: no two imgclf modules import each other, directly or around a loop, counting
    imports inside functions (only `if TYPE_CHECKING:` blocks, which never run, are left out)."""
    graph = import_graph()
    cycles = strongly_connected(graph)
    for cycle in cycles:
        print(len(cycle), cycle)
    for a, b in package_cycles(graph):
        print("package cycle", a, b)
    assert cycles == [], cycles


def test_evaluation_imports_no_layer_above_it() -> None:
    """imgclf.evaluation is a library: no import (not even a type-only one) of training, inference,
    reporting or the commands that combine them."""
    graph = import_graph(type_checking=True)
    upward = sorted((m, t) for m, targets in graph.items() if m == LIBRARY or m.startswith(LIBRARY + ".")
                    for t in targets if t.startswith(ABOVE_LIBRARY))
    assert upward == [], upward


def test_no_module_imports_another_modules_private_names() -> None:
    """No `from imgclf.x import _name`, no `import imgclf.x._module`, and no `module._name` on an imported
    imgclf module."""
    modules = _modules()
    private = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        bound: set[str] = set()  # local names of imported imgclf modules
        for node in _import_nodes(tree, type_checking=True):
            if isinstance(node, ast.Import):
                names = [(a.name, a.asname) for a in node.names if a.name.split(".")[0] == "imgclf"]
                private += [f"{module}: import {name}" for name, _ in names
                            if any(p.startswith("_") and not p.startswith("__") for p in name.split("."))]
                bound.update(asname for _, asname in names if asname)
                continue
            source = _absolute(node, module, path.name == "__init__.py")
            if source.split(".")[0] != "imgclf":
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    private.append(f"{module}: from {source} import {alias.name}")
                elif f"{source}.{alias.name}" in modules:
                    bound.add(alias.asname or alias.name)
        private += [f"{module}: {n.value.id}.{n.attr}" for n in ast.walk(tree)
                    if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in bound
                    and n.attr.startswith("_") and not n.attr.startswith("__")]
    assert private == [], private


if __name__ == "__main__":  # python tests/test_layers.py: the cycles as they are now
    _graph = import_graph()
    for _cycle in strongly_connected(_graph):
        print(len(_cycle), _cycle)
    for _a, _b in package_cycles(_graph):
        print("package cycle", _a, _b)
