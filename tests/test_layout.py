"""The package's imports point one way (tasks → zoo → generator → meta → tuners → evaluation → cli): no module
imports, directly or through others, a module that imports it back. Function-level imports count too; a package
``__init__`` re-exporting its own submodules does not make a cycle."""

import ast
from pathlib import Path

import peft_mcdi


def _import_graph(root: Path) -> tuple[dict[str, set[str]], set[str]]:
    modules = {}
    for path in root.rglob("*.py"):
        name = ".".join(path.relative_to(root.parent).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target not in (name, root.name):  # `import peft_mcdi` (version, registration) is fine
                    graph[name].add(target)
    return graph, {name for name, path in modules.items() if path.name == "__init__.py"}


def _reaches(graph: dict[str, set[str]], start: str, skip: set[str]) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            if nxt not in skip:
                todo.append(nxt)
    return seen


def test_no_import_cycles():
    graph, packages = _import_graph(Path(peft_mcdi.__file__).parent)
    # a package __init__ that re-exports its submodules is a hub, not a design edge: do not walk through it
    cycles = sorted(m for m in graph if m not in packages and m in _reaches(graph, m, packages))
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_the_task_abstraction_knows_no_family():
    graph, _ = _import_graph(Path(peft_mcdi.__file__).parent)
    assert graph["peft_mcdi.tasks.base"] <= {"peft_mcdi.utils"}, graph["peft_mcdi.tasks.base"]
