"""paper-8b smoke on one GPU: the real training code path at Qwen3-8B size, a few GRPO steps.

    python benchmarks/gpu_smoke_8b.py --data DIR --tokenizer DIR --out DIR [--load-in-4bit] [--steps 2]

Qwen3-8B's weights cannot be had offline, so the policy is Qwen3-8B's ARCHITECTURE (36 layers,
hidden 4096, GQA 32/8 heads, vocab 151,936) with random bf16 weights, written as an HF dir and then
loaded by minivz.train exactly as `policy_model: Qwen/Qwen3-8B` would be; the tokenizer is
SmolLM2's (ids < its 49,152 vocab). Random weights never emit EOS, so every completion runs to
max_completion_length: the step time is the worst case. Peak GPU memory is
torch.cuda.max_memory_allocated over the run. The oracle is `mention` (CPU, reads the text).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def build_random_qwen3_8b(tokenizer_dir: Path, out: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config

    cfg = Qwen3Config(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                      rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    del model
    torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model-dir", type=Path, default=Path("/tmp/qwen3-8b-random"))
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--load-in-4bit", action="store_true")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from minivz.config import resolve
    from minivz.config import VerbalizerTrainConfig
    from minivz.train.grpo import train_verbalizer

    t0 = time.perf_counter()
    if not (args.model_dir / "config.json").exists():
        build_random_qwen3_8b(args.tokenizer, args.model_dir)
    t_build = time.perf_counter() - t0
    overrides = [f"policy_model={args.model_dir}", "backend=peft", f"load_in_4bit={str(args.load_in_4bit).lower()}",
                 "oracle=mention", f"max_steps={args.steps}", "train_examples=64", "save_steps=1000"] + args.set
    recipe = "recipes/paper-8b.yaml" if Path("recipes/paper-8b.yaml").exists() else "paper-8b"
    cfg = resolve(VerbalizerTrainConfig, recipe=recipe, overrides=overrides)
    torch.cuda.reset_peak_memory_stats()
    t1 = time.perf_counter()
    summary = train_verbalizer(cfg, args.data, args.out)
    t_train = time.perf_counter() - t1
    steps = [json.loads(x) for x in (args.out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    from minivz.train.memory import estimate_memory

    report = {
        "gpu": torch.cuda.get_device_name(0),
        "load_in_4bit": args.load_in_4bit,
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "estimate_gib": estimate_memory(cfg, cuda=True)["total_gib"],
        "build_random_model_s": round(t_build, 1),
        "train_s_including_load": round(t_train, 1),
        "step_seconds": [s.get("step_seconds") for s in steps],
        "completion_tokens": cfg.max_completion_length,
        "completions_per_step": cfg.generation_batch_size,
        "rewards": [s.get("reward") for s in steps],
        "summary_keys": sorted(summary),
    }
    print("SMOKE " + json.dumps(report))
    out = Path(os.environ.get("OUT", args.out))
    (out / f"smoke_{'4bit' if args.load_in_4bit else 'bf16'}.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
