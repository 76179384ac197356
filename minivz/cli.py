"""The ``minivz`` command line (typer + rich).

    minivz data prepare --source movielens-100k --out data/ml100k
    minivz data prepare --input log.csv --map user_id=uid,item_id=movie,ts=time --out data/mine
    minivz data show data/ml100k --split test -n 2
    minivz eval --data data/ml100k --verbalizer template --reasoner knn --limit 500 --out runs/tmpl-knn
    minivz compare runs/tmpl-knn runs/tmpl-emb
    minivz headroom --data data/ml100k --reasoner mention --split valid
    minivz recipe tiny-cpu --dry-run
    minivz train verbalizer --recipe tiny-cpu --data runs/tiny-cpu/data --out runs/tiny-cpu/verbalizer
    minivz plot runs/tiny-cpu/verbalizer
    minivz export runs/tiny-cpu/verbalizer/final/merged --quant q4_k_m
    minivz serve --run runs/tiny-cpu
    minivz env

Every command is defined here. Importing this module (and so ``minivz --help``) imports no torch,
transformers, trl, pydantic, fastapi, llama_cpp or matplotlib: each command imports what it needs.
Usage errors exit 2 with one clear line.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import sys
import time
import typing
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer

from minivz.envinfo import explain_import_error, passive_omp
from minivz.install import extra, pip
from minivz.spec import parse_options

app = typer.Typer(
    name="minivz",
    help="Learn how to verbalize interaction logs for LLM-based recommendation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Prepare and inspect data: log -> examples.", no_args_is_help=True)
app.add_typer(data_app, name="data")
train_app = typer.Typer(help="Train models: the GRPO verbalizer, the reasoner; held-out curves.",
                        no_args_is_help=True, add_completion=False,
                        pretty_exceptions_enable=False)
app.add_typer(train_app, name="train")


@train_app.callback()
def _group() -> None:
    """Train models: the GRPO verbalizer, the reasoner; held-out curves."""  # a callback keeps `verbalizer` a subcommand


def _console():
    from rich.console import Console

    return Console()


def _fail(msg: str, code: int = 2) -> None:
    """One clear line on stderr, then exit (2 = usage error)."""
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


@contextmanager
def _exit_on(failure: tuple = (), usage: tuple = ()):
    """Errors a user can fix, as one line: ``failure`` ones and a missing extra exit 1, ``usage`` ones 2."""
    try:
        yield
    except failure as e:
        _fail(str(e), code=1)
    except ImportError as e:
        _fail(explain_import_error(e), code=1)
    except usage as e:
        _fail(str(e))


def _parse_map(text: Optional[str]) -> dict[str, str]:
    if not text:
        return {}
    try:
        return parse_options(text)
    except ValueError:
        _fail(f"--map {text!r}: expected canonical=column pairs, e.g. --map user_id=uid,item_id=movie,ts=time")


@data_app.command("prepare")
def data_prepare(
    out: Path = typer.Option(..., "--out", help="Output directory for the Parquet files."),
    source: Optional[str] = typer.Option(
        None, "--source", help="Built-in source: movielens-100k | synthetic-streaming."
    ),
    input: Optional[str] = typer.Option(
        None, "--input", help="Your own log (CSV, TSV, Parquet or JSONL): a file, a directory, a glob "
        "('logs/dt=*/*.parquet') or a hive-partitioned dataset."),
    items: Optional[str] = typer.Option(None, "--items", help="Item catalog for --input (file, directory or glob)."),
    map: Optional[str] = typer.Option(
        None, "--map", help="Column mapping canonical=source, e.g. user_id=uid,item_id=movie,ts=time."
    ),
    items_map: Optional[str] = typer.Option(None, "--items-map", help="Column mapping for --items."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Recipe name or YAML path to take settings from."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a field: --set history_len=20."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and stop."),
) -> None:
    """Turn a log into examples (history <= N, candidates, discovery flag, split).

    Example: minivz data prepare --source movielens-100k --out data/ml100k
    """
    from minivz.config import ConfigError, DataConfig, dump_yaml, resolve

    if source and input:
        _fail("give either --source or --input, not both")
    try:
        cfg = resolve(
            DataConfig,
            recipe=recipe,
            overrides=set_,
            source=source,
            input=input,
            items=items,
            map=_parse_map(map) or None,
            items_map=_parse_map(items_map) or None,
        )
    except ConfigError as e:
        _fail(str(e))
    from minivz.log import is_glob

    for flag, given in (("--input", input), ("--items", items)):
        if given and not is_glob(given) and not Path(given).exists():
            _fail(f"{flag} {given}: no such file or directory")
    console = _console()
    if dry_run:
        console.print(dump_yaml(cfg), end="")
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from minivz.examples import prepare
    from minivz.log import IngestError

    with _exit_on(failure=(IngestError, FileNotFoundError)):
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                      console=console, transient=True, disable=not console.is_terminal) as bar:
            task = bar.add_task("prepare", total=None)
            summary = prepare(cfg, out, progress=lambda m: bar.update(task, description=m))
    _print_summary(console, summary)


def _print_summary(console, s) -> None:
    from rich.table import Table

    t = Table(title=f"minivz data prepare -> {s.out}", show_header=True)
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("rows read", f"{s.n_read:,}")
    t.add_row("kept events", f"{s.n_events:,}")
    t.add_row("rejected (rejects.parquet)", f"{s.n_rejected:,}")
    if s.n_duplicates:
        t.add_row("  of them exact duplicates (dedupe)", f"{s.n_duplicates:,}")
    if s.n_catalog_rejected:
        t.add_row("catalog rows rejected (rejects.parquet)", f"{s.n_catalog_rejected:,}")
    t.add_row("users", f"{s.n_users:,}")
    t.add_row("items", f"{s.n_items:,}")
    t.add_row("sessions", f"{s.n_sessions:,}")
    t.add_row("series runs", f"{s.n_runs:,}")
    for split, n in s.examples.items():
        t.add_row(f"examples {split}", f"{n:,}  (discovery {s.discovery_share[split]:.1%})")
    for why, n in s.skipped.items():
        t.add_row(f"targets skipped: {why}", f"{n:,}")
    t.add_row("seconds", f"{sum(s.seconds.values()):.2f}")
    if s.shards > 1:
        t.add_row("shards of users (memory_gb)", f"{s.shards:,}")
    console.print(t)


@data_app.command("show")
def data_show(
    path: Path = typer.Argument(..., help="A directory written by `minivz data prepare`."),
    split: str = typer.Option("test", "--split", help="train | valid | test."),
    n: int = typer.Option(2, "-n", help="How many examples."),
    max_events: int = typer.Option(20, "--max-events", help="Most recent history events to show."),
) -> None:
    """Print examples in the template form (history lines, candidates, target).

    Example: minivz data show data/ml100k --split test -n 2
    """
    from minivz.dataset import PreparedData
    from minivz.verbalize.template import template_line

    try:
        data = PreparedData.load(path)
        ex = data.examples(split, limit=n)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    console = _console()
    hists = data.histories(ex, max_events=max_events)
    rows = ex.to_pylist()
    for row, hist in zip(rows, hists):
        total = row["hist_end"] - row["hist_start"]
        console.rule(
            f"example {row['example_id']}  user {row['user_id']}  "
            f"{'discovery' if row['discovery'] else 'repeat'}  history {total} events (showing {len(hist)})"
        )
        for ev in hist:
            console.print(template_line(ev), markup=False, highlight=False)
        console.print("candidates:", style="bold")
        for j, item in enumerate(row["candidates"]):
            mark = "  <- target" if j == row["label"] else ""
            console.print(f"  {j}. {data.item_text(item)}{mark}", markup=False, highlight=False)


@app.command("eval")
def eval_cmd(
    data: Path = typer.Option(..., "--data", help="A directory written by `minivz data prepare`."),
    verbalizer: str = typer.Option("template", "--verbalizer", help="template | zero-shot | action | rewrite[:k=v,...]"),
    reasoner: str = typer.Option("knn", "--reasoner", help="popularity | knn | embedding | llamacpp | openai | hf [:k=v,...]"),
    split: str = typer.Option("test", "--split", help="train | valid | test."),
    limit: int = typer.Option(0, "--limit", help="Evaluate the first N examples (0 = all)."),
    out: Path = typer.Option(..., "--out", help="Run directory (resumes if it holds samples.jsonl)."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Recipe name or YAML path."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a field: --set eval_history=10."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and stop."),
) -> None:
    """Score a verbalizer + reasoner on examples; write metrics.json, samples.jsonl, audit.json.

    Example: minivz eval --data data/ml100k --verbalizer template --reasoner embedding --limit 500 --out runs/tmpl-emb
    """
    from minivz.config import ConfigError, EvalConfig, dump_yaml, resolve

    try:
        cfg = resolve(EvalConfig, recipe=recipe, overrides=set_, data=str(data), verbalizer=verbalizer,
                      reasoner=reasoner, eval_split=split, limit=limit, out=str(out))
    except ConfigError as e:
        _fail(str(e))
    console = _console()
    if dry_run:
        console.print(dump_yaml(cfg), end="")
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from minivz.evaluate import evaluate

    with _exit_on(failure=(FileNotFoundError,), usage=(ValueError,)):
        with Progress(TextColumn("eval"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console, transient=True, disable=not console.is_terminal) as bar:
            task = bar.add_task("eval", total=None)
            metrics = evaluate(cfg, progress=lambda done, total: bar.update(task, completed=done, total=total))
    _print_metrics(console, metrics, out)


def _print_metrics(console, m: dict, out: Path) -> None:
    from rich.table import Table

    run = m.get("run", {})
    t = Table(title=f"{run.get('verbalizer')} / {run.get('reasoner')} on {run.get('split')} -> {out}")
    for col in ("subset", "n", "Recall@1 [95% CI]", "Recall@5", "NDCG@10", "MRR", "valid"):
        t.add_column(col, justify="right")
    for sub in ("discovery", "all"):
        s = m.get(sub)
        if not s or not s["n"]:
            continue
        ci = s["recall@1_ci"]
        t.add_row(sub, str(s["n"]), f"{s['recall@1']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]", f"{s['recall@5']:.3f}",
                  f"{s['ndcg@10']:.3f}", f"{s['mrr']:.3f}", f"{s['valid_rate']:.1%}")
    fl = m.get("random_floor", {})
    t.add_row("random", "", f"{fl.get('recall@1', 0):.3f}", f"{fl.get('recall@5', 0):.3f}",
              f"{fl.get('ndcg@10', 0):.3f}", f"{fl.get('mrr', 0):.3f}", "")
    console.print(t)


@app.command("headroom")
def headroom_cmd(
    data: Path = typer.Option(..., "--data", help="A directory written by `minivz data prepare`."),
    reasoner: str = typer.Option("mention", "--reasoner", help="The oracle you will train against (a reasoner spec)."),
    split: str = typer.Option("valid", "--split", help="Choose on valid; report the chosen rule on test."),
    limit: int = typer.Option(500, "--limit", help="Evaluate the first N examples (0 = all)."),
    history: int = typer.Option(20, "--history", help="Events of history shown to every verbalizer."),
    rules: Optional[str] = typer.Option(None, "--rules", help="';'-separated rule specs (default: recent-k, clean, "
                                        "series, titles, ...)."),
    out: Path = typer.Option(Path("runs/headroom"), "--out", help="Where the runs and headroom.md/json go."),
) -> None:
    """Is anything better than the template for this oracle? Score the rule verbalizers against it first.

    Example: minivz headroom --data data/ml100k --reasoner mention --split valid --limit 500 --history 20
    """
    from minivz.config import ConfigError
    from minivz.headroom import headroom
    from minivz.verbalize.rules import DEFAULT_RULES

    specs = [r.strip() for r in rules.split(";") if r.strip()] if rules else list(DEFAULT_RULES)
    if split not in ("train", "valid", "test"):
        _fail(f"--split {split!r}: use valid (to choose) or test (to report)")
    with _exit_on(failure=(FileNotFoundError,), usage=(ValueError, ConfigError)):
        report = headroom(data, reasoner, out, split=split, limit=limit, history=history, rules=specs,
                          say=typer.echo)
    typer.echo(f"wrote {out / 'headroom.md'} and {out / 'headroom.json'} (best: {report['best']})")


@app.command("compare")
def compare_cmd(
    runs: List[Path] = typer.Argument(..., help="Run directories; the first is the baseline."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write compare.png/.md/.json here (default: first run)."),
) -> None:
    """Print runs side by side with relative change vs the first; write a PNG bar chart with CIs.

    Example: minivz compare runs/tmpl-emb runs/zs-emb runs/action-emb --out runs/compare
    """
    from rich.table import Table

    from minivz.report import HEADER, bar_chart, compare_runs, table_cells, to_markdown

    try:
        rows = compare_runs(runs)
    except FileNotFoundError as e:
        _fail(str(e))
    dest = out or runs[0]
    dest.mkdir(parents=True, exist_ok=True)
    png = bar_chart(rows, dest / "compare.png")
    (dest / "compare.md").write_text(to_markdown(rows))
    (dest / "compare.json").write_text(json.dumps(rows, indent=2))
    t = Table(title="minivz compare (relative change: paired bootstrap vs the first run)")
    for col in HEADER:
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(*table_cells(r))
    console = _console()
    console.print(t)
    console.print(f"wrote {png}, {dest / 'compare.md'}, {dest / 'compare.json'}")


@app.command("report")
def report_cmd(
    run: Path = typer.Argument(..., help="A run directory (minivz recipe --out, or one holding eval/<row> dirs)."),
    out: Optional[Path] = typer.Option(None, "--out", help="The HTML file (default RUN/report.html)."),
    examples: int = typer.Option(6, "--examples", help="Test users shown with each reader's text and pick."),
) -> None:
    """Write one self-contained HTML page of a run: tables with CIs, plots, and what each reader saw.

    Example: minivz report runs/tiny-cpu        (minivz recipe writes it at the end of every run)
    """
    from minivz.report import html_report

    try:
        path = html_report(run, out, n_examples=examples)
    except FileNotFoundError as e:
        _fail(str(e))
    typer.echo(f"wrote {path}")


# Set in the image `minivz recipe` execs for stage 2 (below): it must not exec again, and it reports
# the wall time from the command's start (epoch seconds), not its own.
_RECIPE_CHILD = "MINIVZ_RECIPE_CHILD"
_RECIPE_T0 = "MINIVZ_RECIPE_T0"


@app.command("recipe")
def recipe_cmd(
    name: str = typer.Argument(..., help="A recipe (tiny-cpu, paper-8b, paper-32b, or a YAML path), or `list`."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default runs/<recipe>)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a field: --set max_steps=5."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan, resolved config and hardware; run nothing."),
) -> None:
    """Run the whole pipeline from one recipe; completed stages are skipped, so a rerun resumes.

    Example: minivz recipe tiny-cpu            (minivz recipe list shows the recipes)
    """
    from minivz.config import ConfigError, dump_yaml

    console = _console()
    if name == "list":
        from rich.table import Table

        from minivz.pipeline import list_recipes

        t = Table(title="minivz recipes")
        t.add_column("recipe")
        t.add_column("what it is")
        for n, desc in list_recipes():
            t.add_row(n, desc)
        console.print(t)
        return
    from minivz.pipeline import Pipeline, plan

    try:
        p = plan(name, set_)
    except ConfigError as e:
        _fail(str(e))
    if dry_run:
        from rich.table import Table

        t = Table(title=f"minivz recipe {name}: plan ({p['description']})")
        t.add_column("stage")
        t.add_column("hardware")
        t.add_column("status")
        for st in p["stages"]:
            t.add_row(st["stage"], st["hardware"], "skip" if st["skipped"] else "run")
        console.print(t)
        for section, cfg in p["configs"].items():
            console.print(f"# {section}", style="bold")
            console.print(dump_yaml(cfg), end="", markup=False, highlight=False)
        _print_memory_plan(p["configs"]["verbalizer"],
                           lambda m: console.print(m, markup=False, highlight=False, soft_wrap=True),
                           header="# verbalizer training, one process:")
        return
    pipe = Pipeline(name, out or Path("runs") / Path(name).stem, set_, say=lambda m: console.print(m, markup=False))
    t0 = float(os.environ.get(_RECIPE_T0) or time.time())
    # Stage 2 in a fresh process once stage 1 ran in this one: it hands back stage 1's memory (3.2 GB
    # of 4.3 on tiny-cpu) and its thread pools. The process image is replaced (exec), not forked and
    # waited on: a parent left waiting kept torch's OpenMP pool spinning under OMP_WAIT_POLICY=active
    # (a core at 60-80% for the whole of stage 2, 2026-12-07). The new image resumes the run:
    # finished stages are skipped.
    # The exec'd image starts past stage 1, which its parent ran and reported: each stage's line once.
    child = bool(os.environ.get(_RECIPE_CHILD))
    if not child and pipe.run(until="learned") and pipe.pending():
        console.print("       stage 2 in a fresh process (finished stages are skipped)", markup=False)
        argv = [sys.executable, "-m", "minivz", "recipe", name, "--out", str(pipe.out),
                *[x for s in (set_ or []) for x in ("--set", s)]]
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, argv, {**os.environ, _RECIPE_CHILD: "1", _RECIPE_T0: repr(t0)})
    pipe.run(after="learned")
    md = pipe.out / "results.md"
    if md.exists():
        console.print(md.read_text(), markup=False, highlight=False)
    console.print(f"wall time {time.time() - t0:.0f} s; results in {pipe.out}")


@app.command("env")
def env(
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Say what this recipe needs here and what is missing."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a recipe field, as for minivz recipe."),
) -> None:
    """Print versions of minivz's stack and the hardware it sees; with --recipe, what that recipe needs
    on this machine, what is missing and the command that installs it (exit 1 if anything is missing).

    Example: minivz env --json > env.json;  minivz env --recipe paper-8b
    """
    from minivz.envinfo import collect

    if recipe is not None:
        from minivz.config import ConfigError
        from minivz.envinfo import recipe_needs

        try:
            needs = recipe_needs(recipe, set_)
        except ConfigError as e:
            _fail(str(e))
        if json_out:
            typer.echo(json.dumps(needs, indent=2))
        else:
            from rich.markup import escape
            from rich.table import Table

            t = Table(title=f"minivz env --recipe {recipe}")
            for col in ("need", "why", "here", "install"):
                t.add_column(col, overflow="fold")
            for n in needs:
                state = "ok: " if n["ok"] else ("MISSING: " if n["required"] else "not installed (optional): ")
                t.add_row(*(escape(x) for x in (n["need"], n["why"], state + n["found"], n["install"])))
            _console().print(t)
        missing = [n["need"] for n in needs if not n["ok"] and n["required"]]
        if missing:
            typer.echo(f"{recipe}: missing {', '.join(missing)} (install commands above)", err=True)
            raise typer.Exit(1)
        return
    info = collect()
    if json_out:
        typer.echo(json.dumps(info, indent=2))
        return
    from rich.table import Table

    t = Table(title="minivz env")
    t.add_column("what")
    t.add_column("value")
    for k, v in info.items():
        t.add_row(k, str(v))
    _console().print(t)


def _print_memory_plan(cfg, echo, header: str | None = None) -> None:
    """Print the verbalizer training's memory plan (dry runs); exit 2 when it does not fit the GPU."""
    from minivz.train.memory import check_fits, estimate_memory, plan_lines

    try:
        est = estimate_memory(cfg)
    except (ValueError, ImportError) as e:
        echo(f"# memory estimate unavailable: {e}")
        return
    if header:
        echo(header)
    echo("\n".join(plan_lines(est, cfg.gpu_memory_gib)))
    refusal = check_fits(cfg, est)
    if refusal:
        _fail(refusal)


