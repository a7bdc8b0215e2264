"""The package's layout holds: subpackages by role with a docstring each, short modules, no import cycle, the
public paths users write, another library's private names in ``lightning_mem/_compat.py`` only, and the
torch-free packages free of torch."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lightning_mem import _compat

PKG = Path(__file__).resolve().parents[1] / "lightning_mem"
REPO = PKG.parent
MODULES = sorted(p for p in PKG.rglob("*.py") if "__pycache__" not in p.parts)
MAX_LINES = 400


def _name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_subpackage_says_what_lives_there() -> None:
    packages = [p.parent for p in PKG.rglob("__init__.py")]
    assert {p.name for p in packages} >= {"lightning_mem", "alignment", "nets", "data", "training",
                                           "ensemble", "rundir", "sweeps", "results", "analysis", "cli"}
    for package in packages:
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        assert doc and len(doc) > 60, f"{package}: its __init__ docstring should say what lives there"


def test_no_module_is_long() -> None:
    lengths = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in MODULES}
    long = {path: n for path, n in lengths.items() if n > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def _imports(path: Path) -> set[str]:
    """lightning_mem modules imported at module level (not inside functions, not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            continue
        for sub in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) else ():
            if isinstance(sub, ast.ImportFrom) and sub.module and sub.module.startswith("lightning_mem"):
                found.add(sub.module)
                found.update(f"{sub.module}.{a.name}" for a in sub.names)
            elif isinstance(sub, ast.Import):
                found.update(a.name for a in sub.names if a.name.startswith("lightning_mem"))
    return found


def test_no_import_cycle() -> None:
    names = {_name(p): p for p in MODULES}
    graph = {name: {m for m in _imports(path) if m in names and m != name} for name, path in names.items()}
    # importing a submodule runs its package's __init__ first
    for name in list(graph):
        for dep in list(graph[name]):
            parent = dep.rpartition(".")[0]
            while parent and parent not in ("lightning_mem", name) and not name.startswith(parent + "."):
                graph[name].add(parent)
                parent = parent.rpartition(".")[0]
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = [*stack[stack.index(dep):], dep]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def _private_uses(path: Path, ours: set[str]) -> list[str]:
    """``x._name`` on an object that is not ours (self, cls, or a name defined in the package), and string
    constants naming one of :data:`_compat.PRIVATE_NAMES`."""
    foreign = {name for _, _, name in _compat.PRIVATE_NAMES}
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if owner not in ("self", "cls") and node.attr not in ours:
                out.append(f"{path.relative_to(REPO)}:{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in foreign:
            out.append(f"{path.relative_to(REPO)}:{node.lineno}: {node.value!r}")
    return out


def test_private_names_of_other_libraries_only_in_compat() -> None:
    ours: set[str] = set()
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                ours.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                ours.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                ours.add(node.id)
            elif isinstance(node, ast.arg):
                ours.add(node.arg)
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "register_buffer":
                first = node.args[0] if node.args else None
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    ours.add(first.value)
    ours -= {name for _, _, name in _compat.PRIVATE_NAMES}
    uses = [u for p in MODULES if p.name != "_compat.py" for u in _private_uses(p, ours)]
    assert not uses, "private names of other libraries outside lightning_mem/_compat.py:\n" + "\n".join(uses)


@pytest.mark.parametrize("module", ["lightning_mem.rundir", "lightning_mem.results.report",
                                    "lightning_mem.results.dashboard", "lightning_mem.sweeps.command",
                                    "lightning_mem.ensemble.plan", "lightning_mem.cli.commands"])
def test_torch_free_modules(module: str) -> None:
    code = f"import sys, {module}; bad = {{'torch', 'lightning'}} & set(sys.modules); assert not bad, bad"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


PUBLIC = {
    "lightning_mem.nets": ["ScaledMLP", "ConvNet"],
    "lightning_mem.losses": ["cross_entropy", "multiclass_hinge", "squared_error"],
    "lightning_mem.data": ["ImageClassificationData"],
    "lightning_mem.module": ["MemorizationModule"],
    "lightning_mem.alignment": ["alignment", "class_alignment", "gradient_alignment",
                                "representation_alignment"],
    "lightning_mem.callbacks": ["AlignmentMonitor", "DivergenceGuard", "RunStatus", "CheckpointPublisher",
                                "EnsembleAlignmentMonitor", "MemberCheckpoint", "MemberStatus",
                                "KernelMonitor", "EnsembleKernelMonitor", "GrokkingMonitor",
                                "ConfigToRun"],
    "lightning_mem.loggers": ["RunCSVLogger", "RunWandbLogger"],
}


def test_public_paths() -> None:
    for module, names in PUBLIC.items():
        mod = importlib.import_module(module)
        for name in names:
            assert hasattr(mod, name), f"{module}.{name}"
    import lightning as L

    from lightning_mem import callbacks

    for name in PUBLIC["lightning_mem.callbacks"]:
        assert issubclass(getattr(callbacks, name), L.Callback), name


def _class_paths(node: object) -> list[str]:
    if isinstance(node, dict):
        own = [node["class_path"]] if isinstance(node.get("class_path"), str) else []
        return own + [p for v in node.values() for p in _class_paths(v)]
    if isinstance(node, list):
        return [p for v in node for p in _class_paths(v)]
    return []


def test_every_class_path_in_configs_and_sweeps_resolves() -> None:
    paths: dict[str, list[str]] = {}
    for file in sorted([*(REPO / "configs").rglob("*.yaml"), *(REPO / "sweeps").rglob("*.yaml")]):
        for path in _class_paths(yaml.safe_load(file.read_text())):
            paths.setdefault(path, []).append(str(file.relative_to(REPO)))
    assert "lightning_mem.nets.ScaledMLP" in paths and "lightning_mem.callbacks.AlignmentMonitor" in paths
    for path, files in paths.items():
        module, _, name = path.rpartition(".")
        assert isinstance(getattr(importlib.import_module(module), name, None), type), (path, files)
