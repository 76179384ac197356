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

``answer=label`` is the paper's reasoner interface (LlamaRec's reading of it): the prompt
(``reasoner_choice_v1``) holds the context AND the candidates, one "A. title" line each, and ONE
forward reads the next-token log-probabilities of the labels at the answer position:

    hf:model=DIR,answer=label                                     # candidates listed as given
    hf:model=DIR,answer=label,order=popularity,viewers=true,genres=true
        # listed most-popular first, each line "A. Title (year) | Drama, War | 312 viewers"
        # (training-set counts: BIGRec's finding that an LLM reads popularity better than it learns it)
    hf:model=DIR,answer=label,order=popularity,viewers=true,match=true
        # ... "| 312 viewers | match 87": item-kNN similarity to the titles the CONTEXT names (the
        # mention oracle's reading of the text), 100 = the most similar listed candidate; what the
        # verbalizer keeps decides it (BIGRec: collaborative statistics, given explicitly)
    hf:model=DIR,answer=label,constrain=false   # the choice is the greedy token; valid only when it is
                                                # a label (LLaRA's "valid ratio"); scores stay the labels'
    hf:model=DIR,answer=line,order=popularity,viewers=true,match=true
        # the same prompt and ONE forward, read at every candidate's line instead of after the list:
        # scores[j] = log p(" yes" | prompt up to the end of candidate j's line). Causal attention lets
        # each line's last position read the context, the lines above it and its own features, so a
        # trained model scores each candidate from what is written beside it (a cross-encoder per
        # line, all C in one pass) instead of locating the best line from the answer position. Only
        # a TRAINED readout means anything: untrained, " yes" after a line is noise (use label/title).

answer=label: scores[j] = log p(label of candidate j | prompt); labels are single tokens of the tokenizer (checked).
``answer=title`` (default) is the title-likelihood scorer above; a prompt holding ``{candidates}``
lists them there too (the title is scored given the list).
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

from minivz.models import load_model, resolve_device
from minivz.reason.base import ItemStats, Prediction, Query
from minivz.reason.listing import READOUT, CandidateList, line_ends, token_positions
from minivz.prompt import (DEFAULT_CHOICE_PROMPT, DEFAULT_SCORING_PROMPT, candidate_labels, fit_context,
                                  load_prompt, render_plain)
from minivz.reason.scoring import check_norm, predict_by_likelihood, reduce_logprobs, token_logprobs

