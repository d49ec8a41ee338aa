"""The package's imports point one way: config → codec/tags → backends → core → orm →
integrations, and no module reaches into another layer's private names (#11).

Read from the source with ``ast`` (nothing is imported): a module-level import of a higher
layer fails, and so does any import, module-level or inside a function, of a private module
or name (``_x``) of another layer, or a read of ``module._x`` through a module of another
layer imported by name. The few imports of a higher layer made inside a function,
where a façade hands a call to the layer that implements it, are listed below with why.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "yokedcache_sa"

# (module prefix, layer); the longest matching prefix wins
LAYERS: tuple[tuple[str, int], ...] = (
    # 0: leaves that import nothing of the package but errors
    ("errors", 0),
    ("logs", 0),
    ("ops", 0),
    ("observe", 0),
    ("stats", 0),
    ("pending", 0),
    ("steps", 0),
    ("cli_registry", 0),
    # 1: configuration
    ("config", 1),
    # 2: encoding, keys and tags
    ("tags", 2),
    ("packing", 2),
    ("codec", 2),
    ("keys", 2),
    # 3: stores
    ("backends", 3),
    # 4: the core
    ("breaker", 4),
    ("state", 4),
    ("flows", 4),
    ("drivers", 4),
    ("protocol", 4),
    ("txview", 4),
    ("cache", 4),
    ("defaults", 4),
    ("peek", 4),
    ("stampede", 4),
    # 5: the SQLAlchemy layer
    ("orm", 5),
    # 6: @cached (session-aware), integrations and entry points
    ("functions", 6),
    ("integrations", 6),
    ("metrics", 6),
    ("pgnotify", 6),
    ("cli", 6),
    ("cli_commands", 6),
    ("__main__", 6),
    ("", 6),  # the package's __init__, which re-exports every layer
)

# (importing module, imported module): an upward import inside a function, and why
LAZY_UPWARD: dict[tuple[str, str], str] = {
    ("cache", "orm.explain"): "YokedCache.explain() is a façade over orm.explain.explain()",
}


def _layer(module: str) -> int:
    best = max(
        (p for p, _ in LAYERS if module == p or module.startswith(p + ".") or not p), key=len
    )
    return dict(LAYERS)[best]


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_private(dotted: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in dotted.split("."))


def _imports(module: str, path: Path) -> list[tuple[str, str, bool]]:
    """(imported module, imported name or "", at module level) of every package import."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    lazy: set[int] = set()
    for node in ast.walk(tree):
        in_function = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        if in_function or (isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)):
            lazy.update(id(n) for n in ast.walk(node) if n is not node)
    found: list[tuple[str, str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            elif node.module and node.module.startswith("yokedcache_sa"):
                target = node.module.removeprefix("yokedcache_sa").lstrip(".")
            else:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}".lstrip(".")
                if sub in MODULES:  # ``from . import codec``: the module codec
                    found.append((sub, "", id(node) not in lazy))
                else:
                    found.append((target, alias.name, id(node) not in lazy))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("yokedcache_sa"):
                    target = alias.name.removeprefix("yokedcache_sa").lstrip(".")
                    found.append((target, "", id(node) not in lazy))
    return found


def _private_attributes(module: str, path: Path) -> list[str]:
    """``alias._name`` reads of modules of another layer bound by ``from ... import alias``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".") if package else []
            base = base[: len(base) - node.level + 1]
            target = ".".join([*base, *([node.module] if node.module else [])])
            for alias in node.names:
                sub = f"{target}.{alias.name}".lstrip(".")
                if sub in MODULES and _layer(sub) != _layer(module):
                    aliases[alias.asname or alias.name] = sub
    return [
        f"{aliases[node.value.id]}.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in aliases
        and _is_private(node.attr)
    ]


def test_every_module_has_a_layer() -> None:
    assert len(MODULES) > 50
    for module in MODULES:
        assert 0 <= _layer(module) <= 6


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_and_leave_other_layers_private_names_alone(module: str) -> None:
    here = _layer(module)
    wrong = []
    for target, name, top_level in _imports(module, MODULES[module]):
        there = _layer(target)
        if there == here:
            continue
        if _is_private(target) or (name and _is_private(name)):
            wrong.append(f"{module} imports the private {target}:{name or '*'} of layer {there}")
        if there > here and (top_level or (module, target) not in LAZY_UPWARD):
            wrong.append(f"{module} (layer {here}) imports {target} (layer {there})")
    wrong += [f"{module} reads {name}" for name in _private_attributes(module, MODULES[module])]
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_a_wrong_import(tmp_path: Path) -> None:
    """The rules fail on what they forbid (a core module importing the ORM at module level, a
    core module reading a backend's private name)."""
    bad = tmp_path / "flows.py"
    bad.write_text("from .orm import session\nfrom .backends.memory import _unavailable\n")
    found = _imports("flows", bad)
    assert ("orm.session", "", True) in found
    assert ("backends.memory", "_unavailable", True) in found
    assert _layer("orm.session") > _layer("flows")
    assert _is_private("_unavailable")
    reads = tmp_path / "drivers.py"
    reads.write_text("from .backends import memory\nmemory._unavailable(None)\n")
    assert _private_attributes("drivers", reads) == ["backends.memory._unavailable"]
    lazy = tmp_path / "cache.py"
    lazy.write_text("def f():\n    from .orm.explain import explain\n")
    assert _imports("cache", lazy) == [("orm.explain", "explain", False)]
