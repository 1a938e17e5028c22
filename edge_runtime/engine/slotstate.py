"""Slots' KV cells on disk: written when the model unloads, read back at the next load (after a reboot too)."""
from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Settings
    from .native import Runtime
    from .planner import MemoryPlan
    from .scheduler import Slot

log = logging.getLogger(__name__)
# Fewer cells than this are quicker to evaluate again than to read (and not worth a write to an SD card).
MIN_TOKENS = 16
FORMAT = 1  # bump when what the key covers changes


def open_slot_cache(settings: Settings, plan: MemoryPlan, *, flash_attn: str, slot_ctx: int) -> SlotCache | None:
    """The cache for this model and layout (None when `slot_cache: false`)."""
    if not settings.slot_cache:
        return None
    # Beside the models by default: a store of its own (tests, a second daemon) never reads another's cells.
    return SlotCache.for_plan(settings.slot_cache_dir or settings.models_dir / ".slot-cache", plan,
                              flash_attn=flash_attn, slot_ctx=slot_ctx)


@dataclass(frozen=True)
class SlotCache:
    """One directory per (model file, context layout): a state file only goes back into the context it fits.

    llama.cpp checks the cells' shapes when it reads a state, but not that they came from the same weights, so
    the key holds the model file's identity; it holds the KV type and the flash-attention setting (the V cache is
    stored transposed without it) and the per-slot context. Files are written to a temp name and renamed: a
    power cut leaves the old file or the new one, never half of one (a short read is refused anyway).
    """

    directory: Path

    @classmethod
    def for_plan(cls, root: Path, plan: MemoryPlan, *, flash_attn: str, slot_ctx: int) -> SlotCache:
        stat = plan.model_path.stat()
        identity = {"format": FORMAT, "model": str(plan.model_path.resolve()), "size": stat.st_size,
                    "mtime_ns": stat.st_mtime_ns, "kv": plan.kv_type, "flash_attn": flash_attn, "ctx": slot_ctx}
        key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        return cls(root / f"{plan.model_path.stem}-{key}")

    def _file(self, index: int) -> Path:
        return self.directory / f"slot-{index}.state"

    def save(self, rt: Runtime, slots: Sequence[Slot], *, only_missing: bool = False) -> int:
        """Write every slot that holds at least MIN_TOKENS plain cells (no adapter); returns how many.

        `only_missing`: only slots without a file (the first idle moment after a load, so that a power cut, which
        skips the save at unload, still finds the system prompt on disk at the next boot).
        """
        written = 0
        for index, slot in enumerate(slots):
            if len(slot.tokens) < MIN_TOKENS or slot.tag or (only_missing and self._file(index).is_file()):
                continue
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                log.warning("slot cache: cannot create %s (%s); KV cells not saved", self.directory, exc)
                return written
            target = self._file(index)
            temp = target.with_suffix(".tmp")
            tokens = (ctypes.c_int32 * len(slot.tokens))(*slot.tokens)
            started = time.monotonic()
            size = int(rt.lib.llama_state_seq_save_file(rt.ctx, str(temp).encode(), slot.seq, tokens,
                                                        len(slot.tokens)))
            if size == 0:
                temp.unlink(missing_ok=True)
                log.warning("slot cache: llama.cpp could not write %s", temp)
                continue
            os.replace(temp, target)
            written += 1
            log.info("slot cache: %d cells of slot %d saved to %s (%.1f MB, %.3f s)", len(slot.tokens), index,
                     target, size / 1e6, time.monotonic() - started)
        return written

    def restore(self, rt: Runtime, slots: Sequence[Slot], capacity: int) -> int:
        """Read each slot's file back into its sequence; a file llama.cpp refuses is deleted. Returns how many."""
        restored = 0
        for index, slot in enumerate(slots):
            path = self._file(index)
            if not path.is_file():
                continue
            tokens = (ctypes.c_int32 * capacity)()
            count = ctypes.c_size_t(0)
            started = time.monotonic()
            size = int(rt.lib.llama_state_seq_load_file(rt.ctx, str(path).encode(), slot.seq, tokens, capacity,
                                                        ctypes.byref(count)))
            if size == 0 or count.value == 0:
                rt.seq_rm(slot.seq, 0)  # a failed read may leave some cells behind
                log.warning("slot cache: %s does not fit this context; deleted", path)
                path.unlink(missing_ok=True)
                continue
            slot.tokens = list(tokens[:count.value])
            restored += 1
            log.info("slot cache: %d cells restored into slot %d from %s (%.3f s)", count.value, index, path,
                     time.monotonic() - started)
        return restored
