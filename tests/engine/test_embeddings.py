"""The embedding engine on the real SmolLM2 and Gemma-3 GGUFs: shapes, llama.cpp's own pooling as the oracle, the
GGUF's pooling metadata, batching, limits, cancellation, lazy load and unload, and the memory plan."""
from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime.config import ServerSettings, Settings
from edge_runtime.engine.embeddings import EmbeddingEngine, create_embeddings
from edge_runtime.engine.embedplan import Pooling, plan_embeddings
from edge_runtime.engine.planner import plan_for
from edge_runtime.engine.types import EngineState
from edge_runtime.errors import ConfigError, EngineBusy, InvalidRequest, MemoryPlanError, ShuttingDown
from edge_runtime.gguf_file import inspect

from .conftest import wait_for

TEXTS = ["Turn off the lights in the kitchen.", "Switch the kitchen lights off.", "What's tomorrow's forecast?"]
LONG = "The dishwasher is running and the kitchen light is still on. " * 30  # about 400 tokens


def _settings(**overrides: Any) -> Settings:
    return Settings(**{"threads": 2, "keep_alive": math.inf, **overrides})


def _engine(model: Path, *, chat: Path | None = None, **overrides: Any) -> EmbeddingEngine:
    settings = _settings(**overrides)
    return create_embeddings(settings, model, chat=plan_for(settings, chat or model))


def _embed(engine: EmbeddingEngine, inputs: list[Any]) -> Any:
    async def run() -> Any:
        try:
            return await engine.embed(inputs)
        finally:
            await engine.close()
    return asyncio.run(run())


def _oracle(model: Path, texts: list[str], pooling: int) -> np.ndarray:
    """llama.cpp pooling the whole input in one ubatch, through llama-cpp-python's high-level Llama."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(model), embedding=True, pooling_type=pooling, n_ctx=512, n_batch=512, n_ubatch=512,
                n_threads=2, verbose=False)
    try:
        return np.array([llm.embed(t, normalize=True) for t in texts], dtype=np.float32)
    finally:
        llm.close()


@pytest.fixture(scope="module")
def pooled_smollm2(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of SmolLM2 whose GGUF declares `llama.pooling_type = mean`, as an embedding model's GGUF does."""
    import gguf

    reader = gguf.GGUFReader(smollm2_path)
    out = tmp_path_factory.mktemp("pooled") / "smollm2-pooled.gguf"
    writer = gguf.GGUFWriter(out, arch="llama", endianess=reader.endianess)
    for f in reader.fields.values():
        if f.name == gguf.Keys.General.ARCHITECTURE or f.name.startswith("GGUF."):
            continue
        kind = f.types[0]
        writer.add_key_value(f.name, f.contents(), kind,
                             sub_type=f.types[-1] if kind == gguf.GGUFValueType.ARRAY else None)
    writer.add_key_value("llama.pooling_type", 1, gguf.GGUFValueType.UINT32)
    for t in reader.tensors:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in reader.tensors:
        writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
    writer.close()
    yield out


