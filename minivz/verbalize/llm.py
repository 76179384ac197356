"""LLM verbalizers: ``zero-shot`` and ``rewrite`` (free text) and ``action`` (per-line decisions).

    v = make_verbalizer("zero-shot:max_new_tokens=64")          # SmolLM2 GGUF via llama.cpp
    v = make_verbalizer("rewrite:model=runs/x/checkpoints/step_000200")   # trained HF model
    v = make_verbalizer("action")
    texts = v.verbalize(histories)   # list[list[event dict]] -> list[str], one per history

All of them read the *template* text of the history (``template_line`` per event), so the only
thing that differs between verbalizers is what the model does with it. A history too long for the
context is truncated from its oldest events (``stats["truncated_histories"]`` / ``["truncated_events"]``).
The generator is loaded on first use and shared between verbalizers over the same model.
"""

from __future__ import annotations

import re
import time
import warnings
from minivz.verbalize.generate import Generator  # light: the backends import their engines lazily
from minivz.prompt import Prompt, fit_lines, load_prompt
from minivz.verbalize.template import display_title, template_line


class _LLMVerbalizer:
    name = "llm"
    default_prompt = ""

    def __init__(self, model: str | None = None, adapter: str | None = None, backend: str = "auto",
                 prompt: str | None = None, max_new_tokens: int = 200, temperature: float = 0.0,
                 seed: int = 0, n_ctx: int = 2048, n_threads: int | None = None,
                 max_events: int | None = None, generator: Generator | None = None) -> None:
        if max_new_tokens is not None and max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
        if temperature < 0:
            raise ValueError(f"temperature={temperature} must be >= 0 (0 = greedy)")
        if max_events is not None and max_events < 1:
            raise ValueError(f"max_events={max_events} must be >= 1 (or unset for the whole history)")
        if backend not in ("auto", "llama", "hf"):
            raise ValueError(f"backend={backend!r}; valid: auto, llama, hf")
        self.model, self.adapter, self.backend = model, adapter, backend
        self.prompt: Prompt = load_prompt(prompt or self.default_prompt, "verbalizer")  # fail now, not mid-run
        self.max_new_tokens, self.temperature, self.seed = max_new_tokens, temperature, seed
        self.n_ctx, self.n_threads, self.max_events = n_ctx, n_threads, max_events
        self._generator = generator
        self.stats: dict[str, float] = {"histories": 0, "llm_calls": 0, "empty_histories": 0,
                                        "empty_outputs": 0, "truncated_histories": 0,
                                        "truncated_events": 0, "seconds": 0.0}

    @property
    def generator(self) -> Generator:
        if self._generator is None:
            from minivz.verbalize.generate import load_generator
            self._generator = load_generator(self.backend, self.model, self.adapter, self.n_ctx, self.n_threads)
        return self._generator

    @property
    def metadata(self) -> dict:
        """What a run records next to its numbers (config.yaml / samples.jsonl)."""
        gen = self._generator
        model = self.model or (str(getattr(gen, "model_path", "")) if gen is not None else None) or "default:SmolLM2"
        return {"verbalizer": self.name, "prompt_version": self.prompt.name, "model": model,
                "adapter": self.adapter, "backend": self.backend, "max_new_tokens": self.max_new_tokens,
                "temperature": self.temperature, "seed": self.seed, "max_events": self.max_events}

    # -- prompt building (also used by GRPO training, which needs the exact policy prompt) --------

    def _budget_tokens(self, max_new_tokens: int) -> int:
        gen = self.generator
        from minivz.verbalize.generate import count_message_tokens
        fixed = count_message_tokens(gen, self.prompt.messages(history="", n_events=0))
        return gen.n_ctx - max_new_tokens - fixed

    def _fit(self, history: list[dict], max_new_tokens: int, count_tokens=None) -> list[dict]:
        """The most recent events whose lines fit the context (all when ``count_tokens`` is None
        and no generator is needed)."""
        if self.max_events is not None:
            history = history[-self.max_events:]
        if count_tokens is None:
            return history
        lines = [self._line(i, e) for i, e in enumerate(history, 1)]
        kept = fit_lines(lines, self._budget_tokens(max_new_tokens), count_tokens)
        if kept < len(history):
            self.stats["truncated_histories"] += 1
            self.stats["truncated_events"] += len(history) - kept
        return history[len(history) - kept:]

    def _line(self, i: int, event: dict) -> str:
        return template_line(event)

    def _messages(self, events: list[dict]) -> list[dict]:
        text = "\n".join(self._line(i, e) for i, e in enumerate(events, 1))
        return self.prompt.messages(history=text, n_events=len(events))


