"""The verbalizer policy: a causal LM with LoRA, through peft (CPU) or Unsloth (GPU), same result.

    backend = resolve_backend(cfg)            # "peft" | "unsloth" (imports unsloth first if chosen)
    model, tokenizer = load_policy(cfg, backend)   # a peft.PeftModel with trainable LoRA + tokenizer
    save_final(model, tokenizer, run / "final", backend)   # adapter + tokenizer, and final/merged/

Both backends hand GRPOTrainer a ``PeftModel`` whose only trainable weights are LoRA A/B on the
attention and MLP projections, so the training loop is one code path. Unsloth is imported only
in ``minivz.train.unsloth_policy`` and only when that backend is chosen, before trl /
transformers / peft are imported (``resolve_backend`` does that import).

A GGUF policy (``policy_gguf: smollm2`` or a path) is de-quantized by transformers into float32
torch weights once and cached as an HF dir (``~/.cache/minivz/policies/<name>-<hash>/``, see
``minivz.models.hf_dir_from_gguf``). Loading, LoRA and merging are minivz.models'.
"""

from __future__ import annotations

import importlib.util
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from minivz.install import TORCH, TRANSFORMERS, TRL_PEFT, TRL_UNSLOTH, UNSLOTH, extra, pip
from minivz.models import LORA_TARGETS, fix_special_tokens, load_lora_model, merge_trained, model_source
from minivz.spec import parse_spec

# The versions this module was tested with. Another version fails loudly here rather than deep
# inside a training step (TRL moves fast: 1.15 without Unsloth does not run GRPO on CPU).
TESTED = {
    "peft": {"trl": "1.16.0", "transformers": "5.17.0"},
    "unsloth": {"unsloth": "2026.10.9", "trl": "1.15.0", "transformers": "5.17.0"},
}
INSTALL = {
    "peft": f"{pip(TORCH, extra('train'))}   ({TRL_PEFT} {TRANSFORMERS} peft accelerate datasets)",
    "unsloth": f"{pip(UNSLOTH, TRL_UNSLOTH, TRANSFORMERS)}   (in a CUDA environment)",
}


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def check_versions(backend: str) -> dict[str, str]:
    """The installed versions of the backend's stack; ImportError naming the install command when
    one is missing or differs from the tested pin."""
    found, bad = {}, []
    for pkg, want in TESTED[backend].items():
        have = _version(pkg)
        found[pkg] = have or "not installed"
        if have is None or have.split("+")[0] != want:
            bad.append(f"{pkg}=={want} (found {have or 'none'})")
    for pkg in ("peft", "accelerate", "datasets", "torch"):
        if _version(pkg) is None:
            bad.append(f"{pkg} (not installed)")
    if bad:
        raise ImportError(f"backend={backend} is tested with {', '.join(bad)}; install with: {INSTALL[backend]}")
    return found


def resolve_backend(requested: str) -> str:
    """``auto`` -> unsloth when it is installed and CUDA is present, else peft. For unsloth, imports
    it now, before anything imports trl / transformers / peft (Unsloth patches them on import)."""
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    if requested == "auto":
        import torch  # torch before unsloth is fine; transformers/trl/peft are what it patches

        requested = "unsloth" if has_unsloth and torch.cuda.is_available() else "peft"
    if requested == "unsloth":
        if not has_unsloth:
            raise ImportError(f"backend=unsloth but unsloth is not installed; {INSTALL['unsloth']}")
        late = [m for m in ("trl", "transformers", "peft") if m in sys.modules]
        if late and "unsloth" not in sys.modules:
            raise RuntimeError(f"backend=unsloth must be chosen before {', '.join(late)} is imported "
                               "(Unsloth patches them on import); call train_verbalizer in a fresh process")
        check_versions("unsloth")
        import minivz.train.unsloth_policy  # noqa: F401 - the one module that imports unsloth
    else:
        check_versions("peft")
    return requested


# -- policy weights ---------------------------------------------------------------------------------


def policy_source(cfg) -> str:
    """HF id or dir to load: the cached conversion of ``policy_gguf``, else ``policy_model``."""
    return model_source(cfg.policy_model, cfg.policy_gguf)


def eval_oracle(cfg) -> str:
    """The oracle spec to evaluate with outside training: ``policy[:opts]`` (the policy's frozen base
    weights, which exist as such only inside a training run) becomes ``hf:`` on the same base
    model, on the GPU when there is one; any other spec is returned as it is."""
    name, opts = parse_spec(cfg.oracle)
    if name != "policy":
        return cfg.oracle
    opts = {"device": "auto", "dtype": "auto", **opts}
    return "hf:" + ",".join(f"{k}={v}" for k, v in {"model": policy_source(cfg), **opts}.items())


def load_policy(cfg, backend: str) -> tuple[Any, Any]:
    """(PeftModel with trainable LoRA, tokenizer) for GRPO. float32 on CPU, bf16 on CUDA (peft);
    Unsloth picks its own dtype and 4-bit per ``load_in_4bit``."""
    source = policy_source(cfg)
    if backend == "unsloth":
        from minivz.train.unsloth_policy import load_unsloth_policy

        model, tok = load_unsloth_policy(source, cfg, LORA_TARGETS)
        fix_special_tokens(tok, model)
        return model, tok
    return load_lora_model(source, load_in_4bit=cfg.load_in_4bit, gradient_checkpointing=cfg.gradient_checkpointing,
                           r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, layers=cfg.lora_layers)


def load_adapter(model: Any, ckpt: Path) -> None:
    """Put a checkpoint's LoRA weights into ``model`` (a finished stage rerun: no training step)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(Path(ckpt) / "adapter_model.safetensors")))


def final_paths(out: Path) -> dict[str, str]:
    """Where ``save_final`` writes: ``adapter`` = out/, ``merged`` = out/merged/ (what a process that
    does not write the run directory reports too)."""
    return {"adapter": str(out), "merged": str(Path(out) / "merged")}


def save_final(model: Any, tokenizer: Any, out: Path, backend: str) -> dict[str, str]:
    """``out/``: the LoRA adapter + tokenizer; ``out/merged/``: base + LoRA merged, an HF model dir
    that ``rewrite:model=out/merged`` and the GGUF exporter load without peft."""
    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    paths = final_paths(out)
    merged_dir = Path(paths["merged"])
    if backend == "unsloth":
        from minivz.train.unsloth_policy import save_unsloth_merged

        save_unsloth_merged(model, tokenizer, merged_dir)
    else:
        merge_trained(model, out).save_pretrained(merged_dir)
        tokenizer.save_pretrained(merged_dir)
    return paths
