#!/usr/bin/env python3
"""Fault drills: SIGKILL under 8 streams, a truncated model at reload, a full disk during pull and convert."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "clawd-edge.service"
FIXTURES = ROOT / "tests" / "fixtures" / "convert"
PROMPT = "1, 2, 3, 4, 5,"  # counting keeps a small model generating until max_tokens
MID_STREAM = 3  # chunks each client has before the kill: well inside its stream, not at its first token
# systemd.service(5): Restart=on-failure treats death by these signals as a clean stop, not a failure.
CLEAN_SIGNALS = {signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE}
NO_SPACE = re.compile(r"no space|disk full", re.IGNORECASE)
Report = dict[str, Any]


class Skipped(Exception):
    """The drill cannot run here (not root, no mount); the message says why."""


def unit_setting(key: str) -> str:
    """A [Service] setting of the shipped unit, so the supervisor loop does what the unit says."""
    for line in UNIT.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == key:
            return value.strip()
    raise KeyError(f"{UNIT} has no {key}=")


class Notify:
    """A NOTIFY_SOCKET like systemd's: every sd_notify datagram, timestamped by a reader thread as it arrives."""

    def __init__(self) -> None:
        # A short path: unix socket addresses are limited to 108 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="drill-sd-", dir="/tmp"))
        self.path = self.dir / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._open = True
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        # Read at once, always: the queue holds ~10 datagrams and unread watchdog pings would crowd out READY=1.
        while self._open:
            with contextlib.suppress(TimeoutError):
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))

    def times(self, prefix: str, after: float = 0.0) -> list[float]:
        return [t for t, m in list(self.messages) if t >= after and any(x.startswith(prefix) for x in m.splitlines())]

    def wait(self, prefix: str, after: float, timeout: float, alive: Callable[[], bool] = lambda: True) -> float:
        deadline = time.monotonic() + timeout
        while not (found := self.times(prefix, after)):
            if time.monotonic() > deadline or not alive():
                raise RuntimeError(f"no {prefix} within {timeout} s (process alive: {alive()})")
            time.sleep(0.01)
        return found[0]

    def close(self) -> None:
        self._open = False
        self._reader.join()
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Supervisor:
    """What clawd-edge.service makes systemd do, for machines where systemd is not PID 1: restart the daemon
    RestartSec after it exits non-zero or dies by an unclean signal (Restart=on-failure); a clean exit stays down."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        if unit_setting("Restart") != "on-failure":
            raise RuntimeError(f"{UNIT}: this loop only mirrors Restart=on-failure")
        self.restart_sec = float(unit_setting("RestartSec").removesuffix("s"))  # other spans fail loudly here
        self.argv, self.env, self.log = argv, env, log
        self.starts: list[float] = []
        self.exits: list[tuple[float, int]] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _spawn(self) -> bool:
        with self._lock, self.log.open("ab") as out:
            if self._stopping.is_set():
                return False
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env)
            self.starts.append(time.monotonic())
            return True

    def _loop(self) -> None:
        while self.proc is not None:
            code = self.proc.wait()
            self.exits.append((time.monotonic(), code))
            failed = code > 0 or (code < 0 and -code not in CLEAN_SIGNALS)
            if not failed or self._stopping.wait(self.restart_sec) or not self._spawn():
                return

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the daemon (systemctl stop) and return its exit status."""
        with self._lock:
            self._stopping.set()
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
        self._thread.join(timeout)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait() if self.proc is not None else None


def pulled_model(workdir: Path) -> Path:
    """The registry's default model, pulled into `workdir` (offline from its installed PyPI package if present)."""
    from edge_runtime.registry import load_registry
    from edge_runtime.store import ModelStore

    store = ModelStore(workdir / "models", load_registry())
    return store.pull(store.registry.get(store.registry.default))


def start_args(workdir: Path, model: Path, settings: dict[str, Any]) -> tuple[list[str], str]:
    """`python -m edge_runtime serve` argv on a free port for these settings, and the server's URL."""
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump({"threads": 2, "models_dir": str(workdir / "models"), **settings}))
    with socket.socket() as sock:  # a fixed port: the restarted daemon must come back on the same address
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    return ([sys.executable, "-m", "edge_runtime", "--config", str(config), "serve", "--model", str(model),
             "--port", str(port)], f"http://127.0.0.1:{port}")


def complete(url: str) -> int:
    """The status of a short non-streaming completion."""
    return httpx.post(url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 4}, timeout=120).status_code


def daemon_env(notify: Notify, **extra: str) -> dict[str, str]:
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "PYTHONUNBUFFERED": "1", **extra}
    env.pop("CLAWD_EDGE_API_KEY", None)
    return env


