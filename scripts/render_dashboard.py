"""Draw the Grafana dashboard's panels from a real Prometheus with matplotlib (Grafana is not packaged in Debian).

    python scripts/render_dashboard.py http://127.0.0.1:9090 --minutes 5 --out deploy/grafana/screenshot.png

Every query of every panel of deploy/grafana/clawd-edge.json runs through /api/v1/query_range over the last N
minutes (Grafana's variables substituted as make_dashboard.substitute does); one subplot per panel, in the
dashboard's order, titled with its row and title. This is the panel data, not Grafana's look.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_dashboard import OUTPUT, legend, panel_queries, substitute

COLUMNS = 4
LABEL = "panel data rendered with matplotlib, not Grafana"
SCALES = {"bytes": (2**20, "MiB"), "s": (1.0, "seconds"), "reqps": (1.0, "requests/s"), "ops": (1.0, "per second"),
          "percentunit": (0.01, "%")}


def query_range(base: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    response = httpx.get(f"{base.rstrip('/')}/api/v1/query_range",
                         params={"query": expr, "start": start, "end": end, "step": step}, timeout=60)
    body = response.json()
    if body.get("status") != "success":
        raise RuntimeError(f"{expr}: {body.get('error', body)}")
    return list(body["data"]["result"])


def render(base: str, minutes: float, out: Path, instance: str = ".*", dashboard: Path = OUTPUT,
           dpi: int = 60) -> int:
    """Write the PNG; the number of panels without any data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    board = json.loads(dashboard.read_text(encoding="utf-8"))
    panels = panel_queries(board)
    end = time.time()
    start = end - minutes * 60
    step = max(2.0, minutes * 60 / 150)
    rate_interval = f"{max(30, int(step * 4))}s"
    rows = (len(panels) + COLUMNS - 1) // COLUMNS
    fig, axes = plt.subplots(rows, COLUMNS, figsize=(COLUMNS * 5.2, rows * 3.3), squeeze=False)
    empty = 0
    for ax, (row, panel) in zip(axes.flat, panels, strict=False):
        ax.set_prop_cycle(color=plt.get_cmap("tab20").colors)  # type: ignore[attr-defined]
        divisor, unit = SCALES.get(panel["fieldConfig"]["defaults"].get("unit", ""), (1.0, ""))
        drawn = 0
        for target in panel["targets"]:
            expr = substitute(target["expr"], instance, rate_interval)
            for series in query_range(base, expr, start, end, step):
                xs = [(float(t) - end) / 60 for t, _ in series["values"]]
                ys = [float(v) / divisor for _, v in series["values"]]
                name = legend(target.get("legendFormat", ""), series["metric"]) or expr[:40]
                ax.plot(xs, ys, linewidth=1.2, label=name[:48])
                drawn += 1
        empty += drawn == 0
        kind = " (stat)" if panel["type"] == "stat" else ""
        ax.set_title(f"{row}: {panel['title']}{kind}", fontsize=9)
        ax.set_xlim(-minutes, 0)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("minutes ago", fontsize=7)
        if unit:
            ax.set_ylabel(unit, fontsize=7)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=6, loc="upper left", framealpha=0.6)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{board['title']} dashboard, last {minutes:.0f} min ({LABEL})", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return empty


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prometheus", help="Prometheus base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--instance", default=".*", help="regex for $instance (default: All)")
    parser.add_argument("--out", type=Path, default=OUTPUT.parent / "screenshot.png")
    parser.add_argument("--dpi", type=int, default=60)
    args = parser.parse_args()
    empty = render(args.prometheus, args.minutes, args.out, args.instance, dpi=args.dpi)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB, {empty} panel(s) without data)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
