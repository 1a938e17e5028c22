"""Config loading: the seed's keys, defaults, and errors that name the key, the value and what is allowed."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_runtime.cli import cli
from edge_runtime.config import Settings, from_mapping, load, parse_size, to_dict
from edge_runtime.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_seed_keys_work(tmp_path: Path) -> None:
    path = write(tmp_path, "model_path: /models/x.gguf\nbatch_size: 8\nmax_sequence_length: 1024\n")
    settings = load(path)
    assert settings.model_path == "/models/x.gguf"
    assert settings.batch_size == 8
    assert settings.max_sequence_length == 1024
    assert settings.total_context == settings.parallel * 1024


def test_full_config(tmp_path: Path) -> None:
    path = write(tmp_path, """
threads: 2
parallel: 8
context: 16384
memory_budget: 1.5GiB
kv_cache_type: q8_0
keep_alive: 0
server: {host: 0.0.0.0, port: 9000, api_key: s3cret, max_request_bytes: 64KiB, cors_origins: ["http://a"],
         strict_model: true}
modules:
  voice: {enabled: true, stt: vosk}
  ocr: false
""")
    s = load(path)
    assert (s.threads, s.parallel, s.total_context) == (2, 8, 16384)
    assert s.memory_budget == int(1.5 * 1024**3)
    assert s.server.port == 9000 and s.server.max_request_bytes == 64 * 1024
    assert s.server.cors_origins == ("http://a",) and s.server.strict_model
    assert s.modules["voice"].enabled and s.modules["voice"].options["stt"] == "vosk"
    assert not s.modules["ocr"].enabled


def test_defaults_without_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLAWD_EDGE_CONFIG", raising=False)
    assert load() == Settings()


def test_env_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAWD_EDGE_CONFIG", str(write(tmp_path, "threads: 3\n")))
    assert load().threads == 3


@pytest.mark.parametrize(("text", "key", "fragment"), [
    ("batch_sise: 8\n", "batch_sise", "unknown key"),
    ("batch_size: -1\n", "batch_size", "-1 is not allowed; expected an integer >= 1"),
    ("batch_size: eight\n", "batch_size", "'eight'"),
    ("threads: true\n", "threads", "True"),
    ("kv_cache_type: q4\n", "kv_cache_type", "one of auto, f16, q8_0"),
    ("memory_budget: lots\n", "memory_budget", "not a size"),
    ("server: {prot: 1}\n", "server.prot", "unknown key"),
    ("server: {port: 70000}\n", "server.port", "<= 65535"),
    ("server: {strict_model: 'yes'}\n", "server.strict_model", "true or false"),
    ("modules: {voice: {enabled: maybe}}\n", "modules.voice.enabled", "true or false"),
    ("embedding_ctx: 8\n", "embedding_ctx", "8 is not allowed; expected an integer >= 16 and <= 32768"),
    ("embedding_ctx: '512'\n", "embedding_ctx", "'512'"),
    ("embedding_pooling: cls\n", "embedding_pooling", "one of auto, mean, last"),
    ("embedding_model: ''\n", "embedding_model", "a non-empty string"),
    ("embedding_model: 3\n", "embedding_model", "3 is not allowed"),
    ("embeding_model: x\n", "embeding_model", "unknown key"),
])
def test_errors_name_key_value_and_allowed(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text))
    message = str(info.value)
    assert f"{key}:" in message and fragment in message
    assert str(tmp_path / "config.yaml") in message


def test_embedding_keys(tmp_path: Path) -> None:
    defaults = Settings()
    assert (defaults.embedding_model, defaults.embedding_ctx, defaults.embedding_pooling) == (None, 512, "auto")
    s = load(write(tmp_path, "embedding_model: gemma3-270m-q4_k_m\nembedding_ctx: 256\nembedding_pooling: mean\n"))
    assert (s.embedding_model, s.embedding_ctx, s.embedding_pooling) == ("gemma3-270m-q4_k_m", 256, "mean")
    assert load(write(tmp_path, "embedding_model: null\n")).embedding_model is None
    assert from_mapping(to_dict(s)) == s  # `config show` round-trips the new keys


def test_invalid_yaml_names_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"invalid YAML at line 2"):
        load(write(tmp_path, "threads: 2\n  bad: [\n"))


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected a mapping"):
        load(write(tmp_path, "- a\n- b\n"))


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load("/nonexistent/config.yaml")


def test_replace_validates_overrides() -> None:
    s = Settings().replace(threads=2, **{"server.port": 1234})
    assert s.threads == 2 and s.server.port == 1234
    with pytest.raises(ConfigError, match="threads"):
        Settings().replace(threads=0)


def test_parse_size() -> None:
    assert parse_size("2GiB", "k") == 2 * 1024**3
    assert parse_size("512 MB", "k") == 512 * 1000**2
    assert parse_size(1000, "k") == 1000
    with pytest.raises(ConfigError):
        parse_size("0", "k")


def test_config_show_and_check_cli(tmp_path: Path) -> None:
    good = write(tmp_path, "threads: 2\nbatch_size: 64\n")
    runner = CliRunner()
    shown = runner.invoke(cli, ["--config", str(good), "config", "show"])
    assert shown.exit_code == 0, shown.output
    assert from_mapping(__import__("yaml").safe_load(shown.output)).batch_size == 64
    assert runner.invoke(cli, ["config", "check", str(good)]).exit_code == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("parallel: 0\n")
    result = runner.invoke(cli, ["config", "check", str(bad)])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and "parallel: 0 is not allowed" in result.stderr
    assert "Traceback" not in result.output
