"""The package layout of ../shared/DESIGN.md: wings that import only downwards, and no import circle."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "gpucnn"

# A wing may import itself and the wings listed for it, nothing else of gpucnn.
ALLOWED = {
    "devices": set(),
    "layers": {"devices"},
    "optim": {"devices"},
    "data": {"devices", "atomic"},
    "atomic": set(),
    "models": {"layers", "devices"},
    "interop": {"layers", "devices", "models", "atomic"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules():
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(name: str, path: Path, known: set) -> set:
    """gpucnn modules imported anywhere in the file (top level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "gpucnn")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "gpucnn":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    return {m for m in found if m in known and m != name}


def _graph():
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def _wing(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_import_circle():
    graph = _graph()
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for dep in sorted(graph[m]):
            # a package's __init__ importing its own submodules is how packages are built, not a circle
            if dep.startswith(m + "."):
                continue
            if state.get(dep) == "open":
                cycle = stack[stack.index(dep):] + [dep]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_wings_import_only_downwards():
    bad = []
    for module, deps in _graph().items():
        wing = _wing(module)
        if wing not in ALLOWED:
            continue
        for dep in deps:
            other = _wing(dep)
            if other and other != wing and other not in ALLOWED[wing]:
                bad.append(f"{module} imports {dep}")
    assert not bad, "imports against the layout (see ../shared/DESIGN.md): " + "; ".join(sorted(bad))


def test_only_the_devices_wing_imports_cupy():
    offenders = []
    for name, path in _modules().items():
        if _wing(name) == "devices":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] in ("cupy", "cupyx") for n in names):
                offenders.append(name)
    assert not offenders, f"cupy imported outside gpucnn.devices: {offenders}"
