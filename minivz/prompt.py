"""Versioned prompt files (``minivz/prompts/<family>_*.txt``, or a path of your own), and fitting a
history into a model's context: the one prompt module of minivz.

A prompt file has comment lines ("#"), then ``### system`` (optional) and ``### user`` sections
whose text holds ``{name}`` placeholders that code fills, the same way for every family: each
``{name}`` given to ``messages`` is replaced in one pass (a value is never scanned again, so a
context that happens to contain "{candidates}" stays as written); any other braces are text and
need no escaping. The version is the file name (``reasoner_v1``): a released file is never edited,
a change is a new file, so old runs stay reproducible.

    from minivz.prompt import load_prompt
    p = load_prompt("verbalizer_select_v1", "verbalizer")   # or a path to a .txt file
    p.messages(history="1. ...", n_events=3)               # [{"role": "system", ...}, {"role": "user", ...}]
    load_prompt("reasoner_choice_v1", "reasoner").messages(context=..., candidates=..., labels="A, B")

Placeholders by family: verbalizer ``{history}`` (required), ``{n_events}``; reasoner ``{context}``
(required), and for choice prompts ``{candidates}`` (one "A. title" line each) and ``{labels}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

PROMPT_DIR = Path(__file__).resolve().parent / "prompts"
REQUIRED = {"verbalizer": "{history}", "reasoner": "{context}"}  # what a family's user section must hold
DEFAULT_SCORING_PROMPT = "reasoner_v1"          # a candidate's title scored as the reply
DEFAULT_CHOICE_PROMPT = "reasoner_choice_v1"    # the candidates listed in the prompt
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Prompt:
    name: str      # e.g. "verbalizer_rewrite_v1": recorded with every run that uses it
    system: str
    user: str

    def fill(self, text: str, fields: dict[str, object]) -> str:
        """``text`` with each ``{name}`` of ``fields`` replaced by ``str(value)``, in one pass."""
        return _PLACEHOLDER.sub(lambda m: str(fields[m[1]]) if m[1] in fields else m[0], text)

    def messages(self, **fields: object) -> list[dict[str, str]]:
        """Chat messages (system, if any, then user) with the placeholders filled."""
        msgs = [{"role": "system", "content": self.fill(self.system, fields)}] if self.system else []
        return msgs + [{"role": "user", "content": self.fill(self.user, fields)}]


def available_prompts(family: str) -> list[str]:
    """Names of the packaged prompts of a family ("verbalizer", "reasoner")."""
    return sorted(p.stem for p in PROMPT_DIR.glob(f"{family}_*.txt"))


def load_prompt(name_or_path: str, family: str) -> Prompt:
    """A packaged prompt of ``family`` by name, or a prompt file by path. Raises ValueError saying
    what is wrong (an unknown name lists the family's packaged prompts)."""
    if family not in REQUIRED:
        raise ValueError(f"unknown prompt family {family!r}; use one of {', '.join(REQUIRED)}")
    path = Path(name_or_path)
    if not path.is_file():
        path = PROMPT_DIR / f"{name_or_path}.txt"
    if not path.is_file():
        raise ValueError(f"unknown prompt {name_or_path!r}; packaged prompts: "
                         f"{', '.join(available_prompts(family))} (or pass a path to a .txt file)")
    sections: dict[str, list[str]] = {}
    current = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("### "):
            current = line[4:].strip().lower()
            if current not in ("system", "user"):
                raise ValueError(f"{path}: unknown section {line!r}; use '### system' or '### user'")
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
        # lines before the first section are comments
    needs = REQUIRED[family]
    if "user" not in sections or needs not in "\n".join(sections["user"]):
        raise ValueError(f"{path}: a {family} prompt needs a '### user' section containing {needs}")
    text = {k: "\n".join(v).strip() for k, v in sections.items()}
    return Prompt(name=path.stem, system=text.get("system", ""), user=text["user"])


def candidate_labels(n: int) -> list[str]:
    """A, B, ... for up to 26 candidates, else 1, 2, ..."""
    if n <= 26:
        return [chr(ord("A") + i) for i in range(n)]
    return [str(i + 1) for i in range(n)]


def render_plain(messages: list[dict[str, str]]) -> str:
    """A template-free rendering for models without a chat template (tiny test models)."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "


def fit_lines(lines: list[str], budget: int, count_tokens) -> int:
    """How many of the most recent ``lines`` fit into ``budget`` tokens (each line + its newline).

    Truncation drops the oldest events first: the recent ones matter most for next-item prediction.
    """
    used, kept = 0, 0
    for line in reversed(lines):
        used += count_tokens(line) + 1
        if used > budget:
            break
        kept += 1
    return kept


def fit_context(context: str, fits: Callable[[str], bool]) -> tuple[str, bool]:
    """Cut ``context`` from the left (keep the most recent part) until ``fits(text)`` holds.

    Drops whole oldest lines first (binary search, O(log lines) calls to ``fits``); when even the
    last line alone does not fit, drops its leading characters. Returns (text, truncated).
    Raises ValueError when not even an empty context fits (the prompt itself is too long).
    """
    if fits(context):
        return context, False
    if not fits(""):
        raise ValueError("the prompt does not fit the model's context even with an empty history")
    lines = context.split("\n")
    lo, hi = 1, len(lines)  # drop lines[:k]; find the smallest k that fits (k = len(lines) fits)
    while lo < hi:
        mid = (lo + hi) // 2
        if fits("\n".join(lines[mid:])):
            hi = mid
        else:
            lo = mid + 1
    if lo < len(lines):
        return "\n".join(lines[lo:]), True
    last = lines[-1]
    lo, hi = 1, len(last)  # drop last[:k] characters
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(last[mid:]):
            hi = mid
        else:
            lo = mid + 1
    return last[lo:], True
