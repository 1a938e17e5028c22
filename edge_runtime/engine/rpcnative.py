"""ggml's side of RPC through ctypes (llama-cpp-python exposes none of it): register workers, offload, abort hook."""
from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import EngineError
from .rpc import Split

log = logging.getLogger("edge_runtime.engine")
AbortHandler = Callable[[str], None]
_ABORT_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_char_p)


def _library(directory: Path, name: str, signatures: dict[str, tuple[list[Any], Any]]) -> Any:
    # The soname libllama is linked against: a wheel cannot hold symlinks, so libggml.so and libggml.so.0 are two
    # copies of the library there, each with its own backend registry and abort callback.
    path = directory / f"{name}.0"
    lib = ctypes.CDLL(str(path if path.exists() else directory / name))
    for function, (argtypes, restype) in signatures.items():
        getattr(lib, function).argtypes = argtypes
        getattr(lib, function).restype = restype
    return lib


_P = ctypes.c_void_p
_GGML: dict[str, tuple[list[Any], Any]] = {
    "ggml_backend_reg_by_name": ([ctypes.c_char_p], _P),
    "ggml_backend_reg_get_proc_address": ([_P, ctypes.c_char_p], _P),
    "ggml_backend_register": ([_P], None),
    "ggml_backend_reg_count": ([], ctypes.c_size_t),
    "ggml_backend_reg_get": ([ctypes.c_size_t], _P),
    "ggml_backend_reg_dev_count": ([_P], ctypes.c_size_t),
    "ggml_backend_reg_dev_get": ([_P, ctypes.c_size_t], _P),
}
_GGML_BASE: dict[str, tuple[list[Any], Any]] = {"ggml_set_abort_callback": ([_P], _P)}


class Offload:
    """The workers of a Split registered with ggml as devices, and what llama_model_params needs to use them.

    Registration is per process and idempotent (ggml keeps one registry entry per endpoint, and an entry already
    registered is not registered again), so a model unloaded after keep_alive and loaded again reuses them.
    """

    def __init__(self, library_dir: Path, split: Split) -> None:
        self.split = split
        self._ggml = _library(library_dir, "libggml.so", _GGML)
        self._base = _library(library_dir, "libggml-base.so", _GGML_BASE)
        self._callback: Any = None
        rpc = self._ggml.ggml_backend_reg_by_name(b"RPC")
        if not rpc:
            raise EngineError("this llama.cpp build has no RPC backend; install a clawd-edge build profile "
                              "(scripts/bootstrap.sh builds llama.cpp with GGML_RPC=ON)")
        add = ctypes.CFUNCTYPE(_P, ctypes.c_char_p)(
            self._ggml.ggml_backend_reg_get_proc_address(rpc, b"ggml_backend_rpc_add_server"))
        registered = {self._ggml.ggml_backend_reg_get(i) for i in range(self._ggml.ggml_backend_reg_count())}
        self.devices: list[int] = []
        for endpoint in (b.name for b in split.workers):
            # The probe has already talked to this worker, so the handshake inside add_server cannot abort here.
            reg = add(endpoint.encode())
            if not reg:
                raise EngineError(f"RPC worker {endpoint} offers no device")
            if reg not in registered:
                self._ggml.ggml_backend_register(reg)
                registered.add(reg)
            # A CPU worker has one device; a worker with several would get its layers on the first.
            self.devices.append(self._ggml.ggml_backend_reg_dev_get(reg, 0))
        self._device_array = (_P * (len(self.devices) + 1))(*self.devices, None)
        self._tensor_split: Any = None

    def apply(self, lib: Any, mparams: Any) -> None:
        """Point `mparams` at the worker devices: the last offloaded_layers layers go to them, in proportion."""
        mparams.devices = ctypes.cast(self._device_array, dict(lib.llama_model_params._fields_)["devices"])
        mparams.n_gpu_layers = self.split.offloaded_layers  # the output layer stays here, with the embeddings
        mparams.split_mode = lib.LLAMA_SPLIT_MODE_LAYER
        shares = [float(b.layers) for b in self.split.workers]
        self._tensor_split = (ctypes.c_float * max(lib.llama_max_devices(), len(shares)))(*shares)
        mparams.tensor_split = ctypes.cast(self._tensor_split, ctypes.POINTER(ctypes.c_float))

    def on_abort(self, handler: AbortHandler) -> None:
        """Call `handler(message)` when ggml is about to abort the process (a worker died mid-decode): the engine
        answers its requests and exits itself; returning from the handler lets the abort go on."""
        def hook(message: bytes | None) -> None:
            handler((message or b"").decode(errors="replace").strip())

        self._callback = _ABORT_CALLBACK(hook)
        self._base.ggml_set_abort_callback(ctypes.cast(self._callback, _P))

    def close(self) -> None:
        if self._callback is not None:
            self._base.ggml_set_abort_callback(None)
            self._callback = None
