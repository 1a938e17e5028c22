"""PEFT LoRA adapter to GGUF LoRA, tensor for tensor what llama.cpp's convert_lora_to_gguf.py writes, no torch."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import gguf
import numpy as np

from edge_runtime.errors import ConvertError

from . import manifest
from .arch import Model, load_model
from .lora_adapter import Adapter, LoraPair, load_adapter
from .safetensors_io import TensorRef, index_checkpoint
from .source import resolve
from .tensors import permute_heads_rows

log = logging.getLogger(__name__)
Q = gguf.GGMLQuantizationType
# --outtype of the reference converter -> (tensor type, file type naming the output); f32 is its default.
OUTTYPES = MappingProxyType({
    "f32": (Q.F32, gguf.LlamaFileType.ALL_F32), "f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
    "bf16": (Q.BF16, gguf.LlamaFileType.MOSTLY_BF16), "q8_0": (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0)})
DEFAULT_OUTTYPE = "f32"


@dataclass(frozen=True)
class LoraOptions:
    """What `clawd-edge convert --lora` was asked to do."""

    adapter: Path
    base: str | None = None  # HF folder or hub id; None: the adapter config's base_model_name_or_path
    outtype: str = DEFAULT_OUTTYPE
    output: Path | None = None
    revision: str | None = None


@dataclass(frozen=True)
class LoraResult:
    output: Path
    outtype: str
    n_tensors: int
    sha256: str


@dataclass(frozen=True)
class _Out:
    """One GGUF tensor: name and float32 data in GGUF (numpy) order, before the output type is applied."""

    name: str
    data: np.ndarray


def _base_refs(folder: Path) -> dict[str, TensorRef] | None:
    """The base weights' shapes if the folder has them; a config-only base (as the reference allows) has none."""
    if not any(folder.glob("model*.safetensors")):
        return None
    return index_checkpoint(folder)[0]


def _check_shape(pair: LoraPair, base: dict[str, TensorRef] | None, model: Model) -> None:
    if base is None:
        return
    ref = base.get(pair.base_name)
    if ref is None:
        raise ConvertError(f"adapter targets {pair.base_name!r}, which the base model ({model.hf_arch}) does not "
                           "have: the adapter was made for another model")
    # W (out, in) = B (out, r) @ A (r, in); PEFT's embedding LoRA stores A as (r, vocab), B as (hidden, r).
    delta = ((pair.a.shape[1], pair.b.shape[0]) if pair.is_embedding else (pair.b.shape[0], pair.a.shape[1]))
    if tuple(ref.shape) != delta:
        raise ConvertError(f"adapter does not fit the base model: {pair.base_name} is {list(ref.shape)} in the "
                           f"base but {list(delta)} in the adapter (different model size?)")


def _plan(model: Model, adapter: Adapter, base: dict[str, TensorRef] | None) -> list[_Out]:
    arch = model.arch
    name_map = gguf.get_tensor_name_map(arch.gguf_arch, model.block_count)
    n_head = int(model.find("num_attention_heads", "n_head", default=0))
    n_kv = int(model.find("num_key_value_heads", "n_kv_heads", default=n_head))
    out: list[_Out] = []
    for pair in adapter.pairs:
        name = pair.base_name
        if name in arch.drop:
            # e.g. Gemma writes no output matrix (it is tied to the embeddings), so nothing to adapt.
            raise ConvertError(f"adapter targets {name!r}, which llama.cpp drops for {model.hf_arch}")
        _check_shape(pair, base, model)  # first: "made for another model" says more than "unsupported"
        mapped = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise ConvertError(f"adapter target {name!r} has no llama.cpp tensor for "
                               f"{arch.gguf_arch.name.lower()} (unsupported target module)")
        a, b = pair.a.read(), pair.b.read()
        if arch.permute_qk and name.endswith(("q_proj.weight", "k_proj.weight")):
            # The base's output rows are reordered by the rotary permutation; B holds the output rows of
            # B @ A, so permuting B alone reorders the product identically.
            b = permute_heads_rows(b, n_head if name.endswith("q_proj.weight") else n_kv)
        if pair.is_embedding:
            if arch.trim_embeddings_to_vocab:
                raise ConvertError(f"embedding LoRA is not supported for {model.hf_arch} (llama.cpp trims its "
                                   "embedding rows)")
            # llama.cpp gathers token rows from lora_a (see llm_build_inp_embd), so it wants A as (vocab, r).
            a = np.ascontiguousarray(a.T)
        out.append(_Out(f"{mapped}.lora_a", a))
        out.append(_Out(f"{mapped}.lora_b", b))
    return out


def _encode(data: np.ndarray, qtype: gguf.GGMLQuantizationType) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    """The tensor's bytes; Q8_0 falls back to F16 for rows that are not whole blocks (rank-sized B rows)."""
    try:
        return gguf.quants.quantize(data, qtype), qtype
    except gguf.QuantError:
        return gguf.quants.quantize(data, Q.F16), Q.F16


def _output_path(requested: Path | None, meta: gguf.Metadata, file_type: gguf.LlamaFileType) -> Path:
    # Same default name as the reference (e.g. Llama-F16-LoRA.gguf), in the current folder or the given one.
    name = gguf.naming_convention(meta.name, meta.basename, meta.finetune, meta.version, meta.size_label,
                                  file_type.name.partition("_")[2], model_type="LoRA") + ".gguf"
    out = requested or Path(name)
    if out.is_dir():
        out = out / name
    if not out.parent.is_dir():
        raise ConvertError(f"{out.parent}: output folder does not exist")
    return out.resolve()


def _write(writer: gguf.GGUFWriter, path: Path) -> None:
    writer.write_header_to_file(path=path)
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def convert_lora(options: LoraOptions) -> LoraResult:
    """Convert one adapter; on any failure nothing is left at the output path (nor a temp file beside it)."""
    outtype = options.outtype.lower()
    if outtype not in OUTTYPES:
        raise ConvertError(f"unknown LoRA output type {options.outtype!r}; choose one of {', '.join(OUTTYPES)}")
    qtype, file_type = OUTTYPES[outtype]
    adapter = load_adapter(options.adapter.expanduser())
    base_src = options.base or adapter.base_model
    if not base_src:
        raise ConvertError(f"{adapter.folder}: adapter_config.json names no base_model_name_or_path; pass --base")
    source = resolve(base_src, options.revision)
    model = load_model(source.folder)
    planned = _plan(model, adapter, _base_refs(source.folder))

    writer = gguf.GGUFWriter(path=None, arch=gguf.MODEL_ARCH_NAMES[model.arch.gguf_arch])
    for tensor in planned:
        data, kind = _encode(tensor.data, qtype)
        writer.add_tensor(tensor.name, data, raw_dtype=kind)
    total = writer.get_total_parameter_count()[0]  # negative for LoRA files, so no size label is derived
    # Metadata order and sources as the reference: name and base-model fields from the adapter's model card.
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    meta = gguf.Metadata.load(None, adapter.folder, None, total)
    if source.repo_id is not None:
        meta.name = source.repo_id
    elif meta.name is None:
        meta.name = Path(base_src).name
    meta.set_gguf_meta_model(writer)
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, adapter.alpha)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    out = _output_path(options.output, meta, file_type)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.part")
    try:
        _write(writer, tmp)
        digest = manifest.sha256_file(tmp)
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConvertError(f"writing {out}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("wrote %s: %d tensors, alpha %s", out, len(planned), adapter.alpha)
    return LoraResult(out, outtype, len(planned), digest)
