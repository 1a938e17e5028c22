"""Prefix sharing: a slot starts from the longest prompt prefix another slot holds, copied or awaited."""
from __future__ import annotations

from .native import Copy, Runtime
from .slots import Job, Slot, Stats

# A prefix held by another slot is copied (or waited for) only when it saves at least this many prompt tokens.
MIN_SHARED_PREFIX = 8


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class PrefixSharing:
    """Copies KV prefixes between the slots of one Runtime (worker thread only)."""

    def __init__(self, rt: Runtime, slots: list[Slot], stats: Stats) -> None:
        self.rt = rt
        self.slots = slots
        self.stats = stats

    def share(self, slot: Slot, job: Job) -> None:
        """Start from a longer prefix held by another slot: copy it now, or wait while it is being evaluated.

        Requests with the same system prompt (the kiosk's, or every request of an OpenAI app) then evaluate it
        once: a burst of 8 chats costs one system prompt and 8 questions instead of 8 of each, which is most of
        their time to first token on a 2-core CPU.
        """
        limit = len(job.prompt) - 1
        now, donor = job.n_past, None  # the longest prefix already evaluated in another slot
        later = job.n_past  # the longest one another slot's prompt is still evaluating
        awaited: tuple[Slot, Job, int] | None = None
        for other in self.slots:
            if other is slot or other.tag != slot.tag:
                continue
            n = min(common_prefix(other.tokens, job.prompt), limit)
            if n > now:
                now, donor = n, other
            o = other.job
            if o is not None and not o.generating and o.wait_for is None:
                m = min(common_prefix(o.prompt, job.prompt), limit)
                if m > later:
                    later, awaited = m, (other, o, m)
        if awaited is not None and later >= now + MIN_SHARED_PREFIX:
            job.wait_for = awaited
        elif donor is not None and now >= job.n_past + MIN_SHARED_PREFIX:
            self.copy_from(donor, slot, now)

    def copy_from(self, donor: Slot, slot: Slot, n: int) -> bool:
        """Make the first n cells of `donor` this slot's prefix; False if they could not be copied."""
        job = slot.job
        assert job is not None
        if donor.tag != slot.tag:
            return False  # e.g. an awaited donor slot since reused under other adapters: its cells are not ours
        rt = self.rt
        result = rt.copy_prefix(donor.seq, slot.seq, n)
        if result is Copy.UNTOUCHED:
            return False  # refused before touching the slot: its own cached prefix (job.n_past) is still good
        # A sliding window may already have dropped cells the copy's continuation would attend to.
        if result is Copy.COPIED and not (rt.n_swa > 0 and rt.seq_pos_min(slot.seq) > 0):
            slot.tokens[:] = job.prompt[:n]
            job.n_past = n
            self.stats.prefix_copies += 1
            return True
        rt.seq_rm(slot.seq, 0)
        slot.tokens.clear()
        job.n_past = 0
        return False

    def resolve_wait(self, slot: Slot, job: Job) -> None:
        """Copy the awaited prefix once it is evaluated, or whatever is left of it if its owner went away."""
        assert job.wait_for is not None
        donor, donor_job, wanted = job.wait_for
        n = min(common_prefix(donor.tokens, job.prompt), len(job.prompt) - 1)
        if donor.job is donor_job and not donor_job.generating and n < wanted:
            return
        job.wait_for = None
        if n >= job.n_past + MIN_SHARED_PREFIX:
            self.copy_from(donor, slot, n)
        self.count_cached(job)

    def count_cached(self, job: Job) -> None:
        # Once per job, when its cached prefix is final (a copy may still replace or empty it before that), so
        # the exported counter never goes down.
        job.n_cached = job.n_past
        self.stats.cached_prompt_tokens += job.n_past

    def forks(self, slot: Slot, job: Job) -> list[Slot]:
        """The slots waiting for exactly this prompt (the other choices of an n > 1 request, or the same request
        sent twice), now holding a copy of its cells: they sample their first token from the same logits row,
        so the prompt is evaluated once for all of them."""
        twins = []
        for other in self.slots:
            o = other.job
            if o is None or o.wait_for is None or o.wait_for[1] is not job or o.prompt != job.prompt:
                continue
            if self.copy_from(slot, other, len(job.prompt)):
                o.wait_for = None
                self.count_cached(o)
                o.generating = True
                twins.append(other)
        return twins
