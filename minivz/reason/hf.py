"""Log-likelihood reasoner on a transformers causal LM (torch): trained checkpoints, HF model dirs.

    make_reasoner("hf:model=runs/reasoner/checkpoints/step_000200")
    make_reasoner("hf:model=/path/model_dir,norm=sum,device=cuda,dtype=bfloat16")   # device: auto = cuda if any
    make_reasoner("hf:model=/path/model_dir,dtype=auto")   # bfloat16 where it runs natively (GPU, AMX CPU)
    make_reasoner("hf:model=Qwen/Qwen3-8B,device=auto")     # a hub id: downloaded on a machine with internet

    # the co-located oracle: the policy's own frozen base weights (LoRA adapter disabled) while it trains
    make_reasoner("policy", policy=(peft_model, tokenizer))   # built by `minivz train verbalizer`

Same scoring as the llamacpp backend (see minivz.reason.llamacpp): per query the prompt is run once
with ``use_cache=True``; its KV cache is then expanded to the C candidates
(``DynamicCache.batch_repeat_interleave``) and all candidates' tokens except their last are run in
ONE batch on top of it, right-padded:

    prefix (1, P)        -> logits[0, -1] predicts every candidate's first token; cache (1, ., P, .)
    cands  (C, Lmax - 1) -> logits (C, Lmax - 1, V), row j predicts token j + 1; cache expanded to C

Right padding is harmless: causal attention never lets a real token see the pads after it.
``score_naive`` runs each prompt+candidate from scratch (the reference for tests). A local model
directory is read offline (HF_HUB_OFFLINE=1); a hub id is fetched by transformers as usual. Chat
templates are rendered with ``enable_thinking=False`` (``thinking=true`` to turn it on): a Qwen3 model
otherwise opens its answer with a ``<think>`` block instead of the item; templates without the switch
ignore it.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from minivz.install import TORCH, TRANSFORMERS, extra, pip
from minivz.reason.base import Prediction, Query
from minivz.reason.prompt import DEFAULT_SCORING_PROMPT, fit_context, load_prompt, render_plain
from minivz.reason.scoring import check_norm, predict_by_likelihood, reduce_logprobs, token_logprobs

INSTALL = f"{pip(TORCH, TRANSFORMERS)}  (or {pip(extra('models'))})"


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; anything else as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class HFReasoner:
    name = "hf"
    thinking = False  # the chat template's enable_thinking

    def __init__(
        self,
        model: str = "",
        norm: str = "mean",
        prompt: str = DEFAULT_SCORING_PROMPT,
        chat_template: bool = True,
        device: str = "auto",
        dtype: str = "float32",
        max_length: int = 0,
        thinking: bool = False,
    ) -> None:
        if not model:
            raise ValueError("the hf reasoner needs a model directory: hf:model=/path/to/model_dir")
        local = os.path.isdir(model)
        if local:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as e:
            raise ImportError(f"the hf reasoner needs torch and transformers ({e}); install with `{INSTALL}`") from e
        if dtype == "auto":
            from minivz.envinfo import fast_bf16

            dtype = "bfloat16" if fast_bf16() else "float32"
        if not hasattr(torch, dtype):
            raise ValueError(f"dtype={dtype!r} is not a torch dtype; try float32, bfloat16 or auto")
        self.dtype = dtype
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no per-load progress bars in eval logs
        self.device = device = resolve_device(device)
        tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=local)
        loaded = (
            AutoModelForCausalLM.from_pretrained(model, local_files_only=local, dtype=getattr(torch, dtype))
            .to(device)
            .eval()
        )
        self.bind(loaded, tokenizer, norm=norm, prompt=prompt, chat_template=chat_template, max_length=max_length,
                  thinking=thinking)

    def bind(self, model, tokenizer, *, norm: str = "mean", prompt: str = DEFAULT_SCORING_PROMPT,
             chat_template: bool = True, max_length: int = 0, thinking: bool = False) -> None:
        """Everything but the loading: the model (None = tokenization only, then max_length is
        required), its tokenizer, the scoring norm, the prompt file and how it is rendered."""
        import torch

        self._torch = torch
        self.model, self.tokenizer = model, tokenizer
        self.norm = check_norm(norm)
        self.template = load_prompt(prompt)
        self.thinking = thinking
        config = getattr(model, "config", None)
        self.max_length = max_length or int(getattr(config, "max_position_embeddings", 2048) or 2048)
        self.use_chat_template = bool(chat_template and getattr(tokenizer, "chat_template", None))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.n_truncated = 0

    # -- text and tokens ------------------------------------------------------------------------

    def tokenize_prompt(self, context: str) -> list[int]:
        messages = self.template.messages(context=context)
        if self.use_chat_template:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                      enable_thinking=self.thinking)
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        ids = list(self.tokenizer(render_plain(messages), add_special_tokens=False)["input_ids"])
        bos = self.tokenizer.bos_token_id
        return ([bos] if bos is not None else []) + ids

    def tokenize_candidate(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prepare(self, query: Query) -> tuple[list[int], list[list[int]]]:
        cands = [self.tokenize_candidate(c) for c in query.candidates]
        longest = max((len(c) for c in cands), default=1)
        context, cut = fit_context(
            query.context, lambda ctx: len(self.tokenize_prompt(ctx)) + longest - 1 <= self.max_length
        )
        self.n_truncated += cut
        return self.tokenize_prompt(context), cands

    # -- scoring --------------------------------------------------------------------------------

    def _scores(self, last: np.ndarray, rows: list[np.ndarray], cands: list[list[int]]) -> np.ndarray:
        out = np.empty(len(cands), dtype=np.float64)
        for k, cand in enumerate(cands):
            if not cand:
                out[k] = -np.inf
                continue
            logits = np.vstack([last[None, :], rows[k][: len(cand) - 1]])
            out[k] = reduce_logprobs(token_logprobs(logits, np.asarray(cand)), self.norm)
        return out

    def score_shared(self, prefix: list[int], cands: list[list[int]]) -> np.ndarray:
        torch = self._torch
        n, width = len(prefix), max((len(c) for c in cands), default=1) - 1
        with torch.inference_mode():
            # logits of the last prompt position only: all P positions would be P x vocab floats
            # (1.3 GiB in bf16 for a 4k-token prompt and Qwen3's 152k vocabulary)
            out = self.model(input_ids=torch.tensor([prefix], device=self.device), use_cache=True, logits_to_keep=1)
            last = out.logits[0, -1].float().cpu().numpy()
            if width <= 0:  # every candidate is one token: the prefix logits are all we need
                return self._scores(last, [np.zeros((0, len(last)))] * len(cands), cands)
            cache = out.past_key_values
            cache.batch_repeat_interleave(len(cands))  # (1, h, P, d) -> (C, h, P, d); used once
            ids = torch.full((len(cands), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(cands), n + width), dtype=torch.long)
            mask[:, :n] = 1
            for k, cand in enumerate(cands):
                body = cand[:-1]
                ids[k, : len(body)] = torch.tensor(body, dtype=torch.long)
                mask[k, n : n + len(body)] = 1
            pos = torch.arange(n, n + width).unsqueeze(0).expand(len(cands), -1)
            logits = self.model(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=pos.to(self.device),
                past_key_values=cache,
                use_cache=True,
            ).logits.float().cpu().numpy()  # (C, width, V)
        return self._scores(last, list(logits), cands)

    def score_naive(self, prefix: list[int], cands: list[list[int]]) -> np.ndarray:
        """Reference: each prompt+candidate run from scratch, no cache."""
        torch = self._torch
        out = np.empty(len(cands), dtype=np.float64)
        n = len(prefix)
        with torch.inference_mode():
            for k, cand in enumerate(cands):
                if not cand:
                    out[k] = -np.inf
                    continue
                ids = torch.tensor([prefix + cand[:-1]], device=self.device)
                logits = self.model(input_ids=ids, use_cache=False).logits[0, n - 1 :].float().cpu().numpy()
                out[k] = reduce_logprobs(token_logprobs(logits, np.asarray(cand)), self.norm)
        return out

    def predict(self, queries: list[Query]) -> list[Prediction]:
        return predict_by_likelihood(self, queries)


class FrozenBaseReasoner(HFReasoner):
    """The co-located oracle: the policy's frozen base model, read with its LoRA adapter disabled.

    GRPO trains only the adapter, so the base weights the policy already holds on its GPU ARE a
    frozen oracle: no second copy of the weights and no second server. Scoring runs in eval mode
    (gradient checkpointing would otherwise switch the KV cache off), under ``inference_mode`` and
    ``disable_adapter()``; the model's train/eval mode is restored afterwards. The oracle is thus the
    policy's base model itself (the 4-bit base when the policy is loaded in 4 bits); a stronger
    oracle needs its own weights -- ``hf:model=...`` on the same GPU or ``openai:url=...`` elsewhere.
    """

    name = "policy"

    def __init__(self, policy=None, norm: str = "mean", prompt: str = DEFAULT_SCORING_PROMPT,
                 chat_template: bool = True, max_length: int = 0, thinking: bool = False) -> None:
        if policy is None:
            raise ValueError(
                "oracle `policy` is the policy's own frozen base weights, so it exists only while "
                "`minivz train verbalizer` (or `minivz recipe`) holds the policy; to score elsewhere use "
                "hf:model=<the policy's model dir or hub id>,device=auto")
        model, tokenizer = policy
        self.bind(model, tokenizer, norm=norm, prompt=prompt, chat_template=chat_template,
                  max_length=max_length, thinking=thinking)
        self.device = str(next(model.parameters()).device)
        self.dtype = str(next(model.parameters()).dtype).replace("torch.", "")

    def predict(self, queries: list[Query]) -> list[Prediction]:
        was_training = self.model.training
        disable = getattr(self.model, "disable_adapter", None)
        self.model.eval()
        try:
            with disable() if disable is not None else contextlib.nullcontext():
                return predict_by_likelihood(self, queries)
        finally:
            if was_training:
                self.model.train()
