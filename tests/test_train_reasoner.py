"""Stage-2 reasoner training: config, verbalization cache, prompt fidelity, SFT/GRPO on a tiny model.

    pytest tests/test_train_reasoner.py            # fast ones (~1 min on 2 cores)
    pytest tests/test_train_reasoner.py -m slow    # + GRPO and the CLI end to end

A tiny random Llama (hidden 32, 2 layers) and a byte-level BPE tokenizer with a chat template are
built in a fixture; the data is real MovieLens-100K prepared with the tiny-cpu recipe (seconds).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from minivz.config import SECTIONS, ConfigError, DataConfig, resolve
from minivz.train.reasoner import accuracy_reward, build_sft_rows, named_candidate
from minivz.verbalize.cache import select_examples, verbalize_split
from minivz.config import ReasonerTrainConfig

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    pytest.importorskip("recbole", reason="MovieLens ships in recbole: pip install --no-deps recbole==1.2.1")
    from minivz.examples import prepare

    out = tmp_path_factory.mktemp("ml100k")
    prepare(resolve(DataConfig, recipe="tiny-cpu"), out)
    return out


@pytest.fixture(scope="module")
def data(data_dir):
    from minivz.dataset import PreparedData

    return PreparedData.load(data_dir)


def build_tiny_model(path, data) -> str:
    """A random Llama (hidden 32, 2 layers) + byte-level BPE with a chat template, saved to ``path``."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from minivz.verbalize.template import template_text

    ex = data.examples("train", limit=200)
    corpus = [template_text(h) for h in data.histories(ex, max_events=5)]
    corpus += data.items["title"].to_pylist()[:500]
    corpus += ["system user assistant Here is the user's history: The next item is: You are a recommender"] * 20
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                                eos_token="</s>", pad_token="</s>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)
    torch.manual_seed(0)
    # initializer_range 0.2, not 0.02: behind the final RMSNorm the logits are bounded by
    # |lm_head row| * sqrt(hidden), ~0.6 at 0.02 -- near-uniform whatever LoRA does inside, so the
    # loss could not fall much below ln(vocab) and the "it learns" test would test nothing.
    cfg = transformers.LlamaConfig(
        vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=2,
        initializer_range=0.2)
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, data):
    pytest.importorskip("torch", reason="pip install torch==2.13.0")
    pytest.importorskip("transformers", reason="pip install transformers==5.17.0")
    pytest.importorskip("trl", reason="pip install trl==1.16.0")
    pytest.importorskip("peft", reason="pip install peft")
    return build_tiny_model(tmp_path_factory.mktemp("tiny_llama"), data)


def tiny_cfg(model: str, **kw) -> ReasonerTrainConfig:
    base = dict(reasoner_model=model, reasoner_verbalizer="template", reasoner_train_examples=4,
                reasoner_history=3, reasoner_max_length=512, reasoner_per_device_train_batch_size=4, reasoner_max_steps=3,
                reasoner_learning_rate=1e-2, reasoner_warmup_steps=0.0, reasoner_lora_r=4, reasoner_lora_alpha=8,
                reasoner_save_steps=2, reasoner_eval_limit=0)
    base.update(kw)
    return ReasonerTrainConfig(**base)


def metrics(run) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


# -- config -------------------------------------------------------------------------------------------


def test_config_registered_and_resolves():
    assert sum(c.__name__ == "ReasonerTrainConfig" for c in SECTIONS) == 1
    cfg = resolve(ReasonerTrainConfig, recipe="tiny-cpu", overrides=["reasoner_max_steps=7", "history_len=20"])
    assert cfg.reasoner_max_steps == 7 and cfg.reasoner_verbalizer == "template"


@pytest.mark.parametrize("field, value, match", [
    ("reasoner_grpo_num_generations", 1, "reasoner_grpo_num_generations=4"),
    ("reasoner_learning_rate", 0.0, "reasoner_learning_rate=2e-4"),
    ("reasoner_eval_split", "dev", "valid or test"),
    ("reasoner_prompt", "reasoner_choice_v1", "reasoner_scoring=answer=line"),
    ("reasoner_per_device_train_batch_size", 0, ">= 1"),
])
def test_config_errors_say_how_to_fix(field, value, match):
    with pytest.raises(ConfigError, match=match):
        ReasonerTrainConfig(**{field: value})
    with pytest.raises(ConfigError, match="reasoner_num_train_epochs=1"):
        ReasonerTrainConfig(reasoner_num_train_epochs=0, reasoner_max_steps=0)