@train_app.command("verbalizer")
def verbalizer_command(
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Recipe name (tiny-cpu, paper-8b) or YAML path."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a field: --set max_steps=20."),
    data: Optional[Path] = typer.Option(None, "--data", help="Prepared data dir (minivz data prepare)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (resumed if it has checkpoints)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and a memory estimate; "
                                 "load nothing."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Resume from RUN/checkpoints/step_* "
                                "(default); --no-resume deletes the run's checkpoints and logs first."),
) -> None:
    """GRPO-train the verbalizer policy against a frozen oracle reasoner.

    Example: minivz train verbalizer --recipe tiny-cpu --data runs/tiny-cpu/data --out runs/tiny-cpu/verbalizer
    """
    from minivz.config import ConfigError, VerbalizerTrainConfig, dump_yaml, resolve

    try:
        cfg = resolve(VerbalizerTrainConfig, recipe=recipe, overrides=set_)
    except ConfigError as e:
        _fail(str(e))
    if dry_run:
        typer.echo(dump_yaml(cfg), nl=False)
        _print_memory_plan(cfg, typer.echo)
        return
    if data is None or out is None:
        _fail("--data DIR and --out RUN are required (or --dry-run)")
    if not (data / "manifest.json").is_file():
        _fail(f"--data {data}: not a prepared data dir; create it with: minivz data prepare --recipe "
              f"{recipe or 'tiny-cpu'} --out {data}")
    from minivz.train.grpo import train_verbalizer

    passive_omp()  # before torch is imported (see its docstring: 9x faster generation on shared cores)
    with _exit_on():
        summary = train_verbalizer(cfg, data, out, resume=resume)
    typer.echo(json.dumps(summary, indent=2))


