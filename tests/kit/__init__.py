"""Helpers shared by several test modules (none imports another test module)."""
