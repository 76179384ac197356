"""Versioned prompt files (``minivz/prompts/verbalizer_*.txt``) and fitting a history into context.

A prompt file (read by ``minivz.prompt``) has ``### system`` and ``### user`` sections; ``{history}``
and ``{n_events}`` in them are replaced by code (plain ``str.replace``, so braces in the text need no
escaping).
"""

from __future__ import annotations

from minivz.prompt import PromptFile, load_prompt_file
from minivz.prompt import available_prompts as _available


class Prompt(PromptFile):
    def messages(self, history: str, n_events: int) -> list[dict]:
        return self.chat(lambda s: s.replace("{history}", history).replace("{n_events}", str(n_events)))


def available_prompts() -> list[str]:
    return _available("verbalizer")


def load_prompt(name_or_path: str) -> Prompt:
    """Load ``verbalizer_rewrite_v1`` (from the package) or a path to a prompt file of your own."""
    return load_prompt_file(name_or_path, "verbalizer", Prompt, needs="{history}")


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
