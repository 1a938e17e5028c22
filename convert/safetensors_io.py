"""Reads safetensors headers and tensor rows with plain file reads, so memory never holds more than one chunk."""
from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from edge_runtime.errors import ConvertError

# Only float checkpoints are converted; bf16 has no numpy dtype and is widened by hand.
_DTYPES: Mapping[str, tuple[str, int]] = MappingProxyType({"F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2)})
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor's bytes live: file, absolute offset, dtype and shape."""

    name: str
    file: Path
    offset: int
    dtype: str
    shape: tuple[int, ...]

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    @property
    def nbytes(self) -> int:
        return self.n_elements * _DTYPES[self.dtype][1]

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def row_elements(self) -> int:
        return self.n_elements // self.rows if self.rows else 0

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as float32 (f16/bf16 widened), shaped (stop-start, *shape[1:])."""
        code, size = _DTYPES[self.dtype]
        count = (stop - start) * self.row_elements
        raw = np.empty(count, dtype=code)
        with open(self.file, "rb", buffering=0) as handle:
            handle.seek(self.offset + start * self.row_elements * size)
            view = raw.view(np.uint8).data
            got = 0
            while got < len(view):
                n = handle.readinto(view[got:])
                if not n:
                    raise ConvertError(f"{self.file}: truncated data for tensor {self.name!r}")
                got += n
        if self.dtype == "BF16":
            values = raw.astype(np.uint32)
            values <<= 16
            out = values.view(np.float32)
        else:
            out = raw.astype(np.float32, copy=False)
        return out.reshape((stop - start, *self.shape[1:]) if self.shape else ())

    def read(self) -> np.ndarray:
        return self.read_rows(0, self.rows).reshape(self.shape)

    def read_raw(self, start: int, stop: int) -> np.ndarray:
        """Rows as stored (f32/f16 only), for copies that need no conversion."""
        code, size = _DTYPES[self.dtype]
        count = (stop - start) * self.row_elements
        with open(self.file, "rb") as handle:
            handle.seek(self.offset + start * self.row_elements * size)
            data = np.fromfile(handle, dtype=code, count=count)
        if data.size != count:
            raise ConvertError(f"{self.file}: truncated data for tensor {self.name!r}")
        return data


def read_header(path: Path) -> dict[str, TensorRef]:
    """Parse one .safetensors header; a corrupt or truncated one raises ConvertError naming the file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) != 8:
                raise ConvertError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (length,) = struct.unpack("<Q", head)
            if length > min(_MAX_HEADER, size - 8):
                raise ConvertError(f"{path}: corrupt safetensors header (declares {length} header bytes, "
                                   f"file has {size})")
            header = json.loads(handle.read(length).decode("utf-8"))
    except OSError as exc:
        raise ConvertError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConvertError(f"{path}: corrupt safetensors header (not JSON: {exc})") from exc
    if not isinstance(header, dict):
        raise ConvertError(f"{path}: corrupt safetensors header (not a JSON object)")
    base = 8 + length
    tensors: dict[str, TensorRef] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = meta["dtype"]
            shape = tuple(int(d) for d in meta["shape"])
            begin, end = (int(x) for x in meta["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConvertError(f"{path}: corrupt safetensors header entry for {name!r}") from exc
        if dtype not in _DTYPES:
            raise ConvertError(f"{path}: tensor {name!r} has dtype {dtype}; only F32, F16 and BF16 "
                               "checkpoints can be converted")
        ref = TensorRef(name, path, base + begin, dtype, shape)
        if end - begin != ref.nbytes or base + end > size:
            raise ConvertError(f"{path}: tensor {name!r} does not fit the file (truncated or corrupt)")
        tensors[name] = ref
    # Sorted by name inside each shard, as the safetensors library and llama.cpp's converter list them.
    return dict(sorted(tensors.items()))


def index_checkpoint(folder: Path) -> tuple[dict[str, TensorRef], list[Path]]:
    """All tensors of a checkpoint (single file or sharded with model.safetensors.index.json)."""
    index_file = folder / "model.safetensors.index.json"
    if index_file.is_file():
        try:
            weight_map = json.loads(index_file.read_text(encoding="utf-8"))["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConvertError(f"{index_file}: unreadable shard index (no weight_map)") from exc
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise ConvertError(f"{folder}: missing checkpoint shard(s) listed in {index_file.name}: "
                               + ", ".join(missing))
        files = [folder / s for s in shards]
    else:
        files = sorted(p for p in folder.iterdir() if p.name.startswith("model") and p.suffix == ".safetensors")
        if not files:
            raise ConvertError(f"{folder}: no model*.safetensors weights found (only safetensors checkpoints "
                               "are supported; convert .bin files with `safetensors` first)")
        weight_map = None
    tensors: dict[str, TensorRef] = {}
    for file in files:
        tensors.update(read_header(file))
    if weight_map is not None:
        absent = sorted(set(weight_map) - set(tensors))
        if absent:
            raise ConvertError(f"{folder}: tensors listed in the index are missing from their shards: "
                               + ", ".join(absent[:5]) + (" ..." if len(absent) > 5 else ""))
    return tensors, files


def row_chunks(rows: int, row_bytes: int, budget: int) -> Iterator[tuple[int, int]]:
    """Split [0, rows) into runs whose float32 size stays under budget bytes."""
    step = max(1, budget // max(1, row_bytes))
    for start in range(0, rows, step):
        yield start, min(rows, start + step)