class RewriteVerbalizer(_LLMVerbalizer):
    """Free-text rewrite of the template history: the policy GRPO optimizes.

    Output: the generated text, stripped (generation stops at ``max_new_tokens``).
    """

    name = "rewrite"
    default_prompt = "verbalizer_rewrite_v1"

    def build_prompts(self, histories: list[list[dict]], fit: bool = True) -> list[list[dict]]:
        """Chat messages per history, as ``verbalize`` sends them (``fit=False``: no truncation,
        no model needed, e.g. to build a training dataset whose trainer truncates itself)."""
        count = self.generator.count_tokens if fit else None
        return [self._messages(self._fit(h, self.max_new_tokens, count)) for h in histories]

    def verbalize(self, histories: list[list[dict]]) -> list[str]:
        t0 = time.perf_counter()
        out = [""] * len(histories)
        todo = [i for i, h in enumerate(histories) if h]
        self.stats["histories"] += len(histories)
        self.stats["empty_histories"] += len(histories) - len(todo)
        if todo:
            prompts = self.build_prompts([histories[i] for i in todo])
            texts = self.generator.generate(prompts, max_new_tokens=self.max_new_tokens,
                                            temperature=self.temperature, seed=self.seed)
            self.stats["llm_calls"] += len(todo)
            for i, t in zip(todo, texts):
                out[i] = t.strip()
                self.stats["empty_outputs"] += not out[i]
        self.stats["seconds"] += time.perf_counter() - t0
        return out


class ZeroShotVerbalizer(RewriteVerbalizer):
    """The paper's zero-shot baseline: an untrained instruct LLM with the zero-shot prompt."""

    name = "zero-shot"
    default_prompt = "verbalizer_zero_shot_v1"

    def __init__(self, model: str | None = None, backend: str = "auto", prompt: str | None = None,
                 max_new_tokens: int = 200, temperature: float = 0.0, seed: int = 0, n_ctx: int = 2048,
                 n_threads: int | None = None, max_events: int | None = None,
                 generator: Generator | None = None) -> None:
        # No adapter=: a trained model is the `rewrite` verbalizer, so the tables stay honest.
        super().__init__(model=model, adapter=None, backend=backend, prompt=prompt,
                         max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, n_ctx=n_ctx,
                         n_threads=n_threads, max_events=max_events, generator=generator)


# ---------------------------------------------------------------------------------------------
# action-based

ACTIONS = ("keep meta", "keep", "drop")
_DECISION = re.compile(r"^\W*(?:line\s*)?(\d+)\s*[:.)\-=]?\s*(keep\s*(?:\+\s*|with\s+)?meta(?:data)?|keep|drop)\b",
                       re.IGNORECASE)


def action_grammar(n_events: int) -> str:
    """GBNF that admits exactly ``"1: <act>\\n" ... "n: <act>\\n"``: one decision per line, in order,
    so the model only chooses the actions and the output always parses."""
    if n_events < 1:
        raise ValueError("action_grammar needs at least one event")
    lines = " ".join(f'"{i}: " act "\\n"' for i in range(1, n_events + 1))
    return f'root ::= {lines}\nact ::= "keep meta" | "keep" | "drop"\n'


def parse_decisions(text: str, n_events: int) -> tuple[list[str], dict[str, int]]:
    """Decisions for lines 1..n from model output; never raises.

    Returns (actions, counts): ``actions[i]`` in ``ACTIONS`` for event ``i+1``. Missing decisions
    default to ``"keep"`` (keep, no metadata: the closest thing to the template, so a broken
    output degrades towards the baseline) and are counted; of duplicates the first wins.
    """
    actions: list[str | None] = [None] * n_events
    counts = {"malformed_lines": 0, "missing_decisions": 0, "duplicate_decisions": 0,
              "out_of_range_decisions": 0}
    for line in text.splitlines():
        if not line.strip():
            continue
        m = _DECISION.match(line.strip())
        if m is None:
            counts["malformed_lines"] += 1
            continue
        k, act = int(m.group(1)), m.group(2).lower()
        act = "keep meta" if "meta" in act else act
        if not 1 <= k <= n_events:
            counts["out_of_range_decisions"] += 1
        elif actions[k - 1] is not None:
            counts["duplicate_decisions"] += 1
        else:
            actions[k - 1] = act
    counts["missing_decisions"] = sum(a is None for a in actions)
    return [a or "keep" for a in actions], counts


