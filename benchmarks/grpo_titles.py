"""What a GRPO verbalizer run learned, step by step: catalog titles its completions name.

    python benchmarks/grpo_titles.py runs/tiny-cpu/verbalizer runs/tiny-cpu/data

Under the `mention` oracle a completion earns more than the random floor only by naming catalog
titles, so the share of completions that name at least one title (and how many distinct ones)
is the behaviour the reward should grow. Reads RUN/samples.jsonl (every completion of every step,
with its rewards); titles are found with minivz.reason.mention.TitleMatcher, as in the audit.
"""

from __future__ import annotations

import argparse
import json
import statistics as st
from pathlib import Path

from minivz.dataset import PreparedData
from minivz.reason.mention import TitleMatcher


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--window", type=int, default=5, help="steps averaged at the start and the end")
    args = ap.parse_args()
    matcher = TitleMatcher(PreparedData.load(args.data).items["title"].to_pylist())
    by_step: dict[int, list[dict]] = {}
    for line in (args.run / "samples.jsonl").read_text().splitlines():
        r = json.loads(line)
        by_step.setdefault(r["step"], []).append(r)
    rows = []
    print("step  reward  accuracy  titles/completion  share naming >= 1")
    for step in sorted(by_step):
        named = [len(set(matcher.find(r["verbalization"]))) for r in by_step[step]]
        row = {"step": step, "reward": st.mean(r["rewards"]["total"] for r in by_step[step]),
               "accuracy": st.mean(r["rewards"]["accuracy"] for r in by_step[step]),
               "titles": st.mean(named), "naming": sum(n > 0 for n in named) / len(named)}
        rows.append(row)
        print(f"{step:>4}  {row['reward']:.3f}   {row['accuracy']:.3f}     {row['titles']:.2f}               "
              f"{row['naming']:.2f}")
    w = min(args.window, len(rows) // 2) or 1
    for name, part in (("first", rows[:w]), ("last", rows[-w:])):
        print(f"{name} {w} steps: " + ", ".join(f"{k} {st.mean(r[k] for r in part):.3f}"
                                               for k in ("reward", "accuracy", "titles", "naming")))


if __name__ == "__main__":
    main()
