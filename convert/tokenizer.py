"""Tokenizer -> GGUF vocabulary: byte-level BPE from tokenizer.json, SentencePiece from tokenizer.model."""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import gguf

from edge_runtime.errors import ConvertError
from edge_runtime.extras import optional_import

from .arch import Model

# tokenizer.json pre-tokenizer regexes of the families llama.cpp implements, keyed to its tokenizer.ggml.pre.
_LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_TEKKEN_RE = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
              r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_BYTELEVEL_RE = ("ByteLevel", True)
_BYTELEVEL_PLAIN = ("ByteLevel", False)
KNOWN_PRE: Mapping[tuple[tuple[Any, ...], ...], str] = MappingProxyType({
    (_BYTELEVEL_RE,): "gpt-2",
    (("Digits", True), _BYTELEVEL_RE): "smollm",
    (("Split", _LLAMA3_RE), _BYTELEVEL_PLAIN): "llama-bpe",
    (("Split", _QWEN2_RE), _BYTELEVEL_PLAIN): "qwen2",
    (("Split", _TEKKEN_RE), _BYTELEVEL_PLAIN): "tekken",
})
_KNOWN_NORMALIZERS = (None, "NFC")
# Gemma's end-of-turn token sits at a fixed id; llama.cpp needs it marked as EOT to stop chat turns.
_GEMMA_SPECIAL = MappingProxyType({"eot": (107, "<end_of_turn>")})

# SentencePiece piece types as GGUF token types.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class Vocab:
    """Everything the GGUF tokenizer keys need; written by `write`."""

    model: str
    pre: str
    tokens: list[bytes]
    types: list[int]
    scores: list[float] | None
    special: gguf.SpecialVocab
    n_vocab_real: int
    extra_bools: dict[str, bool] = field(default_factory=dict)

    def write(self, writer: gguf.GGUFWriter) -> None:
        for key, value in self.extra_bools.items():
            if key == "add_space_prefix":
                writer.add_add_space_prefix(value)
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        writer.add_token_types(self.types)
        self.special.add_to_gguf(writer, quiet=True)
        if "add_bos" in self.extra_bools:
            writer.add_add_bos_token(self.extra_bools["add_bos"])


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConvertError(f"{path}: unreadable: {exc}") from exc


def _pre_key(item: Mapping[str, Any]) -> tuple[Any, ...]:
    kind = item.get("type")
    if kind == "ByteLevel":
        return (kind, bool(item.get("use_regex", True)))
    if kind == "Digits":
        return (kind, bool(item.get("individual_digits", False)))
    if kind == "Split":
        return (kind, (item.get("pattern") or {}).get("Regex"))
    return (kind,)


def bpe_pre_name(tokenizer: Mapping[str, Any], source: Path) -> str:
    """Map tokenizer.json's pre-tokenizer to llama.cpp's name; unknown ones are refused, never guessed."""
    normalizer = tokenizer.get("normalizer")
    norm_type = normalizer.get("type") if isinstance(normalizer, dict) else None
    pre = tokenizer.get("pre_tokenizer") or {}
    items = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    key = tuple(_pre_key(item) for item in items)
    name = KNOWN_PRE.get(key)
    if name is None or norm_type not in _KNOWN_NORMALIZERS:
        raise ConvertError(
            f"{source}: BPE pre-tokenizer {[k[0] for k in key]} (normalizer {norm_type}) is not one llama.cpp "
            f"implements as far as this converter knows (known: {', '.join(sorted(set(KNOWN_PRE.values())))}); "
            "refusing to guess, since a wrong choice silently changes tokenization")
    return name


def _looks_special(token: str) -> bool:
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<｜") and token.endswith("｜>"))
            or (token.startswith("<unused") and token.endswith(">")))


def _bpe_vocab(model: Model, vocab_size: int) -> Vocab:
    path = model.folder / "tokenizer.json"
    tokenizer = _json(path)
    if (tokenizer.get("model") or {}).get("type") != "BPE":
        raise ConvertError(f"{path}: tokenizer model {tokenizer.get('model', {}).get('type')!r} is not BPE")
    if tokenizer["model"].get("byte_fallback"):
        raise ConvertError(f"{path}: a SentencePiece-style BPE tokenizer.json needs its tokenizer.model beside it")
    pre = bpe_pre_name(tokenizer, path)
    reverse: dict[int, str] = {int(i): t for t, i in tokenizer["model"]["vocab"].items()}
    added = {int(a["id"]): a for a in tokenizer.get("added_tokens", [])}
    for token_id, entry in added.items():
        reverse[token_id] = entry["content"]
    if reverse and max(reverse) >= vocab_size:
        raise ConvertError(f"{path}: token id {max(reverse)} does not fit vocab_size {vocab_size} of config.json")
    tokens: list[bytes] = []
    types: list[int] = []
    for i in range(vocab_size):
        text = reverse.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]".encode())
            types.append(UNUSED)
            continue
        if i in added:
            if added[i].get("special") or _looks_special(text):
                types.append(CONTROL)
            else:
                text = text.replace("\u2581", " ")
                types.append(USER_DEFINED)
        else:
            types.append(NORMAL)
        tokens.append(text.encode("utf-8"))
    special = gguf.SpecialVocab(model.folder, load_merges=True)
    n_real = len(tokenizer["model"]["vocab"]) + len(added)
    return Vocab("gpt2", pre, tokens, types, None, special, n_real)


