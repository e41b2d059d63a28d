"""The package's shape, checked: imports point down the pipeline's layers, no cycles, no god functions.

Measured with the standard library's ``ast`` only, on the source as written (function-level imports
included: they are real dependencies too).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "flanbuild"
MAX_COMPLEXITY = 20

# Lower layers never import higher ones. Same-layer imports are allowed (within a package).
LAYERS = {
    "errors": 0,
    "sandbox": 1,
    "catalog": 2,
    "sources": 3,
    "pipeline": 4,
    "output": 5,
    "builder": 6, "lint": 6, "finetune": 6, "cachedir": 6,
    "cli": 7, "__main__": 7, "__init__": 8,
}


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """flanbuild modules that ``name`` imports (resolving relative imports and ``from pkg import mod``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name}
    return found


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else "__init__"]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_every_module_has_a_layer():
    assert all(_layer(m) is not None for m in _modules())


def test_imports_point_down_the_layers():
    upward = [f"{a} -> {b}" for a, deps in _graph().items() for b in deps
              if _layer(b) > _layer(a) and not b.startswith(a + ".")]
    assert not upward, "imports reaching up a layer:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if dep.startswith(node + ".") or node == "flanbuild":
                continue  # a package importing its own submodules is not a cycle
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def cyclomatic_complexity(fn: ast.AST) -> int:
    """McCabe's number: 1 + one per branch point (if/elif, loops, except, ternary, comprehension,
    assert, match case, and each extra operand of ``and``/``or``). Nested functions count separately."""
    n = 1
    stack = list(ast.iter_child_nodes(fn))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        if isinstance(node, (ast.If, ast.For, ast.AsyncFor, ast.While, ast.IfExp, ast.ExceptHandler, ast.Assert,
                             ast.comprehension, ast.match_case)):
            n += 1
        elif isinstance(node, ast.BoolOp):
            n += len(node.values) - 1
        stack.extend(ast.iter_child_nodes(node))
    return n


def test_complexity_counts_branches():
    src = "def f(a, b):\n    if a and b:\n        return [x for x in a if x]\n    for i in b:\n        pass\n"
    fn = ast.parse(src).body[0]
    assert cyclomatic_complexity(fn) == 1 + 1 + 1 + 1 + 1  # if, and, comprehension, for


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_function_above_the_complexity_bound(path):
    too_complex = [f"{node.name} (line {node.lineno}): {c}"
                   for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                   if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                   and (c := cyclomatic_complexity(node)) > MAX_COMPLEXITY]
    assert not too_complex, f"split these into named steps (bound {MAX_COMPLEXITY}): {too_complex}"


def test_manifest_doc_lists_every_field_of_the_schema():
    """docs/manifest.md has one table per TypedDict of output/manifest.py, with exactly its fields."""
    import re
    import typing

    from flanbuild.output import manifest

    doc = (PACKAGE.parent / "docs" / "manifest.md").read_text(encoding="utf-8")
    sections = dict(re.findall(r"^### `(\w+)`\n(.*?)(?=^### |\Z)", doc, re.S | re.M))
    for record in (manifest.Manifest, manifest.ConfigRecord, manifest.TaskRecord, manifest.DecontaminationRecord,
                   manifest.DataFileRecord):
        assert record.__name__ in sections, f"docs/manifest.md has no section for {record.__name__}"
        documented = re.findall(r"^\| `(\w+)` \|", sections[record.__name__], re.M)
        assert documented == list(typing.get_type_hints(record)), record.__name__
    assert f"(now {manifest.SCHEMA_VERSION})" in doc


def test_public_api_is_small_and_build_stays_a_function():
    """``import flanbuild as fb`` shows the API in dir(); importing a name never shadows ``fb.build``."""
    import subprocess
    import sys

    code = ("import flanbuild as fb\nfrom flanbuild import BuildConfig, MixConfig\n"
            "assert callable(fb.build) and not isinstance(fb.build, type(fb)), fb.build\n"
            "assert {'build', 'BuildConfig', 'Registry', 'Task', 'Template', 'FlanbuildError'} <= set(dir(fb))\n"
            "print(sorted(m for m in ('torch', 'datasets', 'transformers') if m in __import__('sys').modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
