"""Config resolution: defaults < recipe < --set, and errors that say how to fix."""

import pytest
from conftest import loaded_after

from minivz.config import RECIPES_DIR, ConfigError, DataConfig, load_recipe, packaged_path, parse_overrides, resolve


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


def test_recipe_paths_resolve_from_any_directory(tmp_path, monkeypatch):
    # A recipe names `recipes/accelerate/zero3.yaml`; run from elsewhere (or from an installed
    # wheel), the same file is found inside the recipes folder minivz ships.
    monkeypatch.chdir(tmp_path)
    got = packaged_path("recipes/accelerate/zero3.yaml")
    assert got == str(RECIPES_DIR / "accelerate" / "zero3.yaml")
    assert load_recipe("paper-32b")["accelerate_config"] == "recipes/accelerate/zero3.yaml"
    assert packaged_path("recipes/nope.yaml") == "recipes/nope.yaml"  # missing: left as given, for the error
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "mine.yaml").write_text("x: 1\n")
    assert packaged_path("recipes/mine.yaml") == "recipes/mine.yaml"  # the user's own file wins


def test_recipe_takes_any_trl_field_by_trl_name(tmp_path):
    """A TRL setting minivz does not declare goes to TRL as written: GRPOConfig's names for the
    verbalizer, reasoner_<SFTConfig field> and reasoner_grpo_<GRPOConfig field> for the reasoner."""
    from trl import GRPOConfig, SFTConfig

    from minivz.config import ReasonerTrainConfig, VerbalizerTrainConfig, trl_args

    recipe = tmp_path / "r.yaml"
    recipe.write_text("max_steps: 7\nmax_grad_norm: 0.5\nreasoner_grpo_top_p: 0.9\nhistory_len: 20\n")
    v = resolve(VerbalizerTrainConfig, recipe=str(recipe), overrides=["loss_type=dr_grpo"])
    r = resolve(ReasonerTrainConfig, recipe=str(recipe), overrides=["reasoner_weight_decay=0.01"])
    assert v.trl_extra == {"max_grad_norm": 0.5, "loss_type": "dr_grpo"}
    assert r.reasoner_trl_extra == {"reasoner_grpo_top_p": 0.9, "reasoner_weight_decay": 0.01}
    g = trl_args(GRPOConfig, v, output_dir=str(tmp_path), use_cpu=True, report_to="none")
    assert (g.max_steps, g.max_grad_norm, g.loss_type, g.learning_rate) == (7, 0.5, "dr_grpo", v.learning_rate)
    s = trl_args(SFTConfig, r, "reasoner_", output_dir=str(tmp_path), use_cpu=True, report_to="none")
    assert (s.weight_decay, s.learning_rate) == (0.01, r.reasoner_learning_rate)
    rg = trl_args(GRPOConfig, r, "reasoner_grpo_", output_dir=str(tmp_path), use_cpu=True, report_to="none")
    assert (rg.top_p, rg.weight_decay, rg.learning_rate) == (0.9, 0.0, r.reasoner_grpo_learning_rate)
    with pytest.raises(ConfigError, match="did you mean 'max_grad_norm'"):
        resolve(VerbalizerTrainConfig, overrides=["max_grad_nrm=1"])
    with pytest.raises(ConfigError, match="minivz sets GRPOConfig.output_dir itself"):
        trl_args(GRPOConfig, resolve(VerbalizerTrainConfig, overrides=["output_dir=/x"]), output_dir="/y")


def test_a_recipe_of_minivz_fields_imports_no_trl():
    code = ("from minivz.config import DataConfig, PipelineConfig, VerbalizerTrainConfig, resolve;"
            "[resolve(c, recipe='paper-8b', overrides=['history_len=50']) for c in "
            "(DataConfig, PipelineConfig, VerbalizerTrainConfig)]")
    assert loaded_after(code, ("trl", "torch")) == []
