"""minivz eval / compare on real MovieLens-100K with the classical reasoners (fast, no model)."""

import json

import pytest

from minivz.config import DataConfig, EvalConfig, resolve
from minivz.evaluate import evaluate
from minivz.examples import prepare
from minivz.report import compare_runs, to_markdown

pytest.importorskip("recbole", reason="pip install --no-deps recbole==1.2.1")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ml")
    prepare(resolve(DataConfig, recipe="tiny-cpu"), out)
    return out


def test_knn_beats_popularity_beats_random(data_dir, tmp_path):
    m = {}
    for name in ("popularity", "knn"):
        m[name] = evaluate(EvalConfig(data=str(data_dir), reasoner=name, out=str(tmp_path / name), n_boot=200))
    assert m["knn"]["all"]["n"] == 943
    floor = m["knn"]["random_floor"]["recall@1"]
    assert floor == pytest.approx(0.1)
    # measured on this data: popularity ~0.29, item-kNN ~0.39; the CIs exclude the random floor
    assert m["popularity"]["all"]["recall@1_ci"][0] > floor
    assert m["knn"]["all"]["recall@1"] > m["popularity"]["all"]["recall@1"]
    for f in ("metrics.json", "samples.jsonl", "audit.json", "config.yaml", "env.json"):
        assert (tmp_path / "knn" / f).exists()
    rows = compare_runs([tmp_path / "popularity", tmp_path / "knn"], n_boot=200)
    assert rows[1]["all_rel"] > 0 and rows[1]["all_paired_n"] == 943
    assert "| template / knn |" in to_markdown(rows)


def test_eval_resumes_after_a_kill(data_dir, tmp_path):
    out = tmp_path / "run"
    full = evaluate(EvalConfig(data=str(data_dir), reasoner="knn", limit=40, out=str(out), n_boot=100))
    samples = out / "samples.jsonl"
    lines = samples.read_text().splitlines()
    # simulate a kill mid-write: keep 25 whole lines and half of the 26th
    samples.write_text("\n".join(lines[:25]) + "\n" + lines[25][: len(lines[25]) // 2])
    again = evaluate(EvalConfig(data=str(data_dir), reasoner="knn", limit=40, out=str(out), n_boot=100))
    ids = [json.loads(x)["example_id"] for x in samples.read_text().splitlines() if x.strip().endswith("}")]
    assert len(ids) >= 40 and len(set(ids)) == 40
    assert again["all"]["recall@1"] == pytest.approx(full["all"]["recall@1"])


def test_resuming_with_other_settings_is_refused(data_dir, tmp_path):
    out = tmp_path / "run"
    evaluate(EvalConfig(data=str(data_dir), reasoner="knn", limit=10, out=str(out), n_boot=50))
    with pytest.raises(ValueError, match=r"reasoner: 'knn' -> 'popularity'.*new --out"):
        evaluate(EvalConfig(data=str(data_dir), reasoner="popularity", limit=10, out=str(out), n_boot=50))
    # a larger limit extends the same evaluation
    more = evaluate(EvalConfig(data=str(data_dir), reasoner="knn", limit=20, out=str(out), n_boot=50))
    assert more["all"]["n"] == 20


def test_headroom_scores_rules_against_the_template_paired(data_dir, tmp_path):
    from minivz.headroom import headroom

    lines = []
    report = headroom(data_dir, "mention", tmp_path / "hr", split="valid", limit=300, history=10,
                      rules=["recent:recent=3", "titles"], n_boot=200, say=lines.append)
    rows = {r["label"]: r for r in report["rows"]}
    assert list(rows) == ["template", "recent:recent=3", "titles"]
    assert all(r["all_paired_n"] == 300 for r in report["rows"][1:])
    # the mention oracle reads only the titles, so "titles only" ties the template on every example
    assert rows["titles"]["all_diff"] == 0 and rows["titles"]["all_diff_ci"] == [0.0, 0.0]
    assert report["best"] in rows and report["best"] != "template"
    md = (tmp_path / "hr" / "headroom.md").read_text()
    assert "| recent:recent=3 | 300 |" in md and f"Best rule: `{report['best']}`" in md
    assert lines[-1].startswith("best rule on valid:")


def test_paired_difference_ci():
    from minivz.metrics import paired_difference_ci

    d = paired_difference_ci([1, 1, 0, 1], [0, 1, 0, 0], n_boot=200)
    assert d["value"] == pytest.approx(0.5) and d["ci"][0] <= 0.5 <= d["ci"][1]
    assert paired_difference_ci([], [])["value"] is None
    with pytest.raises(ValueError, match="same examples"):
        paired_difference_ci([1, 0], [1])
