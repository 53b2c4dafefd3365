"""The import structure: layers that only point down, no cycles, no private names across modules, the demo a plugin.

``generators/``, ``prompts/`` and ``reports/`` are mapped into ``cfx.*`` by ``package-dir``, so a tool walking the
``cfx/`` folder alone would not see them. These tests stage the package as it is installed (the three folders inside
``cfx/``) and run import-linter (the contracts in ``pyproject.toml``) and grimp on that copy.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAPPED = {"generators": "generators", "prompts": "prompts", "reports": "reports"}  # folder -> cfx.<name>

pytest.importorskip("importlinter", reason="import-linter is in the test extras: pip install -e '.[test]'")


def _stage(dest: Path) -> Path:
    """Copy the package into ``dest/cfx`` in its installed layout (Python files only)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "templates")
    shutil.copytree(ROOT / "cfx", dest / "cfx", ignore=ignore)
    for folder, name in MAPPED.items():
        shutil.copytree(ROOT / folder, dest / "cfx" / name, ignore=ignore)
    return dest


def _run(code: str, staged: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(staged), PYTHONDONTWRITEBYTECODE="1")
    # run from the staged folder: ``python -c`` puts the working directory first on sys.path
    return subprocess.run([sys.executable, "-c", code], cwd=staged, env=env, capture_output=True, text=True,
                          timeout=300)


_LINT = ("import sys; from importlinter.cli import lint_imports; "
         f"sys.exit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}, no_cache=True))")

_GRAPH = """
import json, sys
import grimp
graph = grimp.build_graph("cfx", cache_dir=None)
modules = sorted(graph.modules)
edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
import cfx
print(json.dumps({"file": cfx.__file__, "modules": modules, "edges": edges}))
"""


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> Path:
    return _stage(tmp_path_factory.mktemp("installed"))


@pytest.fixture(scope="module")
def graph(staged) -> dict:
    result = _run(_GRAPH, staged)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_graph_is_the_staged_package_and_sees_the_mapped_folders(graph, staged):
    assert graph["file"].startswith(str(staged))  # the copy, not the editable install
    for name in ("cfx.generators.editors", "cfx.prompts.reporters", "cfx.reports.review", "cfx.jobs.explaining",
                 "cfx.trust.scores", "cfx.core.models", "cfx.demo.world"):
        assert name in graph["modules"], name
    # and it sees their imports: the generators stand on trust, the reports on core
    assert "cfx.trust.fitted" in graph["edges"]["cfx.generators.base"]
    assert "cfx.core.runstore" in graph["edges"]["cfx.reports.review"]


def test_import_contracts_hold(staged):
    result = _run(_LINT, staged)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken" in result.stdout


def test_an_upward_import_inside_generators_breaks_the_contract(tmp_path):
    staged = _stage(tmp_path)
    (staged / "cfx" / "generators" / "upward_probe.py").write_text("from cfx.jobs import explain  # upward\n")
    result = _run(_LINT, staged)
    assert result.returncode != 0
    assert "cfx.generators.upward_probe -> cfx.jobs" in result.stdout


def _cycles(edges: dict[str, list[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(edges.get(root, ())))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges.get(child, ()))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_cycle_finder_finds_a_known_cycle():
    assert _cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert _cycles({"a": ["b"], "b": []}) == []


def test_no_import_cycle_among_modules_init_files_included(graph):
    assert _cycles(graph["edges"]) == []


def _project_files() -> dict[str, Path]:
    """Module name -> file, for every module of the package in its installed layout."""
    files = {}
    for base, prefix in [(ROOT / "cfx", "cfx")] + [(ROOT / f, f"cfx.{n}") for f, n in MAPPED.items()]:
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join([prefix, *parts])] = path
    return files


def _imported_names(module: str, path: Path):
    """(imported module, name) of every ``from X import name`` in ``path``, relative imports resolved."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                yield target, alias.name


def test_no_private_name_is_imported_across_modules():
    files = _project_files()
    offenders = [f"{module} imports {name} from {target}" for module, path in files.items()
                 for target, name in _imported_names(module, path)
                 if target.startswith("cfx") and target != module and name.startswith("_")
                 and not name.startswith("__")]
    assert offenders == []


def test_only_the_demo_itself_and_the_cli_import_the_demo():
    files = _project_files()
    importers = sorted(module for module, path in files.items()
                       if not (module == "cfx.cli" or module.startswith("cfx.demo"))
                       and any(t == "cfx.demo" or t.startswith("cfx.demo.") for t, _ in _imported_names(module, path)))
    assert importers == []


def test_no_path_outside_the_repository_is_referenced():
    """Code, templates, docs and packaging never point at files a user does not have."""
    texts = [p for p in ROOT.rglob("*") if p.is_file() and p.suffix in (".py", ".md", ".toml", ".jinja", ".j2")
             and not any(part.startswith(".") or part in ("build", "dist") or part.endswith(".egg-info")
                         for part in p.relative_to(ROOT).parts)]
    bad = [str(p.relative_to(ROOT)) for p in texts if "../shared" in p.read_text(errors="replace")
           and p.name not in ("test_layers.py", "test_readme.py")]
    assert bad == []
