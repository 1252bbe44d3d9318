"""The Windows tier: a Windows CPython under Wine (a package so its conftest is windows.conftest,
not a second module named conftest beside tests/conftest.py)."""
