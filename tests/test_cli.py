"""The CLI, smoke-tested end to end in subprocesses (as a user types it)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import loaded_after

COMMANDS = [[], ["data"], ["data", "prepare"], ["data", "show"], ["env"], ["eval"], ["compare"], ["recipe"],
            ["export"], ["serve"], ["headroom"], ["train"], ["train", "verbalizer"], ["train", "reasoner"], ["train", "curve"], ["plot"]]


def run(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "minivz", *args], capture_output=True, text=True, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"minivz {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "root")
def test_help(cmd):
    p = run(*cmd, "--help")
    assert "Usage" in p.stdout


def test_no_library_module_imports_the_cli():
    """The CLI dispatches; nothing imports it (``python -m minivz`` is its one other door)."""
    import ast
    from pathlib import Path

    import minivz

    root = Path(minivz.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if path.name in ("cli.py", "__main__.py") and path.parent == root:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(root)}: {n}" for n in names if n == "minivz.cli"]
    assert offenders == []


def test_import_and_help_load_no_torch():
    code = ("import sys, minivz, minivz.cli, minivz.config, minivz.examples, minivz.dataset; "
            "from typer.testing import CliRunner; CliRunner().invoke(minivz.cli.app, ['--help']); "
            "bad = [m for m in ('torch', 'transformers', 'llama_cpp', 'trl', 'pydantic', 'fastapi') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


HEAVY = ("torch", "transformers", "trl", "fastapi", "pydantic", "llama_cpp", "matplotlib")


def test_import_cli_loads_nothing_heavy():
    assert loaded_after("import minivz.cli", HEAVY) == []


def test_help_of_every_command_loads_nothing_heavy():
    """`minivz --help`, then `minivz CMD --help` for every command, through the console script's main()
    in one process. Typer (0.29) itself imports pydantic to parse a command's parameters, so only the
    root help is held to pydantic too."""
    code = ("import contextlib, io, sys\n"
            "from minivz.cli import main\n"
            "def helps(cmds):\n"
            "    for cmd in cmds:\n"
            "        sys.argv = ['minivz', *cmd, '--help']\n"
            "        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
            "            main()\n"
            f"helps([[]]); print([m for m in {HEAVY!r} if m in sys.modules])\n"
            f"helps({COMMANDS!r}); print([m for m in {HEAVY!r} if m != 'pydantic' and m in sys.modules])")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert p.stdout.split() == ["[]", "[]"], p.stdout + p.stderr


def test_dry_run_prints_resolved_config(tmp_path):
    p = run("data", "prepare", "--recipe", "tiny-cpu", "--set", "history_len=7", "--out", str(tmp_path), "--dry-run")
    assert "history_len: 7" in p.stdout and "source: movielens-100k" in p.stdout
    assert not (tmp_path / "manifest.json").exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--set", "history_len=0"], "history_len"),
        (["--set", "nope=1"], "unknown field"),
        (["--map", "user_id"], "--map"),
        (["--source", "movielens-100k", "--input", "x.csv"], "not both"),
        (["--input", "/no/such/file.csv"], "no such file"),
    ],
)
def test_usage_errors_exit_2_with_one_line(tmp_path, args, needle):
    p = run("data", "prepare", "--out", str(tmp_path), *args, check=False)
    assert p.returncode == 2
    assert needle in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_prepare_own_csv_with_rejects_and_show(tmp_path):
    log = tmp_path / "log.csv"
    rows = ["uid,movie,when,what,secs"]
    for u in range(3):
        for i in range(6):
            rows.append(f"u{u},m{(u + i) % 8},2024-01-0{1 + i}T10:00:00+02:00,play,{100 + i}")
    rows += ["u9,m1,not-a-time,play,5", ",m2,2024-01-01T00:00:00Z,play,5", "u1,m3,2024-01-09T00:00:00Z,play,-3"]
    log.write_text("\n".join(rows) + "\n")
    out = tmp_path / "data"
    p = run("data", "prepare", "--input", str(log), "--map", "user_id=uid,item_id=movie,ts=when,interaction=what,duration_s=secs",
            "--out", str(out), "--set", "n_candidates=3", "--set", "min_history=1")
    assert "21" in p.stdout and "3" in p.stdout
    man = json.loads((out / "manifest.json").read_text())["summary"]
    assert man["n_read"] == 21 and man["n_rejected"] == 3 and man["n_events"] == 18
    import pyarrow.parquet as pq

    rej = pq.read_table(out / "rejects.parquet").to_pylist()
    reasons = " ".join(r["reason"] for r in rej)
    assert "ts" in reasons and "user_id" in reasons and "duration" in reasons
    show = run("data", "show", str(out), "-n", "1")
    assert "candidates:" in show.stdout and "<- target" in show.stdout


def test_missing_column_is_one_clear_error(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("a,b\n1,2\n")
    p = run("data", "prepare", "--input", str(log), "--out", str(tmp_path / "o"), check=False)
    assert p.returncode == 1
    assert "--map" in p.stderr and "user_id" in p.stderr


def test_env_json():
    info = json.loads(run("env", "--json").stdout)
    assert info["cpu_cores"] >= 1 and "numba" in info


def test_every_flag_a_message_names_exists():
    """An error that says "pass --x" must name a flag the CLI has (ours) or the tool it quotes (pip,
    nvidia-smi, accelerate)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "minivz"
    text = {p: p.read_text() for p in root.rglob("*.py")}
    import typer

    from minivz.cli import app

    declared, todo = set(), [typer.main.get_command(app)]
    while todo:  # every flag of every command, as click parses them (serve's are generated)
        cmd = todo.pop()
        declared.update(o for p in cmd.params for o in (*p.opts, *p.secondary_opts))
        if hasattr(cmd, "commands"):  # a group (typer 0.29 does not subclass click.Group)
            todo.extend(cmd.commands.values())
    external = {"--no-deps", "--force-reinstall", "--no-cache-dir", "--query-gpu", "--format", "--decode", "--help",
                "--config_file", "--main_process_port", "--num_processes"}
    named = {f for src in text.values() for f in re.findall(r"(?<![\w-])(--[a-z][a-z0-9_-]*)", src)}
    assert named - declared - external == set()