def render_actions(events: list[dict], actions: list[str]) -> str:
    """Kept events, one per line: ``keep meta`` → ``Toy Story (1995) | Animation, Comedy``;
    ``keep`` → ``Toy Story`` (title only); ``drop`` → nothing."""
    lines = []
    for e, act in zip(events, actions):
        if act == "drop":
            continue
        if act == "keep meta":
            genres = e.get("genres")
            g = ", ".join(map(str, genres)) if genres is not None and len(genres) else ""
            lines.append(display_title(e) + (f" | {g}" if g else ""))
        else:
            lines.append(display_title(e, with_year=False))
    return "\n".join(lines)


class ActionVerbalizer(_LLMVerbalizer):
    """Per interaction, the LLM chooses keep / keep meta / drop; code renders the kept lines.

    With llama.cpp the output is constrained by ``action_grammar`` (stats ``grammar_constrained``);
    other backends generate freely and rely on the tolerant parser (malformed lines counted).
    ``max_new_tokens`` defaults to 7 per event + 8 (a decision line is ~5 tokens).
    """

    name = "action"
    default_prompt = "verbalizer_action_v1"
    _TOKENS_PER_DECISION = 7

    def __init__(self, model: str | None = None, adapter: str | None = None, backend: str = "auto",
                 prompt: str | None = None, max_new_tokens: int | None = None, temperature: float = 0.0,
                 seed: int = 0, n_ctx: int = 2048, n_threads: int | None = None,
                 max_events: int | None = None, grammar: bool = True,
                 generator: Generator | None = None) -> None:
        super().__init__(model=model, adapter=adapter, backend=backend, prompt=prompt,
                         max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, n_ctx=n_ctx,
                         n_threads=n_threads, max_events=max_events, generator=generator)
        self.grammar = grammar
        self.errors: list[str] = []
        self._warned = False
        self.stats.update({"grammar_constrained": 0, "malformed_lines": 0, "missing_decisions": 0,
                           "duplicate_decisions": 0, "out_of_range_decisions": 0, "kept_meta": 0,
                           "kept": 0, "dropped": 0, "failed_outputs": 0})

    @property
    def metadata(self) -> dict:
        return {**super().metadata, "grammar": self.grammar}

    def _line(self, i: int, event: dict) -> str:
        return f"{i}. {template_line(event)}"

    def _max_new(self, n_events: int) -> int:
        return self.max_new_tokens or self._TOKENS_PER_DECISION * n_events + 8

    def verbalize(self, histories: list[list[dict]]) -> list[str]:
        t0 = time.perf_counter()
        gen = self.generator
        use_grammar = self.grammar and getattr(gen, "supports_grammar", False)
        if self.grammar and not use_grammar and not self._warned:
            warnings.warn(f"action verbalizer: {type(gen).__name__} cannot constrain output with a grammar; "
                          "decisions are parsed from free text (see stats['malformed_lines']). "
                          "Pass grammar=false to silence this.", stacklevel=2)
            self._warned = True
        out = []
        for h in histories:
            self.stats["histories"] += 1
            if not h:
                self.stats["empty_histories"] += 1
                out.append("")
                continue
            # Budget for the decisions of the whole (max_events-capped) history, then fit.
            n_max = len(h) if self.max_events is None else min(len(h), self.max_events)
            events = self._fit(h, self._max_new(n_max), gen.count_tokens)
            if not events:
                out.append("")
                continue
            try:
                text = gen.generate([self._messages(events)], max_new_tokens=self._max_new(len(events)),
                                    temperature=self.temperature, seed=self.seed,
                                    grammar=action_grammar(len(events)) if use_grammar else None)[0]
            except Exception as e:  # noqa: BLE001 - one bad generation must not sink a batch; counted
                self.stats["failed_outputs"] += 1
                if len(self.errors) < 10:  # kept so a run can say *why*, not just how often
                    self.errors.append(f"{type(e).__name__}: {e}")
                text = ""
            self.stats["llm_calls"] += 1
            self.stats["grammar_constrained"] += bool(use_grammar)
            actions, counts = parse_decisions(text, len(events))
            for k, v in counts.items():
                self.stats[k] += v
            self.stats["kept_meta"] += actions.count("keep meta")
            self.stats["kept"] += actions.count("keep")
            self.stats["dropped"] += actions.count("drop")
            rendered = render_actions(events, actions)
            self.stats["empty_outputs"] += not rendered
            out.append(rendered)
        self.stats["seconds"] += time.perf_counter() - t0
        return out