def test_three_inputs_give_three_unit_vectors_of_the_models_width(smollm2_path: Path) -> None:
    engine = _engine(smollm2_path)
    assert engine.status().state is EngineState.UNLOADED  # nothing loads before the first request
    result = _embed(engine, TEXTS)
    width = inspect(smollm2_path).n_embd
    assert result.vectors.shape == (3, width) == (3, engine.dimensions)
    assert result.vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)
    assert result.prompt_tokens > 3 * 5
    sims = result.vectors @ result.vectors.T
    assert sims[0, 1] > sims[0, 2] and sims[0, 1] > sims[1, 2]  # the paraphrase is the closest


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_pooling_here_equals_llama_cpp_pooling_the_whole_input(smollm2_path: Path, pooling: str) -> None:
    """The causal path (chunks over the KV cache, pooled in numpy) gives llama.cpp's own pooled vectors."""
    import llama_cpp

    engine = _engine(smollm2_path, embedding_pooling=pooling)
    assert not engine.plan.native and engine.plan.n_batch < 512  # really chunked: LONG spans several decodes
    ours = _embed(engine, [*TEXTS, LONG]).vectors
    ids = {"last": llama_cpp.LLAMA_POOLING_TYPE_LAST, "mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN}
    expected = _oracle(smollm2_path, [*TEXTS, LONG], ids[pooling])
    # Not bit-equal: llama.cpp's kernels differ with the batch shape (one row vs many, chunks vs one ubatch); the
    # paraphrases TEXTS[0] and TEXTS[1] are 0.994 apart, a token missing from the pool moves it further.
    assert np.min(np.sum(ours * expected, axis=1)) > 0.999


def test_a_causal_lm_defaults_to_last_token_pooling(smollm2_path: Path) -> None:
    plan = _engine(smollm2_path).plan
    assert plan.pooling is Pooling.LAST and not plan.native
    assert "causal LM" in plan.describe()


def test_the_ggufs_pooling_metadata_is_used_in_one_ubatch(smollm2_path: Path, pooled_smollm2: Path) -> None:
    engine = _engine(pooled_smollm2)
    assert engine.plan.native and engine.plan.pooling is Pooling.MEAN and engine.plan.n_batch == 512
    assert "llama.pooling_type in the GGUF" in engine.plan.describe()
    native = _embed(engine, [*TEXTS, LONG]).vectors
    ours = _embed(_engine(smollm2_path, embedding_pooling="mean"), [*TEXTS, LONG]).vectors
    assert np.min(np.sum(native * ours, axis=1)) > 0.999


def test_inputs_batched_together_equal_inputs_one_at_a_time(smollm2_path: Path) -> None:
    engine = _engine(smollm2_path)

    async def run() -> tuple[np.ndarray, np.ndarray]:
        try:
            together = (await engine.embed([*TEXTS, LONG, *TEXTS])).vectors
            alone = np.stack([(await engine.embed([t])).vectors[0] for t in [*TEXTS, LONG, *TEXTS]])
            return together, alone
        finally:
            await engine.close()
    together, alone = asyncio.run(run())
    # No sequence sees another's tokens. Not bit-equal: llama.cpp's matrix kernels depend on the number of rows.
    assert np.min(np.sum(together * alone, axis=1)) > 0.999
    assert np.min(np.sum(together[:3] * together[4:], axis=1)) > 0.999


def test_gemma3_as_a_configured_model_has_its_own_width(gemma3_path: Path, smollm2_path: Path) -> None:
    engine = _engine(gemma3_path, chat=smollm2_path)
    assert not engine.plan.shared_weights and engine.plan.weights_bytes == gemma3_path.stat().st_size
    result = _embed(engine, TEXTS)
    assert result.vectors.shape == (3, inspect(gemma3_path).n_embd) != (3, inspect(smollm2_path).n_embd)
    assert np.allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)
    sims = result.vectors @ result.vectors.T
    assert sims[0, 1] > sims[0, 2]


def test_token_id_inputs_equal_their_text(smollm2_path: Path) -> None:
    engine = _engine(smollm2_path)

    async def run() -> tuple[np.ndarray, np.ndarray]:
        try:
            text = (await engine.embed(["Lock the front door."])).vectors
            from llama_cpp import Llama

            llm = Llama(model_path=str(smollm2_path), vocab_only=True, verbose=False)
            ids = llm.tokenize(b"Lock the front door.", add_bos=False, special=False)
            llm.close()
            return text, (await engine.embed([ids])).vectors
        finally:
            await engine.close()
    text, ids = asyncio.run(run())
    assert np.allclose(text, ids, atol=1e-6)


def test_limits_name_the_offending_input(smollm2_path: Path) -> None:
    engine = _engine(smollm2_path, embedding_ctx=64)

    async def run() -> list[InvalidRequest]:
        errors = []
        try:
            for inputs in (["short", "word " * 100], [[1, 2], [3, 10**9]], []):
                with pytest.raises(InvalidRequest) as caught:
                    await engine.embed(inputs)
                errors.append(caught.value)
            assert (await engine.embed(["still fine"])).vectors.shape[0] == 1
            return errors
        finally:
            await engine.close()
    too_long, bad_id, empty = asyncio.run(run())
    assert too_long.param == "input[1]" and "maximum context length is 64 tokens" in str(too_long)
    assert bad_id.param == "input[1]" and "1000000000" in str(bad_id)
    assert empty.param == "input"