# -- verbalization cache ---------------------------------------------------------------------------


def test_verbalize_split_caches_and_resumes(data, tmp_path):
    path = tmp_path / "train.jsonl"
    first = verbalize_split(data, "template", "train", 10, 5, path)
    sample = select_examples(data, "train", 10)
    assert [r["example_id"] for r in first] == sample["example_id"].to_pylist()
    assert all(r["verbalization"].count("\n") == r["n_events"] - 1 for r in first)

    class Counting:
        name, stats, n = "count", {}, 0

        def verbalize(self, hists):
            Counting.n += len(hists)
            return ["x"] * len(hists)

    # the same 10 are cached; a cut last line (a killed run) is dropped and that example redone
    raw = path.read_bytes()
    path.write_bytes(raw[:-20])
    again = verbalize_split(data, "template", "train", 10, 5, path, verbalizer=Counting())
    assert Counting.n == 1 and len(again) == 10
    with pytest.raises(ValueError, match="verbalized with"):
        verbalize_split(data, "zero-shot", "train", 10, 5, path)
    # valid/test take the first N, as `minivz eval --limit N` does
    valid = verbalize_split(data, "template", "valid", 3, 5, tmp_path / "valid.jsonl")
    assert [r["example_id"] for r in valid] == data.examples("valid", limit=3)["example_id"].to_pylist()


def test_cached_verbalizer_serves_the_cache(data, tmp_path):
    from minivz.verbalize import make_verbalizer

    path = tmp_path / "valid.jsonl"
    rows = verbalize_split(data, "template", "valid", 4, 5, path)
    v = make_verbalizer(f"cached:path={path}")
    hists = data.histories(data.examples("valid", limit=4), max_events=5)
    assert v.verbalize(hists) == [r["verbalization"] for r in rows]
    with pytest.raises(KeyError, match="verbalize_split"):
        v.verbalize(data.histories(data.examples("valid", limit=4), max_events=4))


# -- prompt fidelity: training tokens == scoring tokens -------------------------------------------------


def test_sft_rows_are_what_the_hf_backend_scores(data, tiny_model):
    from transformers import AutoTokenizer

    from minivz.reason import Query, make_reasoner

    rows = verbalize_split(data, "template", "valid", 5, 3, tiny_model + "/v.jsonl")
    tok = AutoTokenizer.from_pretrained(tiny_model)
    sft = build_sft_rows(data, rows, tok, "reasoner_v1", 1024)
    scorer = make_reasoner(f"hf:model={tiny_model}")
    assert scorer.use_chat_template
    for r, s in zip(rows, sft):
        texts = data.item_texts(r["candidates"])
        prefix, cands = scorer.prepare(Query(r["verbalization"], texts, r["candidates"]))
        mask = np.array(s["completion_mask"])
        ids = np.array(s["input_ids"])
        assert ids[mask == 0].tolist() == prefix
        assert ids[mask == 1].tolist() == cands[r["label"]] + [tok.eos_token_id]
        assert tok.decode(ids[mask == 1][:-1]) == texts[r["label"]] == s["target"]
        assert "The next item is:" in tok.decode(prefix) and "<|assistant|>" in tok.decode(prefix[-8:])
    # a short budget cuts the context from its oldest lines, as the scorer does
    budget = min(len(s["input_ids"]) for s in sft) - 1
    short = build_sft_rows(data, rows, tok, "reasoner_v1", budget)
    assert all(len(s["input_ids"]) <= budget for s in short)
    assert all(a["input_ids"][-3:] == b["input_ids"][-3:] for a, b in zip(sft, short))  # the target is kept


