"""Quantizes an F16/BF16/F32 GGUF with llama.cpp's own llama_model_quantize (via llama-cpp-python)."""
from __future__ import annotations

import ctypes
import logging
import sys
import threading
from pathlib import Path
from types import MappingProxyType
from typing import Any

from edge_runtime.errors import ConvertError

log = logging.getLogger(__name__)
# -q name -> llama_ftype constant name in llama_cpp.
FTYPES = MappingProxyType({
    "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
})


def quantize(src: Path, dst: Path, qtype: str, *, threads: int = 0, show_progress: bool = True) -> None:
    """Write dst as the qtype quantization of src; a failure raises ConvertError (dst may be partial)."""
    from edge_runtime.engine.native import import_llama  # the CPU guard runs before llama.cpp does

    llama_cpp = import_llama()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPES[qtype])
    params.nthread = threads
    result: list[int] = []

    def run() -> None:
        result.append(int(llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)))

    # llama.cpp logs every tensor at INFO; show that only with -v, the bar says enough otherwise.
    callback = _log_filter(llama_cpp, verbose=log.isEnabledFor(logging.INFO))
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))
    # llama_model_quantize has no progress callback: the bar follows the output file as it grows.
    worker = threading.Thread(target=run, name="llama-quantize", daemon=True)
    worker.start()
    bar = _bar(src.stat().st_size, qtype) if show_progress else None
    try:
        while worker.is_alive():
            worker.join(0.2)
            if bar is not None and dst.exists():
                bar.n = min(bar.total, dst.stat().st_size)
                bar.refresh()
    finally:
        if bar is not None:
            bar.close()
        worker.join()
        _restore_log(llama_cpp)
    if not result or result[0] != 0:
        raise ConvertError(f"llama_model_quantize failed ({result[0] if result else 'crashed'}) quantizing "
                           f"{src.name} to {qtype}; see the llama.cpp log above (disk full?)")


def _bar(total: int, qtype: str) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    # The quantized file is smaller than its source; total is only an upper bound for the bar.
    return tqdm(total=total, unit="B", unit_scale=True, desc=f"quantize {qtype}", leave=False,
                disable=None, mininterval=0.5)



# ggml_log_level in the llama.cpp llama-cpp-python 0.3.36 ships: DEBUG=1, INFO=2, WARN=3, ERROR=4, CONT=5.
_WARN, _CONT = 3, 5
# llama.cpp writes each per-tensor fallback warning in two calls; both halves are hidden.
_FALLBACK_PARTS = (b"not divisible by", b"falling back to")


def _log_filter(llama_cpp: Any, *, verbose: bool) -> Any:
    shown = [True]

    def forward(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        if level != _CONT:
            # Per-tensor k-quant fallbacks (rows not a multiple of 256) are summed up in one closing warning.
            shown[0] = verbose or (level >= _WARN and not any(part in text for part in _FALLBACK_PARTS))
        if shown[0]:
            sys.stderr.write(text.decode("utf-8", errors="replace"))

    return llama_cpp.llama_log_callback(forward)


def _restore_log(llama_cpp: Any) -> None:
    from edge_runtime.engine.native import route_llama_logs

    llama_cpp.llama_log_set(route_llama_logs(llama_cpp), ctypes.c_void_p(0))
