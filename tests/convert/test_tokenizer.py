"""The converted vocabulary tokenizes like the source tokenizer: llama.cpp vs `tokenizers` / `sentencepiece`."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import gguf
import pytest
from click.testing import CliRunner

from convert.pipeline import ConvertOptions, convert
from edge_runtime.cli import cli
from edge_runtime.errors import ConvertError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "convert"
TEXT = ("Hello world! The year 2024 had 366 days; pi ≈ 3.14159.\n"
        "Ça va très bien, merci. Größe: 12 Äpfel. ¿Dónde está? \n\n"
        "Привет, как дела? 你好，世界！我想在apple工作1314151天。こんにちは、元気ですか？\n"
        "안녕하세요 세계. مرحبا بالعالم. नमस्ते दुनिया। Γειά σου κόσμε.\n"
        "Emoji: 🚀🦙 ✅ 😶‍🌫️ — I've been told he'll   be there\t(tabs)  and   spaces    .\n"
        "code: def f(x):\n    return x ** 2  # comment\n")


def _vocab_only(name: str, tmp_path: Path) -> Path:
    out = tmp_path / f"{name}-vocab.gguf"
    res = CliRunner().invoke(cli, ["convert", str(FIXTURES / name), "--vocab-only", "-o", str(out)])
    assert res.exit_code == 0, res.output
    return out


def _llama_tokenize(path: Path, text: str) -> list[int]:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    try:
        return list(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))
    finally:
        llm.close()


@pytest.mark.parametrize(("name", "pre"), [("llama", "smollm"), ("llama3", "llama-bpe"), ("qwen2", "qwen2")])
def test_bpe_tokenization_matches_tokenizers_library(name: str, pre: str, tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    out = _vocab_only(name, tmp_path)
    reader = gguf.GGUFReader(out)
    assert reader.fields["tokenizer.ggml.pre"].contents() == pre
    assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert not reader.tensors  # --vocab-only: no weights
    expected = Tokenizer.from_file(str(FIXTURES / name / "tokenizer.json")).encode(TEXT, add_special_tokens=False).ids
    got = _llama_tokenize(out, TEXT)
    assert len(expected) > 100
    assert got == expected


@pytest.mark.parametrize("name", ["mistral", "gemma", "gemma3", "phi3"])
def test_sentencepiece_tokenization_matches_sentencepiece(name: str, tmp_path: Path) -> None:
    from sentencepiece import SentencePieceProcessor

    out = _vocab_only(name, tmp_path)
    sp = SentencePieceProcessor()
    sp.LoadFromFile(str(FIXTURES / name / "tokenizer.model"))
    expected = list(sp.encode(TEXT))
    got = _llama_tokenize(out, TEXT)
    assert len(expected) > 100
    assert got == expected


def test_special_tokens_flags_padding_and_chat_template(tmp_path: Path) -> None:
    reader = gguf.GGUFReader(_vocab_only("qwen2", tmp_path))
    fields = reader.fields
    config = json.loads((FIXTURES / "qwen2" / "config.json").read_text())
    tokens = fields["tokenizer.ggml.tokens"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    assert len(tokens) == config["vocab_size"] == 2112  # padded past the tokenizer's 2048 tokens
    assert tokens[-1] == "[PAD2111]" and types[-1] == gguf.TokenType.UNUSED
    assert tokens[1] == "<|im_start|>" and types[1] == gguf.TokenType.CONTROL
    assert fields["tokenizer.ggml.bos_token_id"].contents() == 1
    assert fields["tokenizer.ggml.eos_token_id"].contents() == 2
    assert fields["tokenizer.ggml.add_bos_token"].contents() is False
    assert "<|im_start|>" in fields["tokenizer.chat_template"].contents()
    assert len(fields["tokenizer.ggml.merges"].contents()) > 1000

    phi3 = gguf.GGUFReader(_vocab_only("phi3", tmp_path)).fields
    tokens = phi3["tokenizer.ggml.tokens"].contents()
    types = phi3["tokenizer.ggml.token_type"].contents()
    end = tokens.index("<|end|>")
    assert types[end] == gguf.TokenType.CONTROL and tokens[-1].startswith("[PAD")
    assert phi3["tokenizer.ggml.add_bos_token"].contents() is True


def test_unknown_bpe_pre_tokenizer_is_refused(fixture_copy: Callable[[str], Path], tmp_path: Path) -> None:
    folder = fixture_copy("qwen2")
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    data["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{L}+|\s+"
    (folder / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ConvertError, match="refusing to guess"):
        convert(ConvertOptions(src=str(folder), qtype="f16", output=tmp_path / "x.gguf", progress=False))
    assert not (tmp_path / "x.gguf").exists()