def _stream(url: str, payload: dict[str, Any], started: threading.Event, out: dict[str, Any],
            read_timeout: float) -> None:
    out["chunks"], out["end"] = 0, "hung"  # stays so if the thread is still blocked when the drill gives up
    try:
        with httpx.stream("POST", url + "/v1/completions", json=payload,
                          timeout=httpx.Timeout(10.0, read=read_timeout)) as reply:
            for line in reply.iter_lines():
                if line.startswith("data: "):
                    out["chunks"] += 1
                    if out["chunks"] >= MID_STREAM:
                        started.set()
                    if line == "data: [DONE]":
                        out["end"] = "done"
        if out["end"] != "done":
            out["end"] = "closed"
    except httpx.TimeoutException:
        out["end"] = "hung"
    except httpx.HTTPError as exc:
        out["end"] = f"error: {type(exc).__name__}"
    out["ended_at"] = time.monotonic()


def drill_sigkill(model: Path | None = None, streams: int = 8, read_timeout: float = 20.0) -> Report:
    """SIGKILL the daemon while `streams` completions stream; time the restart, READY=1 and the next success."""
    with tempfile.TemporaryDirectory(prefix="drill-kill-") as tmp:
        workdir = Path(tmp)
        model = model or pulled_model(workdir)
        argv, url = start_args(workdir, model, {"parallel": streams, "max_sequence_length": 256,
                                                "server": {"shutdown_timeout": 5}})
        notify = Notify()
        sup = Supervisor(argv, daemon_env(notify), workdir / "daemon.log")
        report: Report = {"supervisor": supervisor_kind(), "restart_sec": sup.restart_sec, "streams": streams}
        try:
            sup.start()
            report["start_to_ready_s"] = round(notify.wait("READY=1", 0.0, 240, sup.alive) - sup.starts[0], 2)
            payload = {"prompt": PROMPT, "max_tokens": 200, "temperature": 0, "stream": True}
            outs: list[dict[str, Any]] = [{} for _ in range(streams)]
            flags = [threading.Event() for _ in range(streams)]
            clients = [threading.Thread(target=_stream, args=(url, payload, flags[i], outs[i], read_timeout))
                       for i in range(streams)]
            for client in clients:
                client.start()
            for flag in flags:  # kill mid-stream: every client has tokens and none has finished
                flag.wait(60)
            report["chunks_before_kill"] = [o.get("chunks", 0) for o in outs]
            assert sup.proc is not None
            killed = time.monotonic()
            os.kill(sup.proc.pid, signal.SIGKILL)
            served: float | None = None
            polls: list[tuple[float, str, float]] = []  # each change of outcome: a slow first answer shows its wait
            while served is None and time.monotonic() < killed + sup.restart_sec + 120:
                sent = time.monotonic()
                try:
                    outcome = str(complete(url))
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                served = time.monotonic() if outcome == "200" else None
                if not polls or polls[-1][1] != outcome:
                    polls.append((round(sent - killed, 2), outcome, round(time.monotonic() - sent, 2)))
                time.sleep(0.05)
            report["polls_after_kill"] = polls
            for client in clients:
                client.join(read_timeout + 5)
            ready = notify.times("READY=1", sup.starts[-1])
            report.update({
                "exit_after_kill": sup.exits[0][1] if sup.exits else None, "restarts": len(sup.starts) - 1,
                "kill_to_restart_s": round(sup.starts[1] - killed, 2) if len(sup.starts) > 1 else None,
                "restart_to_ready_s": round(ready[0] - sup.starts[-1], 2) if ready and len(sup.starts) > 1 else None,
                "kill_to_ready_s": round(ready[0] - killed, 2) if ready else None,
                "kill_to_first_success_s": round(served - killed, 2) if served else None,
                "stream_ends": [o["end"] for o in outs],
                "streams_ended_within_s": round(max(o.get("ended_at", float("inf")) for o in outs) - killed, 2),
            })
        finally:
            report["exit_on_sigterm"] = sup.stop()
            notify.close()
    ends, chunks = report.get("stream_ends", []), report.get("chunks_before_kill", [])
    return {**report, "problems": failures({
        f"a stream did not end with an error or a close: {ends}": len(ends) == streams and all(
            end.startswith(("error", "closed")) for end in ends),
        f"not every stream was mid-stream at the kill: {chunks}": min(chunks, default=0) >= MID_STREAM,
        f"restarted {report.get('restarts')} times, not once": report.get("restarts") == 1,
        "no request succeeded after the restart": bool(report.get("kill_to_first_success_s")),
        f"exit status {report['exit_on_sigterm']} on SIGTERM": report["exit_on_sigterm"] == 0})}


def supervisor_kind() -> str:
    pid1 = Path("/proc/1/comm").read_text().strip()
    why = "the loop is used anyway" if pid1 == "systemd" else "not systemd, so systemd-run cannot start a unit"
    return (f"supervisor loop mirroring {UNIT.name} (Restart={unit_setting('Restart')}, RestartSec="
            f"{unit_setting('RestartSec')}): PID 1 is {pid1!r}, {why}")