# ---------------------------------------------------------------------------------------------
# select: the action variant with one compact decision -- which events to keep


_NUMBER = re.compile(r"\d+")
# the answer: ONE list of numbers ("1, 2, 5", "1 2 and 5"); text after it (a re-listed history,
# "(4/5)" ratings) is not read, so a policy cannot collect picks from numbers that are not its answer
_NUMBER_LIST = re.compile(r"(?<![\d/.])\d+(?![\d/]|\.\s*\w)(?:\s*(?:,|;|\band\b|&)?\s*(?<![\d/.])\d+(?![\d/]|\.\s*\w))*")


def select_lines(events: list[dict]) -> list[str]:
    """The policy's view of a history, NEWEST first and numbered from 1: ``1. Title (cue, cue)``.

    Cues are the fields that tell noise from a choice *in this history*: the interaction and the
    duration in minutes, each shown only when it is not the same on every line (MovieLens' constant
    ``rate`` costs no tokens; a streaming log's ``preview`` / ``autoplay`` / ``1 min`` show). Ratings
    and years are left out: digits are one token each in SmolLM2 (a "(4/5)" cue costs 5 tokens per
    line, a third of the prompt), and on MovieLens no rating rule beats the template
    (``minivz headroom``: keeping 4-5 star ratings only is worse).
    """
    def varies(key, fmt):
        vals = [fmt(e.get(key)) for e in events]
        return vals if len(set(vals)) > 1 else None

    def minutes(d):
        return None if d is None or d != d else f"{max(1, round(float(d) / 60))} min"

    cues = [c for c in (varies("interaction", lambda v: str(v) if v else None), varies("duration_s", minutes)) if c]
    out = []
    for k, i in enumerate(range(len(events) - 1, -1, -1), 1):
        extra = ", ".join(c[i] for c in cues if c[i])
        out.append(f"{k}. {display_title(events[i], with_year=False)}" + (f" ({extra})" if extra else ""))
    return out


def select_grammar(n_events: int) -> str:
    """GBNF for a comma-separated list of event numbers in 1..n (llama.cpp honours it)."""
    if n_events < 1:
        raise ValueError("select_grammar needs at least one event")
    nums = " | ".join(f'"{i}"' for i in range(n_events, 0, -1))  # longest first: "12" before "1"
    return f'root ::= num (", " num)*\nnum ::= {nums}\n'


def parse_selection(text: str, n_events: int) -> tuple[list[int], dict[str, int]]:
    """Event numbers (1 = newest) of the first list of numbers in ``text``, in order, each once;
    never raises.

    Numbers outside 1..n and repeats are dropped and counted; ``no_selection`` counts outputs that
    name no valid number (they render as an empty text: nothing is silently put back).
    """
    picks: list[int] = []
    counts = {"out_of_range_numbers": 0, "repeated_numbers": 0, "no_selection": 0}
    first = _NUMBER_LIST.search(text)
    for m in _NUMBER.finditer(first.group(0) if first else ""):
        k = int(m.group(0))
        if not 1 <= k <= n_events:
            counts["out_of_range_numbers"] += 1
        elif k in picks:
            counts["repeated_numbers"] += 1
        else:
            picks.append(k)
    counts["no_selection"] = int(not picks)
    return picks, counts


SELECT_RENDERS = {"template": "\n", "titles": ", "}  # how the kept events are written -> separator


def select_units(events: list[dict], render: str = "template") -> list[str]:
    """Each event as the select variant writes it when kept (oldest first): its template line, or
    (``render="titles"``) its display title."""
    if render not in SELECT_RENDERS:
        raise ValueError(f"render={render!r}; use one of {', '.join(SELECT_RENDERS)}")
    return [template_line(e) if render == "template" else display_title(e) for e in events]


def render_selection(lines: list[str], picks: list[int], render: str = "template") -> str:
    """The picked events' units (``lines`` oldest first, from ``select_units``), oldest first: the
    text the reasoner reads is the template with the unpicked lines removed (or the kept titles,
    comma-separated)."""
    n = len(lines)
    keep = sorted(n - k for k in picks if 1 <= k <= n)
    return SELECT_RENDERS[render].join(lines[i] for i in keep)


