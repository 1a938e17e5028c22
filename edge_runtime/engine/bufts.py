"""Take one of ggml's CPU extra buffer types (AMX, CPU_REPACK) out of use before a model loads."""
from __future__ import annotations

import ctypes
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_GGML_BACKEND_DEVICE_TYPE_CPU = 0
_GetExtraBufts = ctypes.CFUNCTYPE(ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)


def _fn(lib: ctypes.CDLL, name: str, argtypes: list[Any], restype: Any) -> Any:
    fn = getattr(lib, name)
    fn.argtypes, fn.restype = argtypes, restype
    return fn


def _extra_bufts(lib_dir: Path) -> tuple[Any, Any]:
    """The CPU device's null-terminated extra buffer type array, and a function naming each entry."""
    ggml = ctypes.CDLL(str(lib_dir / "libggml.so"))
    dev_by_type = _fn(ggml, "ggml_backend_dev_by_type", [ctypes.c_int], ctypes.c_void_p)
    dev_reg = _fn(ggml, "ggml_backend_dev_backend_reg", [ctypes.c_void_p], ctypes.c_void_p)
    proc = _fn(ggml, "ggml_backend_reg_get_proc_address", [ctypes.c_void_p, ctypes.c_char_p], ctypes.c_void_p)
    buft_name = _fn(ggml, "ggml_backend_buft_name", [ctypes.c_void_p], ctypes.c_char_p)
    dev = dev_by_type(_GGML_BACKEND_DEVICE_TYPE_CPU)
    address = proc(dev_reg(dev), b"ggml_backend_dev_get_extra_bufts") if dev else None
    if not address:
        return None, buft_name
    return _GetExtraBufts(address)(dev), buft_name


def _entries(array: Any) -> list[int]:
    """The buffer types in the null-terminated array (none when there is no array)."""
    entries: list[int] = []
    while array and array[len(entries)]:
        entries.append(int(array[len(entries)]))
    return entries


def extra_buffer_types(lib_dir: Path) -> list[str]:
    """The names of the CPU extra buffer types llama.cpp will place weights in, in its order of preference."""
    array, name = _extra_bufts(lib_dir)
    return [name(e).decode() for e in _entries(array)]


def drop_extra_buffer_types(lib_dir: Path, names: Iterable[str]) -> list[str]:
    """Remove buffer types by name from that array; returns the names removed.

    llama.cpp builds its weight placement list from this one static array (llama-model.cpp make_cpu_buft_list,
    also for LoRA adapters), so an entry taken out here is never used by a model loaded afterwards, while the
    others stay: with AMX gone, x86 repacking (fast Q4_0/Q4_K) still works, unlike with use_extra_bufts=False.
    Compute dispatch only picks an extra type for tensors stored in its buffers, so none reaches AMX code.
    """
    unwanted = set(names)
    array, name = _extra_bufts(lib_dir)
    entries = _entries(array)
    kept = [e for e in entries if name(e).decode() not in unwanted]
    removed = [name(e).decode() for e in entries if e not in kept]
    for i, entry in enumerate([*kept, *([None] * (len(entries) - len(kept)))]):
        array[i] = entry
    return removed
