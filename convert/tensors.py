"""Plans every output tensor (GGUF name, shape, type, fixes) and produces its bytes chunk by chunk."""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import gguf
import numpy as np

from edge_runtime.errors import ConvertError

from .arch import Model
from .safetensors_io import TensorRef, row_chunks

Q = gguf.GGMLQuantizationType
CHUNK_BYTES = 32 * 1024 * 1024  # float32 working set per chunk: bounds peak memory, not the model size
_SKIP_SUFFIXES = (".attention.masked_bias", ".attention.bias", ".rotary_emb.inv_freq")
_MULTIMODAL = ("vision_tower.", "multi_modal_projector.", "vision_model.", "audio_tower.", "visual.", "vision.",
               "audio.", "embed_vision.", "embed_audio.")


@dataclass(frozen=True)
class Planned:
    """One output tensor: where its data comes from and what happens to it on the way."""

    name: str
    shape: tuple[int, ...]
    qtype: gguf.GGMLQuantizationType
    source: TensorRef | None = None
    constant: np.ndarray | None = None
    permute_heads: int = 0  # >0: undo HF's rotary half split for this many heads
    plus_one: bool = False
    row_limit: int | None = None

    @property
    def nbytes(self) -> int:
        n = int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1
        return n * (4 if self.qtype == Q.F32 else 2)

    def chunks(self) -> Iterator[np.ndarray]:
        """The tensor's output bytes as arrays, a bounded number of rows at a time."""
        if self.constant is not None:
            yield _cast(self.constant, self.qtype)
            return
        assert self.source is not None
        src = self.source
        rows = self.shape[0] if self.shape else 1
        if self.permute_heads:
            data = src.read()[:rows]
            yield _cast(permute_heads_rows(data, self.permute_heads), self.qtype)
            return
        copy_raw = not self.plus_one and (src.dtype, self.qtype) in (("F16", Q.F16), ("F32", Q.F32))
        row_bytes = max(1, src.row_elements) * 4
        for start, stop in row_chunks(rows, row_bytes, CHUNK_BYTES):
            if copy_raw:
                yield src.read_raw(start, stop)
                continue
            data = src.read_rows(start, stop)
            if self.plus_one:
                data += np.float32(1.0)
            yield _cast(data, self.qtype)


def _cast(data: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    if qtype == Q.F32:
        return data.astype(np.float32, copy=False)
    if qtype == Q.F16:
        return data.astype(np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), Q.BF16)


def permute_heads_rows(weights: np.ndarray, n_head: int) -> np.ndarray:
    # HF rotates [first half | second half] of each head; llama.cpp (and the original Meta layout) interleaves.
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _out_type(name: str, n_dims: int, ftype: gguf.GGMLQuantizationType) -> gguf.GGMLQuantizationType:
    # llama.cpp expects norms, biases and 1-D tensors in F32 whatever the file type.
    if n_dims <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return Q.F32
    return ftype


def _hf_name(name: str) -> str | None:
    if name.endswith(_SKIP_SUFFIXES):
        return None
    bare = name.replace("model.", "", 1) if name.startswith("model.") else name
    if bare.startswith(_MULTIMODAL) or "vision_" in name or "audio_" in name:
        return None
    return name.replace("language_model.", "")


def plan(model: Model, refs: Mapping[str, TensorRef], ftype: gguf.GGMLQuantizationType,
         n_vocab_real: int) -> list[Planned]:
    """Output tensors in llama.cpp's order: generated extras first, then the checkpoint's, shard by shard."""
    arch = model.arch
    name_map = gguf.get_tensor_name_map(arch.gguf_arch, model.block_count)
    planned: list[Planned] = []
    for make in arch.extra_tensors:
        for extra_name, values in make(model):
            planned.append(Planned(extra_name, values.shape, Q.F32, constant=values))
    n_head = int(model.find("num_attention_heads", "n_head", default=0))
    n_kv = int(model.find("num_key_value_heads", "n_kv_heads", default=n_head))
    for hf_name, ref in refs.items():
        name = _hf_name(hf_name)
        if name is None or name in arch.drop:
            continue
        mapped = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise ConvertError(f"tensor {hf_name!r} has no GGUF name for {arch.gguf_arch.name.lower()}; "
                               "is this checkpoint a variant the converter does not know?")
        gguf_name: str = mapped
        shape = ref.shape
        permute = 0
        if arch.permute_qk and name.endswith(("q_proj.weight", "q_proj.bias")):
            permute = n_head
        elif arch.permute_qk and name.endswith(("k_proj.weight", "k_proj.bias")):
            permute = n_kv
        row_limit = None
        if arch.trim_embeddings_to_vocab and "embed_tokens.weight" in name and shape[0] > n_vocab_real:
            row_limit = n_vocab_real
            shape = (n_vocab_real, *shape[1:])
        plus_one = arch.norm_plus_one and name.endswith("norm.weight")
        planned.append(Planned(gguf_name, shape, _out_type(gguf_name, len(shape), ftype), source=ref,
                               permute_heads=permute, plus_one=plus_one, row_limit=row_limit))
    names = [p.name for p in planned]
    if len(set(names)) != len(names):
        raise ConvertError("two checkpoint tensors map to the same GGUF tensor; the checkpoint is ambiguous")
    return planned


def add_infos(writer: gguf.GGUFWriter, planned: list[Planned]) -> None:
    for p in planned:
        if p.qtype == Q.BF16:
            writer.add_tensor_info(p.name, p.shape, np.dtype(np.uint16), p.nbytes, raw_dtype=Q.BF16)
        else:
            dtype = np.dtype(np.float32 if p.qtype == Q.F32 else np.float16)
            writer.add_tensor_info(p.name, p.shape, dtype, p.nbytes)
