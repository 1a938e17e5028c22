"""The container image for real: scripts/build-image.sh's image runs under podman (as root) with the SmolLM2 GGUF
mounted read-only, turns healthy, answers a chat completion, and stops cleanly on SIGTERM.

`make test` builds the image before pytest (`scripts/build-image.sh --reuse`: about 4 minutes, skipped when the
package's files and the llama.cpp wheel are unchanged); run alone, this module builds it if it is missing.
The podman flags below are the ones this kind of host needs, and are harmless elsewhere: runc instead of crun
(crun 1.8 refuses a hybrid cgroup v1/v2 layout), explicit ulimits (podman's default RLIMIT_NOFILE of 1048576 is
above what root may raise to without CAP_SYS_RESOURCE), and no health-check timer (podman schedules those with
systemd, which is not PID 1 in this VM): the test runs the image's HEALTHCHECK itself with `podman healthcheck run`.
"""
from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from edge_runtime import __version__

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
REPO = Path(__file__).resolve().parents[2]
TAG = os.environ.get("CLAWD_EDGE_IMAGE", f"localhost/clawd-edge:{__version__}")
# The README's question: SmolLM2-135M at temperature 0 answers the bare "What is the capital of France?" with
# French phrases (the same text outside the container), and this one with "The capital of France is Paris."
QUESTION = "What is the capital of France? Answer in one sentence."
ARM64_TAG = f"{TAG}-arm64"
CONTAINER_MODEL = "/models/smollm2.gguf"

if shutil.which("podman") is None or shutil.which("buildah") is None or shutil.which("mmdebstrap") is None:
    pytest.skip("needs podman, buildah and mmdebstrap (make test installs them)", allow_module_level=True)
if os.geteuid() != 0:
    pytest.skip("the image is built and run with root podman (mmdebstrap root mode); run as root",
                allow_module_level=True)


def podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=False)


def run_options() -> list[str]:
    """podman run options that work on this VM and on an ordinary systemd host alike (see the module docstring)."""
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 65536)
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 4096)
    options = ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}",
               "--health-interval", "disable"]
    runtime = ["--runtime", "runc"] if shutil.which("runc") else []
    return [*runtime, *options]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def image() -> str:
    """The image of this checkout: built by `make test` before pytest, else here (`--reuse` keeps a current one)."""
    build = subprocess.run([str(REPO / "scripts" / "build-image.sh"), "--reuse", "--tag", TAG],
                           capture_output=True, text=True, timeout=1100, check=False)
    assert build.returncode == 0, build.stderr[-3000:]
    return TAG


@contextmanager
def running(image: str, model: Path, *serve_flags: str) -> Iterator[tuple[str, int]]:
    """The image running detached with `model` mounted read-only and its port on loopback: (name, port)."""
    # Can podman run anything here at all? Only that is a reason to skip; every later failure is a failure.
    probe = podman("run", "--rm", *run_options(), "--entrypoint", "/bin/true", image)
    if probe.returncode != 0:
        pytest.skip(f"podman cannot run containers on this host: {probe.stderr.strip().splitlines()[-1:]}")
    name = f"clawd-edge-test-{os.getpid()}"
    port = free_port()
    started = podman("run", "--detach", "--name", name, *run_options(),
                     "--publish", f"127.0.0.1:{port}:8080",
                     "--volume", f"{model}:{CONTAINER_MODEL}:ro",
                     image, "--model", CONTAINER_MODEL, *serve_flags)
    assert started.returncode == 0, started.stderr[-3000:]
    try:
        yield name, port
    finally:
        podman("rm", "--force", "--time", "5", name)


def ask(port: int) -> str:
    response = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=300, json={
        "model": "smollm2", "temperature": 0, "max_tokens": 32,
        "messages": [{"role": "user", "content": QUESTION}]})
    assert response.status_code == 200, response.text
    answer: str = response.json()["choices"][0]["message"]["content"]
    return answer


def wait_healthy(port: int, name: str, within: float = 120) -> dict[str, object]:
    deadline = time.monotonic() + within
    last: object = None
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
            if response.status_code == 200:
                body: dict[str, object] = response.json()
                return body
            last = response.text
        except httpx.TransportError as error:  # not listening yet (podman forwards the port before that)
            last = error
        time.sleep(0.5)
    logs = podman("logs", name).stderr[-3000:]
    raise AssertionError(f"/health not 200 within {within} s (last: {last}); container log:\n{logs}")


def test_the_image_serves_a_chat_and_stops_cleanly(image: str, smollm2_path: Path) -> None:
    with running(image, smollm2_path) as (name, port):
        health = wait_healthy(port, name)
        assert health["state"] == "ready"
        assert health["model"] == "smollm2"

        # The image's own HEALTHCHECK (the venv's Python fetching /health inside the container).
        check = podman("healthcheck", "run", name)
        assert check.returncode == 0, (check.stdout, check.stderr)
        # The daemon runs as the image's unprivileged user, not root.
        assert podman("exec", name, "id", "-u").stdout.strip() == "10001"

        answer = ask(port)
        assert "Paris" in answer, answer

        # SIGTERM (the image's stop signal): the daemon drains and exits 0 well before podman's 20 s SIGKILL.
        stopped = podman("stop", "--time", "20", name)
        assert stopped.returncode == 0, stopped.stderr
        exit_code = podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        assert exit_code == "0", podman("logs", name).stderr[-3000:]


def test_the_arm64_image_answers_under_emulation(smollm2_path: Path) -> None:
    """The arm64 image (`scripts/build-image.sh --arch arm64`, not built by `make test`: about 5 minutes under
    emulation) runs here through qemu-user registered in binfmt_misc, which this VM does not do by itself."""
    if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").exists():
        pytest.skip("qemu-aarch64 is not registered in binfmt_misc (README \"Container image\" says how)")
    if podman("image", "exists", ARM64_TAG).returncode != 0:
        pytest.skip(f"no {ARM64_TAG} image: build it with scripts/build-image.sh --arch arm64")
    with running(ARM64_TAG, smollm2_path, "--parallel", "1") as (name, port):
        wait_healthy(port, name, within=300)
        assert podman("exec", name, "uname", "-m").stdout.strip() == "aarch64"
        answer = ask(port)
        assert "Paris" in answer, answer
