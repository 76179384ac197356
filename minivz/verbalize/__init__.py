"""Verbalizers: turn a user's interaction history into text for an LLM recommender.

    from minivz.verbalize import make_verbalizer
    v = make_verbalizer("template")                       # or "zero-shot:max_new_tokens=64", "action",
    texts = v.verbalize(histories)                        # "rewrite:model=runs/x/checkpoints/step_000200"
    v.stats, v.metadata                                   # counters (malformed outputs, truncations, ...)

``histories`` is ``list[list[event dict]]``, oldest event first (see ``minivz.dataset``); the result
has one string per history. Importing this package loads no model and no torch.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, Callable, Protocol, runtime_checkable

from minivz.spec import coerce_option, parse_spec
from minivz.verbalize.llm import (ActionVerbalizer, RewriteVerbalizer, SelectVerbalizer, ZeroShotVerbalizer,
                                  action_grammar, parse_decisions, parse_selection, render_actions,
                                  render_selection, select_grammar, select_lines)
from minivz.verbalize.cache import CachedVerbalizer
from minivz.verbalize.rules import CleanRule, RecentRule, RuleVerbalizer, SeriesRule, TitlesRule
from minivz.verbalize.template import TemplateVerbalizer, display_title, template_line, template_text

__all__ = ["Verbalizer", "VERBALIZERS", "make_verbalizer", "template_line", "template_text",
           "display_title", "TemplateVerbalizer", "ZeroShotVerbalizer", "ActionVerbalizer",
           "RewriteVerbalizer", "SelectVerbalizer", "RuleVerbalizer", "action_grammar", "parse_decisions",
           "render_actions", "select_grammar", "select_lines", "parse_selection", "render_selection"]


@runtime_checkable
class Verbalizer(Protocol):
    name: str
    stats: dict

    def verbalize(self, histories: list[list[dict]]) -> list[str]: ...


VERBALIZERS: dict[str, Callable[..., Verbalizer]] = {
    "cached": CachedVerbalizer,
    "template": TemplateVerbalizer,
    "zero-shot": ZeroShotVerbalizer,
    "action": ActionVerbalizer,
    "rewrite": RewriteVerbalizer,
    "select": SelectVerbalizer,
    # rules: hand-written baselines (minivz.verbalize.rules), the bar a learned verbalizer must clear
    "rule": RuleVerbalizer,
    "recent": RecentRule,
    "clean": CleanRule,
    "series": SeriesRule,
    "titles": TitlesRule,
}

# Arguments that take objects, not text: allowed as keyword arguments, not in a spec string.
_OBJECT_ARGS = {"generator", "stats", "name"}


def make_verbalizer(spec: str, **objects: Any) -> Verbalizer:
    """Build a verbalizer from ``name`` or ``name:key=value,...``; ``objects`` pass non-text
    arguments (e.g. ``generator=`` to share one loaded model). Unknown names or keys raise
    ``ValueError`` listing the valid ones."""
    name, raw = parse_spec(spec, "verbalizer")
    if name not in VERBALIZERS:
        raise ValueError(f"unknown verbalizer {name!r}; valid: {', '.join(VERBALIZERS)}")
    factory = VERBALIZERS[name]
    hints = typing.get_type_hints(factory.__init__)
    signature = inspect.signature(factory).parameters
    params = [p for p in signature if p not in ("self", "kwargs")]
    text_keys = [p for p in params if p not in _OBJECT_ARGS]
    for key in list(raw) + list(objects):
        if key not in params or (key in raw and key in _OBJECT_ARGS):
            raise ValueError(f"unknown option {key!r} for verbalizer {name!r}; valid: {', '.join(text_keys)}")
    kwargs = {k: coerce_option(v, hints.get(k, str), signature[k].default, k, none=True) for k, v in raw.items()}
    return factory(**kwargs, **objects)
