"""Config resolution: defaults < recipe < --set, and errors that say how to fix."""

import pytest

from minivz.config import ConfigError, DataConfig, load_recipe, parse_overrides, resolve


def test_defaults_recipe_override_precedence():
    cfg = resolve(DataConfig)
    assert cfg.history_len == 100 and cfg.n_candidates == 10
    cfg = resolve(DataConfig, recipe="tiny-cpu")
    assert cfg.history_len == 20 and cfg.max_train_per_user == 20
    cfg = resolve(DataConfig, recipe="tiny-cpu", overrides=["history_len=7", "target_interactions=play,rate"])
    assert cfg.history_len == 7
    assert cfg.target_interactions == ["play", "rate"]


def test_explicit_input_replaces_source():
    cfg = resolve(DataConfig, input="log.csv", map={"user_id": "uid"})
    assert cfg.source is None and cfg.input == "log.csv" and cfg.map == {"user_id": "uid"}


@pytest.mark.parametrize(
    "override, needle",
    [
        (["history_len=0"], "history_len"),
        (["n_candidates=1"], "n_candidates"),
        (["negatives=random"], "negatives"),
        (["tie_rule=loose"], "tie_rule"),
        (["history_len=abc"], "not a valid int"),
        (["histroy_len=5"], "did you mean 'history_len'"),
        (["oops"], "key=value"),
    ],
)
def test_bad_values_name_the_field(override, needle):
    with pytest.raises(ConfigError, match=needle):
        resolve(DataConfig, overrides=override)


def test_unknown_recipe_lists_known():
    with pytest.raises(ConfigError, match="tiny-cpu"):
        load_recipe("no-such-recipe")


def test_recipe_typo_is_an_error(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("history_lne: 5\n")
    with pytest.raises(ConfigError, match="history_len"):
        load_recipe(str(p))


def test_parse_overrides():
    assert parse_overrides(["a=1", "b = x=y"]) == {"a": "1", "b": "x=y"}
