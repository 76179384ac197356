"""``minivz train verbalizer`` and ``minivz plot`` (wired into minivz.cli by the lead).

    minivz train verbalizer --recipe tiny-cpu --data runs/tiny-cpu/data --out runs/tiny-cpu/verbalizer
    minivz train verbalizer --recipe paper-8b --dry-run          # config + memory estimate, no torch
    minivz plot runs/tiny-cpu/verbalizer                          # RUN/plots/*.png

Until wired: python -c "from minivz.train.cli import train_app; train_app()" verbalizer --help
Importing this module imports no torch; usage errors exit 2 with one clear line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from minivz.envinfo import explain_import_error

train_app = typer.Typer(help="Train models: the GRPO verbalizer, the reasoner; held-out curves.",
                        no_args_is_help=True, add_completion=False,
                        pretty_exceptions_enable=False)


@train_app.callback()
def _group() -> None:
    """Train models: the GRPO verbalizer, the reasoner; held-out curves."""  # a callback keeps `verbalizer` a subcommand


def _fail(msg: str, code: int = 2) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


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
    from minivz.config import ConfigError, dump_yaml, resolve
    from minivz.train.config import VerbalizerTrainConfig

    try:
        cfg = resolve(VerbalizerTrainConfig, recipe=recipe, overrides=set_)
    except ConfigError as e:
        _fail(str(e))
    if dry_run:
        from minivz.train.memory import check_fits, estimate_memory, plan_lines

        typer.echo(dump_yaml(cfg), nl=False)
        try:
            est = estimate_memory(cfg)
        except (ValueError, ImportError) as e:
            typer.echo(f"# memory estimate: unavailable ({e})")
            return
        typer.echo("\n".join(plan_lines(est, cfg.gpu_memory_gib)))
        refusal = check_fits(cfg, est)
        if refusal:
            _fail(refusal)
        return
    if data is None or out is None:
        _fail("--data DIR and --out RUN are required (or --dry-run)")
    if not (data / "manifest.json").is_file():
        _fail(f"--data {data}: not a prepared data dir; create it with: minivz data prepare --recipe "
              f"{recipe or 'tiny-cpu'} --out {data}")
    from minivz.envinfo import passive_omp
    from minivz.train.grpo import train_verbalizer

    passive_omp()  # before torch is imported (see its docstring: 9x faster generation on shared cores)
    try:
        summary = train_verbalizer(cfg, data, out, resume=resume)
    except ImportError as e:
        _fail(explain_import_error(e), code=1)
    typer.echo(json.dumps(summary, indent=2))


def plot_command(run: Path = typer.Argument(..., help="A run directory with metrics.jsonl.")) -> None:
    """Write PNG curves (rewards, compression ratio, seconds per step) to RUN/plots/.

    Example: minivz plot runs/tiny-cpu/verbalizer
    """
    from minivz.plot import plot_run, summarize_run

    try:
        paths = plot_run(run)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    except ImportError as e:
        _fail(explain_import_error(e), code=1)
    for p in paths:
        typer.echo(str(p))
    typer.echo(json.dumps(summarize_run(run), indent=2))


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
    from minivz.envinfo import passive_omp
    from minivz.train.curve import heldout_curve

    passive_omp()
    try:
        rows = heldout_curve(run, data, split=split, limit=limit, oracle=oracle, sampled=sampled, say=typer.echo)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))
    except ImportError as e:
        _fail(explain_import_error(e), code=1)
    tag = "heldout-sampled" if sampled else "heldout"
    typer.echo(f"wrote {run / (tag + '.jsonl')} and {run / 'plots' / (tag + '.png')} ({len(rows)} points)")
