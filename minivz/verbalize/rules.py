"""Rule verbalizers: hand-written rewrites of the template, the headroom check and the bar to clear.

    make_verbalizer("recent:recent=4")          # the 4 most recent events, template lines
    make_verbalizer("clean")                    # drop previews, autoplay and abandoned starts
    make_verbalizer("series")                   # clean + one line per series run ("S1E1-E5, 5 episodes")
    make_verbalizer("titles")                   # titles only, comma-separated, oldest first
    make_verbalizer("rule:recent=5,clean=true,series=true,titles=true")   # any combination

Before spending GPU hours on GRPO, score these under the oracle you will train against
(``minivz headroom``): if no rule beats the template, a learned verbalizer has little to find for
that oracle; if one does, it is the bar the learned verbalizer must clear.

Steps, in this order: ``clean`` drops noise events -> ``min_rating`` drops events rated below it ->
``series`` merges consecutive episodes of one series into one line -> ``recent`` keeps the last k lines -> render as template lines or
(``titles``) as a comma-separated list of titles. Pure Python, deterministic, no model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from minivz.verbalize.template import display_title, template_line

# Interactions that are noise for next-item prediction: the user did not choose to watch
NOISE_INTERACTIONS = frozenset({"preview", "autoplay", "trailer", "impression"})
_EPISODE_SUFFIX = re.compile(r"\s+(?:S\d+)?E\d+$")


def is_noise(event: dict, min_play_s: float) -> bool:
    """A preview, autoplay or trailer, or an abandoned start (a known duration under ``min_play_s``)."""
    if str(event.get("interaction") or "").lower() in NOISE_INTERACTIONS:
        return True
    d = event.get("duration_s")
    return d is not None and d == d and float(d) < min_play_s  # d == d: not NaN


def series_units(events: list[dict]) -> list[list[dict]]:
    """Consecutive events of one series grouped (after cleaning: a preview between two episodes no
    longer splits the run); every other event is a unit of its own. Oldest first, as the events."""
    units: list[list[dict]] = []
    for e in events:
        prev = units[-1][-1] if units else None
        if prev is not None and e.get("series_id") is not None and prev.get("series_id") == e.get("series_id"):
            units[-1].append(e)
        else:
            units.append([e])
    return units


def _episode_tag(e: dict) -> str:
    s, ep = e.get("season"), e.get("episode")
    return (f"S{int(s)}" if s is not None else "") + (f"E{int(ep)}" if ep is not None else "")


def run_title(unit: list[dict]) -> str:
    """``The Iron Tower S1E7-S2E8 (12 episodes)`` for a run, the display title for one event."""
    if len(unit) == 1:
        return display_title(unit[0])
    first, last = unit[0], unit[-1]
    # an episode's catalog title may already carry its tag ("The Iron Tower S1E7"): the series name
    name = _EPISODE_SUFFIX.sub("", str(first.get("title") or first.get("item_id") or "?").strip())
    a, b = _episode_tag(first), _episode_tag(last)
    if a and b and a[:a.find("E")] == b[:b.find("E")] and "E" in b:
        b = b[b.find("E"):]  # same season: S1E1-E5
    span = f" {a}-{b}" if a and b else ""
    return f"{name}{span} ({len(unit)} episodes)"


def run_line(unit: list[dict]) -> str:
    """A template line for a run: the first event's time and fields, the run's title, total duration."""
    if len(unit) == 1:
        return template_line(unit[0])
    total = [float(e["duration_s"]) for e in unit if e.get("duration_s") is not None and e["duration_s"] == e["duration_s"]]
    head = {**unit[0], "duration_s": sum(total) if total else None}
    line = template_line({**head, "title": run_title(unit), "season": None, "episode": None, "series_id": None,
                          "year": None})
    return line


@dataclass
class RuleVerbalizer:
    """One configurable rule (see the module docstring); the named presets below set defaults."""

    recent: int = 0  # keep the last k lines (0 = all)
    clean: bool = False  # drop previews, autoplay, trailers and abandoned starts
    series: bool = False  # one line per series run
    titles: bool = False  # "A, B, C" instead of template lines
    min_rating: float = 0.0  # drop events rated below this (0 = off; events without a rating are kept)
    min_play_s: float = 120.0  # a play shorter than this (when its duration is known) is an abandoned start
    name: str = "rule"
    stats: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.recent < 0:
            raise ValueError(f"recent={self.recent} must be >= 0 (0 keeps every line)")
        if self.min_play_s < 0 or self.min_rating < 0:
            raise ValueError("min_play_s and min_rating must be >= 0")
        self.stats = {"histories": 0, "events": 0, "dropped_noise": 0, "dropped_rating": 0, "merged_runs": 0,
                      "dropped_old": 0, "empty_outputs": 0}

    @property
    def metadata(self) -> dict:
        return {"verbalizer": self.name, "recent": self.recent, "clean": self.clean, "series": self.series,
                "titles": self.titles, "min_rating": self.min_rating, "min_play_s": self.min_play_s}

    def units(self, history: list[dict]) -> list[list[dict]]:
        """The kept events, grouped into the lines the text will show (oldest first)."""
        st = self.stats
        events = history
        if self.clean:
            kept = [e for e in events if not is_noise(e, self.min_play_s)]
            st["dropped_noise"] += len(events) - len(kept)
            events = kept
        if self.min_rating > 0:
            kept = [e for e in events if e.get("rating") is None or float(e["rating"]) >= self.min_rating]
            st["dropped_rating"] += len(events) - len(kept)
            events = kept
        units = series_units(events) if self.series else [[e] for e in events]
        st["merged_runs"] += sum(len(u) > 1 for u in units)
        if self.recent and len(units) > self.recent:
            st["dropped_old"] += sum(len(u) for u in units[:-self.recent])
            units = units[-self.recent:]
        return units

    def verbalize(self, histories: list[list[dict]]) -> list[str]:
        out = []
        for h in histories:
            units = self.units(h)
            if self.titles:
                text = ", ".join(run_title(u) if self.series else display_title(u[0]) for u in units)
            else:
                text = "\n".join(run_line(u) if self.series else template_line(u[0]) for u in units)
            self.stats["histories"] += 1
            self.stats["events"] += len(h)
            self.stats["empty_outputs"] += not text
            out.append(text)
        return out


@dataclass
class RecentRule(RuleVerbalizer):
    """``recent``: the k most recent events (default 5), template lines."""

    recent: int = 5
    name: str = "recent"


@dataclass
class CleanRule(RuleVerbalizer):
    """``clean``: previews, autoplay, trailers and abandoned starts dropped."""

    clean: bool = True
    name: str = "clean"


@dataclass
class SeriesRule(RuleVerbalizer):
    """``series``: cleaned, and one line per series run."""

    clean: bool = True
    series: bool = True
    name: str = "series"


@dataclass
class TitlesRule(RuleVerbalizer):
    """``titles``: titles only, comma-separated."""

    titles: bool = True
    name: str = "titles"


# The rules `minivz headroom` scores by default (spec strings; recent-k for a range of k).
DEFAULT_RULES = ("recent:recent=1", "recent:recent=2", "recent:recent=3", "recent:recent=4", "recent:recent=5",
                 "recent:recent=7", "recent:recent=10", "clean", "series", "titles", "titles:clean=true",
                 "titles:clean=true,series=true", "rule:min_rating=4")
