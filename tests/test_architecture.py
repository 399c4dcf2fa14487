"""The layering and the public faces, checked rather than hoped for.

* core/ is pure: it imports no trio, bus or agents (it may load native/).
* native/ is a leaf: it imports nothing of core, bus or agents, and nothing of
  its build script at run time.
* bus/ knows nothing of the domain: no core, agents or native.
* A private module (``_name.py``) is imported only from its own package (tests
  excepted), in the code, the examples and the docs' code blocks.
* core, bus and agents re-export their public names once each, in trio's
  ``from .x import Name as Name`` style, and every re-export is the object its
  module defines.

Each rule is a function of a source tree, so the test also shows it failing on a
deliberate violation (a copy of the tree with one bad import).
"""

from __future__ import annotations

import ast
import importlib
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "bus", "native", "agents")
FORBIDDEN = {
    "core": {"trio", "bus", "agents"},
    "native": {"core", "bus", "agents", "trio"},
    "bus": {"core", "agents", "native"},
}


def _imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """Absolute module names imported anywhere in a file (function-level imports too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _package_of(path, root)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            # `from pkg import _private` imports a private module too
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names if a.name.startswith("_")]
    return out


def _package_of(path: Path, root: Path = ROOT) -> str:
    """The package a file's relative imports resolve against (its folder, dotted)."""
    return ".".join(path.relative_to(root).parent.parts)


def _sources(root: Path, top: str) -> list[Path]:
    return sorted(p for p in (root / top).rglob("*.py") if "_build" not in p.parts)


def layering_violations(root: Path = ROOT) -> list[str]:
    bad = []
    for top, forbidden in FORBIDDEN.items():
        for path in _sources(root, top):
            for line, mod in _imports(path, root):
                first = mod.split(".")[0]
                if first in forbidden:
                    bad.append(f"{path.relative_to(root)}:{line}: {top}/ imports {mod}")
                if top == "native" and path.name != "build.py" and mod.startswith("native.build"):
                    bad.append(f"{path.relative_to(root)}:{line}: native/ imports its build script at run time")
    return bad


def _private_owner(mod: str, root: Path) -> str | None:
    """The package a private module or name belongs to ('core._backend' -> 'core',
    'bus.envelope._packb' -> 'bus'), or None when nothing in ``mod`` is private."""
    parts = mod.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            owner = parts[:i]
            if (root.joinpath(*owner).with_suffix(".py")).is_file():  # a private name of a module
                owner = owner[:-1]
            return ".".join(owner)
    return None


def _private_ok(importer_package: str, mod: str, root: Path = ROOT) -> bool:
    owner = _private_owner(mod, root)
    if owner is None or owner.split(".")[0] not in PACKAGES:
        return True
    return importer_package == owner or importer_package.startswith(owner + ".")


_CODE_BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def private_import_violations(root: Path = ROOT) -> list[str]:
    bad = []
    files = [p for top in (*PACKAGES, "examples") for p in _sources(root, top)]
    for path in files:
        package = _package_of(path, root)
        for line, mod in _imports(path, root):
            if not _private_ok(package, mod, root):
                bad.append(f"{path.relative_to(root)}:{line}: imports the private {mod}")
    for doc in sorted((root / "docs").rglob("*.md")) + [root / "README.md"]:
        for block in _CODE_BLOCK.findall(doc.read_text()):
            for m in re.finditer(r"^\s*(?:from\s+([\w.]+)\s+import\s+([\w, ]+)|import\s+([\w.]+))", block, re.M):
                mod = m.group(1) or m.group(3)
                names = [n.strip() for n in (m.group(2) or "").split(",")]
                for full in [mod] + [f"{mod}.{n}" for n in names if n.startswith("_")]:
                    if not _private_ok("", full, root):
                        bad.append(f"{doc.relative_to(root)}: a code block imports the private {full}")
    return bad


def test_layering():
    assert layering_violations() == []


def test_no_private_module_is_imported_across_packages():
    assert private_import_violations() == []


