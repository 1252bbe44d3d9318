"""The wheel's build hook: compiles the message catalogs (.po -> .mo, with Babel) and puts
them in the wheel; git keeps only the .po sources (installer/catalogs.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class CatalogsHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        root = Path(self.root)
        sys.path.insert(0, str(root / "installer"))
        try:
            import catalogs
        finally:
            sys.path.pop(0)
        for mo in catalogs.compile_all():
            # an editable install reads the .mo where it was compiled, beside its .po
            if version != "editable":
                rel = mo.relative_to(root / "agent")
                build_data["force_include"][str(mo)] = rel.as_posix()
