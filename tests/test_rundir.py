"""The run-directory helpers: JSONL resume/truncate after a kill, checkpoint listing and rotation."""

import json

from minivz.rundir import (append_jsonl, latest_checkpoint, read_jsonl, resume_jsonl, resume_step,
                           rotate_checkpoints, step_checkpoints, truncate_jsonl)


def test_jsonl_read_skips_or_stops_at_a_cut_line(tmp_path):
    path = tmp_path / "log.jsonl"
    assert read_jsonl(path) == []
    append_jsonl(path, [{"step": 1}, {"step": 2}])
    path.write_text(path.read_text() + '{"step": 3, "rew\n{"step": 4}\n')
    assert [r["step"] for r in read_jsonl(path)] == [1, 2, 4]
    assert [r["step"] for r in read_jsonl(path, stop_at_bad=True)] == [1, 2]


def test_resume_jsonl_cuts_the_partial_last_line(tmp_path):
    path = tmp_path / "samples.jsonl"
    assert resume_jsonl(path) == {} and not path.exists()
    path.write_text('{"example_id": 3, "x": 1}\n{"no_id": 1}\n{"example_id": 5, "x"')
    assert resume_jsonl(path) == {3: {"example_id": 3, "x": 1}}
    assert path.read_text().endswith('{"no_id": 1}\n')
    append_jsonl(path, [{"example_id": 5}])
    assert sorted(resume_jsonl(path)) == [3, 5]


def test_truncate_jsonl_keeps_accepted_lines_up_to_a_cut_one(tmp_path):
    path = tmp_path / "metrics.jsonl"
    truncate_jsonl(path, lambda r: True)
    assert not path.exists()
    lines = [json.dumps({"step": s}) for s in (1, 2, 3)] + ['{"step": 4, "rew', json.dumps({"step": 1})]
    path.write_text("\n".join(lines) + "\n")
    truncate_jsonl(path, lambda r: int(r["step"]) <= 2)
    assert path.read_text() == lines[0] + "\n" + lines[1] + "\n"


def test_checkpoints_are_renamed_rotated_and_resumed_from(tmp_path):
    ckpts = tmp_path / "checkpoints"
    assert latest_checkpoint(ckpts) is None and resume_step(ckpts, True) == (0, None)
    for step in (1, 2, 3):
        (ckpts / f"checkpoint-{step}").mkdir(parents=True)
        (ckpts / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
        rotate_checkpoints(ckpts, step, keep=2)
    assert [s for s, _ in step_checkpoints(ckpts)] == [2, 3]
    (ckpts / "step_000004").mkdir()  # no trainer_state.json yet: not resumable
    assert resume_step(ckpts, True) == (3, ckpts / "step_000003")
    assert resume_step(ckpts, False) == (0, None)
    # starting over deletes them: an old step_000003 would otherwise outlive a new run's step_000001
    # in the rotation and be resumed from later
    assert not any(ckpts.iterdir())


def test_served_verbalizer_spec_is_the_recorded_training_spec(tmp_path):
    """`minivz serve --run` reads the verbalizer's settings from its run record through the same spec
    builder as the learned row; a field the record lacks takes the dataclass default, not a guess."""
    import yaml

    from minivz.config import VerbalizerTrainConfig, resolve
    from minivz.pipeline import run_models, verbalizer_spec
    from minivz.rundir import record_run_config

    run = tmp_path / "run"
    for kind in ("verbalizer", "reasoner"):
        (run / "export" / kind).mkdir(parents=True)
        (run / "export" / kind / "model-q8_0.gguf").write_bytes(b"")
    v = resolve(VerbalizerTrainConfig, recipe="tiny-cpu")
    (run / "verbalizer").mkdir()
    record_run_config(run / "verbalizer", v, tmp_path, resume=False)
    reasoner, spec = run_models(run)
    gguf = str(run / "export" / "verbalizer" / "model-q8_0.gguf")
    assert reasoner.endswith("reasoner/model-q8_0.gguf")
    assert spec == verbalizer_spec(v, gguf) == f"select:model={gguf},backend=llama,render=template,max_new_tokens=48"
    assert verbalizer_spec(v, "merged").replace("model=merged,backend=hf", f"model={gguf},backend=llama") == spec
    # an older record without the completion budget: the config's default (128), never a stale 48
    rec = yaml.safe_load((run / "verbalizer" / "config.yaml").read_text())
    del rec["max_completion_length"]
    (run / "verbalizer" / "config.yaml").write_text(yaml.safe_dump(rec))
    assert run_models(run)[1].endswith(f"max_new_tokens={VerbalizerTrainConfig().max_completion_length}")