def drill_truncated(model: Path | None = None, keep_alive: float = 2.0, watchdog_s: float = 1.0) -> Report:
    """Unload after keep_alive, replace the GGUF by its first half, request: a clear 5xx, the daemon stays up."""
    with tempfile.TemporaryDirectory(prefix="drill-trunc-") as tmp:
        workdir = Path(tmp)
        original = model or pulled_model(workdir)
        served = workdir / "serve" / original.name
        served.parent.mkdir()
        shutil.copyfile(original, served)
        argv, url = start_args(workdir, served, {"parallel": 2, "max_sequence_length": 256,
                                                 "keep_alive": keep_alive})
        notify = Notify()
        log = workdir / "daemon.log"
        # WATCHDOG_USEC shortened from the unit's WatchdogSec so the drill sees within seconds whether the pings
        # stop once the model failed (under systemd that is what restarts the daemon).
        env = daemon_env(notify, WATCHDOG_USEC=str(int(watchdog_s * 1e6)))
        with log.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        report: Report = {"keep_alive_s": keep_alive}
        try:
            notify.wait("READY=1", 0.0, 240, lambda: proc.poll() is None)
            report["first_request"] = complete(url)
            deadline = time.monotonic() + keep_alive + 30
            while (health := httpx.get(url + "/health", timeout=10)).json()["state"] != "unloaded":
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not unloaded after keep_alive: {health.text}")
                time.sleep(0.1)
            report["health_unloaded"] = health.status_code
            log_offset = log.stat().st_size
            half = workdir / "half.gguf"
            with original.open("rb") as src, half.open("wb") as dst:
                dst.write(src.read(original.stat().st_size // 2))
            os.replace(half, served)  # a new inode, as a copy or a package update would leave it
            start = time.monotonic()
            reply = httpx.post(url + "/v1/chat/completions", timeout=120,
                               json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
            failed_at = time.monotonic()
            report.update({"request_status": reply.status_code, "request_s": round(failed_at - start, 2),
                           "request_error": reply.json().get("error", {}).get("message")})
            time.sleep(3 * watchdog_s)
            health = httpx.get(url + "/health", timeout=10)
            lines = log.read_bytes()[log_offset:].decode(errors="replace").splitlines()
            report.update({
                "alive_after": proc.poll() is None, "health_status": health.status_code,
                "health_state": health.json()["state"], "health_reason": health.json()["reason"],
                "log_problem_lines": [line for line in lines if served.name in line and "request" in line],
                "llama_cpp_lines": [line for line in lines if line.startswith("ERROR llama.cpp")],
                "watchdog_withheld_lines": sum("withholding the watchdog ping" in line for line in lines),
                "watchdog_pings_while_failed": len(notify.times("WATCHDOG=1", failed_at + watchdog_s)),
            })
            # What a restart (the unit's watchdog, a reboot) would meet: serve refuses the file at start.
            again, _ = start_args(workdir, served, {"parallel": 2, "max_sequence_length": 256})
            done = subprocess.run(again, capture_output=True, text=True, timeout=120, check=False,
                                  env=daemon_env(notify))
            report["restart_on_truncated"] = {"exit": done.returncode, "stderr_last": last_line(done.stderr)}
            shutil.copyfile(original, half)
            os.replace(half, served)
            report["after_restore"] = complete(url)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            report["exit_on_sigterm"] = proc.wait(60)
            notify.close()
    return {**report, "problems": failures({
        "the request was not refused with a 5xx": 500 <= report.get("request_status", 0) < 600,
        "the error does not name the model file": served.name in str(report.get("request_error")),
        "the daemon did not stay up": bool(report.get("alive_after")),
        f"/health is {report.get('health_status')} {report.get('health_state')}, not 503 failed":
            (report.get("health_status"), report.get("health_state")) == (503, "failed"),
        "no log line names the failed request and the file": bool(report.get("log_problem_lines")),
        "no recovery once the file was restored": report.get("after_restore") == 200})}


def failures(checks: dict[str, bool]) -> list[str]:
    return [problem for problem, ok in checks.items() if not ok]


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@contextlib.contextmanager
def tmpfs(size: int) -> Iterator[Path]:
    """A real tmpfs of `size` bytes: writes hit ENOSPC exactly as on a full SD card; always unmounted."""
    if os.geteuid() != 0:
        raise Skipped("mounting a tmpfs needs root")
    point = Path(tempfile.mkdtemp(prefix="drill-full-"))
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        point.rmdir()
        raise Skipped(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=False)
        with contextlib.suppress(OSError):
            point.rmdir()


def run_full(args: list[str], disk: Path, workdir: Path) -> Report:
    """Run a CLI command against the full disk; what it printed and what it left there."""
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump({"models_dir": str(disk)}))
    done = subprocess.run([sys.executable, "-m", "edge_runtime", "--config", str(config), *args], cwd=workdir,
                          capture_output=True, text=True, timeout=300, check=False)
    error = last_line(done.stderr)
    report: Report = {
        "exit": done.returncode, "error": error, "stderr_lines": len(done.stderr.strip().splitlines()),
        "traceback": "Traceback" in done.stderr, "leftovers": sorted(str(p.relative_to(disk)) for p in disk.rglob("*")),
        "used_bytes_after": shutil.disk_usage(disk).used}
    return {**report, "problems": failures({
        "exit status 0": done.returncode != 0,
        f"not one error line naming the full disk: {error!r}{' after a traceback' * report['traceback']}":
            error.startswith("error: ") and bool(NO_SPACE.search(error)) and not report["traceback"],
        f"left behind: {report['leftovers']}": not report["leftovers"]})}


def drill_pull_full() -> Report:
    """`models pull` of the default model into a tmpfs half its size."""
    from edge_runtime.registry import load_registry

    registry = load_registry()
    entry = registry.get(registry.default)
    assert entry.size, f"{entry.name} has no size in the registry"
    with tempfile.TemporaryDirectory(prefix="drill-pull-") as tmp, tmpfs(entry.size // 2) as disk:
        return {"model": entry.name, "model_bytes": entry.size, "tmpfs_bytes": entry.size // 2,
                **run_full(["models", "pull", entry.name], disk, Path(tmp))}


def drill_convert_full(fixture: Path = FIXTURES / "llama", qtype: str = "q4_k_m") -> Report:
    """`convert` with the output on a tmpfs that fills while the float GGUF is written, then while quantizing."""
    with tempfile.TemporaryDirectory(prefix="drill-convert-") as tmp:
        workdir = Path(tmp)
        sizes = {}
        for kind in ("f16", qtype):  # real sizes from an unconstrained run: the tmpfs sizes follow the fixture
            out = workdir / f"probe-{kind}.gguf"
            subprocess.run([sys.executable, "-m", "edge_runtime", "convert", str(fixture), "-q", kind, "-o", str(out),
                            "--no-progress"], capture_output=True, check=True, timeout=300)
            sizes[kind] = out.stat().st_size
        report: Report = {"fixture": fixture.name, "qtype": qtype, "f16_bytes": sizes["f16"],
                          "quantized_bytes": sizes[qtype]}
        # The float file is written first, then quantized beside it: half the float file fails the first write,
        # the float file plus half the quantized one fails inside llama_model_quantize.
        for stage, size in (("float_write", sizes["f16"] // 2), ("quantize", sizes["f16"] + sizes[qtype] // 2)):
            with tmpfs(size) as disk:
                args = ["convert", str(fixture), "-q", qtype, "-o", str(disk / "out.gguf"), "--no-progress"]
                report[stage] = {"tmpfs_bytes": size, **run_full(args, disk, workdir)}
    return {**report, "problems": [f"{s}: {p}" for s in ("float_write", "quantize") for p in report[s]["problems"]]}


def drill_disk_full() -> Report:
    """Both disk-full drills."""
    pull, convert = drill_pull_full(), drill_convert_full()
    return {"pull": pull, "convert": convert,
            "problems": [f"pull: {p}" for p in pull["problems"]] + [f"convert {p}" for p in convert["problems"]]}


DRILLS: dict[str, Callable[[Path | None], Report]] = {
    "sigkill": drill_sigkill, "truncated": drill_truncated, "diskfull": lambda _: drill_disk_full()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("drills", nargs="*", metavar="DRILL", help=f"any of {', '.join(DRILLS)} (default: all)")
    parser.add_argument("--model", type=Path, help="GGUF to serve (default: the registry's default model)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if unknown := [d for d in args.drills if d not in DRILLS]:
        parser.error(f"unknown drill(s) {', '.join(unknown)}; choose from {', '.join(DRILLS)}")
    results: dict[str, Report] = {}
    for name in args.drills or list(DRILLS):
        started = time.monotonic()
        try:
            results[name] = DRILLS[name](args.model)
        except Skipped as exc:
            results[name] = {"skipped": str(exc), "problems": []}
        results[name]["seconds"] = round(time.monotonic() - started, 1)
        results[name]["load_average"] = [round(x, 1) for x in os.getloadavg()]  # a shared machine skews timings
        verdict = "skipped" if "skipped" in results[name] else "FAIL" if results[name]["problems"] else "ok"
        print(f"{name:<13} {verdict:<7} {results[name]['seconds']:>6} s  {'; '.join(results[name]['problems'])}")
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 1 if any(r["problems"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
