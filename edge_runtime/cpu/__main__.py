"""`python -m edge_runtime.cpu`: the profile table for the install scripts (runs before anything is installed)."""
from __future__ import annotations

import argparse
import sys

from . import profiles
from .features import read_cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edge_runtime.cpu")
    sub = parser.add_subparsers(dest="cmd", required=True)
    detect = sub.add_parser("detect", help="the best profile for this CPU (or for ARCH's baseline)")
    detect.add_argument("--arch", default=None, help="another architecture: its most portable profile")
    for name in ("cmake-args", "label", "arch"):
        sub.add_parser(name).add_argument("profile")
    sub.add_parser("list")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "detect":
            cpu = read_cpu()
            other = args.arch and args.arch != cpu.arch
            print((profiles.portable(args.arch) if other else profiles.best(cpu.arch, cpu.features)).name)
        elif args.cmd == "list":
            for p in profiles.PROFILES:
                print(f"{p.name:<18} {p.arch:<8} {p.boards}")
        else:
            profile = profiles.by_name(args.profile)
            print({"cmake-args": " ".join(profile.cmake_args), "label": profile.label,
                   "arch": profile.arch}[args.cmd])
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
