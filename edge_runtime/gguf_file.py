"""Fast GGUF header check and metadata summary, run before a file is handed to llama.cpp."""
from __future__ import annotations

import mmap
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelError

GGUF_MAGIC = b"GGUF"
_ALIGNMENT_KEY = "general.alignment"
_DEFAULT_ALIGNMENT = 32

# GGUF value types (gguf spec): id -> struct format of one scalar; 8 = string, 9 = array.
_SCALARS: Mapping[int, str] = {
    0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d",
}
_STRING, _ARRAY = 8, 9
# Keys whose (large) array values we skip instead of decoding: they are not needed for planning.
_SKIPPED_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.scores",
                   "tokenizer.ggml.token_type")


@dataclass(frozen=True)
class GgufInfo:
    """What the planner, doctor and engine need to know about a model file without loading it."""

    path: Path
    file_size: int
    version: int
    architecture: str
    name: str | None
    n_tensors: int
    n_layers: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ctx_train: int
    n_vocab: int
    file_type: int | None
    chat_template: str | None
    bos_token_id: int | None
    eos_token_id: int | None
    data_end: int
    metadata: Mapping[str, Any]

    @property
    def kv_bytes_per_token_f16(self) -> int:
        """K and V for every layer, f16: the KV cache cost of one context cell."""
        return 2 * self.n_layers * self.n_head_kv * self.head_dim * 2


class _Cursor:
    def __init__(self, buf: mmap.mmap | bytes, path: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.path = path

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise ModelError(f"{self.path}: GGUF header is truncated (file ends at byte {len(self.buf)})")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        length = self.take("<Q")
        if self.pos + length > len(self.buf):
            raise ModelError(f"{self.path}: GGUF header is truncated inside a string")
        raw = self.buf[self.pos:self.pos + length]
        self.pos += length
        return bytes(raw).decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        for _ in range(count):
            length = self.take("<Q")
            self.pos += length
        if self.pos > len(self.buf):
            raise ModelError(f"{self.path}: GGUF header is truncated inside a string array")

    def value(self, vtype: int, *, keep_array: bool = True) -> Any:
        """Decode one value; a skipped array (keep_array=False) returns its element count."""
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item_type = self.take("<I")
            count = self.take("<Q")
            if not keep_array:
                if item_type == _STRING:
                    self.skip_strings(count)
                elif item_type in _SCALARS:
                    self.pos += count * struct.calcsize(_SCALARS[item_type])
                else:
                    for _ in range(count):
                        self.value(item_type, keep_array=False)
                return count
            return [self.value(item_type) for _ in range(count)]
        raise ModelError(f"{self.path}: unknown GGUF value type {vtype} at byte {self.pos}")


def _tensor_bytes(ggml_type: int, dims: list[int], path: Path, name: str) -> int:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        raise ModelError(f"{path}: tensor {name!r} has unknown ggml type {ggml_type}") from None
    elements = 1
    for d in dims:
        elements *= d
    return elements // block_size * type_size


def inspect(path: str | Path) -> GgufInfo:
    """Parse and check a GGUF file's header; raise ModelError for anything llama.cpp would choke on."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise ModelError(f"{path}: not a regular file")
        with path.open("rb") as fh:
            if size < 24:
                raise ModelError(f"{path}: not a GGUF model file ({size} bytes, too small)")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(buf, path, size)
    except FileNotFoundError:
        raise ModelError(f"{path}: model file not found") from None
    except PermissionError:
        raise ModelError(f"{path}: permission denied") from None
    except IsADirectoryError:
        raise ModelError(f"{path}: is a directory, expected a .gguf file") from None


def _parse(buf: mmap.mmap, path: Path, size: int) -> GgufInfo:
    magic = bytes(buf[:4])
    if magic != GGUF_MAGIC:
        raise ModelError(f"{path}: not a GGUF model file (starts with {magic!r}, expected {GGUF_MAGIC!r})")
    cur = _Cursor(buf, path)
    cur.pos = 4
    version = cur.take("<I")
    if version not in (2, 3):
        raise ModelError(f"{path}: unsupported GGUF version {version} (supported: 2, 3)")
    n_tensors = cur.take("<Q")
    n_kv = cur.take("<Q")
    if n_tensors > 1_000_000 or n_kv > 1_000_000:
        raise ModelError(f"{path}: corrupt GGUF header ({n_tensors} tensors, {n_kv} metadata keys)")
    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        vtype = cur.take("<I")
        if key in _SKIPPED_ARRAYS and vtype == _ARRAY:
            meta[key + ".count"] = cur.value(vtype, keep_array=False)
        else:
            meta[key] = cur.value(vtype)
    extent = 0
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.take("<I")
        if n_dims > 8:
            raise ModelError(f"{path}: corrupt tensor info for {name!r} ({n_dims} dimensions)")
        dims = [cur.take("<Q") for _ in range(n_dims)]
        ggml_type = cur.take("<I")
        offset = cur.take("<Q")
        extent = max(extent, offset + _tensor_bytes(ggml_type, dims, path, name))
    alignment = int(meta.get(_ALIGNMENT_KEY, _DEFAULT_ALIGNMENT))
    data_start = -(-cur.pos // alignment) * alignment
    data_end = data_start + extent
    if data_end > size:
        raise ModelError(
            f"{path}: file is truncated: tensor data needs {data_end} bytes but the file has {size}"
        )
    return _summarise(path, size, version, n_tensors, data_end, meta)


def _summarise(path: Path, size: int, version: int, n_tensors: int, data_end: int,
               meta: Mapping[str, Any]) -> GgufInfo:
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelError(f"{path}: GGUF file has no general.architecture; it is not a model")

    def arch_int(key: str, default: int = 0) -> int:
        value = meta.get(f"{arch}.{key}", default)
        if isinstance(value, list):  # per-layer head counts (some archs): plan for the largest
            value = max(value) if value else default
        return int(value)

    n_embd = arch_int("embedding_length")
    n_head = arch_int("attention.head_count")
    n_head_kv = arch_int("attention.head_count_kv", n_head)
    head_dim = arch_int("attention.key_length", n_embd // n_head if n_head else 0)
    n_vocab = arch_int("vocab_size", int(meta.get("tokenizer.ggml.tokens.count", 0)))
    template = meta.get("tokenizer.chat_template")
    return GgufInfo(
        path=path, file_size=size, version=version, architecture=arch,
        name=meta.get("general.name") if isinstance(meta.get("general.name"), str) else None,
        n_tensors=n_tensors, n_layers=arch_int("block_count"), n_embd=n_embd, n_head=n_head,
        n_head_kv=n_head_kv, head_dim=head_dim, n_ctx_train=arch_int("context_length"), n_vocab=n_vocab,
        file_type=meta.get("general.file_type"),
        chat_template=template if isinstance(template, str) else None,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
        data_end=data_end, metadata=meta,
    )