def test_accuracy_reward_matches_named_candidate():
    cands = ["Toy Story (1995)", "Toy Story 2 (1999)", "Heat (1995)"]
    assert named_candidate("Toy Story 2 (1999)", cands) == 1
    assert named_candidate("toy story (1995)!", cands) == 0
    assert named_candidate("I think: Heat (1995), a thriller", cands) == 2
    assert named_candidate("Casablanca", cands) == -1
    comps = [[{"role": "assistant", "content": "Heat (1995)"}], [{"role": "assistant", "content": "Toy Story"}]]
    assert accuracy_reward(comps, target=["Heat (1995)"] * 2, candidates=[cands, cands]) == [1.0, -1.0]
    # answer=label: the reply's label, +1 / -1 (the paper's stage-2 reward)
    labels = list("ABC")
    comps = [[{"role": "assistant", "content": c}] for c in ("B", "B. Heat", "C", "Because")]
    assert accuracy_reward(comps, target=["B"] * 4, candidates=[labels] * 4, answer=["label"] * 4) == [1, 1, -1, -1]


# -- the list reasoner: candidates in the prompt, the label read in one forward ------------------------


def label_queries(data, tiny_model, n=6):
    from minivz.reason import Query

    rows = verbalize_split(data, "template", "valid", n, 3, f"{tiny_model}/label-queries.jsonl")
    return rows, [Query(r["verbalization"], data.item_texts(r["candidates"]), r["candidates"]) for r in rows]


def test_label_scores_are_the_label_logprobs_of_one_plain_forward(data, tiny_model):
    import torch

    from minivz.evaluate import item_stats_for
    from minivz.reason import make_reasoner

    stats = item_stats_for(data)
    rows, queries = label_queries(data, tiny_model)
    r = make_reasoner(f"hf:model={tiny_model},answer=label,order=popularity,viewers=true,genres=true", item_stats=stats)
    assert r.template.name == "reasoner_choice_v1"
    preds = r.predict_labels(queries, batch_size=4)  # batched, left-padded (a GPU's default)
    np.testing.assert_allclose([p.scores for p in r.predict(queries)], [p.scores for p in preds], atol=1e-4)
    for q, p in zip(queries, preds):
        prefix, order, label_ids = r.prepare_labels(q)
        text = r.tokenizer.decode(prefix)
        pops = [stats.counts[q.candidate_ids[j]] for j in order]
        assert pops == sorted(pops, reverse=True)  # most popular listed first
        first = q.candidate_ids[order[0]]
        assert f"A. {q.candidates[order[0]]} | " in text and f"| {int(stats.counts[first])} viewers" in text
        assert "J. " in text and "Answer with one label only (A, B, C, D, E, F, G, H, I, J)" in text
        with torch.inference_mode():
            logits = r.model(input_ids=torch.tensor([prefix])).logits[0, -1].double()
        lp = torch.log_softmax(logits, -1).numpy()
        want = np.empty(len(order))
        want[order] = lp[label_ids]  # the k-th listed label scores query candidate order[k]
        np.testing.assert_allclose(p.scores, want, atol=1e-4)  # batched, left-padded == alone
        assert p.valid and p.choice == int(np.argmax(want))


def test_match_lists_the_knn_similarity_to_the_titles_the_context_names(data, tiny_model):
    from dataclasses import replace

    from minivz.evaluate import item_stats_for
    from minivz.reason import make_reasoner

    stats = item_stats_for(data)
    _, queries = label_queries(data, tiny_model)
    r = make_reasoner(f"hf:model={tiny_model},answer=label,order=popularity,match=true", item_stats=stats)
    knn = make_reasoner("knn", item_stats=stats)
    for q in queries:
        named = r.matcher.mentioned(q.context)  # the titles the text names, not the history's ids
        sim = knn.predict([replace(q, history_ids=named)])[0].scores
        order, lines, _ = r.listing(q)
        got = [int(line.rsplit("| match ", 1)[1]) for line in lines.splitlines()]
        assert got == [round(100 * sim[j] / sim.max()) for j in order]
        assert got[order.index(int(np.argmax(sim)))] == 100  # the most similar candidate reads 100
    # a text naming no title: every candidate 0
    order, lines, _ = r.listing(replace(queries[0], context="nothing watched yet"))
    assert all(line.endswith("| match 0") for line in lines.splitlines())


def test_unconstrained_label_answer_is_valid_only_when_the_greedy_token_is_a_label(data, tiny_model):
    import torch

    from minivz.reason import make_reasoner

    _, queries = label_queries(data, tiny_model)
    r = make_reasoner(f"hf:model={tiny_model},answer=label,constrain=false")
    for q, p in zip(queries, r.predict(queries)):
        prefix, order, label_ids = r.prepare_labels(q)
        with torch.inference_mode():
            greedy = int(r.model(input_ids=torch.tensor([prefix])).logits[0, -1].argmax())
        assert p.valid == (greedy in label_ids)
        assert p.choice == (order[label_ids.index(greedy)] if p.valid else -1)