def _copy(tmp_path: Path) -> Path:
    for top in (*PACKAGES, "examples", "docs"):
        shutil.copytree(ROOT / top, tmp_path / top, ignore=shutil.ignore_patterns("_build", "*.so", "__pycache__"))
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    return tmp_path


@pytest.mark.parametrize("rule, where, text", [
    (layering_violations, "core/kdf.py", "import trio\n"),
    (layering_violations, "core/kdf.py", "from bus import Node\n"),
    (layering_violations, "core/kdf.py", "def f():\n    from agents import Swarm\n"),
    (layering_violations, "native/__init__.py", "from core.errors import DecodeError\n"),
    (layering_violations, "native/backend.py", "from native.build import STAMP\n"),
    (layering_violations, "bus/framing.py", "from core import ecdsa\n"),
    (private_import_violations, "agents/doctor.py", "from core._backend import backend_name\n"),
    (private_import_violations, "examples/integration_service.py", "from agents.peer._agent import PeerAgent\n"),
    (private_import_violations, "docs/embedding.md", "```python\nfrom agents.client import _now_ms\n```\n"),
])
def test_each_rule_fails_on_a_violation(tmp_path, rule, where, text):
    root = _copy(tmp_path)
    (root / where).write_text((root / where).read_text() + "\n" + text)
    assert any(v.startswith(where) for v in rule(root))


def _reexports(package: str) -> list[tuple[str, str]]:
    init = ROOT / package.replace(".", "/") / "__init__.py"
    out = []
    body = ast.parse(init.read_text()).body
    # a lazy face (agents) lists its names under `if TYPE_CHECKING:` and loads them in __getattr__
    lazy = [n for node in body if isinstance(node, ast.If) and ast.unparse(node.test) == "typing.TYPE_CHECKING"
            for n in node.body]
    for node in body + lazy:
        if isinstance(node, ast.ImportFrom) and node.module == "_lazy" or (
                isinstance(node, ast.ImportFrom) and node.module is not None and node.module.endswith("._lazy")):
            continue  # the lazy face's own helper (agents._lazy), not a re-export
        if isinstance(node, ast.ImportFrom):
            assert node.level == 1, f"{package}/__init__.py: re-export with relative imports"
            for alias in node.names:
                assert alias.asname == alias.name, f"{package}: use 'from .x import {alias.name} as {alias.name}'"
                out.append((node.module or "", alias.name))
    return out


@pytest.mark.parametrize("package", ["core", "bus", "agents", "agents.storage", "agents.fhir"])
def test_public_faces_export_each_name_once(package):
    names = _reexports(package)
    assert names, f"{package} has no public face"
    flat = [n for _, n in names]
    assert len(flat) == len(set(flat)), f"{package} re-exports a name twice"
    face = importlib.import_module(package)
    for module, name in names:
        source = importlib.import_module(f"{package}.{module}")
        assert getattr(face, name) is getattr(source, name)


@pytest.mark.parametrize("package", ["agents", "agents.storage"])
def test_lazy_face_loads_what_it_lists(package):
    """A lazy face's table is exactly its TYPE_CHECKING re-exports, and importing the
    package loads none of those modules (a reader does not import every role)."""
    import subprocess
    import sys

    tree = ast.parse((ROOT / package.replace(".", "/") / "__init__.py").read_text()).body
    listed = {alias.name: node.module for top in tree if isinstance(top, ast.If)
              for node in top.body if isinstance(node, ast.ImportFrom) for alias in node.names}
    face = importlib.import_module(package)
    assert listed and face._LAZY == listed
    assert set(listed) <= set(dir(face))
    code = f"import sys, {package}; print(sorted(m for m in sys.modules if m.startswith('{package}.')))"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == f"['{package}.errors']" or (
        package == "agents" and loaded.stdout.strip() == "['agents._lazy', 'agents.errors']")
    with pytest.raises(AttributeError):
        face.NoSuchName  # noqa: B018
