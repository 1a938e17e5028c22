"""A transcript depends on the audio alone: not on libc's rand() state, i.e. not on what was decoded before."""
from __future__ import annotations

import ctypes
from collections.abc import Callable

from edge_runtime.voice.audio import Audio
from edge_runtime.voice.stt import finals
from edge_runtime.voice.vosk_stt import VoskEngine

from ..speech import KO_GRAMMAR


def test_same_audio_same_transcript_whatever_the_rand_state(ko_engine: VoskEngine,
                                                              ko_speech: Callable[..., Audio]) -> None:
    """Kaldi's default dither draws from the process-wide rand(): with it on, this exact audio (what the virtual
    mic delivers in the barge-in test) came out as "문을 열어 주세요 주세요" after srand(2), srand(13) and
    srand(22). The rand() state stands in for "how many frames other recognisers decoded before", which a
    loaded machine changes."""
    silence = b"\0\0"
    pcm = silence * 16000 + ko_speech("문을 열어 주세요").pcm + silence * 24000
    chunks = [pcm[i:i + 3200] for i in range(0, len(pcm), 3200)]
    libc = ctypes.CDLL(None)
    heard = set()
    for seed in range(16):
        libc.srand(seed)
        recognizer = ko_engine.recognizer(KO_GRAMMAR)
        try:
            heard.add(next(iter(finals(iter(chunks), recognizer)), None))
        finally:
            recognizer.close()
    assert heard == {"문을 열어 주세요"}
