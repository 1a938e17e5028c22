"""pocketsphinx recogniser (offline US English model shipped in the wheel), VAD endpointing, JSGF grammars."""
from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import AudioError
from ..extras import optional_import
from .audio import SAMPLE_RATE
from .stt import Transcript, normalize

DEFAULT_ENDPOINT_WINDOW = 0.3  # seconds of (mostly) non-speech that end an utterance


class _PooledDecoder:
    """A Decoder and the grammar searches already compiled into it."""

    def __init__(self, decoder: Any) -> None:
        self.decoder = decoder
        self.searches: set[str] = set()


class SphinxRecognizer:
    """pocketsphinx's Endpointer (WebRTC-style VAD) cuts utterances and the decoder only sees speech; or, with
    `window=None`, the decoder sees everything it is fed and the caller's VAD ends utterances (finalize())."""

    def __init__(self, engine: SphinxEngine, pooled: _PooledDecoder, window: float | None) -> None:
        ps = optional_import("pocketsphinx")
        self.sample_rate = SAMPLE_RATE
        self._engine = engine
        self._pooled: _PooledDecoder | None = pooled
        self._decoder = pooled.decoder
        # The Endpointer hands speech on `window` seconds late (it needs that much to decide), which is also how
        # late its end of speech comes: an outside VAD replaces it rather than adding to it.
        self._endpointer = ps.Endpointer(window=window, sample_rate=SAMPLE_RATE) if window is not None else None
        self._frame = int(self._endpointer.frame_bytes) if self._endpointer is not None else 0
        self._buffer = b""
        self._in_utt = False
        self._partial = ""

    def _hyp(self) -> str:
        hyp = self._decoder.hyp()
        return str(hyp.hypstr) if hyp is not None else ""

    def _speech(self, speech: bytes | None) -> None:
        if not speech:  # None (no speech) or empty: process_raw() fails on an empty buffer
            return
        if not self._in_utt:
            self._decoder.start_utt()
            self._in_utt = True
        self._decoder.process_raw(speech)

    def _end(self) -> Transcript:
        self._decoder.end_utt()
        self._in_utt = False
        self._partial = ""
        return Transcript(self._hyp(), final=True)

    def accept(self, chunk: bytes) -> Transcript | None:
        if self._endpointer is None:
            self._speech(chunk)
            return self._changed_partial()
        self._buffer += chunk
        result: Transcript | None = None
        while len(self._buffer) >= self._frame:
            frame, self._buffer = self._buffer[:self._frame], self._buffer[self._frame:]
            self._speech(self._endpointer.process(frame))
            if self._in_utt and not self._endpointer.in_speech:
                final = self._end()
                if final.text:
                    result = final
        return result or self._changed_partial()

    def _changed_partial(self) -> Transcript | None:
        if not self._in_utt:
            return None
        partial = self._hyp()
        if partial and partial != self._partial:
            self._partial = partial
            return Transcript(partial, final=False)
        return None

    def finalize(self) -> Transcript | None:
        if not self._in_utt:
            return None
        final = self._end()
        return final if final.text else None

    def finish(self) -> Transcript | None:
        if self._endpointer is not None and self._endpointer.in_speech:
            # end_stream() reads its buffer's first sample even when it is empty, and raised IndexError for any
            # audio a whole number of 30 ms frames long that ends in speech (a 10-minute upload: HTTP 500).
            # One silent sample more is inaudible to the decoder.
            self._speech(self._endpointer.end_stream(self._buffer or b"\0\0"))
        self._buffer = b""
        return self.finalize()

    def close(self) -> None:
        pooled, self._pooled = self._pooled, None
        if self._in_utt:
            # Stopped mid-utterance (a cancelled upload, a failure): end_utt() would run the final search over the
            # whole utterance, 2.6 s for 40 s of continuous speech here, so a cancelled transcription would go on
            # burning CPU. The decoder is dropped instead; the next stream loads a fresh one (0.4 s).
            self._in_utt = False
            self._decoder = None
            return
        if pooled is not None:
            self._engine.release(pooled)


class SphinxEngine:
    """pocketsphinx with its built-in US English model (or `model_dir`, an acoustic model directory).

    A Decoder owns its model copy and serves one stream at a time, so idle decoders are pooled: the model
    is loaded once per concurrent stream, not once per request.
    """

    def __init__(self, model_dir: Path | None = None, *, name: str = "pocketsphinx-en-us",
                 language: str | None = "en", endpoint_window: float = DEFAULT_ENDPOINT_WINDOW) -> None:
        self.model_dir = model_dir
        self.name = name
        self.language = language
        self.endpoint_window = endpoint_window
        self._idle: list[_PooledDecoder] = []
        self._lock = threading.Lock()

    def _new_decoder(self) -> _PooledDecoder:
        ps = optional_import("pocketsphinx")
        # No second (flat-lexicon) pass: on 89 spoken sentences (Piper natural and deterministic, espeak-ng) it
        # changed no transcript (66/89 exact, 89% of words, both ways) and cost end_utt() 47 ms median, 158 ms max
        # vs 8 / 18 ms without; that wait comes after the visitor stopped talking.
        kwargs: dict[str, Any] = {"samprate": SAMPLE_RATE, "loglevel": "FATAL", "fwdflat": False}
        if self.model_dir is not None:
            kwargs["hmm"] = str(self.model_dir)
        try:
            return _PooledDecoder(ps.Decoder(**kwargs))
        except (RuntimeError, ValueError) as exc:
            raise AudioError(f"pocketsphinx could not load its model ({exc})") from None

    def load(self) -> None:
        decoder = self._acquire()
        self.release(decoder)

    def _acquire(self) -> _PooledDecoder:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._new_decoder()

    def release(self, pooled: _PooledDecoder) -> None:
        with self._lock:
            self._idle.append(pooled)

    def check_grammar(self, phrases: Sequence[str]) -> list[str]:
        """Words of `phrases` missing from the pronunciation dictionary."""
        pooled = self._acquire()
        try:
            missing: list[str] = []
            for word in (w for p in phrases for w in normalize(p).split()):
                if word not in missing and pooled.decoder.lookup_word(word) is None:
                    missing.append(word)
            return missing
        finally:
            self.release(pooled)

    @staticmethod
    def jsgf(phrases: Sequence[str]) -> str:
        # One or more phrases per utterance, like Vosk's phrase-loop grammars.
        alternatives = " | ".join(normalize(p) for p in phrases)
        return f"#JSGF V1.0;\ngrammar kiosk;\npublic <utterance> = ( {alternatives} )+ ;\n"

    def recognizer(self, grammar: Sequence[str] | None = None, *, endpointing: bool = True) -> SphinxRecognizer:
        if grammar is not None:
            missing = self.check_grammar(grammar)
            if missing:
                raise AudioError(f"grammar: word(s) {', '.join(missing)} not in the pronunciation dictionary "
                                 f"of speech model {self.name}")
        pooled = self._acquire()
        try:
            if grammar is None:
                pooled.decoder.activate_search()
            else:
                source = self.jsgf(grammar)
                name = "g" + hashlib.sha256(source.encode()).hexdigest()[:16]
                if name not in pooled.searches:
                    pooled.decoder.add_jsgf_string(name, source)
                    pooled.searches.add(name)
                pooled.decoder.activate_search(name)
        except (RuntimeError, ValueError, KeyError) as exc:
            self.release(pooled)
            raise AudioError(f"grammar: pocketsphinx rejected it ({exc})") from None
        return SphinxRecognizer(self, pooled, self.endpoint_window if endpointing else None)
