"""Chat templates: the model's own (SmolLM2), a configured override, and the errors for broken ones."""
from __future__ import annotations

from pathlib import Path

import pytest

from edge_runtime.engine.template import ChatTemplate, load_template
from edge_runtime.engine.types import ChatMessage
from edge_runtime.errors import ConfigError, InvalidRequest, ModelError
from edge_runtime.gguf_file import inspect

MESSAGES = (ChatMessage("user", "Hi 안녕"),)


def test_smollm2_template_renders_chatml_with_default_system(smollm2_path: Path) -> None:
    template = load_template(None, inspect(smollm2_path).chat_template)
    assert template is not None
    text = template.render(MESSAGES, bos_token="<|im_start|>", eos_token="<|im_end|>")
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n<|im_start|>user\nHi 안녕<|im_end|>\n<|im_start|>assistant\n")


def test_configured_template_wins_inline_and_from_file(tmp_path: Path, smollm2_path: Path) -> None:
    inline = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}{{ bos_token }}"
    template = load_template(inline, inspect(smollm2_path).chat_template)
    assert template is not None and template.origin == "config chat_template"
    assert template.render(MESSAGES, bos_token="<s>", eos_token="</s>") == "[user] Hi 안녕\n<s>"
    path = tmp_path / "t.jinja"
    path.write_text("{{ messages | tojson }}", encoding="utf-8")
    from_file = load_template(str(path), None)
    assert from_file is not None
    assert from_file.render(MESSAGES, bos_token="", eos_token="") == '[{"role": "user", "content": "Hi 안녕"}]'


def test_no_template_anywhere_is_none(gemma3_path: Path) -> None:
    assert inspect(gemma3_path).chat_template is None
    assert load_template(None, None) is None


def test_broken_templates_raise_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="chat_template: chat template from config chat_template is not valid"):
        load_template("{% for m in messages %}", None)
    with pytest.raises(ModelError, match=r"tokenizer\.chat_template is not valid jinja2"):
        load_template(None, "{{ unclosed")
    with pytest.raises(ConfigError, match="neither a jinja2 template nor a readable file"):
        load_template(str(tmp_path / "missing.jinja"), None)


def test_raise_exception_in_template_is_an_invalid_request() -> None:
    strict = ChatTemplate("{% if messages[0].role != 'system' %}{{ raise_exception('system first') }}{% endif %}",
                          "test")
    with pytest.raises(InvalidRequest, match="rejected the messages: system first") as caught:
        strict.render(MESSAGES, bos_token="", eos_token="")
    assert caught.value.param == "messages"


def test_sandbox_blocks_python_internals() -> None:
    evil = ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}", "test")
    with pytest.raises(InvalidRequest):
        evil.render(MESSAGES, bos_token="", eos_token="")
