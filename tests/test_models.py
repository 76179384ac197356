"""minivz.models: resolving a model spec (fast, no weights loaded; loading is covered by the
reasoner, verbalizer, training and export tests)."""

import json

import pytest
from conftest import loaded_after

from minivz.models import adapter_base, find_gguf, gguf_path, model_source


def test_import_is_light():
    assert loaded_after("import minivz.models", ("torch", "transformers", "peft")) == []


def test_find_gguf(tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    (one / "m.gguf").write_bytes(b"")
    assert find_gguf(one / "m.gguf") == one / "m.gguf" and find_gguf(one) == one / "m.gguf"
    (one / "n.gguf").write_bytes(b"")
    assert find_gguf(one) is None  # two candidates: ambiguous
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "m.gguf").write_bytes(b"")
    assert find_gguf(hf) is None and find_gguf("org/hub-id") is None


def test_model_source_and_gguf_path(tmp_path):
    assert model_source("org/hub-id") == "org/hub-id"
    with pytest.raises(FileNotFoundError, match="smollm2"):
        gguf_path(str(tmp_path / "missing.gguf"))


def test_adapter_base(tmp_path):
    with pytest.raises(FileNotFoundError, match="PEFT LoRA"):
        adapter_base(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "org/remote"}))
    with pytest.raises(FileNotFoundError, match="pass base="):
        adapter_base(tmp_path, option="base")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path)}))
    assert adapter_base(tmp_path) == str(tmp_path)