def test_a_cancelled_request_stops_and_the_next_is_served(smollm2_path: Path) -> None:
    engine = _engine(smollm2_path, embedding_pooling="mean")  # every token an output: the slowest path

    async def run() -> tuple[float, int]:
        try:
            await engine.embed(["warm up"])
            big = asyncio.ensure_future(engine.embed([f"{i} {LONG}" for i in range(64)]))  # about a minute
            await asyncio.sleep(1.0)
            big.cancel()
            with pytest.raises(asyncio.CancelledError):
                await big
            loop = asyncio.get_running_loop()
            started = loop.time()
            await engine.embed(["Open the garage door."])
            return loop.time() - started, engine.status().requests_total
        finally:
            await engine.close()
    seconds, answered = asyncio.run(run())
    assert seconds < 5.0  # the cancelled one stopped at its next decode (each well under a second)
    assert answered == 2  # the cancelled request was not finished


def test_a_full_queue_is_busy_and_halt_fails_what_waits(smollm2_path: Path) -> None:
    settings = _settings(server=ServerSettings(max_queue=1), embedding_pooling="mean")
    engine = create_embeddings(settings, smollm2_path, chat=plan_for(settings, smollm2_path))

    async def run() -> list[BaseException | Any]:
        try:
            work = [asyncio.ensure_future(engine.embed([f"{i} {LONG}" for i in range(16)])) for _ in range(2)]
            await asyncio.sleep(0.2)
            with pytest.raises(EngineBusy):
                await engine.embed(["one too many"])
            engine.halt()
            results = await asyncio.gather(*work, return_exceptions=True)
            with pytest.raises(ShuttingDown):
                await engine.embed(["after the halt"])
            return results
        finally:
            await engine.close()
    results = asyncio.run(run())
    assert all(isinstance(r, ShuttingDown) for r in results)


def test_keep_alive_zero_unloads_after_each_request_and_reloads(smollm2_path: Path) -> None:
    engine = _engine(smollm2_path, keep_alive=0.0)

    async def run() -> None:
        try:
            await engine.embed(["first"])
            await wait_for(lambda: engine.status().state is EngineState.UNLOADED)
            await engine.embed(["second"])
            assert engine.status().loads_total == 2
        finally:
            await engine.close()
    asyncio.run(run())


def test_the_plan_counts_what_llama_cpp_allocates_and_refuses_what_does_not_fit(smollm2_path: Path,
                                                                                 gemma3_path: Path) -> None:
    settings = _settings()
    chat = plan_for(settings, smollm2_path)
    shared = plan_embeddings(settings, smollm2_path, chat=chat)
    assert shared.shared_weights and shared.weights_bytes == 0
    # llama.cpp's own buffers for this context (logged at load): KV 11.25 MiB, compute 24.56 MiB, output up to
    # 24.3 MiB (128 rows of 49152 logits + 576 embeddings): 60 MiB, and the worker's arena and arrays on top.
    assert 60 * 2**20 + shared.overhead_bytes <= shared.total_bytes <= 100 * 2**20
    gemma = plan_embeddings(settings, gemma3_path, chat=chat)
    # One ubatch of 512 tokens would need 512 rows of 262k logits (1 GiB); chunks keep it to 32 rows.
    assert gemma.n_batch == 32 and gemma.compute_bytes < 100 * 2**20
    tight = Settings(threads=2, memory_budget=chat.total_bytes + 32 * 2**20)
    with pytest.raises(MemoryPlanError, match="embedding_ctx"):
        plan_embeddings(tight, gemma3_path, chat=plan_for(tight, smollm2_path))
    with pytest.raises(ConfigError, match="embedding_ctx"):
        plan_embeddings(_settings(embedding_ctx=32768), smollm2_path, chat=chat)