class SelectVerbalizer(_LLMVerbalizer):
    """The action variant in its most compact form: the LLM answers with the numbers of the events
    worth keeping (``1, 2, 5``; 1 = newest), code renders those events as template lines
    (``render="titles"``: their titles, comma-separated, for oracles with a short context).

    One short answer per history (~3 tokens per kept event) instead of a decision line per event,
    so GRPO steps and inference are cheap on a CPU; the output can never invent a title. With
    llama.cpp the answer is constrained by ``select_grammar``; otherwise parsed tolerantly
    (``parse_selection``, counts in ``stats``). ``max_new_tokens`` defaults to 3 per event + 2.
    """

    name = "select"
    default_prompt = "verbalizer_select_v1"

    def __init__(self, model: str | None = None, adapter: str | None = None, backend: str = "auto",
                 prompt: str | None = None, max_new_tokens: int | None = None, temperature: float = 0.0,
                 seed: int = 0, n_ctx: int = 2048, n_threads: int | None = None,
                 max_events: int | None = None, grammar: bool = True, render: str = "template",
                 generator: Generator | None = None) -> None:
        super().__init__(model=model, adapter=adapter, backend=backend, prompt=prompt,
                         max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, n_ctx=n_ctx,
                         n_threads=n_threads, max_events=max_events, generator=generator)
        select_units([], render)  # fail now on a bad render
        self.grammar, self.render_as = grammar, render
        self.stats.update({"grammar_constrained": 0, "out_of_range_numbers": 0, "repeated_numbers": 0,
                           "no_selection": 0, "kept": 0, "dropped": 0})

    @property
    def metadata(self) -> dict:
        return {**super().metadata, "grammar": self.grammar, "render": self.render_as}

    def _max_new(self, n_events: int) -> int:
        return self.max_new_tokens or 3 * n_events + 2

    def _line(self, i: int, event: dict) -> str:
        # what _fit counts: an over-estimate of the select line (every cue shown)
        return f"{i}. {display_title(event, with_year=False)} (preview, 999 min)"

    def _messages(self, events: list[dict]) -> list[dict]:
        return self.prompt.messages(history="\n".join(select_lines(events)), n_events=len(events))

    def build_prompts(self, histories: list[list[dict]], fit: bool = True) -> list[list[dict]]:
        count = self.generator.count_tokens if fit else None
        return [self._messages(self._fit(h, self._max_new(len(h)), count)) for h in histories]

    def render(self, events: list[dict], text: str) -> str:
        """What the reasoner reads for ``events`` given the model's answer ``text`` (counted in stats)."""
        picks, counts = parse_selection(text, len(events))
        for k, v in counts.items():
            self.stats[k] += v
        self.stats["kept"] += len(picks)
        self.stats["dropped"] += len(events) - len(picks)
        return render_selection(select_units(events, self.render_as), picks, self.render_as)

    def verbalize(self, histories: list[list[dict]]) -> list[str]:
        t0 = time.perf_counter()
        gen = self.generator
        use_grammar = self.grammar and getattr(gen, "supports_grammar", False)
        out = [""] * len(histories)
        fitted: dict[int, list[dict]] = {}
        for i, h in enumerate(histories):
            self.stats["histories"] += 1
            events = self._fit(h, self._max_new(min(len(h), self.max_events or len(h))), gen.count_tokens) if h else []
            if not events:
                self.stats["empty_histories"] += 1
                continue
            fitted[i] = events
        if use_grammar:  # one grammar per history length: generate one by one
            texts = {i: gen.generate([self._messages(ev)], max_new_tokens=self._max_new(len(ev)),
                                     temperature=self.temperature, seed=self.seed,
                                     grammar=select_grammar(len(ev)))[0] for i, ev in fitted.items()}
        else:
            order = list(fitted)
            budget = max((self._max_new(len(fitted[i])) for i in order), default=1)
            answers = gen.generate([self._messages(fitted[i]) for i in order], max_new_tokens=budget,
                                   temperature=self.temperature, seed=self.seed)
            texts = dict(zip(order, answers))
        self.stats["llm_calls"] += len(fitted)
        self.stats["grammar_constrained"] += len(fitted) if use_grammar else 0
        for i, events in fitted.items():
            out[i] = self.render(events, texts[i])
            self.stats["empty_outputs"] += not out[i]
        self.stats["seconds"] += time.perf_counter() - t0
        return out
