"""bus re-exports every public name exactly once, imports no domain code, and its
objects talk to each other only through their public (or protocol) faces."""

import ast
import importlib
import pathlib

import bus

BUS_DIR = pathlib.Path(bus.__file__).parent


def _reexports():
    tree = ast.parse((BUS_DIR / "__init__.py").read_text())
    names = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            assert node.level == 1, "re-exports are relative imports"
            for alias in node.names:
                assert alias.asname == alias.name, f"use 'import {alias.name} as {alias.name}'"
                names.append((node.module, alias.name))
    return names


def test_every_public_name_is_exported_once():
    names = [name for _, name in _reexports()]
    assert len(names) == len(set(names)), "a name is re-exported twice"
    public = set()
    for path in BUS_DIR.glob("*.py"):
        if path.name in ("__init__.py", "testing.py"):
            continue
        module = importlib.import_module(f"bus.{path.stem}")
        assert hasattr(module, "__all__"), f"bus/{path.name} needs __all__"
        public |= set(module.__all__)
        for name in module.__all__:
            assert getattr(bus, name) is getattr(module, name)
    assert set(names) == public
    assert "testing" not in names  # the test kit is imported explicitly


def test_bus_imports_neither_core_nor_agents():
    for path in BUS_DIR.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [node.module or ""]
            else:
                continue
            for mod in mods:
                top = mod.split(".")[0]
                assert top not in ("core", "agents", "native"), f"bus/{path.name} imports {mod}"


def test_no_object_reaches_into_another_ones_private_attributes():
    """Only ``self``/``cls`` may touch ``_names``: the endpoint talks to its node
    through ``_Host``, the node to its endpoints through ``_Attachment``, and
    subscriptions share a ``_Feed`` whose methods are public."""
    reaching = []
    for path in BUS_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute) or not node.attr.startswith("_"):
                continue
            if node.attr.startswith("__") and node.attr.endswith("__"):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            reaching.append(f"bus/{path.name}:{node.lineno}: {ast.unparse(node)}")
    assert not reaching
