"""Everything that differs by operating system, behind one small interface per concern.

- ``files``: replacing or removing a file another process may hold (a loaded DLL);
- ``session``: logoff and shutdown while the tray runs (Windows' end-session messages);
- ``opener``: opening a file or folder the way the desktop would;
- ``windows``: the Win32 calls themselves (ctypes). All Win32, winreg and ctypes code
  lives in this package and nowhere else.

May import only the shared ``torchkeeper.errors``.
"""
