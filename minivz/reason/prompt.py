"""Versioned reasoner prompts (``minivz/prompts/reasoner_*.txt``) and how they become messages.

A prompt file has comment lines ("#") and then "### system" / "### user" sections with ``{context}``
(and for choice prompts ``{candidates}``, ``{labels}``) placeholders. ``load_prompt("reasoner_v1")``
or ``load_prompt("/path/to/file.txt")``.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"
DEFAULT_SCORING_PROMPT = "reasoner_v1"
DEFAULT_CHOICE_PROMPT = "reasoner_choice_v1"


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    system: str
    user: str

    def messages(self, **fields: str) -> list[dict[str, str]]:
        """Chat messages with the placeholders filled (``str.format`` syntax)."""
        out = []
        if self.system:
            out.append({"role": "system", "content": self.system.format(**fields)})
        out.append({"role": "user", "content": self.user.format(**fields)})
        return out

    def fields(self) -> set[str]:
        names = set()
        for text in (self.system, self.user):
            names |= {f for _, f, _, _ in string.Formatter().parse(text) if f}
        return names


def load_prompt(name_or_path: str) -> PromptTemplate:
    path = Path(name_or_path)
    if not path.suffix:
        path = PROMPTS_DIR / f"{name_or_path}.txt"
    if not path.is_file():
        known = sorted(p.stem for p in PROMPTS_DIR.glob("reasoner_*.txt"))
        raise ValueError(f"prompt {name_or_path!r} not found; known prompts: {', '.join(known)}")
    sections: dict[str, list[str]] = {}
    current = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("### "):
            current = line[4:].strip()
            if current not in ("system", "user"):
                raise ValueError(f"{path}: unknown section {line!r}; use '### system' or '### user'")
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
        elif line.strip() and not line.startswith("#"):
            raise ValueError(f"{path}: text before the first '### system'/'### user' section: {line!r}")
    if "user" not in sections:
        raise ValueError(f"{path}: needs a '### user' section")
    return PromptTemplate(
        name=path.stem,
        system="\n".join(sections.get("system", [])).strip(),
        user="\n".join(sections["user"]).strip(),
    )


def render_plain(messages: list[dict[str, str]]) -> str:
    """A template-free rendering for models without a chat template (tiny test models)."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "


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