class HFReasoner:
    name = "hf"
    thinking = False  # the chat template's enable_thinking

    def __init__(
        self,
        model: str = "",
        norm: str = "mean",
        prompt: str = "",
        chat_template: bool = True,
        device: str = "auto",
        dtype: str = "float32",
        max_length: int = 0,
        thinking: bool = False,
        answer: str = "title",
        order: str = "as-is",
        viewers: bool = False,
        genres: bool = False,
        match: bool = False,
        constrain: bool = True,
        item_stats: ItemStats | None = None,
    ) -> None:
        if not model:
            raise ValueError("the hf reasoner needs a model directory: hf:model=/path/to/model_dir")
        if os.path.isdir(model):
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if dtype == "auto":
            from minivz.envinfo import fast_bf16

            dtype = "bfloat16" if fast_bf16() else "float32"
        loaded, tokenizer = load_model(model, dtype=dtype, device=resolve_device(device))
        self.bind(loaded, tokenizer, norm=norm, prompt=prompt, chat_template=chat_template, max_length=max_length,
                  thinking=thinking, answer=answer, order=order, viewers=viewers, genres=genres,
                  match=match, constrain=constrain, item_stats=item_stats)

    @classmethod
    def from_model(cls, model, tokenizer, **scoring) -> "HFReasoner":
        """A reasoner over an already-loaded model and its tokenizer (model None: tokenization
        only, ``max_length`` required); ``scoring`` as ``bind``'s."""
        self = cls.__new__(cls)
        self.bind(model, tokenizer, **scoring)
        return self

    def bind(self, model, tokenizer, *, norm: str = "mean", prompt: str = "", chat_template: bool = True,
             max_length: int = 0, thinking: bool = False, answer: str = "title", order: str = "as-is",
             viewers: bool = False, genres: bool = False, match: bool = False, constrain: bool = True,
             item_stats: ItemStats | None = None) -> None:
        """Everything but the loading: the model (None = tokenization only, then max_length is
        required), its tokenizer, the scoring norm, the prompt file and how it is rendered, and how
        the answer is read (``answer``, ``order``, ``viewers``, ``genres``, ``match``, ``constrain``: module doc)."""
        import torch

        if answer not in ANSWERS:
            raise ValueError(f"answer={answer!r}; use one of {', '.join(ANSWERS)}")
        self.candidate_list = CandidateList(order=order, viewers=viewers, genres=genres, match=match,
                                            item_stats=item_stats)
        self.answer, self.constrain, self.item_stats = answer, constrain, item_stats
        self.matcher = self.candidate_list.matcher
        prompt = prompt or (DEFAULT_SCORING_PROMPT if answer == "title" else DEFAULT_CHOICE_PROMPT)

        self._torch = torch
        self.model, self.tokenizer = model, tokenizer
        if model is not None:  # scoring runs where the weights are
            param = next(model.parameters())
            self.device, self.dtype = str(param.device), str(param.dtype).replace("torch.", "")
        self.norm = check_norm(norm)
        self.template = load_prompt(prompt, "reasoner")
        self.lists = "{candidates}" in self.template.user
        if answer != "title" and not self.lists:
            raise ValueError(f"answer={answer} reads the listed candidates, but prompt {prompt!r} has no "
                             f"{{candidates}}; use prompt={DEFAULT_CHOICE_PROMPT} (the default for answer={answer})")
        self.thinking = thinking
        config = getattr(model, "config", None)
        self.max_length = max_length or int(getattr(config, "max_position_embeddings", 2048) or 2048)
        self.use_chat_template = bool(chat_template and getattr(tokenizer, "chat_template", None))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.n_truncated = 0

    # -- text and tokens ------------------------------------------------------------------------

    def listing(self, query: Query) -> tuple[list[int], str, str]:
        """(order, candidate lines, labels) of the prompt's list (``CandidateList.lines``)."""
        return self.candidate_list.lines(query)

    def messages(self, context: str, query: Query | None = None) -> list[dict[str, str]]:
        """The prompt's chat messages: the context, and the candidate list when the prompt has one."""
        if not self.lists:
            return self.template.messages(context=context)
        if query is None:
            raise ValueError(f"prompt {self.template.name} lists the candidates: pass the query")
        _, lines, labels = self.listing(query)
        return self.template.messages(context=context, candidates=lines, labels=labels)

    def prompt_text(self, context: str, query: Query | None = None) -> tuple[str, list[int]]:
        """(the rendered prompt, the token ids put before it: the BOS of a plain rendering)."""
        messages = self.messages(context, query)
        if self.use_chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                      enable_thinking=self.thinking), []
        bos = self.tokenizer.bos_token_id
        return render_plain(messages), [bos] if bos is not None else []

    def tokenize_prompt(self, context: str, query: Query | None = None) -> list[int]:
        text, head = self.prompt_text(context, query)
        return head + list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def tokenize_candidate(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _fitted(self, query: Query, longest: int) -> str:
        """The context cut from its oldest lines until prompt + ``longest`` - 1 tokens fit max_length."""
        context, cut = fit_context(
            query.context, lambda ctx: len(self.tokenize_prompt(ctx, query)) + longest - 1 <= self.max_length
        )
        self.n_truncated += cut
        return context

    def prepare(self, query: Query) -> tuple[list[int], list[list[int]]]:
        cands = [self.tokenize_candidate(c) for c in query.candidates]
        longest = 1 if self.answer != "title" else max((len(c) for c in cands), default=1)
        return self.tokenize_prompt(self._fitted(query, longest), query), cands

    def label_token_ids(self, n: int) -> list[int]:
        """The token id of each of the first ``n`` labels as the reply's first token; refuses labels
        that are not one token or that collide (the one-forward reading needs both)."""
        cached = getattr(self, "_label_ids", {})
        if n not in cached:
            ids = []
            for lab in candidate_labels(n):
                tok = self.tokenize_candidate(lab)
                if len(tok) != 1:
                    raise ValueError(f"label {lab!r} is {len(tok)} tokens for this tokenizer; answer=label needs "
                                     "one token per label (use answer=title)")
                ids.append(tok[0])
            if len(set(ids)) != n:
                raise ValueError("two labels share a token for this tokenizer; use answer=title")
            cached[n] = ids
            self._label_ids = cached
        return cached[n]

    def prepare_labels(self, query: Query) -> tuple[list[int], list[int], list[int]]:
        """(prompt ids, listing order, label token ids) of one query in ``answer=label`` mode: what the
        scorer runs and what training trains on (the target's label is ``order.index(label)``)."""
        prefix, _ = self.prepare(query)
        order, _, _ = self.listing(query)
        return prefix, order, self.label_token_ids(len(order))

    def readout_token_id(self) -> int:
        """The token whose log-probability at the end of a candidate's line is its score (answer=line)."""
        tok = self.tokenize_candidate(READOUT)
        if not tok:
            raise ValueError(f"the tokenizer encodes the readout {READOUT!r} as no tokens; use answer=label")
        return tok[0]

    def prepare_lines(self, query: Query) -> tuple[list[int], list[int], list[int]]:
        """(prompt ids, listing order, positions) of one query in ``answer=line`` mode: ``positions[k]``
        is the index in the prompt of the last token of the k-th listed candidate's line (the token
        covering its last character), where its score is read; training reads the same positions."""
        context = self._fitted(query, 1)
        text, head = self.prompt_text(context, query)
        order, lines, _ = self.listing(query)
        ends = line_ends(text, lines, self.template.name)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        positions = token_positions([a for a, _ in enc["offset_mapping"]], ends, len(head))
        return head + list(enc["input_ids"]), order, positions

    def prepare_listed(self, query: Query) -> tuple[list[int], list[int], list[int]]:
        """(prompt ids, listing order, where each listed candidate is read): ``prepare_lines``'
        positions for answer=line, else ``prepare_labels``' label token ids; what listwise training reads."""
        return self.prepare_lines(query) if self.answer == "line" else self.prepare_labels(query)

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

    def label_logits(self, prefixes: list[list[int]]) -> "np.ndarray":
        """(B, V) float32 next-token logits after each prompt, in one batched forward: left-padded, the
        positions counted from each row's first real token, the LM head run on the last position only."""
        torch = self._torch
        ids, mask, pos = left_padded(prefixes, self.pad_id)
        with torch.inference_mode():
            out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                             position_ids=pos.to(self.device), logits_to_keep=1)
        return out.logits[:, -1].float().cpu().numpy()

    def predict_labels(self, queries: list[Query], batch_size: int = 0) -> list[Prediction]:
        """``batch_size`` prompts per forward (0: 8 on a GPU; 1 on a CPU, where padding a batch to its
        longest prompt costs more than batching saves: 0.96 vs 0.74 s per 724-token prompt, bf16, 2 cores)."""
        batch_size = batch_size or (8 if self.device.startswith("cuda") else 1)
        out = []
        for b in range(0, len(queries), batch_size):
            prepared = [self.prepare_labels(q) for q in queries[b:b + batch_size]]
            logits = self.label_logits([p for p, _, _ in prepared])
            for row, (_, order, label_ids) in zip(logits, prepared):
                m = row.max()
                lp = row.astype(np.float64) - (m + np.log(np.exp(row.astype(np.float64) - m).sum()))
                scores = np.empty(len(order), dtype=np.float64)
                scores[order] = lp[label_ids]  # the k-th listed candidate is query candidate order[k]
                if self.constrain:
                    out.append(Prediction.from_scores(scores))
                    continue
                greedy = int(np.argmax(row))
                k = label_ids.index(greedy) if greedy in label_ids else -1
                out.append(Prediction(scores=scores, choice=order[k] if k >= 0 else -1, valid=k >= 0))
        return out

    def predict_lines(self, queries: list[Query], batch_size: int = 0) -> list[Prediction]:
        """``answer=line``: one forward per prompt (``batch_size`` as predict_labels), each listed
        candidate scored at the end of its own line (``line_scores``, shared with training)."""
        torch = self._torch
        batch_size = batch_size or (8 if self.device.startswith("cuda") else 1)
        token = self.readout_token_id()
        out = []
        for b in range(0, len(queries), batch_size):
            prepared = [self.prepare_lines(q) for q in queries[b:b + batch_size]]
            ids, mask, pos, index, keep = line_batch([p for p, _, _ in prepared], [x for _, _, x in prepared],
                                                     self.pad_id)
            with torch.inference_mode():
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                    position_ids=pos.to(self.device), logits_to_keep=keep.to(self.device)).logits
                listed = line_scores(logits, index.to(self.device), token).float().cpu().numpy()
            for row, (_, order, _) in zip(listed, prepared):
                scores = np.empty(len(order), dtype=np.float64)
                scores[order] = row[: len(order)]
                out.append(Prediction.from_scores(scores))
        return out

    def predict(self, queries: list[Query]) -> list[Prediction]:
        if self.answer == "label":
            return self.predict_labels(queries)
        if self.answer == "line":
            return self.predict_lines(queries)
        return predict_by_likelihood(self, queries)