def test_label_options_refuse_what_cannot_work(tiny_model):
    from minivz.reason import make_reasoner

    with pytest.raises(ValueError, match="item statistics"):
        make_reasoner(f"hf:model={tiny_model},answer=label,order=popularity")
    with pytest.raises(ValueError, match="has no \\{candidates\\}"):
        make_reasoner(f"hf:model={tiny_model},answer=label,prompt=reasoner_v1")
    with pytest.raises(ValueError, match="answer='letter'; use one of title, label, line"):
        make_reasoner(f"hf:model={tiny_model},answer=letter")


def test_label_rows_are_what_the_label_scorer_reads(data, tiny_model):
    from transformers import AutoTokenizer

    from minivz.evaluate import item_stats_for
    from minivz.reason import make_reasoner
    from minivz.train.reasoner import build_label_rows, scoring_view

    stats = item_stats_for(data)
    rows, queries = label_queries(data, tiny_model)
    scoring = "answer=label,order=popularity,viewers=true"
    view = scoring_view(AutoTokenizer.from_pretrained(tiny_model),
                        tiny_cfg(tiny_model, reasoner_scoring=scoring), 1024, stats)
    r = make_reasoner(f"hf:model={tiny_model},{scoring}", item_stats=stats)
    for row, q, lr in zip(rows, queries, build_label_rows(data, rows, view)):
        prefix, order, label_ids = r.prepare_labels(q)
        assert lr["input_ids"] == prefix and lr["label_ids"] == label_ids
        assert order[lr["target"]] == row["label"]  # the target's label lists the true item
    with pytest.raises(ValueError, match="reasoner_scoring option 'dtype' is not read by training"):
        scoring_view(view.tokenizer, tiny_cfg(tiny_model, reasoner_scoring="answer=label,dtype=bfloat16"), 1024, stats)


def test_listwise_training_learns_the_labels_and_scores_through_the_hf_backend(data_dir, tiny_model, tmp_path):
    from minivz.train.reasoner import train_reasoner

    run = tmp_path / "run"
    # 4 examples, one batch repeated: the listwise loss must fall, and GRPO (label answers, +-1) runs on top
    cfg = tiny_cfg(tiny_model, reasoner_scoring="answer=label,order=popularity,viewers=true", reasoner_max_steps=10,
                   reasoner_save_steps=10, reasoner_eval_limit=0, reasoner_lora_r=8, reasoner_lora_alpha=16,
                   reasoner_grpo_max_steps=1, reasoner_grpo_num_generations=2, reasoner_grpo_max_completion_length=2)
    s = train_reasoner(cfg, data_dir, run, progress=False)
    assert s["objective"] == "listwise" and s["sft_steps"] == 10 and s["grpo_steps"] == 1
    m = [r for r in metrics(run) if r["stage"] == "sft"]
    assert m[-1]["loss"] < 0.5 * m[0]["loss"], [r["loss"] for r in m]
    assert "reward" in metrics(run)[-1]


def test_line_scores_are_the_readout_logprob_at_each_line_end_of_one_plain_forward(data, tiny_model):
    import torch

    from minivz.evaluate import item_stats_for
    from minivz.reason import make_reasoner

    stats = item_stats_for(data)
    rows, queries = label_queries(data, tiny_model)
    r = make_reasoner(f"hf:model={tiny_model},answer=line,order=popularity,viewers=true,match=true", item_stats=stats)
    assert r.template.name == "reasoner_choice_v1"
    token = r.readout_token_id()
    preds = r.predict_lines(queries, batch_size=4)  # batched, left-padded (a GPU's default)
    np.testing.assert_allclose([p.scores for p in r.predict(queries)], [p.scores for p in preds], atol=1e-4)
    for q, p in zip(queries, preds):
        prefix, order, positions = r.prepare_lines(q)
        assert prefix == r.prepare(q)[0]  # the same prompt ids the label scorer reads
        _, lines, _ = r.listing(q)
        for line, at in zip(lines.splitlines(), positions):
            upto, nxt = r.tokenizer.decode(prefix[: at + 1]), r.tokenizer.decode(prefix[: at])
            assert upto.rstrip("\n").endswith(line) and not nxt.endswith(line)  # the line's last token
        with torch.inference_mode():
            logits = r.model(input_ids=torch.tensor([prefix])).logits[0].double()
        lp = torch.log_softmax(logits, -1)[:, token].numpy()
        want = np.empty(len(order))
        want[order] = lp[positions]  # the k-th listed line scores query candidate order[k]
        np.testing.assert_allclose(p.scores, want, atol=1e-4)  # batched, left-padded == alone
    with pytest.raises(ValueError, match="answer=line reads the listed candidates"):
        make_reasoner(f"hf:model={tiny_model},answer=line,prompt=reasoner_v1")


