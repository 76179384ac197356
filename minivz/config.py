"""Configuration: dataclasses, flat YAML recipes, ``--set key=value`` overrides.

Precedence is defaults < recipe < ``--set``. A recipe is a flat YAML mapping of
field names (open-r1 / TRL style); one recipe may feed several config classes,
each takes the fields it knows. A key that no config class knows is an error
with a suggestion, so a typo never passes silently.

    from minivz.config import DataConfig, resolve
    cfg = resolve(DataConfig, recipe="tiny-cpu", overrides=["history_len=20"])
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minivz.spec import parse_options, parse_value

# recipes/ at the repository root (editable install, source checkout) or minivz/recipes inside an
# installed wheel (pyproject maps the package minivz.recipes to the recipes/ folder).
_HERE = Path(__file__).resolve().parent
RECIPES_DIR = next((d for d in (_HERE.parent / "recipes", _HERE / "recipes") if d.is_dir()), _HERE.parent / "recipes")


def packaged_path(path: str) -> str:
    """A path as written in a recipe (``recipes/accelerate/zero3.yaml``): as given when it exists
    from the working directory, else the same file inside the installed recipes folder."""
    if Path(path).exists() or not path.startswith("recipes/"):
        return path
    cand = RECIPES_DIR / path[len("recipes/"):]
    return str(cand) if cand.exists() else path


class ConfigError(ValueError):
    """A config value or recipe key is wrong; the message says how to fix it."""


@dataclass
class DataConfig:
    """How a log becomes examples (``minivz data prepare``)."""

    # where the events come from: a built-in source, or a user's file
    source: str | None = "movielens-100k"
    input: str | None = None
    items: str | None = None
    # canonical field -> source column, e.g. {"user_id": "uid"}
    map: dict[str, str] = field(default_factory=dict)
    items_map: dict[str, str] = field(default_factory=dict)
    ts_unit: str = "auto"
    naive_tz: str = "UTC"
    # the file's format when its name does not say (csv | tsv | parquet | jsonl; Parquet is also
    # recognised by its content) and its text encoding (e.g. latin-1)
    fmt: str | None = None
    encoding: str = "utf-8"
    # plausible event dates: timestamps outside [ts_min, ts_max) are rejected with a reason
    ts_min: str = "1971-01-01"
    ts_max: str = "2100-01-01"
    # synthetic-streaming size (ignored by other sources)
    synthetic_users: int = 1000
    synthetic_events: int = 100_000

    # examples (the paper: up to 100 most recent interactions, 10 candidates)
    history_len: int = 100
    n_candidates: int = 10
    negatives: str = "uniform"
    min_history: int = 1
    # "strict": a target's history holds only events strictly earlier than it and
    # items tied with the target are neither history nor negatives (MovieLens ties
    # 44% of leave-last-out targets with the last history item); "order": the
    # stable (ts, item_id) order decides.
    tie_rule: str = "strict"
    # interactions that can be targets; empty = all (streaming logs: ["play"])
    target_interactions: list[str] = field(default_factory=list)
    split: str = "leave-last-out"
    # time split: global cut-offs at these quantiles of event time
    valid_frac: float = 0.1
    test_frac: float = 0.1
    # keep only the most recent N training targets per user (0 = all)
    max_train_per_user: int = 0
    session_gap_s: int = 1800
    seed: int = 0

    def __post_init__(self) -> None:
        if self.source is None and self.input is None:
            raise ConfigError("no events: give --source NAME (e.g. movielens-100k) or --input FILE")
        if self.input is not None:
            self.source = None
        if self.history_len < 1:
            raise ConfigError(f"history_len={self.history_len} must be >= 1; try --set history_len=100")
        if self.n_candidates < 2:
            raise ConfigError(f"n_candidates={self.n_candidates} must be >= 2; the paper uses 10")
        if self.negatives not in ("uniform", "popularity"):
            raise ConfigError(f"negatives={self.negatives!r}: use 'uniform' or 'popularity'")
        if self.tie_rule not in ("strict", "order"):
            raise ConfigError(f"tie_rule={self.tie_rule!r}: use 'strict' or 'order'")
        if self.split not in ("leave-last-out", "time"):
            raise ConfigError(f"split={self.split!r}: use 'leave-last-out' or 'time'")
        if not (0 <= self.valid_frac < 1 and 0 < self.test_frac < 1 and self.valid_frac + self.test_frac < 1):
            raise ConfigError(
                f"valid_frac={self.valid_frac}, test_frac={self.test_frac}: need 0 <= valid_frac, "
                "0 < test_frac and valid_frac + test_frac < 1; try --set valid_frac=0.1 --set test_frac=0.1"
            )
        if self.min_history < 0 or self.max_train_per_user < 0 or self.session_gap_s <= 0:
            raise ConfigError("min_history and max_train_per_user must be >= 0, session_gap_s > 0")


@dataclass
class EvalConfig:
    data: str = "runs/data"
    verbalizer: str = "template"
    reasoner: str = "knn"
    # named eval_split: `split` is DataConfig's split rule in the same flat recipe
    eval_split: str = "test"
    limit: int = 0  # 0 = every example of the split
    # events of history shown to the verbalizer (most recent); the data keeps up to history_len
    eval_history: int = 20
    batch_size: int = 16
    n_boot: int = 1000
    out: str = "runs/eval"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.eval_split not in ("train", "valid", "test"):
            raise ConfigError(f"eval_split={self.eval_split!r}: use train, valid or test")
        if self.limit < 0 or self.eval_history < 1 or self.batch_size < 1:
            raise ConfigError("limit must be >= 0, eval_history >= 1, batch_size >= 1")


# Every config class a recipe may feed. The stage modules below append theirs on import;
# _register_all imports them (light modules: dataclasses only, no torch).
SECTIONS: list[type] = [DataConfig, EvalConfig]
_SECTION_MODULES = ("minivz.train.config", "minivz.train.reasoner_config", "minivz.pipeline")


def _register_all() -> None:
    import importlib

    for mod in _SECTION_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def recipe_path(name_or_path: str) -> Path:
    """A recipe name (``tiny-cpu``) or a path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    cand = RECIPES_DIR / f"{name_or_path}.yaml"
    if cand.exists():
        return cand
    known = sorted(x.stem for x in RECIPES_DIR.glob("*.yaml")) if RECIPES_DIR.exists() else []
    raise ConfigError(f"unknown recipe {name_or_path!r}; known: {', '.join(known) or '(none)'}; or pass a .yaml path")


