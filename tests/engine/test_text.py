"""Incremental UTF-8 decoding and stop-string holdback (pure Python, no model)."""
from __future__ import annotations

from edge_runtime.engine.text import StopMatcher, Utf8Stream


def test_utf8_split_multibyte_character_is_held_until_complete() -> None:
    stream = Utf8Stream()
    data = "héllo 世界".encode()
    out = [stream.feed(data[i:i + 1]) for i in range(len(data))]
    assert "".join(out) + stream.flush() == "héllo 世界"
    assert all("\ufffd" not in piece for piece in out)
    cut = "世".encode()
    stream = Utf8Stream()
    assert stream.feed(cut[:2]) == ""
    assert stream.feed(cut[2:]) == "世"


def test_utf8_dangling_bytes_become_replacement_at_the_end() -> None:
    stream = Utf8Stream()
    assert stream.feed("a世".encode()[:3]) == "a"
    assert stream.flush() == "\ufffd"


def test_stop_string_is_never_emitted_even_across_pieces() -> None:
    matcher = StopMatcher(["###", "\nUser:"])
    emitted = []
    for piece in ["Hello", " wor", "ld\nUs", "er", ": more"]:
        text, stopped = matcher.feed(piece)
        emitted.append(text)
        if stopped:
            break
    assert stopped
    assert "".join(emitted) == "Hello world"


def test_partial_stop_prefix_is_released_when_it_does_not_complete() -> None:
    matcher = StopMatcher(["</answer>"])
    assert matcher.feed("a </") == ("a ", False)
    assert matcher.feed("b> c") == ("</b> c", False)
    assert matcher.feed("</ans") == ("", False)
    assert matcher.flush() == "</ans"


def test_earliest_stop_wins_and_no_stops_passes_through() -> None:
    assert StopMatcher(["b", "a"]).feed("xxabc") == ("xx", True)
    assert StopMatcher([]).feed("anything") == ("anything", False)
    assert StopMatcher([""]).feed("empty stop ignored") == ("empty stop ignored", False)