def test_line_training_learns_then_grpo_on_the_line_reader(data_dir, data, tiny_model, tmp_path):
    from transformers import AutoTokenizer

    from minivz.evaluate import item_stats_for
    from minivz.train.reasoner import build_label_rows, scoring_view, train_reasoner

    stats = item_stats_for(data)
    rows, queries = label_queries(data, tiny_model)
    scoring = "answer=line,order=popularity,viewers=true"
    view = scoring_view(AutoTokenizer.from_pretrained(tiny_model), tiny_cfg(tiny_model, reasoner_scoring=scoring),
                        1024, stats)
    for row, q, lr in zip(rows, queries, build_label_rows(data, rows, view)):
        prefix, order, positions = view.prepare_lines(q)
        assert lr["input_ids"] == prefix and lr["label_ids"] == positions and order[lr["target"]] == row["label"]
    run = tmp_path / "run"
    cfg = tiny_cfg(tiny_model, reasoner_scoring=scoring, reasoner_max_steps=10, reasoner_save_steps=10,
                   reasoner_eval_limit=0, reasoner_lora_r=8, reasoner_lora_alpha=16)
    s = train_reasoner(cfg, data_dir, run, progress=False)
    assert s["objective"] == "listwise" and s["sft_steps"] == 10
    m = [r for r in metrics(run) if r["stage"] == "sft"]
    assert m[-1]["loss"] < 0.5 * m[0]["loss"], [r["loss"] for r in m]
    # the paper's GRPO from that warm start, in the same run (the SFT is loaded, not retrained): each
    # reply is one candidate sampled from the softmax over the line scores, +-1, group-normalized
    g = tiny_cfg(tiny_model, reasoner_scoring=scoring, reasoner_max_steps=10, reasoner_save_steps=10,
                 reasoner_eval_limit=0, reasoner_lora_r=8, reasoner_lora_alpha=16, reasoner_grpo_max_steps=3,
                 reasoner_grpo_num_generations=8, reasoner_grpo_learning_rate=1e-2)
    s = train_reasoner(g, data_dir, run, progress=False)
    assert s["sft_steps"] == 10 and s["grpo_steps"] == 3 and s["sft_resumed_from"]
    grpo = [r for r in metrics(run) if r["stage"] == "grpo"]
    assert [r["step"] for r in grpo] == [1, 2, 3]
    assert all(-1 <= r["reward"] <= 1 and 0 <= r["frac_reward_zero_std"] <= 1 for r in grpo)
    assert (run / "grpo" / "checkpoints" / "step_000003").is_dir() and (run / "final" / "merged").is_dir()
    with pytest.raises(ConfigError, match="reasoner_grpo_beta: GRPOConfig settings that the answer=line GRPO"):
        train_reasoner(tiny_cfg(tiny_model, reasoner_scoring=scoring, reasoner_max_steps=1, reasoner_grpo_max_steps=1,
                                reasoner_trl_extra={"reasoner_grpo_beta": 0.1}), data_dir, tmp_path / "b",
                       progress=False)


def test_group_advantages_are_grpo_s_for_plus_minus_one_rewards():
    import torch

    from minivz.train.reasoner import group_advantages

    choices = torch.tensor([[0, 1, 0, 2], [3, 3, 3, 3], [1, 1, 1, 1]])
    rewards, adv = group_advantages(choices, torch.tensor([0, 3, 0]))
    assert rewards.tolist() == [[1, -1, 1, -1], [1] * 4, [-1] * 4]
    # group mean 0, std (unbiased) 2/sqrt(3): +-0.866; a group whose rewards are all equal learns nothing
    np.testing.assert_allclose(adv[0].numpy(), [0.866, -0.866, 0.866, -0.866], atol=1e-3)
    assert adv[1:].abs().max() == 0


