"""Adapter groups of the scheduler: which slots one llama_decode may carry, and whose turn the next step is."""
from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from .adapters import AdapterKey

if TYPE_CHECKING:
    from .slots import Slot


def has_work(slot: Slot) -> bool:
    """A busy slot that would put tokens into this step's batch (not one waiting for another's prefix)."""
    job = slot.job
    return job is not None and (job.generating or job.wait_for is None)


class GroupTurns:
    """Round robin over the adapter sets that have work.

    llama.cpp applies adapters per context, so one decode serves one set. Each step takes the next set (in key
    order) after the one served last, among those with work: with G sets busy every set is decoded at least
    once every G steps, so a flood of base-model requests slows an adapter request down by at most that factor
    instead of starving it (and vice versa).
    """

    def __init__(self) -> None:
        self.last: AdapterKey | None = None

    def pick(self, keys: Iterable[AdapterKey]) -> AdapterKey | None:
        """The set to decode this step, or None when no slot has work."""
        ready = sorted(set(keys))
        if not ready:
            return None
        last = self.last
        choice = ready[0] if last is None else next((k for k in ready if k > last), ready[0])
        self.last = choice
        return choice