@train_app.command("curve")
def curve_command(
    run: Path = typer.Argument(..., help="A `minivz train verbalizer` run directory."),
    data: Path = typer.Option(..., "--data", help="Prepared data dir the run was trained on."),
    split: str = typer.Option("valid", "--split", help="Held-out split: valid (default) or test."),
    limit: int = typer.Option(60, "--limit", help="Held-out examples per point (the same ones every time)."),
    oracle: Optional[str] = typer.Option(None, "--oracle", help="Reasoner spec; default: the run's oracle."),
    sampled: bool = typer.Option(False, "--sampled", help="Decode as in training (the run's temperature, "
                                 "seeded) instead of greedy."),
) -> None:
    """Held-out reward curve: the base policy and every kept checkpoint, evaluated on the same
    held-out examples under the run's oracle (RUN/heldout.jsonl, RUN/plots/heldout.png).

    Example: minivz train curve runs/tiny-cpu/verbalizer --data runs/tiny-cpu/data --limit 60
    """
    if split not in ("valid", "test"):
        _fail(f"--split {split}: use valid or test (train examples are what the policy saw)")
    if limit < 1:
        _fail(f"--limit {limit}: need at least 1 example per point")
    if not (data / "manifest.json").is_file():
        _fail(f"--data {data}: not a prepared data dir (minivz data prepare)")
    from minivz.train.curve import heldout_curve

    passive_omp()
    with _exit_on(usage=(FileNotFoundError, ValueError)):
        rows = heldout_curve(run, data, split=split, limit=limit, oracle=oracle, sampled=sampled, say=typer.echo)
    tag = "heldout-sampled" if sampled else "heldout"
    typer.echo(f"wrote {run / (tag + '.jsonl')} and {run / 'plots' / (tag + '.png')} ({len(rows)} points)")


