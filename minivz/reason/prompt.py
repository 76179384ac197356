"""Versioned reasoner prompts (``minivz/prompts/reasoner_*.txt``) and how they become messages.

A prompt file (read by ``minivz.prompt``) has comment lines ("#") and then "### system" / "### user"
sections with ``{context}`` (and for choice prompts ``{candidates}``, ``{labels}``) placeholders,
filled with ``str.format`` (literal braces are doubled). ``load_prompt("reasoner_v1")``
or ``load_prompt("/path/to/file.txt")``.
"""

from __future__ import annotations

from typing import Callable

from minivz.prompt import PromptFile, load_prompt_file

DEFAULT_SCORING_PROMPT = "reasoner_v1"
DEFAULT_CHOICE_PROMPT = "reasoner_choice_v1"


class PromptTemplate(PromptFile):
    def messages(self, **fields: str) -> list[dict[str, str]]:
        """Chat messages with the placeholders filled (``str.format`` syntax)."""
        return self.chat(lambda s: s.format(**fields))


def load_prompt(name_or_path: str) -> PromptTemplate:
    return load_prompt_file(name_or_path, "reasoner", PromptTemplate)


def candidate_labels(n: int) -> list[str]:
    """A, B, ... for up to 26 candidates, else 1, 2, ..."""
    if n <= 26:
        return [chr(ord("A") + i) for i in range(n)]
    return [str(i + 1) for i in range(n)]


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