# -- training ----------------------------------------------------------------------------------------


@pytest.mark.slow  # ~60-90 s on 2 shared cores (4 evaluations on top of 12 steps)
def test_sft_learns_saves_merges_and_scores(data_dir, tiny_model, tmp_path):
    import torch
    from safetensors.torch import load_file

    from minivz.reason import make_reasoner
    from minivz.train.reasoner import train_reasoner

    run = tmp_path / "run"
    # 4 examples, one batch of 4 repeated for 12 steps: the tiny model must overfit them
    cfg = tiny_cfg(tiny_model, reasoner_max_steps=12, reasoner_save_steps=6, reasoner_eval_limit=4, reasoner_lora_r=8,
                   reasoner_lora_alpha=16)
    s = train_reasoner(cfg, data_dir, run, progress=False)
    assert s["sft_steps"] == 12
    m = metrics(run)
    assert [r["step"] for r in m] == list(range(1, 13)) and all(r["stage"] == "sft" for r in m)
    assert {"loss", "lr", "step_seconds", "grad_norm"} <= set(m[0])
    assert m[-1]["loss"] < 0.7 * m[0]["loss"], [r["loss"] for r in m]
    for f in ("config.yaml", "env.json", "trl_args.json", "summary.json", "final/adapter_config.json",
              "final/merged/config.json", "checkpoints/step_000012/trainer_state.json"):
        assert (run / f).exists(), f
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_000006", "step_000012"]
    # LoRA B starts at zero: any nonzero B means the adapter was trained
    lora = load_file(str(run / "final" / "adapter_model.safetensors"))
    b = [v for k, v in lora.items() if "lora_B" in k]
    assert b and all(torch.count_nonzero(v) > 0 for v in b)
    # the merged model differs from the base and plugs into the hf backend
    base = load_file(f"{tiny_model}/model.safetensors")
    merged = load_file(str(run / "final" / "merged" / "model.safetensors"))
    key = next(k for k in merged if k.endswith("q_proj.weight"))
    assert not torch.allclose(base[key], merged[key])
    assert set(s["eval"]) == {"trained", "base", "popularity", "knn"}
    assert s["eval"]["trained"]["all"]["n"] == 4
    r = make_reasoner(f"hf:model={run}/final/merged")
    from minivz.reason import Query

    (p,) = r.predict([Query("ctx", ["A (1990)", "B (1991)"], [0, 1])])
    assert np.isfinite(p.scores).all()


def test_sft_resumes_from_latest_checkpoint(data_dir, tiny_model, tmp_path):
    from minivz.train.reasoner import train_reasoner

    run = tmp_path / "run"
    s1 = train_reasoner(tiny_cfg(tiny_model, reasoner_max_steps=2, reasoner_save_steps=2), data_dir, run,
                        progress=False)
    assert s1["sft_steps"] == 2 and s1["sft_resumed_from"] is None
    s2 = train_reasoner(tiny_cfg(tiny_model, reasoner_max_steps=4, reasoner_save_steps=2), data_dir, run,
                        progress=False)
    assert s2["sft_resumed_from"].endswith("step_000002") and s2["sft_steps"] == 4
    assert [r["step"] for r in metrics(run)] == [1, 2, 3, 4]
    # a finished run started again takes no further step, and its final model is the checkpoint's
    s3 = train_reasoner(tiny_cfg(tiny_model, reasoner_max_steps=4, reasoner_save_steps=2), data_dir, run,
                        progress=False)
    assert s3["sft_steps"] == 4 and s3["sft_resumed_from"].endswith("step_000004")
    assert [r["step"] for r in metrics(run)] == [1, 2, 3, 4]
    assert not (run / "checkpoints" / "step_000005").exists()
    from safetensors.torch import load_file

    final = load_file(str(run / "final" / "adapter_model.safetensors"))
    ckpt = load_file(str(run / "checkpoints" / "step_000004" / "adapter_model.safetensors"))
    assert final.keys() == ckpt.keys() and all((final[k] == ckpt[k]).all() for k in final)
    # the train examples were verbalized once
    assert len((run / "verbalized" / "train.jsonl").read_text().splitlines()) == 4


