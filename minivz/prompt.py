"""Versioned prompt files (``minivz/prompts/<family>_*.txt``, or a path of your own): one loader.

A prompt file has comment lines, then ``### system`` (optional) and ``### user`` sections whose text
holds ``{name}`` placeholders that code fills. The version is the file name (``reasoner_v1``): a
released file is never edited, a change is a new file, so old runs stay reproducible.

    from minivz.prompt import PromptFile, load_prompt_file
    p = load_prompt_file("reasoner_v1", "reasoner", PromptFile)   # .name, .system, .user

Each family's subclass fills the placeholders (``minivz.verbalize.prompt``, ``minivz.reason.prompt``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

PROMPT_DIR = Path(__file__).resolve().parent / "prompts"


@dataclass(frozen=True)
class PromptFile:
    name: str      # e.g. "verbalizer_rewrite_v1": recorded with every run that uses it
    system: str
    user: str

    def chat(self, fill: Callable[[str], str]) -> list[dict[str, str]]:
        """Chat messages (system, if any, then user) with ``fill`` applied to each text."""
        msgs = [{"role": "system", "content": fill(self.system)}] if self.system else []
        return msgs + [{"role": "user", "content": fill(self.user)}]


P = TypeVar("P", bound=PromptFile)


def available_prompts(family: str) -> list[str]:
    """Names of the packaged prompts of a family ("verbalizer", "reasoner")."""
    return sorted(p.stem for p in PROMPT_DIR.glob(f"{family}_*.txt"))


def load_prompt_file(name_or_path: str, family: str, cls: type[P], needs: str = "") -> P:
    """Load a packaged prompt by name, or a prompt file by path, as ``cls``; ``needs`` is a
    placeholder the user section must contain. Raises ValueError saying what is wrong."""
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
    if "user" not in sections or needs not in "\n".join(sections["user"]):
        raise ValueError(f"{path}: needs a '### user' section" + (f" containing {needs}" if needs else ""))
    text = {k: "\n".join(v).strip() for k, v in sections.items()}
    return cls(name=path.stem, system=text.get("system", ""), user=text["user"])
