"""`wyoming:` in config.yaml and the command-line flags: validated in one place, errors naming the key."""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from edge_runtime.config import Settings, from_mapping, load, to_dict
from edge_runtime.errors import ConfigError, DependencyMissing
from edge_runtime.kiosk.options import DEFAULT_SYSTEM_PROMPT
from edge_runtime.wyoming.options import DEFAULT_URI, daemon_wyoming_options, parse_options, system_prompt

from .conftest import Running, start_server, stop_server


def test_defaults_and_a_config_file(tmp_path: Path) -> None:
    assert parse_options({}).uri == DEFAULT_URI and not parse_options({}).enabled
    config = tmp_path / "config.yaml"
    config.write_text("wyoming:\n  enabled: true\n  uri: tcp://0.0.0.0:10700\n  max_connections: 4\n"
                      "  max_event_bytes: 64KiB\n  zeroconf: true\n")
    settings = load(config)
    options = daemon_wyoming_options(settings)
    assert (options.enabled, options.uri, options.max_connections, options.max_event_bytes, options.zeroconf) == \
        (True, "tcp://0.0.0.0:10700", 4, 64 * 1024, True)
    assert from_mapping(to_dict(settings)) == settings  # `config show` round-trips the section


@pytest.mark.parametrize(("raw", "key"), [
    ({"max_conections": 3}, "wyoming.max_conections"),
    ({"uri": "http://host:1"}, "wyoming.uri"),
    ({"uri": "tcp://host"}, "wyoming.uri"),
    ({"max_connections": 0}, "wyoming.max_connections"),
    ({"temperature": "hot"}, "wyoming.temperature"),
    ({"enabled": "yes"}, "wyoming.enabled"),
    ({"max_event_bytes": 10}, "wyoming.max_event_bytes"),
    ({"system_prompt": "  "}, "wyoming.system_prompt"),
    ({"zeroconf": True, "uri": "unix:///tmp/w.sock"}, "wyoming.zeroconf"),
])
def test_bad_options_name_their_key(raw: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        parse_options(raw)


def test_section_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError, match=r"^config: wyoming: 5 is not allowed"):
        from_mapping({"wyoming": 5})


def test_the_wyoming_flag_turns_it_on_at_its_uri() -> None:
    options = daemon_wyoming_options(Settings(), "unix:///tmp/clawd.sock")
    assert options.enabled and options.uri == "unix:///tmp/clawd.sock"
    with pytest.raises(ConfigError, match=r"^--wyoming: "):
        daemon_wyoming_options(Settings(), "tcp://nohost")


def test_system_prompt_precedence() -> None:
    assert system_prompt(Settings(), parse_options({})) == DEFAULT_SYSTEM_PROMPT
    kiosk = from_mapping({"kiosk": {"system_prompt": "Be a kiosk."}})
    assert system_prompt(kiosk, parse_options({})) == "Be a kiosk."
    assert system_prompt(kiosk, parse_options({"system_prompt": "Be a house."})) == "Be a house."


def test_zeroconf_announces_the_server(running: Running) -> None:
    from zeroconf.asyncio import AsyncZeroconf

    announced = start_server(running.server.settings, running.engine, None, uri="tcp://0.0.0.0:0", zeroconf=True,
                             zeroconf_name="clawd-edge-test")

    async def resolve() -> object:
        zc = AsyncZeroconf()
        try:
            return await zc.async_get_service_info("_wyoming._tcp.local.",
                                                   "clawd-edge-test._wyoming._tcp.local.", timeout=3000)
        finally:
            await zc.async_close()

    try:
        info = asyncio.run(resolve())
        assert info is not None and info.port == announced.port  # type: ignore[attr-defined]
    finally:
        stop_server(announced)


def test_zeroconf_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from edge_runtime.wyoming.announce import announce

    monkeypatch.setitem(sys.modules, "zeroconf.asyncio", None)
    with pytest.raises(DependencyMissing, match=r"zeroconf .*clawd-edge\[zeroconf\]"):
        asyncio.run(announce(10300, "127.0.0.1", None))
