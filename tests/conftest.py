"""Shared pytest setup: hypothesis runs without deadlines (Numba compiles on first call)."""

from hypothesis import settings

settings.register_profile("minivz", deadline=None, print_blob=True)
settings.load_profile("minivz")
