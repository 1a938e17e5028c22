"""The memory planner on the real GGUF headers: fits, falls back to q8_0, shrinks, or refuses before loading."""
from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edge_runtime.config import Settings
from edge_runtime.engine import create_engine, plan_for
from edge_runtime.engine.planner import MIB, RUNTIME_OVERHEAD, kv_bytes_per_cell, plan
from edge_runtime.errors import ConfigError, MemoryPlanError
from edge_runtime.gguf_file import inspect

GIB = 1024**3


def test_smollm2_eight_slots_fit_two_gib_with_f16(smollm2_path: Path) -> None:
    info = inspect(smollm2_path)
    p = plan(info, budget=2 * GIB, budget_source="test", n_parallel=8, n_ctx_per_slot=2048)
    assert (p.n_parallel, p.n_ctx_per_slot, p.n_ctx, p.kv_type) == (8, 2048, 16384, "f16")
    # 30 layers x 3 KV heads x 64 dims x (K+V) x 2 bytes = 23040 bytes per cell: llama.cpp reports 360 MiB.
    assert p.kv_bytes == 16384 * 23040 == 360 * MIB
    assert p.weights_bytes == smollm2_path.stat().st_size
    assert p.total_bytes == p.weights_bytes + p.kv_bytes + p.compute_bytes + p.overhead_bytes < 2 * GIB
    text = p.describe()
    assert "8 slot(s) x 2048 ctx" in text and "KV f16" in text and "mmap" in text and "of budget 2048 MiB" in text


def test_auto_kv_falls_back_to_q8_0_then_shrinks_context(smollm2_path: Path) -> None:
    info = inspect(smollm2_path)
    f16 = plan(info, budget=2 * GIB, budget_source="t", n_parallel=8, n_ctx_per_slot=2048)
    q8 = plan(info, budget=f16.total_bytes - 1, budget_source="t", n_parallel=8, n_ctx_per_slot=2048)
    assert q8.kv_type == "q8_0" and q8.n_ctx_per_slot == 2048
    assert q8.kv_bytes == int(16384 * kv_bytes_per_cell(info, "q8_0")) < f16.kv_bytes
    assert any("f16 would need 360 MiB" in n for n in q8.notes)
    shrunk = plan(info, budget=q8.total_bytes - 1, budget_source="t", n_parallel=8, n_ctx_per_slot=2048)
    assert shrunk.kv_type == "q8_0" and shrunk.n_ctx_per_slot < 2048 and shrunk.n_ctx_per_slot % 256 == 0
    assert shrunk.total_bytes <= q8.total_bytes - 1
    assert "context shrunk from 2048" in shrunk.describe()


def test_explicit_kv_type_is_kept(smollm2_path: Path) -> None:
    info = inspect(smollm2_path)
    p = plan(info, budget=2 * GIB, budget_source="t", n_parallel=2, n_ctx_per_slot=1024, kv_cache_type="q8_0")
    assert p.kv_type == "q8_0"
    with pytest.raises(ConfigError):
        plan(info, budget=2 * GIB, budget_source="t", n_parallel=2, n_ctx_per_slot=1024, kv_cache_type="q4")


def test_context_below_slots_times_length_is_split_evenly(smollm2_path: Path) -> None:
    p = plan(inspect(smollm2_path), budget=2 * GIB, budget_source="t", n_parallel=4, n_ctx_per_slot=2048,
             total_context=4096)
    assert p.n_ctx == 4096 and p.n_ctx_per_slot == 1024
    assert "context 4096 split evenly: 1024 per slot" in p.describe()


def test_context_is_capped_at_training_length(smollm2_path: Path) -> None:
    p = plan(inspect(smollm2_path), budget=8 * GIB, budget_source="t", n_parallel=1, n_ctx_per_slot=100_000)
    assert p.n_ctx_per_slot == 8192 and any("training context" in n for n in p.notes)


def test_gemma_sliding_window_layers_are_planned_at_window_size(gemma3_path: Path) -> None:
    p = plan(inspect(gemma3_path), budget=2 * GIB, budget_source="t", n_parallel=8, n_ctx_per_slot=2048)
    # llama.cpp allocates 48 MiB for the 3 global layers and 90 MiB for the 15 windowed ones here.
    assert p.kv_bytes == (48 + 90) * MIB


def test_too_large_model_is_refused_naming_sizes(gemma3_path: Path) -> None:
    info = inspect(gemma3_path)
    with pytest.raises(MemoryPlanError) as caught:
        plan(info, budget=200 * MIB, budget_source="memory_budget in config", n_parallel=4, n_ctx_per_slot=2048)
    message = str(caught.value)
    assert "gemma-3-270m-q4_k_m.gguf does not fit" in message
    assert "200 MiB (memory_budget in config)" in message
    assert re.search(r"weights 241 MiB", message) and f"runtime {RUNTIME_OVERHEAD // MIB} MiB" in message


def test_create_engine_refuses_before_loading(gemma3_path: Path) -> None:
    settings = Settings(memory_budget=200 * MIB, parallel=4, threads=2)
    threads_before = threading.active_count()
    start = time.monotonic()
    with pytest.raises(MemoryPlanError, match=r"does not fit in the memory budget of 200 MiB"):
        create_engine(settings, gemma3_path)
    assert time.monotonic() - start < 2.0
    assert threading.active_count() == threads_before  # no worker started, nothing loaded
    # In a fresh interpreter: the refusal happens without even importing llama.cpp.
    code = (
        "import sys\n"
        "from edge_runtime.config import Settings\n"
        "from edge_runtime.engine import create_engine\n"
        "from edge_runtime.errors import MemoryPlanError\n"
        f"try:\n    create_engine(Settings(memory_budget=200 * 1024**2, parallel=4), {str(gemma3_path)!r})\n"
        "except MemoryPlanError as exc:\n    print('refused:', exc)\n"
        "assert 'llama_cpp' not in sys.modules, 'llama_cpp was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("refused: gemma-3-270m-q4_k_m.gguf does not fit")


def test_plan_for_uses_settings_and_budget(smollm2_path: Path) -> None:
    p = plan_for(Settings(memory_budget=1 * GIB, parallel=3, max_sequence_length=1024, batch_size=128),
                 smollm2_path)
    assert (p.budget, p.budget_source, p.n_parallel, p.n_ctx_per_slot, p.n_batch, p.n_ubatch) == (
        GIB, "memory_budget in config", 3, 1024, 128, 128)