def load_recipe(name_or_path: str | None) -> dict[str, Any]:
    if name_or_path is None:
        return {}
    import yaml

    path = recipe_path(name_or_path)
    _register_all()
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a flat mapping of field: value, got {type(data).__name__}")
    known = {f.name for cls in SECTIONS for f in dataclasses.fields(cls)} | {"name", "description"}
    for key in data:
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            raise ConfigError(f"{path}: unknown key {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""))
    return data


def parse_overrides(overrides: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set history_len=20")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _coerce(cls: type, name: str, value: Any) -> Any:
    """Turn a YAML or command-line value into the field's type."""
    hints = typing.get_type_hints(cls)
    tp = hints[name]
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        tp = next(a for a in args if a is not type(None))
        origin = typing.get_origin(tp)
    if not isinstance(value, str):
        if tp is float and isinstance(value, int):
            return float(value)
        return value
    try:
        if tp in (bool, int, float):
            return parse_value(value, tp)
        if origin is list:  # "a,b" or, when the items hold commas themselves, "a:x=1,y=2;b"
            return [x.strip() for x in value.split(";" if ";" in value else ",") if x.strip()]
        if origin is dict:
            return parse_options(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a valid {getattr(tp, '__name__', tp)}") from None
    return value


def resolve(cls: type, recipe: str | None = None, overrides: list[str] | None = None, **explicit: Any):
    """Build ``cls`` from defaults < recipe < explicit keyword args < ``--set`` overrides."""
    _register_all()
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for k, v in load_recipe(recipe).items():
        if k in names:
            values[k] = _coerce(cls, k, v)
    for k, v in explicit.items():
        if v is not None:
            values[k] = _coerce(cls, k, v)
    for k, v in parse_overrides(overrides).items():
        if k not in names:
            all_known = {f.name for c in SECTIONS for f in dataclasses.fields(c)}
            if k in all_known:
                continue  # belongs to another stage of the same recipe
            hint = difflib.get_close_matches(k, all_known, n=1)
            raise ConfigError(f"--set {k}=...: unknown field" + (f"; did you mean {hint[0]!r}?" if hint else ""))
        values[k] = _coerce(cls, k, v)
    return cls(**values)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Any) -> str:
    import yaml

    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
