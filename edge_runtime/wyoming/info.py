"""What this server offers (speech models, voices, the LLM agent), gathered once and answered to `describe`."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wyoming.info import (
    AsrModel,
    AsrProgram,
    Attribution,
    HandleModel,
    HandleProgram,
    Info,
    TtsProgram,
    TtsVoice,
    TtsVoiceSpeaker,
)

from .. import __version__
from ..errors import ClawdError

if TYPE_CHECKING:
    from ..voice.module import VoiceModule

log = logging.getLogger(__name__)
ASR_PROGRAM = "clawd-edge-asr"
TTS_PROGRAM = "clawd-edge-tts"
HANDLE_PROGRAM = "clawd-edge"
_CLAWD = Attribution(name="clawd-edge", url="https://github.com/clawd-edge/clawd-edge")
_ATTRIBUTIONS = {
    "vosk": Attribution(name="Alpha Cephei", url="https://alphacephei.com/vosk/"),
    "pocketsphinx": Attribution(name="CMU Sphinx", url="https://github.com/cmusphinx/pocketsphinx"),
    "espeak": Attribution(name="eSpeak NG", url="https://github.com/espeak-ng/espeak-ng"),
    "piper": Attribution(name="Piper", url="https://github.com/OHF-Voice/piper1-gpl"),
}


@dataclass(frozen=True)
class SttChoice:
    """A speech model that can run without a download."""

    name: str
    engine: str
    language: str | None


@dataclass(frozen=True)
class VoiceChoice:
    """A voice a client may name: the engine that speaks it, its languages and speakers."""

    name: str
    engine: str
    languages: tuple[str, ...]
    description: str
    speakers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Catalog:
    """Everything `describe` reports. The configured model and voice come first (Home Assistant's defaults) when
    they are installed; `configured_model` / `configured_voice` name them (None: not usable, so a request without
    a name gets the first one listed)."""

    models: tuple[SttChoice, ...]
    voices: tuple[VoiceChoice, ...]
    agent: str  # the LLM's model name
    configured_model: str | None = None
    configured_voice: str | None = None

    def model(self, name: str) -> SttChoice | None:
        return next((m for m in self.models if m.name == name), None)

    def voice(self, name: str) -> VoiceChoice | None:
        return next((v for v in self.voices if v.name == name), None)


def primary(language: str) -> str:
    """`en-US`, `en_us`, `EN` -> `en`: how languages are matched."""
    return language.replace("_", "-").split("-", 1)[0].lower()


def bcp47(code: str) -> str:
    """espeak-ng's `en-us` and Piper's `en_US` as Home Assistant writes languages (`en-US`)."""
    parts = code.replace("_", "-").split("-")
    return "-".join([parts[0].lower(), *(p.upper() if len(p) == 2 else p for p in parts[1:])])


def _stt_models(voice: VoiceModule) -> tuple[list[SttChoice], str | None]:
    from ..voice.stt_models import KNOWN_MODELS, is_available

    found: list[SttChoice] = []
    configured_name: str | None = None
    try:
        configured = voice.stt_model(pull=False)
        found.append(SttChoice(configured.name, configured.engine, configured.language))
        configured_name = configured.name
    except ClawdError as exc:
        log.warning("wyoming: the configured speech model is not usable without a download: %s", exc)
    for name, (engine, language) in KNOWN_MODELS.items():
        if all(m.name != name for m in found) and is_available(voice.settings, name):
            found.append(SttChoice(name, engine, language))
    return found, configured_name


def _piper_voices(configured: str | None) -> list[VoiceChoice]:
    from ..voice.tts import PIPER, PIPER_PACKAGES, piper_voice_path

    names = dict.fromkeys([*([configured] if configured else []), *PIPER_PACKAGES])
    found: list[VoiceChoice] = []
    for name in names:
        try:
            path = piper_voice_path(name)
            config = json.loads(path.with_name(path.name + ".json").read_text(encoding="utf-8"))
        except (ClawdError, OSError, ValueError):
            continue  # not installed, or no readable config next to it: not offered
        language = config.get("language", {}).get("code") or path.stem.split("-", 1)[0]
        speakers = tuple(str(s) for s in (config.get("speaker_id_map") or {}))
        found.append(VoiceChoice(name, PIPER, (bcp47(language),), f"Piper {path.stem}", speakers))
    return found


def _espeak_voices() -> list[VoiceChoice]:
    from ..voice.tts import ESPEAK, EspeakTTS

    try:
        listing = EspeakTTS().listing()
    except ClawdError as exc:
        log.warning("wyoming: no espeak-ng voices: %s", exc)
        return []
    return [VoiceChoice(code, ESPEAK, (bcp47(code),), f"eSpeak NG {name}") for code, name in listing]


def _voices(voice: VoiceModule) -> tuple[list[VoiceChoice], str | None]:
    import importlib.util

    from ..voice.tts import ESPEAK, ESPEAK_LANGUAGE_VOICES, PIPER

    options = voice.options
    piper = _piper_voices(options.voice if options.tts == PIPER else None) \
        if importlib.util.find_spec("piper") is not None else []
    espeak = _espeak_voices()
    if options.tts == PIPER:
        configured = options.voice or "en_US-joe-medium"
        voices = piper + espeak
    else:
        configured = (options.voice or ESPEAK_LANGUAGE_VOICES.get(options.language, options.language)).lower()
        base = configured.partition("+")[0]
        if espeak and all(v.name != configured for v in espeak) and any(v.name == base for v in espeak):
            # A variant (`en-us+f3`) is a voice of its own to a client: offer it under the configured name.
            espeak.insert(0, VoiceChoice(configured, ESPEAK, (bcp47(base),), f"eSpeak NG {configured}"))
        voices = espeak + piper
    # The configured voice first: Home Assistant takes the first language as the default.
    voices.sort(key=lambda v: v.name != configured)
    return voices, configured if voices and voices[0].name == configured else None


def build_catalog(voice: VoiceModule | None, agent: str) -> Catalog:
    """Blocking (it lists espeak-ng's voices and looks models up in the registry): run it once, in a thread."""
    if voice is None:
        return Catalog((), (), agent)
    models, configured_model = _stt_models(voice)
    voices, configured_voice = _voices(voice)
    return Catalog(tuple(models), tuple(voices), agent, configured_model, configured_voice)


def build_info(catalog: Catalog) -> Info:
    """The `info` answer to `describe`."""
    asr = [AsrProgram(
        name=ASR_PROGRAM, attribution=_CLAWD, installed=True, description="clawd-edge speech recognition",
        version=__version__,
        models=[AsrModel(name=m.name, attribution=_ATTRIBUTIONS[m.engine], installed=True,
                         description=f"{m.engine} {m.name}", version=None,
                         languages=[m.language] if m.language else [])
                for m in catalog.models],
        supports_transcript_streaming=True,
    )] if catalog.models else []
    tts = [TtsProgram(
        name=TTS_PROGRAM, attribution=_CLAWD, installed=True, description="clawd-edge speech synthesis",
        version=__version__,
        voices=[TtsVoice(name=v.name, attribution=_ATTRIBUTIONS[v.engine], installed=True,
                         description=v.description, version=None, languages=list(v.languages),
                         speakers=[TtsVoiceSpeaker(name=s) for s in v.speakers] or None)
                for v in catalog.voices],
        supports_synthesize_streaming=True,
    )] if catalog.voices else []
    # No languages listed: Home Assistant then offers the agent for every language (the LLM answers in the
    # language it is spoken to, as well as a small model can). No Home Assistant tools are wired in here, so the
    # agent cannot control the home.
    handle = [HandleProgram(
        name=HANDLE_PROGRAM, attribution=_CLAWD, installed=True, description=f"clawd-edge LLM ({catalog.agent})",
        version=__version__,
        models=[HandleModel(name=catalog.agent, attribution=_CLAWD, installed=True, description=catalog.agent,
                            version=None, languages=[])],
        supports_handled_streaming=True, supports_home_control=False,
    )]
    return Info(asr=asr, tts=tts, handle=handle)