def _sentencepiece(path: Path) -> Any:
    sentencepiece = optional_import("sentencepiece", what="sentencepiece (needed for tokenizer.model)")
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromFile(str(path))
    except (OSError, RuntimeError) as exc:
        raise ConvertError(f"{path}: not a valid SentencePiece model: {exc}") from exc
    return processor


def _spm_vocab(model: Model, vocab_size: int | None, *, phi3: bool = False) -> Vocab:
    folder = model.folder
    sp = _sentencepiece(folder / "tokenizer.model")
    size = vocab_size or sp.vocab_size()
    tokens = [f"[PAD{i}]".encode() for i in range(size)]
    scores = [-10000.0] * size
    types = [UNUSED] * size
    for i in range(min(size, sp.vocab_size())):
        kind = NORMAL
        if sp.IsUnknown(i):
            kind = UNKNOWN
        elif sp.IsControl(i):
            kind = CONTROL
        elif sp.IsUnused(i):
            kind = UNUSED
        elif sp.IsByte(i):
            kind = BYTE
        tokens[i], scores[i], types[i] = sp.IdToPiece(i).encode("utf-8"), float(sp.GetScore(i)), kind
    if (folder / "added_tokens.json").is_file():
        for text, i in _json(folder / "added_tokens.json").items():
            if int(i) < size:
                tokens[int(i)], scores[int(i)], types[int(i)] = text.encode("utf-8"), -1000.0, USER_DEFINED
    sources: list[list[dict[str, Any]]] = []
    if (folder / "tokenizer_config.json").is_file():
        decoder = _json(folder / "tokenizer_config.json").get("added_tokens_decoder", {})
        sources.append([{"id": int(k), **v} for k, v in decoder.items()])
    if phi3 and (folder / "tokenizer.json").is_file():
        sources.append(_json(folder / "tokenizer.json").get("added_tokens", []))
    for entries in sources:
        for entry in entries:
            i, text = int(entry["id"]), str(entry["content"])
            if i >= size:
                continue
            if phi3:
                types[i] = CONTROL if entry.get("special") else USER_DEFINED
            elif entry.get("special") or _looks_special(text):
                types[i] = CONTROL
            else:
                text = text.replace("\u2581", " ")
                types[i] = USER_DEFINED
            tokens[i], scores[i] = text.encode("utf-8"), -1000.0
    special = gguf.SpecialVocab(folder, n_vocab=len(tokens))
    return Vocab("llama", "default", tokens, types, scores, special, len(tokens))


def build_vocab(model: Model) -> Vocab:
    """The GGUF vocabulary for the model's tokenizer kind; a missing tokenizer is a ConvertError."""
    folder, kind = model.folder, model.arch.vocab
    has_spm = (folder / "tokenizer.model").is_file()
    has_json = (folder / "tokenizer.json").is_file()
    if not has_spm and not has_json:
        raise ConvertError(f"{folder}: no tokenizer (neither tokenizer.json nor tokenizer.model)")
    vocab_size = model.find("vocab_size")
    config = _json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    if kind == "spm-phi3":
        if config.get("tokenizer_class") == "GPT2Tokenizer":
            return _bpe_vocab(model, int(model.find("vocab_size", required=True)))
        if not has_spm:
            raise ConvertError(f"{folder}: Phi-3 needs tokenizer.model (SentencePiece)")
        return _spm_vocab(model, vocab_size, phi3=True)
    if kind in ("spm", "spm-gemma") or (kind == "spm-or-bpe-gemma3" and has_spm):
        if not has_spm:
            raise ConvertError(f"{folder}: {model.hf_arch} needs tokenizer.model (SentencePiece)")
        vocab = _spm_vocab(model, vocab_size)
        vocab.extra_bools["add_space_prefix"] = False
        if kind == "spm-gemma":
            for name, (token_id, text) in _GEMMA_SPECIAL.items():
                if token_id < len(vocab.tokens) and vocab.tokens[token_id] == text.encode():
                    vocab.special._set_special_token(name, token_id)
        return vocab
    if has_spm:
        vocab = _spm_vocab(model, vocab_size)
    else:
        vocab = _bpe_vocab(model, int(model.find("vocab_size", required=True)))
    if model.arch.permute_qk:  # llama family
        if isinstance(config.get("add_prefix_space"), bool):
            vocab.extra_bools["add_space_prefix"] = config["add_prefix_space"]
        if vocab_size == 49152:
            # llama.cpp's rule for 49152-token llama vocabularies (SmolLM, Granite): they are trained without BOS.
            vocab.extra_bools["add_bos"] = False
    return vocab