@train_app.command("reasoner")
def train_reasoner_command(
    data: Path = typer.Option(..., "--data", help="A directory written by `minivz data prepare`."),
    out: Path = typer.Option(..., "--out", help="Run directory (resumes from its latest checkpoint)."),
    verbalizer: Optional[str] = typer.Option(
        None, "--verbalizer", help="The frozen verbalizer: template | rewrite:model=RUN/final/merged | ..."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="Recipe name or YAML path."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="Override a field: --set reasoner_max_steps=50."),
    fresh: bool = typer.Option(False, "--fresh", help="Start over instead of resuming from a checkpoint."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and stop."),
) -> None:
    """Stage 2: train the reasoner (LoRA SFT, optional GRPO) on text from a frozen verbalizer.

    Example: minivz train reasoner --recipe tiny-cpu --data runs/tiny-cpu/data --verbalizer template --out runs/tiny-cpu/reasoner
    """
    from minivz.config import ConfigError, ReasonerTrainConfig, dump_yaml, resolve

    try:
        cfg = resolve(ReasonerTrainConfig, recipe=recipe, overrides=set_, reasoner_verbalizer=verbalizer)
    except ConfigError as e:
        _fail(str(e))
    if dry_run:
        typer.echo(dump_yaml(cfg), nl=False)
        return
    from minivz.train.reasoner import train_reasoner

    with _exit_on(failure=(FileNotFoundError,), usage=(ValueError,)):
        summary = train_reasoner(cfg, data, out, resume=not fresh)
    typer.echo(json.dumps({k: v for k, v in summary.items() if k != "eval"}, indent=2, default=str))
    for name, res in summary.get("eval", {}).items():
        a = res.get("all", {})
        if a:
            lo, hi = a["recall@1_ci"]
            typer.echo(f"{name:>10}: Recall@1 {a['recall@1']:.3f} [{lo:.3f}, {hi:.3f}]  n={a['n']}  "
                       f"({res['seconds']:.0f}s)")


@app.command("plot")
def plot_command(run: Path = typer.Argument(..., help="A run directory with metrics.jsonl.")) -> None:
    """Write PNG curves (rewards, compression ratio, seconds per step) to RUN/plots/.

    Example: minivz plot runs/tiny-cpu/verbalizer
    """
    from minivz.plot import plot_run, summarize_run

    with _exit_on(usage=(FileNotFoundError, ValueError)):
        paths = plot_run(run)
    for p in paths:
        typer.echo(str(p))
    typer.echo(json.dumps(summarize_run(run), indent=2))


@app.command("export")
def export_command(
    run: Path = typer.Argument(..., help="Run dir (final/ or final/merged/), LoRA adapter dir, HF model dir or .gguf."),
    quant: str = typer.Option("f16", "--quant", help="f32 | f16 | q8_0 | q4_k_m."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output dir (default RUN/export)."),
    adapter: Optional[Path] = typer.Option(None, "--adapter", help="A LoRA adapter dir to merge into RUN."),
    base: Optional[Path] = typer.Option(None, "--base", help="Base model (HF dir or .gguf) for an adapter "
                                        "whose recorded base is not a local path."),
) -> None:
    """Export a run (or an HF model dir, LoRA adapter, GGUF) to GGUF for llama.cpp.

    Example: minivz export runs/verbalizer --quant q4_k_m --out exports/verbalizer
    """
    from rich.table import Table

    from minivz.export import QUANTS, ExportError, export_gguf

    if quant not in QUANTS:
        _fail(f"--quant {quant!r}: choose one of {', '.join(QUANTS)}")
    out = out or Path(run) / "export"
    t0 = time.perf_counter()
    try:
        summary = export_gguf(run, out, quant=quant, adapter=adapter, base=base)
    except (ExportError, FileNotFoundError, NotImplementedError, ImportError) as e:
        _fail(str(e), code=1)
    t = Table(title=f"minivz export -> {summary['gguf']}")
    t.add_column("file")
    t.add_column("size", justify="right")
    for path, size in summary["files"].items():
        t.add_row(str(Path(path).relative_to(out)), f"{size / 2**20:,.1f} MiB")
    console = _console()
    console.print(t)
    secs = ", ".join(f"{k} {v:.1f}s" for k, v in summary["seconds"].items())
    console.print(f"{summary['arch']} {summary['params'] / 1e6:,.1f}M params, {summary['tensors']} tensors, "
                  f"tokenizer pre={summary['tokenizer_pre']}, {quant}; {secs}; "
                  f"total {time.perf_counter() - t0:.1f}s")


def serve_command(reasoner: Optional[str], verbalizer: Optional[str], run: Optional[Path], host: str, port: int,
                  log_level: str, **settings) -> None:
    """Serve recommendations over HTTP: verbalize a history, rank candidates (FastAPI + llama.cpp).

    Examples: minivz serve (the embedded default) | minivz serve --run runs/tiny-cpu |
    minivz serve --reasoner exports/reasoner/model-q4_k_m.gguf --verbalizer template --port 8000
    """
    passive_omp()  # before llama_cpp is first imported
    try:
        from minivz.serve import _gpu_offload_supported, create_app, is_loopback
    except ImportError as e:
        _fail(f"serving needs the serve extra ({e}): {pip(extra('serve'))}", code=1)
    if run is not None:
        from minivz.pipeline import run_models, run_scoring

        try:
            run_reasoner, run_verbalizer = run_models(run)
            if reasoner is None:  # the run's own reasoner: read the way it was trained, on the run's data
                settings["reasoner_scoring"] = settings.get("reasoner_scoring") or run_scoring(run)
                settings["data"] = settings.get("data") or str(run / "data")
        except FileNotFoundError as e:
            _fail(str(e))
        reasoner, verbalizer = reasoner or run_reasoner, verbalizer or run_verbalizer
    if reasoner is None:
        from minivz.models import default_gguf

        reasoner = default_gguf()
        typer.echo(f"minivz serve: no --reasoner, serving the embedded default: SmolLM2-135M-Instruct ({reasoner}); "
                   "--run RUN serves a recipe run's trained pair", err=True)
    verbalizer = verbalizer or "template"
    typer.echo(f"minivz serve: reasoner {reasoner}" + (f" ({settings['reasoner_scoring']})" if settings.get(
        "reasoner_scoring") else "") + f"; verbalizer {verbalizer}", err=True)
    from minivz.config import ServeConfig

    try:
        cfg = ServeConfig(reasoner=reasoner, verbalizer=verbalizer, **settings)
    except ValueError as e:
        _fail(str(e))
    if not is_loopback(host):
        typer.echo("\n" + "!" * 78 + f"\nWARNING: binding to {host}, NOT loopback: anyone who can reach this "
                   "machine can\nquery the models. There is no authentication. Put it behind a proxy with auth.\n"
                   + "!" * 78 + "\n", err=True)
    try:
        import uvicorn
    except ImportError as e:
        _fail(f"serving needs fastapi and uvicorn ({e}): {pip(extra('serve'))}", code=1)
    gpu = _gpu_offload_supported()
    typer.echo(f"minivz serve on http://{host}:{port}  (docs /docs); llama.cpp GPU offload "
               f"{'available' if gpu else 'not built in'}; n_gpu_layers={cfg.n_gpu_layers}", err=True)
    uvicorn.run(create_app(cfg), host=host, port=port, log_level=log_level)


def _serve_parameters() -> list[inspect.Parameter]:
    """serve's flags: which models and where (here), then every ServeConfig field as its own flag."""
    from minivz.config import ServeConfig

    def opt(name: str, annotation, default: typer.models.OptionInfo) -> inspect.Parameter:
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)

    meta = {f.name: f for f in dataclasses.fields(ServeConfig)}
    params = [
        opt("reasoner", Optional[str], typer.Option(None, "--reasoner", help=meta["reasoner"].metadata["help"]
                                                    + " Default: the packaged SmolLM2-135M GGUF.")),
        opt("verbalizer", Optional[str], typer.Option(None, "--verbalizer", help=meta["verbalizer"].metadata["help"]
                                                      + " Default: template.")),
        opt("run", Optional[Path], typer.Option(None, "--run", help="Serve a `minivz recipe` run's exported pair "
                                                "(RUN/export/), e.g. --run runs/tiny-cpu.")),
        opt("host", str, typer.Option("127.0.0.1", "--host", help="Bind address (loopback by default).")),
        opt("port", int, typer.Option(8000, "--port", help="TCP port.")),
        opt("log_level", str, typer.Option("warning", "--log-level", help="uvicorn log level.")),
    ]
    hints = typing.get_type_hints(ServeConfig)
    for name, f in meta.items():
        if name in ("reasoner", "verbalizer"):
            continue
        flag = ServeConfig.flag(name)
        decls = (f"{flag}/{'--' + 'no-' + flag[2:]}",) if hints[name] is bool else (flag,)  # a bool: on/off pair
        params.append(opt(name, hints[name], typer.Option(f.default, *decls, help=f.metadata["help"])))
    return params


serve_command.__signature__ = inspect.Signature(_serve_parameters())  # type: ignore[attr-defined]
serve_command.__annotations__ = {p.name: p.annotation for p in serve_command.__signature__.parameters.values()}
app.command("serve")(serve_command)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show the full traceback of an error.")) -> None:
    """Learn how to verbalize interaction logs for LLM-based recommendation."""
    if debug:
        os.environ["MINIVZ_DEBUG"] = "1"


def _user_error(e: BaseException) -> str | None:
    """The one line to print for an error a user can fix (bad input, a server down), else None."""
    from minivz.config import ConfigError
    from minivz.log import IngestError
    from minivz.reason.base import ReasonerError

    if isinstance(e, ReasonerError):
        return f"the reasoner failed: {e}"
    from minivz.train.rewards import OracleDown  # numpy + minivz.kernels: the core install has both

    if isinstance(e, OracleDown):
        return str(e)
    if isinstance(e, (IngestError, ConfigError, FileNotFoundError, PermissionError, ConnectionError)):
        return str(e)
    if isinstance(e, ImportError):
        return explain_import_error(e)
    return None


def main() -> None:
    """The console script: errors a user can fix print one line (exit 1) unless --debug or MINIVZ_DEBUG=1."""
    try:
        app()
    except Exception as e:  # noqa: BLE001 -- classified below; anything else is a bug and re-raised
        msg = _user_error(e)
        if msg is None or os.environ.get("MINIVZ_DEBUG"):
            raise
        typer.echo(f"error: {msg} (rerun with --debug for the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    sys.exit(main())
