"""The frozen app's entry point (PyInstaller runs this file, not ``python -m torchkeeper``).

Two executables share it: ``torchkeeper.exe`` (windowed: no console, what the Start menu and
the login entry start) and ``torchkeeper-cli.exe`` (a console program for the command line).
Started with no arguments (a Start-menu click), the windowed one runs the agent.
"""

import os
import sys


def main() -> int:
    # A windowed exe has no stdout/stderr (None): give the CLI somewhere to write, so a stray
    # print or a progress bar cannot crash it. The agent logs to its own agent.log.
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))
    windowed = os.path.splitext(os.path.basename(sys.executable))[0].lower() == "torchkeeper"
    argv = sys.argv[1:]
    if windowed and not argv:
        argv = ["run"]
    from torchkeeper.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
