"""Checks that keepalived's track script can really run as its user, because keepalived 2.2 cannot tell."""
from __future__ import annotations

import os
import pwd
import subprocess

from ..errors import UsageError

CHECK_TIMEOUT = 30.0


def check_script_runs(argv: tuple[str, ...], user: str) -> None:
    """Run `argv[0] --help` as `user`; UsageError if that fails.

    keepalived 2.2.7 counts a track script that cannot be executed at all (its interpreter unreadable by the
    script user, e.g. a venv whose Python lives under /root) as *succeeding*, so a board whose daemon is dead
    would keep the address. Only root can switch users to find out; others get no check.
    """
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise UsageError(f"script user {user!r} does not exist on this host") from None
    if os.geteuid() != 0:
        return
    try:
        # As keepalived runs it: that user, its group, no supplementary groups of ours.
        result = subprocess.run([argv[0], "--help"], user=entry.pw_uid, group=entry.pw_gid, extra_groups=[],
                                capture_output=True, text=True, timeout=CHECK_TIMEOUT, cwd="/", check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        raise UsageError(f"user {user} cannot run {argv[0]} ({exc}); keepalived would count that as healthy: "
                         "pass --script-user, or install clawd-edge where that user can run it") from None
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise UsageError(f"user {user} cannot run {argv[0]} (exit {result.returncode}: {last}); keepalived "
                         "would count that as healthy: pass --script-user, or install clawd-edge where that "
                         "user can run it")