@pytest.mark.slow
def test_grpo_stage_runs_after_sft(data_dir, tiny_model, tmp_path):
    from minivz.train.reasoner import train_reasoner

    run = tmp_path / "run"
    cfg = tiny_cfg(tiny_model, reasoner_max_steps=2, reasoner_grpo_max_steps=2, reasoner_grpo_num_generations=2,
                   reasoner_grpo_max_completion_length=8)
    s = train_reasoner(cfg, data_dir, run, progress=False)
    assert s["grpo_steps"] == 2
    stages = [(r["stage"], r["step"]) for r in metrics(run)]
    assert stages == [("sft", 1), ("sft", 2), ("grpo", 1), ("grpo", 2)]
    assert "reward" in metrics(run)[-1]
    assert (run / "grpo" / "checkpoints" / "step_000002").is_dir() and (run / "final" / "merged").is_dir()


@pytest.mark.slow
def test_cli_command_dry_run_and_run(data_dir, tiny_model, tmp_path):
    import typer
    from typer.testing import CliRunner

    from minivz.cli import train_reasoner_command

    app = typer.Typer()
    app.command()(train_reasoner_command)
    app.command("noop")(lambda: None)  # two commands: typer keeps the subcommand name
    runner = CliRunner()
    res = runner.invoke(app, ["train-reasoner-command", "--recipe", "tiny-cpu", "--data", str(data_dir),
                              "--out", str(tmp_path / "r"), "--verbalizer", "template", "--set",
                              "reasoner_max_steps=5", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "reasoner_max_steps: 5" in res.output and not (tmp_path / "r").exists()
    res = runner.invoke(app, ["train-reasoner-command", "--data", str(data_dir), "--out", str(tmp_path / "r"),
                              "--set", "reasoner_learning_rate=0"])
    assert res.exit_code == 2 and "reasoner_learning_rate" in res.output
    args = ["train-reasoner-command", "--data", str(data_dir), "--out", str(tmp_path / "r")]
    for kv in (f"reasoner_model={tiny_model}", "reasoner_train_examples=4", "reasoner_history=3",
               "reasoner_max_steps=2", "reasoner_eval_limit=3", "reasoner_lora_r=2"):
        args += ["--set", kv]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "trained: Recall@1" in res.output


@pytest.mark.slow
def test_pipeline_launches_the_reasoner_as_two_cpu_processes_like_one(data_dir, tiny_model, tmp_path):
    """hardware: multi-gpu, rehearsed on CPU: the pipeline's own `accelerate launch` (gloo, 2
    processes of batch 2) trains the stage-2 line reader; the main process alone writes the run dir
    (one metrics line per step, one verbalization cache, one final model); the loss curve is a
    one-process run's of the same global batch (4) within float error; a rerun with one more step
    resumes from the last checkpoint in both processes and trains that step only."""
    pytest.importorskip("accelerate")
    from minivz.pipeline import Pipeline
    from minivz.train.reasoner import train_reasoner

    out = tmp_path / "run"
    out.mkdir()
    (out / "data").symlink_to(data_dir)
    same = dict(reasoner_model=tiny_model, reasoner_scoring="answer=line,order=popularity,viewers=true",
                reasoner_train_examples=16, reasoner_history=3, reasoner_max_length=512, reasoner_max_steps=3,
                reasoner_save_steps=1, reasoner_learning_rate=1e-2, reasoner_warmup_steps=0.0, reasoner_lora_r=4,
                reasoner_lora_alpha=8, reasoner_lora_layers=0, reasoner_eval_limit=0)
    over = ["hardware=multi-gpu", "accelerate_config=recipes/accelerate/cpu.yaml", "num_processes=2", "reasoner_gguf=",
            "reasoner_per_device_train_batch_size=2", *(f"{k}={v}" for k, v in same.items())]
    pipe = Pipeline("tiny-cpu", out, over, say=lambda _msg: None)
    run = out / "reasoner-template"
    argv = pipe._launch(pipe.launch_command("reasoner", run, ["reasoner_verbalizer=template"]))["launched"]
    assert argv[argv.index("--num_processes") + 1] == "2"
    two = metrics(run)
    assert [m["step"] for m in two] == [1, 2, 3]  # written once, by rank 0
    assert len((run / "verbalized" / "train.jsonl").read_text().splitlines()) == 16
    assert (run / "final" / "merged" / "config.json").is_file()
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*"))[-1] == "step_000003"
    # one process, batch 4: the same global batches in the same order (accelerate hands process k the
    # k-th per-device batch of the same seeded order), DDP's mean gradient = the batch-4 mean. Step 1
    # agrees to float32 rounding; after two updates at lr 1e-2 the summation order shows (1.3e-3
    # relative at step 3, measured): the tolerance is 5e-3
    one = tmp_path / "one"
    train_reasoner(tiny_cfg(tiny_model, reasoner_per_device_train_batch_size=4, **same), data_dir, one, progress=False)
    assert two[0]["loss"] == pytest.approx(metrics(one)[0]["loss"], rel=1e-5)
    assert [m["loss"] for m in two] == pytest.approx([m["loss"] for m in metrics(one)], rel=5e-3)
    # a stopped run continued: both processes resume from step 3 and train step 4 only
    more = [o if o != "reasoner_max_steps=3" else "reasoner_max_steps=4" for o in over]
    again = Pipeline("tiny-cpu", out, more, say=lambda _msg: None)
    again._launch(again.launch_command("reasoner", run, ["reasoner_verbalizer=template"]))
    assert [m["step"] for m in metrics(run)] == [1, 2, 3, 4]
    assert [m["loss"] for m in metrics(run)][:3] == [m["loss"] for m in two]


@pytest.mark.slow
def test_reasoner_trains_under_deepspeed_zero3_on_cpu(data_dir, tiny_model, tmp_path):
    """paper-32b's sharded path rehearsed on CPU: `accelerate launch` with DeepSpeed ZeRO-3 (DeepSpeed's
    CPU accelerator, 2 processes, recipes/accelerate/zero3-cpu.yaml) trains the line reader, writes the
    run dir once, saves the adapter and a merged model of the base's shapes, and resumes."""
    from conftest import require_deepspeed
    from safetensors.torch import load_file

    from minivz.pipeline import Pipeline

    require_deepspeed()
    out = tmp_path / "run"
    out.mkdir()
    (out / "data").symlink_to(data_dir)
    over = ["hardware=multi-gpu", "accelerate_config=recipes/accelerate/zero3-cpu.yaml", "num_processes=2",
            "reasoner_gguf=", f"reasoner_model={tiny_model}", "reasoner_scoring=answer=line,order=popularity,viewers=true",
            "reasoner_train_examples=16", "reasoner_history=3", "reasoner_max_length=512",
            "reasoner_per_device_train_batch_size=2", "reasoner_max_steps=3", "reasoner_save_steps=1",
            "reasoner_eval_limit=0", "reasoner_lora_layers=0", "reasoner_verbalizer=template"]
    run = out / "reasoner-template"
    pipe = Pipeline("tiny-cpu", out, over, say=lambda _msg: None)
    pipe._launch(pipe.launch_command("reasoner", run))
    assert [m["step"] for m in metrics(run)] == [1, 2, 3]
    assert all(np.isfinite(m["loss"]) for m in metrics(run))
    base = load_file(Path(tiny_model) / "model.safetensors")
    merged = load_file(run / "final" / "merged" / "model.safetensors")
    assert {k: tuple(v.shape) for k, v in merged.items()} == {k: tuple(v.shape) for k, v in base.items()}
    # the gathered weights, not shards: base + the saved adapter merged in float32 by peft, to within the
    # bfloat16 the merge runs in under ZeRO-3 (zero3_save_16bit_model; docs/recipes.md): one bf16 step
    # of the base weight and of the result (where base and LoRA nearly cancel, the base's rounding stays)
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                                    str(run / "final")).merge_and_unload().state_dict()
    for k, v in merged.items():
        err = (v.float() - ref[k]).abs()
        assert bool((err <= 2 ** -7 * (base[k].abs() + ref[k].abs()) + 1e-6).all()), (k, float(err.max()))
    more = Pipeline("tiny-cpu", out, [o.replace("max_steps=3", "max_steps=4") for o in over], say=lambda _msg: None)
    more._launch(more.launch_command("reasoner", run))
    assert [m["step"] for m in metrics(run)] == [1, 2, 3, 4]
