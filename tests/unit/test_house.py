"""The house rules a reader relies on, checked on the source: no process state in module globals, no
import circle, no module too long to read without a reason given."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "elastask"
#: State on purpose: Celery's configuration module, and a bootstep's ``requires`` (Celery's own API).
ALLOWED_MODULES = {"elastask/entry/celery_defaults.py"}
ALLOWED_NAMES = {"__all__", "requires"}
MUTABLE_CALLS = {"dict", "list", "set", "defaultdict", "deque", "OrderedDict", "Counter"}
MUTATORS = {"append", "extend", "update", "add", "clear", "pop", "popitem", "setdefault", "remove", "discard", "insert"}
MAX_LINES = 300


def _modules() -> Iterator[tuple[str, ast.Module, str]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        yield str(path.relative_to(PACKAGE.parent)), ast.parse(text), text


def _mutable(value: ast.expr | None) -> bool:
    if isinstance(value, ast.List | ast.Dict | ast.Set | ast.ListComp | ast.DictComp | ast.SetComp):
        return True
    return isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id in MUTABLE_CALLS


def _targets(node: ast.Assign | ast.AnnAssign) -> list[str]:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    return [t.id for t in targets if isinstance(t, ast.Name)]


def test_no_module_or_class_holds_mutable_state_and_no_function_rebinds_a_global() -> None:
    """Module-level tables are constants (UPPER_CASE, never changed after import); nothing else is mutable."""
    found = []
    for name, tree, _text in _modules():
        if name in ALLOWED_MODULES:
            continue
        tables: set[str] = set()
        bodies = [tree.body] + [n.body for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and not _is_dataclass(n)]
        for body in bodies:
            for node in body:
                if isinstance(node, ast.Assign | ast.AnnAssign) and _mutable(node.value):
                    for target in _targets(node):
                        if target.lstrip("_").isupper():
                            tables.add(target)
                        elif target not in ALLOWED_NAMES:
                            found.append(f"{name}: {target} is mutable state")
        found += [f"{name}: global {', '.join(n.names)}" for n in ast.walk(tree) if isinstance(n, ast.Global)]
        found += [f"{name}: {t} is an object made at import" for t in _objects_made_at_import(tree)]
        found += [f"{name}: {table} changed after import" for table in sorted(_changed(tree) & tables)]
    assert found == [], "process state belongs on the runtime (Runtime.memory), not in module globals"


def _objects_made_at_import(tree: ast.Module) -> list[str]:
    """Module-level instances of the module's own classes, and locks (state shared by whoever imports it)."""
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    made = []
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Call):
            callee = ast.unparse(node.value.func)
            if callee in classes or callee.startswith("threading."):
                made += _targets(node)
    return made


def _changed(tree: ast.Module) -> set[str]:
    """Names a function of the module assigns into (``X[k] = v``) or calls a mutating method of."""
    changed: set[str] = set()
    for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)):
        for node in ast.walk(function):
            if isinstance(node, ast.Assign | ast.AugAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name):
                        changed.add(t.value.id)
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in MUTATORS
                and isinstance(node.func.value, ast.Name)
            ):
                changed.add(node.func.value.id)
    return changed


def _is_dataclass(node: ast.ClassDef) -> bool:
    return any("dataclass" in ast.unparse(d) for d in node.decorator_list)


def _imports(name: str, tree: ast.Module) -> set[str]:
    """The elastask modules ``name`` imports when it is imported (not under TYPE_CHECKING, not in a function)."""
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("elastask"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("elastask"))
    return found


def test_no_import_circle() -> None:
    modules = {}
    for name, tree, _text in _modules():
        dotted = name.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
        modules[dotted] = tree
    graph = {m: {i for i in _imports(m, tree) if i in modules and i != m} for m, tree in modules.items()}
    # A package's __init__ is imported with any of its modules: an arrow to a module is one to its package too.
    for m in graph:
        graph[m] |= {
            p for i in set(graph[m]) for p in _parents(i) if p in modules and p != m and not m.startswith(p + ".")
        }
    circles = []
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    circles.append(" -> ".join([*path, start]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert circles == []


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def test_a_module_over_300_lines_says_why_in_its_docstring() -> None:
    long = []
    for name, tree, text in _modules():
        doc = ast.get_docstring(tree) or ""
        if text.count("\n") > MAX_LINES and "one module" not in doc.lower():
            long.append(f"{name} ({text.count(chr(10))} lines)")
    assert long == [], "split it, or say in its docstring why it is one module"


def test_the_glossary_names_existing_files_only() -> None:
    import re

    glossary = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`((?:[a-z_]+/)+[a-z_]+\.(?:py|lua|yaml)|(?:[a-z_]+/)+)`", glossary))
    named |= set(re.findall(r"`([a-z_]+\.py)`", glossary))
    missing = [
        path for path in sorted(named) if not (PACKAGE / path).exists() and not (PACKAGE / "parts/lua" / path).exists()
    ]
    assert named and missing == []
