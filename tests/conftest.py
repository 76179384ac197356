"""Shared pytest setup: hypothesis runs without deadlines (Numba compiles on first call); trackio
(report_to) keeps its local store in a temporary folder, never in the user's ~/.cache."""

import ast
import os
import tempfile

from hypothesis import settings

# trackio reads TRACKIO_DIR once, when it is first imported: set it before any test can import it
os.environ.setdefault("TRACKIO_DIR", tempfile.mkdtemp(prefix="minivz-trackio-"))

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


def require_deepspeed() -> None:
    """Skip a ZeRO-3 rehearsal without deepspeed; under CI (scripts/test.sh installs it) fail instead."""
    _require("deepspeed", "DeepSpeed's CPU accelerator")


def require_ray() -> None:
    """Skip a Ray-engine test without ray; under CI (scripts/test.sh installs it) fail instead."""
    _require("ray", "a local Ray cluster")


def _require(module: str, why: str) -> None:
    import importlib.util

    import pytest

    if importlib.util.find_spec(module) is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs {module} for this test: scripts/test.sh installs it ({why})")
        pytest.skip(f"pip install {module} (scripts/test.sh does)")
