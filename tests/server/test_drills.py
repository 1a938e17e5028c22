"""The fault drills of scripts/drills.py, one test each, on the real daemon, model, CLI and a real tmpfs."""
from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


def _drills() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "scripts" / "drills.py"
    spec = importlib.util.spec_from_file_location("clawd_drills", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


drills = _drills()


def _run(drill: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    try:
        return drill(*args)
    except drills.Skipped as exc:
        pytest.skip(str(exc))


@pytest.mark.slow
def test_sigkill_under_8_streams_restarts_and_serves_again(smollm2_path: Path) -> None:
    report = _run(drills.drill_sigkill, smollm2_path)
    assert report["problems"] == [], report
    # Every stream was cut at once (no client waits for its read timeout), and the restart waited RestartSec.
    assert all(end.startswith("error") for end in report["stream_ends"]), report
    assert report["streams_ended_within_s"] < 5, report
    assert report["exit_after_kill"] == -9 and report["kill_to_restart_s"] >= report["restart_sec"], report
    assert report["kill_to_ready_s"] <= report["kill_to_first_success_s"], report


@pytest.mark.slow
def test_truncated_model_at_reload_fails_clearly_and_the_daemon_stays_up(smollm2_path: Path) -> None:
    report = _run(drills.drill_truncated, smollm2_path)
    assert report["problems"] == [], report
    assert report["health_unloaded"] == 200 and report["request_status"] == 500, report
    assert "could not load the model" in report["request_error"], report
    assert any("could not load the model" in line for line in report["log_problem_lines"]), report
    # A restart would refuse the file at once, naming the truncation.
    assert report["restart_on_truncated"]["exit"] == 1, report
    assert "file is truncated" in report["restart_on_truncated"]["stderr_last"], report


@pytest.mark.usefixtures("smollm2_path")  # the pull copies this installed package: offline, and fails clearly if absent
def test_pull_onto_a_full_disk_leaves_nothing() -> None:
    report = _run(drills.drill_pull_full)
    assert report["exit"] != 0, report
    assert report["leftovers"] == [] and report["used_bytes_after"] == 0, report
    assert not report["traceback"] and "No space left on device" in report["error"], report
    assert report["problems"] == [], report


def test_convert_onto_a_full_disk_leaves_nothing() -> None:
    report = _run(drills.drill_convert_full)
    for stage in ("float_write", "quantize"):
        assert report[stage]["exit"] != 0, report
        assert report[stage]["leftovers"] == [] and report[stage]["used_bytes_after"] == 0, report
    assert "no space left on device" in report["float_write"]["error"], report
    assert report["problems"] == [], report
