"""Versioned prompt files (``minivz/prompts/verbalizer_*.txt``) and fitting a history into context.

A prompt file has ``### system`` and ``### user`` sections; ``{history}`` and ``{n_events}`` in them
are replaced by code (plain ``str.replace``, so braces in the text need no escaping). The version is
the file name (``verbalizer_rewrite_v1``): a released file is never edited, a change is a new file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROMPT_DIR = Path(__file__).resolve().parent.parent / "prompts"


@dataclass(frozen=True)
class Prompt:
    name: str      # e.g. "verbalizer_rewrite_v1": recorded with every run that uses it
    system: str
    user: str

    def messages(self, history: str, n_events: int) -> list[dict]:
        fill = lambda s: s.replace("{history}", history).replace("{n_events}", str(n_events))  # noqa: E731
        msgs = [{"role": "system", "content": fill(self.system)}] if self.system else []
        return msgs + [{"role": "user", "content": fill(self.user)}]


def available_prompts() -> list[str]:
    return sorted(p.stem for p in PROMPT_DIR.glob("verbalizer_*.txt"))


def load_prompt(name_or_path: str) -> Prompt:
    """Load ``verbalizer_rewrite_v1`` (from the package) or a path to a prompt file of your own."""
    path = Path(name_or_path)
    if not path.is_file():
        path = PROMPT_DIR / f"{name_or_path}.txt"
    if not path.is_file():
        raise ValueError(f"unknown prompt {name_or_path!r}; packaged prompts: {', '.join(available_prompts())}"
                         " (or pass a path to a .txt file)")
    sections: dict[str, list[str]] = {}
    current = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("### "):
            current = line[4:].strip().lower()
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
        # lines before the first section are comments
    if "user" not in sections or "{history}" not in "\n".join(sections["user"]):
        raise ValueError(f"{path}: needs a '### user' section containing {{history}}")
    unknown = set(sections) - {"system", "user"}
    if unknown:
        raise ValueError(f"{path}: unknown sections {sorted(unknown)}; valid: system, user")
    text = {k: "\n".join(v).strip() for k, v in sections.items()}
    return Prompt(name=path.stem, system=text.get("system", ""), user=text["user"])


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
