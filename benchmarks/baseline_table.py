"""The paper's baseline table on MovieLens-100K test examples (issue: evaluation harness).

    python benchmarks/baseline_table.py --data runs/t3/data --out runs/t3 --limit 100

Each verbalizer's text is generated once and cached (minivz.verbalize.cache), then every reasoner
scores the same cached text: verbalizers {template, zero-shot, action} x reasoners {embedding,
llamacpp (SmolLM2-135M), mention}, plus popularity and item-kNN on the same examples. Writes one
minivz eval run per cell under OUT/eval/, and OUT/table.md / table.json / table.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from minivz.config import DataConfig, EvalConfig, resolve
from minivz.dataset import PreparedData
from minivz.evaluate import evaluate
from minivz.examples import prepare
from minivz.report import bar_chart, compare_runs, to_markdown
from minivz.spec import parse_spec
from minivz.verbalize.cache import verbalize_split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--history", type=int, default=20)
    ap.add_argument("--verbalizers", default="template;zero-shot;action",
                    help="';'-separated verbalizer specs, e.g. 'template;rewrite:model=RUN/final/merged'")
    ap.add_argument("--reasoners", default="embedding,llamacpp,mention")
    args = ap.parse_args()
    if not (args.data / "manifest.json").exists():
        prepare(resolve(DataConfig, recipe="tiny-cpu"), args.data)
    data = PreparedData.load(args.data)
    runs, timing = [], {}
    for name in ("popularity", "knn"):
        out = args.out / "eval" / name
        evaluate(EvalConfig(data=str(args.data), verbalizer="template", reasoner=name, limit=args.limit,
                            eval_history=args.history, out=str(out)))
        runs.append((name, out))
    for verb in args.verbalizers.split(";"):
        short, _ = parse_spec(verb)  # "rewrite:model=RUN/final/merged" -> "rewrite"
        cache = args.out / "verbalized" / f"{short}.jsonl"
        t0 = time.perf_counter()
        verbalize_split(data, verb, "test", args.limit, args.history, cache, batch_size=4, progress=True)
        timing[f"verbalize {short}"] = round(time.perf_counter() - t0, 1)
        for reasoner in args.reasoners.split(","):
            out = args.out / "eval" / f"{short}--{reasoner}"
            t0 = time.perf_counter()
            evaluate(EvalConfig(data=str(args.data), verbalizer=f"cached:path={cache}", reasoner=reasoner,
                                limit=args.limit, eval_history=args.history, out=str(out)))
            timing[f"score {short} / {reasoner}"] = round(time.perf_counter() - t0, 1)
            runs.append((f"{short} / {reasoner}", out))
    order = sorted(runs, key=lambda r: (not r[0].startswith("template /"), r[0]))
    rows = compare_runs([p for _, p in order], labels=[n for n, _ in order])
    (args.out / "table.json").write_text(json.dumps({"rows": rows, "seconds": timing}, indent=2))
    md = to_markdown(rows) + "\nSeconds: " + ", ".join(f"{k} {v}" for k, v in timing.items()) + "\n"
    (args.out / "table.md").write_text(md)
    bar_chart(rows, args.out / "table.png", title=f"MovieLens-100K test, first {args.limit} examples: Recall@1")
    print(md)


if __name__ == "__main__":
    main()
