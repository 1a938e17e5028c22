#!/usr/bin/env python3
"""Fleet numbers for the README: the HAProxy kill/restart drill and the keepalived failover, repeated.

Runs the real end-to-end tests (tests/fleet/test_haproxy_fleet.py, test_keepalived_netns.py; root, haproxy,
keepalived and the SmolLM2 test model needed) several times and prints one JSON object: each run's numbers and
min/median/max of the timings.
Usage: bench_fleet.py [--haproxy-runs 3] [--failover-cycles 5]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_tests(target: str, report: Path, env: dict[str, str]) -> None:
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", target, "-p", "no:cacheprovider"],
                            cwd=ROOT, env={**os.environ, **env, "CLAWD_FLEET_REPORT": str(report)},
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"{target} failed:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}")


def spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": round(statistics.median(values), 2), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--haproxy-runs", type=int, default=3)
    parser.add_argument("--failover-cycles", type=int, default=5)
    args = parser.parse_args()
    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    with tempfile.TemporaryDirectory() as tmp:
        haproxy_report, keepalived_report = Path(tmp) / "haproxy.jsonl", Path(tmp) / "keepalived.jsonl"
        for _ in range(args.haproxy_runs):
            run_tests("tests/fleet/test_haproxy_fleet.py::test_kill_and_restart_a_board_under_load", haproxy_report,
                      env)
        run_tests("tests/fleet/test_keepalived_netns.py", keepalived_report,
                  {**env, "CLAWD_FLEET_CYCLES": str(args.failover_cycles)})
        haproxy_runs = [json.loads(line) for line in haproxy_report.read_text().splitlines()]
        failover_runs = [run for line in keepalived_report.read_text().splitlines()
                         for run in json.loads(line)["runs"]]
    summary = {
        "haproxy": {
            "runs": haproxy_runs,
            "requests": sum(r["requests"] for r in haproxy_runs),
            "failed_before_stream": sum(r.get("failed_before_stream", 0) for r in haproxy_runs),
            "failed_mid_stream": sum(r.get("failed_mid_stream", 0) for r in haproxy_runs),
            "ready_to_up_s": spread([r["ready_to_up_s"] for r in haproxy_runs]),
        },
        "keepalived": {
            "runs": failover_runs,
            **{key: spread([r[key] for r in failover_runs])
               for key in ("failover_s", "vip_serving_again_s", "preempt_after_ready_s")},
        },
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
