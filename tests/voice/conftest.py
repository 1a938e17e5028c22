"""Voice test fixtures: a virtual ALSA mic/speaker (file plugin) per test, shared real speech models, TTS helpers.

No sound hardware exists here, so the only substitute is ALSA's userspace `file` plugin from
tests/asoundrc.template (after ../shared/audio/asoundrc.example): PortAudio/sounddevice open a real ALSA
capture device that plays a raw PCM file and a playback device that writes one. Everything above ALSA is
the production code path.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.config import Settings
from edge_runtime.voice.audio import SAMPLE_RATE

REPO = Path(__file__).resolve().parents[2]
ASOUNDRC_EXAMPLE = REPO / "tests" / "asoundrc.template"


def reinit_portaudio() -> None:
    """PortAudio reads the ALSA configuration (~/.asoundrc) in Pa_Initialize; re-run it after HOME changes."""
    import sounddevice as sd

    sd._terminate()
    sd._initialize()


@dataclass(frozen=True)
class VirtualAudio:
    """A temp HOME whose .asoundrc makes `default` capture from `mic` and play into `speaker`."""

    home: Path
    mic: Path
    speaker: Path

    def feed(self, pcm: bytes, *, lead_silence: float = 0.3, tail_silence: float = 1.5,
             rate: int = SAMPLE_RATE) -> None:
        """What the microphone will capture: S16LE mono at `rate` framed by silence (for endpointing)."""
        pad = b"\0\0"
        self.mic.write_bytes(pad * int(lead_silence * rate) + pcm + pad * int(tail_silence * rate))

    def played(self) -> np.ndarray:
        return np.fromfile(self.speaker, dtype="<i2") if self.speaker.exists() else np.zeros(0, np.int16)


@pytest.fixture
def virtual_audio(tmp_path: Path) -> Iterator[VirtualAudio]:
    template = ASOUNDRC_EXAMPLE.read_text(encoding="utf-8")
    home = tmp_path / "home"
    home.mkdir()
    audio = VirtualAudio(home=home, mic=tmp_path / "mic.raw", speaker=tmp_path / "speaker.raw")
    audio.mic.write_bytes(b"")
    (home / ".asoundrc").write_text(template.replace("IN_RAW", str(audio.mic)).replace("OUT_RAW", str(audio.speaker)),
                                    encoding="utf-8")
    old_home = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    reinit_portaudio()
    try:
        yield audio
    finally:
        if old_home is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = old_home
        reinit_portaudio()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings with a private, empty models dir (nothing pulled)."""
    return Settings(models_dir=tmp_path / "models")
