"""Shared pytest setup: hypothesis runs without deadlines (Numba compiles on first call)."""

import ast

from hypothesis import settings

settings.register_profile("minivz", deadline=None, print_blob=True)
settings.load_profile("minivz")


def loaded_after(code: str, modules) -> list[str]:
    """Which of ``modules`` are imported after running ``code`` in a fresh interpreter (this test
    process has long imported them all)."""
    import subprocess
    import sys

    probe = f"{code}\nimport sys; print([m for m in {tuple(modules)!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return ast.literal_eval(out.strip().splitlines()[-1])
