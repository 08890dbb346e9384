"""Dependencies run one way: bench/ -> python/bastion -> bastion_ext -> _C, and no two modules
import each other (directly or around a longer circle). Read from the sources with ``ast``."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"bastion_ext": ROOT / "bastion_ext", "bastion": ROOT / "python" / "bastion", "bench": ROOT / "bench"}
LAYER = {"bastion_ext": 0, "bastion": 1, "bench": 2}  # a module may import its own layer or lower ones


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the three packages."""
    found = {}
    for package, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            parts = [package, *path.relative_to(root).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The known modules ``module`` imports (a name is resolved to its longest known prefix)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            names += [base] + [f"{base}.{alias.name}" for alias in node.names]
    targets = set()
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module:
            targets.add(name)
    return targets


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {module: _imports(module, path, known) for module, path in known.items()}


def test_no_module_imports_a_higher_layer():
    upward = [
        (module, target)
        for module, targets in _graph().items()
        for target in targets
        if LAYER[target.split(".")[0]] > LAYER[module.split(".")[0]]
    ]
    assert not upward, f"imports against the layering (module -> imported): {upward}"


def test_no_import_circles():
    graph = _graph()
    # Tarjan's strongly connected components: a component of two or more modules is a circle.
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, f"modules that import each other: {circles}"


def test_the_graph_sees_the_known_edges():
    """The checks above would pass on an empty graph: make sure real imports are found."""
    graph = _graph()
    assert "bastion_ext.ops" in graph["bastion.engine.rounds"]
    assert "bastion_ext.tree" in graph["bastion_ext.ops"]
    assert any(t.startswith("bastion.") for t in graph["bench.bench_verify"] | graph["bench.calibrate_real_sizes"])
