"""What a newcomer meets at the edges of the CLI: missing extras, no sound card, and the chat REPL's keys."""
from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Runs the CLI with some installed packages hidden, as on a machine where that extra was never installed.
_HIDDEN = """
import importlib.util, sys
hidden = set(sys.argv[1].split(","))
real_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: (
    None if name.split(".")[0] in hidden else real_find_spec(name, package))
for name in hidden:
    sys.modules[name] = None  # a real `import name` fails as if it were not installed
from edge_runtime.cli import main
sys.argv = ["clawd-edge", *sys.argv[2:]]
main()
"""


def _without(packages: str, *args: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **({"HOME": str(home)} if home else {})}
    return subprocess.run([sys.executable, "-c", _HIDDEN, packages, *args], capture_output=True, text=True,
                          timeout=120, check=False, env=env)


def test_serve_without_the_server_extra_is_one_line() -> None:
    done = _without("fastapi,uvicorn", "serve", "--port", "0")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "error: fastapi (needed by this command) is not installed (install with: pip install 'clawd-edge[server]')"]


def test_say_to_a_file_needs_no_recogniser_and_no_portaudio(tmp_path: Path) -> None:
    out = tmp_path / "hello.wav"
    done = _without("vosk,pocketsphinx,sounddevice", "say", "--output", str(out), "Hello there.")
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:4] == b"RIFF" and out.stat().st_size > 10_000


def _no_sound_card_home(tmp_path: Path) -> Path:
    """A HOME whose ALSA default is a card that does not exist (this test machine has no sound card at all)."""
    (tmp_path / ".asoundrc").write_text("pcm.!default { type hw card 9 }\nctl.!default { type hw card 9 }\n")
    probe = subprocess.run([sys.executable, "-c", "import sounddevice as sd; print(len(sd.query_devices()))"],
                           capture_output=True, text=True, env={**os.environ, "HOME": str(tmp_path)}, check=False)
    if probe.stdout.strip() not in ("", "0"):
        pytest.skip("this machine has a sound card: there is no 'no device' to test")
    return tmp_path


@pytest.mark.parametrize(("args", "kind"), [(["say", "Hello."], "output"), (["listen"], "input")])
def test_no_sound_device_is_one_line(tmp_path: Path, args: list[str], kind: str) -> None:
    home = _no_sound_card_home(tmp_path)
    done = subprocess.run([sys.executable, "-m", "edge_runtime", *args], capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, "HOME": str(home)})
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: no usable {kind} device"), done.stderr


class _Terminal:
    """The chat REPL on a real pseudo-terminal, read as a person would see it."""

    def __init__(self, argv: list[str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # pragma: no cover - the child
            os.execve(argv[0], argv, {**os.environ, "TERM": "xterm"})  # noqa: S606 - a fixed argv
        self.seen = ""

    def read_until(self, text: str, timeout: float = 120.0, start: int = 0) -> int:
        deadline = time.monotonic() + timeout
        while (found := self.seen.find(text, start)) < 0:
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} did not appear; the screen so far:\n{self.seen[-2000:]}")
            ready, _, _ = select.select([self.fd], [], [], 0.5)
            if ready:
                try:
                    self.seen += os.read(self.fd, 4096).decode(errors="replace")
                except OSError:  # the child closed the terminal
                    time.sleep(0.1)
        return found + len(text)

    def type(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def wait(self, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            try:
                self.seen += os.read(self.fd, 4096).decode(errors="replace")
            except OSError:
                time.sleep(0.1)
        os.kill(self.pid, 9)
        raise AssertionError("the REPL did not exit")


def test_chat_repl_keys_stop_an_answer_and_recall_history(smollm2_path: Path) -> None:
    term = _Terminal([sys.executable, "-m", "edge_runtime", "chat", "--model", str(smollm2_path),
                      "--max-tokens", "1000"])
    at = term.read_until(">>> ")
    question = "Write a long story about a dragon who learns to cook."
    term.type(question + "\r")
    at = term.read_until(question, start=at)
    answer_start = at
    while len(term.seen) - answer_start < 60:  # some of the answer is on the screen
        term.read_until(" ", start=len(term.seen) - 1, timeout=60)
    term.type("\x03")  # Ctrl-C stops the answer, not the REPL
    at = term.read_until("[stopped]", start=at)
    at = term.read_until(">>> ", start=at)
    term.type("\x1b[A")  # arrow up: the last question comes back for editing, no ^[[A
    at = term.read_until(question, start=at)
    assert "^[[A" not in term.seen
    # At a person's pace: a SIGINT that lands while readline is still redrawing (not yet waiting for a key)
    # is only acted on at the next key, in Python's own REPL too.
    time.sleep(0.5)
    term.type("\x03")  # Ctrl-C at the prompt drops the line
    at = term.read_until(">>> ", start=at)
    term.type("/bye\r")
    assert term.wait() == 0
