"""The import graph keeps its layers: scripts -> config -> utils -> models -> genotypes, never
upward, no script importing another script (bench's entry points may import bench's own
module), no private name imported from another module, no cycle. models/ holds networks only:
it imports nothing from utils/, the reader of the authors' files (utils/pickles/) included.
utils/ has one folder per concern and no loose module. Every import counts, also those inside
functions."""
import ast
from pathlib import Path

import config
from models.factory import SEARCH_STAGES

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"search", "augment", "test", "run_all", "feature", "summary", "alpha_efficiency"}


def _modules() -> dict[str, Path]:
    paths = [p for p in ROOT.rglob("*.py")
             if p.relative_to(ROOT).parts[0] not in {"tests", ".venv", "data", "runs"}]
    names = {}
    for path in paths:
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _layer(module: str) -> int:
    if module in SCRIPTS or module.split(".")[0] in {"bench", "images"}:
        return 4
    return {"config": 3, "utils": 2, "models": 1}.get(module.split(".")[0], 0)


def _imports(path: Path, modules: dict) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) of every import of a project module."""
    def known(name):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(known(a.name), None, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                if sub in modules:
                    found.append((sub, None, node.lineno))
                else:
                    found.append((known(node.module) or known(f"bench.{node.module}"), a.name,
                                  node.lineno))
    return [f for f in found if f[0] is not None]


def test_imports_respect_the_layers():
    modules = _modules()
    problems, edges = [], {}
    for module, path in modules.items():
        for target, name, line in _imports(path, modules):
            if target == module:
                continue
            edges.setdefault(module, set()).add(target)
            where = f"{module} line {line}: {target}" + (f".{name}" if name else "")
            if _layer(target) > _layer(module):
                problems.append(f"upward import, {where}")
            scripts = _layer(module) == _layer(target) == 4
            if scripts and not (module.startswith("bench.") and target.startswith("bench.")):
                problems.append(f"script imports a script, {where}")
            if name and name.startswith("_"):
                problems.append(f"private name, {where}")
    assert not problems, "\n".join(problems)
    done, active = set(), []

    def visit(module):
        active.append(module)
        for target in sorted(edges.get(module, ())):
            assert target not in active, f"import cycle: {' -> '.join(active + [target])}"
            if target not in done:
                visit(target)
        active.pop()
        done.add(module)

    for module in sorted(modules):
        if module not in done:
            visit(module)


def test_search_defaults_name_every_stage():
    assert tuple(config.SEARCH_DEFAULTS) == SEARCH_STAGES


def _edges() -> list[tuple[str, str, int]]:
    """(importing module, imported module, line) of every import between project modules."""
    modules = _modules()
    return [(module, target, line) for module, path in modules.items()
            for target, _, line in _imports(path, modules) if target != module]


def test_models_hold_networks_only():
    """models/ imports nothing from utils/ (the authors'-file reader, utils.pickles, included),
    nor any script: the networks read without the machinery around them."""
    found = [f"{module} line {line}: {target}" for module, target, line in _edges()
             if module.split(".")[0] == "models" and _layer(target) > _layer(module)]
    assert not found, "\n".join(found)
    readers = [m for m in _modules() if m.startswith("models.")
               and any(word in m for word in ("legacy", "pickle"))]
    assert not readers, f"the authors' reader belongs in utils.pickles, not {readers}"


def test_no_module_imports_a_script():
    """No module imports a script (bench's entry points may import bench's own module)."""
    found = [f"{module} line {line}: {target}" for module, target, line in _edges()
             if target in SCRIPTS and not module.startswith("bench.")]
    assert not found, "\n".join(found)


def test_utils_is_split_by_concern():
    """Every module of utils/ sits in a folder named by its concern."""
    loose = [m for m, path in _modules().items()
             if m.startswith("utils.") and path.parent == ROOT / "utils"]
    assert not loose, f"modules directly under utils/: {loose}"