BLOCK_EXTRAS = """
import sys
# what the extras install (pydantic is not here: typer itself depends on it); None in sys.modules
# makes `import x` fail and importlib.util.find_spec("x") answer None, as if x were not installed
for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "fastapi", "uvicorn",
             "llama_cpp", "gguf", "httpx", "matplotlib", "scipy", "recbole", "sentence_transformers"):
    sys.modules[name] = None
sys.argv = ["minivz", *sys.argv[1:]]
from minivz.cli import main
main()
"""


def test_core_install_runs_the_data_and_eval_commands(tmp_path):
    """Without any extra (their modules made unimportable): help, data prepare, eval and headroom with
    the id-based reasoners work, and a command that needs an extra names its install command."""
    rows = ["user_id,item_id,ts"] + [f"u{u},i{(u * 7 + k * 3) % 40},{1773498631 + 600 * u + 60 * k}"
                                     for u in range(30) for k in range(10)]
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n")

    def core(*args):
        return subprocess.run([sys.executable, "-c", BLOCK_EXTRAS, *args], capture_output=True, text=True,
                              timeout=300, cwd=tmp_path)

    assert core("--help").returncode == 0
    assert core("data", "prepare", "--input", "log.csv", "--out", "d").returncode == 0
    p = core("eval", "--data", "d", "--verbalizer", "template", "--reasoner", "knn", "--limit", "10", "--out", "r")
    assert p.returncode == 0, p.stderr
    assert core("headroom", "--data", "d", "--reasoner", "popularity", "--limit", "10", "--out", "h").returncode == 0
    p = core("train", "verbalizer", "--data", "d", "--out", "t")
    assert p.returncode == 1 and "pip install -e '.[train]'" in p.stderr and "Traceback" not in p.stderr
    p = core("serve", "--reasoner", "x.gguf")
    assert p.returncode == 1 and "pip install 'minivz[serve]'" in p.stderr


def test_serve_flags_are_serve_config_fields(tmp_path):
    """Every server setting is a ServeConfig field, its flag generated from it with the same default."""
    import dataclasses

    import typer

    from minivz.cli import app
    from minivz.config import ServeConfig

    serve = typer.main.get_command(app).commands["serve"]
    params = {p.name: p for p in serve.params}
    for f in dataclasses.fields(ServeConfig):
        assert ServeConfig.flag(f.name) in params[f.name].opts
        if f.name not in ("reasoner", "verbalizer"):  # those two default to the embedded pair in the CLI
            assert params[f.name].default == f.default, f.name
    assert set(params) - {f.name for f in dataclasses.fields(ServeConfig)} == {"run", "host", "port", "log_level"}
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"")
    with pytest.raises(ValueError, match="--kv-slots -1 must be >= 0"):
        ServeConfig(reasoner=str(gguf), kv_slots=-1)
    with pytest.raises(ValueError, match="--reasoner .* expected a .gguf file"):
        ServeConfig(reasoner=__file__)


