"""The package's layering, read from the source: which sub-package may import which.

Every ``import`` and ``from ... import`` is counted, including those inside functions
(lazy imports are still dependencies). The rules are the README's "Where things are".
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "agent" / "torchkeeper"

# layer -> the layers it may import (itself always allowed)
ALLOWED = {
    "errors": set(),
    "i18n": set(),
    "home": set(),
    "platform": {"errors", "i18n"},
    "testing": {"errors", "i18n", "platform"},
    "engine": {"errors", "i18n", "home", "platform", "testing", "__init__"},   # __init__: __version__ alone
    "daemon": {"errors", "i18n", "home", "platform", "testing", "engine"},
    "desktop": {"errors", "i18n", "home", "platform", "daemon.view"},
    "dashboard": {"errors", "i18n", "home", "platform", "engine", "daemon.view"},
    "run": {"errors", "i18n", "home", "platform", "testing", "engine", "daemon", "desktop", "dashboard"},
    "cli": {"errors", "i18n", "home", "platform", "testing", "engine", "daemon", "desktop", "dashboard", "run",
            "__init__"},
    "__main__": {"cli"},
    "__init__": set(),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def layer_of(mod: str) -> str:
    return mod.split(".")[0]


def imports_of(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, module under torchkeeper) for every import of torchkeeper code in path
    (source: the text to read instead of the file's)."""
    me = module_name(path)
    package = me.split(".") if path.name == "__init__.py" else me.split(".")[:-1]
    out = []
    if source is None:
        source = path.read_text(encoding="utf-8")
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.removeprefix("torchkeeper.")) for a in node.names
                    if a.name.startswith("torchkeeper.")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            elif node.module and (node.module == "torchkeeper" or node.module.startswith("torchkeeper.")):
                mod = node.module.removeprefix("torchkeeper").lstrip(".")
            else:
                continue
            if not node.module or mod in {"", "engine", "daemon", "desktop", "dashboard", "platform"}:
                # `from . import x` / `from ..engine import x`: x is a module (or a name) there
                for a in node.names:
                    sub = f"{mod}.{a.name}" if mod else a.name
                    out.append((node.lineno, sub if _exists(sub) else mod or "__init__"))
            else:
                out.append((node.lineno, mod))
    return out


def _exists(mod: str) -> bool:
    p = PKG.joinpath(*mod.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def allowed(importer: str, imported: str) -> bool:
    src, dst = layer_of(importer), imported
    if layer_of(dst) == src:
        return True
    rules = ALLOWED[src if src in ALLOWED else importer]
    return any(dst == r or dst.startswith(r + ".") or layer_of(dst) == r for r in rules)


def sources() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def test_every_module_belongs_to_a_layer():
    unknown = [module_name(p) for p in sources() if layer_of(module_name(p)) not in ALLOWED]
    assert not unknown, f"modules outside every layer (add them to ALLOWED and the README): {unknown}"


@pytest.mark.parametrize("path", sources(), ids=lambda p: module_name(p) or "__init__")
def test_imports_follow_the_layers(path):
    me = module_name(path)
    bad = [f"{path.relative_to(PKG)}:{line} imports torchkeeper.{mod}"
           for line, mod in imports_of(path) if not allowed(me, mod)]
    assert not bad, "\n".join(bad)


def test_win32_code_lives_in_platform():
    """ctypes, winreg and _winapi are imported only under torchkeeper/platform/."""
    bad = []
    for path in sources():
        if module_name(path).startswith("platform"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                     else [])
            bad += [f"{path.relative_to(PKG)}:{node.lineno} imports {n}" for n in names
                    if n.split(".")[0] in {"ctypes", "winreg", "_winapi", "msvcrt"}]
    assert not bad, "\n".join(bad)


def test_the_rule_catches_a_wrong_arrow():
    """The checker itself: an engine module that imports the daemon, a desktop module that
    imports the worker or the engine, and a platform module that imports the engine are
    all refused, lazy imports included."""
    assert not allowed("engine.core", "daemon.worker")
    assert not allowed("desktop.tray", "daemon.worker")
    assert not allowed("desktop.tray", "engine.core")
    assert not allowed("platform.files", "engine.txn")
    assert allowed("desktop.tray", "daemon.view")
    assert allowed("run", "desktop.tray")
    src = "from ..daemon import worker\n\ndef f():\n    from ..desktop.tray import Tray\n"
    found = imports_of(PKG / "engine" / "probe.py", src)
    assert [m for _, m in found] == ["daemon.worker", "desktop.tray"]
    assert not any(allowed("engine.probe", m) for _, m in found)


def test_no_import_cycle_lazy_imports_included():
    """Every import in the package, at the top of a module or inside a function, forms no
    cycle (fetch <-> suggest and autostart <-> its back ends once did). An import under
    ``if TYPE_CHECKING:`` never runs (engine/writes.py names the Engine it is handed) and is
    left out."""
    import ast

    root = Path(__file__).resolve().parents[1] / "agent" / "torchkeeper"
    mods = {}
    for p in root.rglob("*.py"):
        name = ".".join(p.relative_to(root.parent).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = p
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        pkg = m if p.name == "__init__.py" else m.rsplit(".", 1)[0]
        tree = ast.parse(p.read_text(encoding="utf-8"))
        typing_only = {id(x) for n in ast.walk(tree) if isinstance(n, ast.If)
                       and getattr(n.test, "id", None) == "TYPE_CHECKING" for x in ast.walk(n)}
        for n in ast.walk(tree):
            if id(n) in typing_only:
                continue
            if isinstance(n, ast.ImportFrom):
                base = pkg.split(".")[: len(pkg.split(".")) - (n.level - 1)] if n.level else []
                target = ".".join(base + ([n.module] if n.module else []))
                for c in [target] + [f"{target}.{a.name}" for a in n.names]:
                    if c in mods and c != m:
                        graph[m].add(c)
            elif isinstance(n, ast.Import):
                graph[m].update(a.name for a in n.names if a.name in mods and a.name != m)

    def reaches(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for w in graph[todo.pop()]:
                if w not in seen:
                    seen.add(w)
                    todo.append(w)
        return seen

    cycles = sorted(m for m in graph if m in reaches(m) and m != "torchkeeper")
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_the_decision_module_imports_nothing_that_does_io():
    """daemon/decide.py is pure: typed records in, a Decision out. It may import only what
    defines records (dataclasses, enum, typing) and i18n (its words in the user's language: a
    lookup in the catalog loaded at start), never the engine, a thread, a clock or a file."""
    import ast

    path = Path(__file__).resolve().parents[1] / "agent" / "torchkeeper" / "daemon" / "decide.py"
    names = set()
    for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(n, ast.ImportFrom):
            names.add("." * n.level + (n.module or ""))
        elif isinstance(n, ast.Import):
            names.update(a.name for a in n.names)
    assert names and names <= {"__future__", "dataclasses", "enum", "typing", "..i18n"}, names