def left_padded(prefixes: list[list[int]], pad_id: int):
    """(input_ids, attention_mask, position_ids) long tensors (B, longest): each prompt right-aligned, so
    every prompt ends at the last position; positions count from each row's first real token."""
    import torch

    width = max(len(p) for p in prefixes)
    ids = torch.full((len(prefixes), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prefixes), width), dtype=torch.long)
    for k, p in enumerate(prefixes):
        ids[k, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[k, width - len(p):] = 1
    return ids, mask, (mask.cumsum(1) - 1).clamp(min=0)


def line_batch(prefixes: list[list[int]], positions: list[list[int]], pad_id: int):
    """``left_padded`` + what ``line_scores`` reads: ``keep`` (K,) long, the padded positions holding
    some row's line end (sorted, unique: the model's ``logits_to_keep``, so the LM head runs on those
    K positions only, not on every position), and ``index`` (B, Cmax) long, each line's place in
    ``keep`` (-1 where a row has fewer lines)."""
    import torch

    ids, mask, pos = left_padded(prefixes, pad_id)
    width = ids.shape[1]
    padded = [[width - len(p) + i for i in x] for p, x in zip(prefixes, positions)]
    keep = sorted({i for x in padded for i in x})
    where = {i: k for k, i in enumerate(keep)}
    index = torch.full((len(prefixes), max(len(x) for x in positions)), -1, dtype=torch.long)
    for k, x in enumerate(padded):
        index[k, : len(x)] = torch.tensor([where[i] for i in x], dtype=torch.long)
    return ids, mask, pos, index, torch.tensor(keep, dtype=torch.long)


def line_scores(logits, index, token: int):
    """(B, Cmax) scores of ``answer=line``: log p(token) at each line's position (``line_batch``'s
    index into logits (B, K, V)); -inf where a row has no such line. Differentiable: the
    listwise loss trains on exactly what the scorer reads."""
    import torch

    lp = torch.log_softmax(logits.float(), dim=-1)[..., token]  # (B, K)
    got = lp.gather(1, index.clamp(min=0))
    return got.masked_fill(index < 0, float("-inf"))


ANSWERS = ("title", "label", "line")


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
