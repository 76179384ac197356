"""minivz report RUN: the self-contained HTML page of a run, rendered in headless Chromium.

A run directory laid out as `minivz recipe` lays it out (RUN/data, RUN/eval/<row>), with real
MovieLens-100K rows that need no model: the template and the 3-most-recent rule under the mention
oracle (standing in for the learned verbalizer's row) and popularity / item-kNN.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from minivz.config import DataConfig, EvalConfig, resolve
from minivz.evaluate import evaluate
from minivz.examples import prepare
from minivz.report import html_report

from headless import chromium, render

pytest.importorskip("recbole", reason="pip install --no-deps recbole==1.2.1")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    prepare(resolve(DataConfig, recipe="tiny-cpu"), run / "data")
    for row, verbalizer, reasoner in (("template", "template", "mention"), ("learned", "recent:recent=3", "mention"),
                                      ("popularity", "template", "popularity"), ("knn", "template", "knn")):
        evaluate(EvalConfig(data=str(run / "data"), verbalizer=verbalizer, reasoner=reasoner, limit=30, n_boot=100,
                            out=str(run / "eval" / row)))
    return run


def test_report_holds_the_tables_and_what_each_reader_saw(run_dir):
    page = html_report(run_dir, n_examples=4).read_text()
    assert page.count("<table>") == 1 and "Evaluated rows" in page and "template" in page
    assert page.count("class=ex>") == 4  # 4 users, each with the template text and the learned text
    assert "read by oracle" in page and "truth <b>" in page and "data:image" not in page  # no plots in this run
    # the template row's text for the first user is on the page, escaped, beside the rule's 3 lines
    first = next(iter(open(run_dir / "eval" / "template" / "samples.jsonl")))
    import html
    import json

    rec = json.loads(first)
    assert html.escape(rec["verbalization"].splitlines()[-1]) in page
    assert "<script" not in page  # a static page: nothing to run, nothing fetched


def test_report_command_and_headless_screenshot(run_dir, tmp_path):
    binary = chromium()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs headless Chromium for this test: scripts/test.sh installs it with npm "
                        "(@sparticuz/chromium) and exports MINIVZ_CHROMIUM")
        pytest.skip("no headless Chromium: run through `bash scripts/test.sh` (it installs one with npm)")
    out = tmp_path / "report.html"
    done = subprocess.run([sys.executable, "-m", "minivz", "report", str(run_dir), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert str(out) in done.stdout
    shot = render(binary, out.as_uri(), tmp_path / "report.png")
    assert shot["tables"] == 1
    assert "minivz run report" in shot["text"] and "truth" in shot["text"]
    from PIL import Image

    img = np.asarray(Image.open(shot["png"]).convert("L"), dtype=float)
    assert img.shape[1] >= 1000 and img.shape[0] > 900  # the full page: taller than the 900-pixel window
    assert img.std() > 10  # not blank
    assert (img < 100).mean() > 0.005  # dark text is drawn