def test_env_recipe_says_what_is_missing_and_how_to_install_it():
    """`minivz env --recipe NAME`: each need of the recipe, whether this machine has it, the install
    command; exit 1 when a required one is missing (here: no GPU, so paper-8b's CUDA needs are)."""
    import importlib.util

    assert run("env", "--recipe", "tiny-cpu").returncode == 0
    p = run("env", "--recipe", "paper-8b", "--json", check=False)
    needs = {n["need"]: n for n in json.loads(p.stdout)}
    cuda = needs["a CUDA torch"]
    assert p.returncode == (0 if all(n["ok"] or not n["required"] for n in needs.values()) else 1)
    assert cuda["ok"] is False and cuda["install"] == "bash scripts/setup-gpu.sh"  # CI has no GPU
    bnb = needs["bitsandbytes"]
    assert bnb["ok"] == (importlib.util.find_spec("bitsandbytes") is not None)
    assert bnb["ok"] or "'.[gpu]'" in bnb["install"]
    assert "unsloth==" in needs["unsloth"]["install"] or needs["unsloth"]["ok"]
    p32 = {n["need"] for n in json.loads(run("env", "--recipe", "paper-32b", "--json", check=False).stdout)}
    assert {"vllm", "deepspeed", "accelerate"} <= p32
    table = run("env", "--recipe", "paper-8b", check=False)
    assert "MISSING" in table.stdout and "scripts/setup-gpu" in table.stdout and "missing a CUDA torch" in table.stderr
    assert bnb["ok"] or "[gpu]" in table.stdout  # the dev extra installs bitsandbytes (its CPU backend runs NF4)


def test_gpu_setup_script_and_extras(tmp_path):
    """scripts/setup-gpu.sh parses, and on a machine without an NVIDIA driver stops at once, saying so;
    the gpu / multi-gpu extras carry the pins minivz names in its errors."""
    import tomllib

    from minivz.install import VLLM

    script = Path(__file__).resolve().parents[1] / "scripts" / "setup-gpu.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("dirname", "bash"):  # a PATH without nvidia-smi
        (bare / tool).symlink_to(shutil.which(tool))
    p = subprocess.run(["bash", str(script)], capture_output=True, text=True, env={"PATH": str(bare)})
    assert p.returncode == 1 and "no NVIDIA GPU visible" in p.stderr and "scripts/demo.sh" in p.stderr
    extras = tomllib.loads((script.parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(r.startswith("bitsandbytes") for r in extras["gpu"])
    assert VLLM in extras["multi-gpu"] and any(r.startswith("deepspeed") for r in extras["multi-gpu"])


def test_recipe_replaces_its_process_for_stage_2(tmp_path, monkeypatch):
    """Once stage 1 ran in the process, `minivz recipe` execs itself (same arguments, the child flag
    and its start time set): no parent stays behind holding stage 1's memory and thread pools (a
    waiting parent's OpenMP pool spun a core through stage 2). The exec'd process runs the rest."""
    import os

    from typer.testing import CliRunner

    import minivz.cli as cli
    import minivz.pipeline as pipeline

    calls = []

    class Fake:
        def __init__(self, name, out, set_, say):
            self.out = out

        def run(self, until=None, after=None):
            calls.append(until or f"after {after}")
            return ["learned"] if until else []

        def pending(self):
            return ["reasoner"]

    class Exec(Exception):
        pass

    def fake_exec(path, argv, env):
        raise Exec(path, argv, env)

    monkeypatch.setattr(pipeline, "Pipeline", Fake)
    monkeypatch.setattr(os, "execve", fake_exec)
    monkeypatch.delenv(cli._RECIPE_CHILD, raising=False)
    monkeypatch.delenv(cli._RECIPE_T0, raising=False)
    res = CliRunner().invoke(cli.app, ["recipe", "tiny-cpu", "--out", str(tmp_path), "--set", "max_steps=2"])
    assert isinstance(res.exception, Exec), res.output
    path, argv, env = res.exception.args
    assert path == sys.executable and calls == ["learned"]
    assert argv[1:] == ["-m", "minivz", "recipe", "tiny-cpu", "--out", str(tmp_path), "--set", "max_steps=2"]
    assert env[cli._RECIPE_CHILD] == "1" and float(env[cli._RECIPE_T0]) > 0
    # the exec'd process (child flag set) runs every remaining stage itself
    monkeypatch.setenv(cli._RECIPE_CHILD, "1")
    monkeypatch.setenv(cli._RECIPE_T0, "1.0")
    calls.clear()
    res = CliRunner().invoke(cli.app, ["recipe", "tiny-cpu", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert calls == ["after learned"] and "wall time" in res.output  # stage 1's lines are the parent's
    # without the exec (stage 2 only left, or nothing): stage 1 checked once, then the rest
    monkeypatch.delenv(cli._RECIPE_CHILD)
    Fake.pending = lambda self: []
    calls.clear()
    res = CliRunner().invoke(cli.app, ["recipe", "tiny-cpu", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert calls == ["learned", "after learned"]
