"""Relabel a llama-cpp-python wheel for its build profile: local version, platform tag, build record, extra files.

Usage: wheel_label.py WHEEL OUTDIR --label L --plat TAG --record JSON [--add SRC=PATH_IN_WHEEL ...]
The version becomes e.g. 0.3.36+clawd.x86.64.v3, so the file name, `pip list` and importlib.metadata all say
which CPU the wheel is for; `llama-cpp-python==0.3.36` still matches it (PEP 440 ignores local labels).
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import sys
import zipfile
from pathlib import Path


def _digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def relabel(wheel: Path, outdir: Path, label: str, plat: str, record: dict[str, object],
            extra: list[tuple[Path, str]]) -> Path:
    with zipfile.ZipFile(wheel) as src:
        infos = src.infolist()
        old_info = next(i.filename.split("/")[0] for i in infos if i.filename.endswith(".dist-info/METADATA"))
        name, version = old_info[: -len(".dist-info")].rsplit("-", 1)
        new_version = f"{version.split('+')[0]}+{label}"
        new_info = f"{name}-{new_version}.dist-info"
        out = outdir / f"{name}-{new_version}-py3-none-{plat}.whl"
        tmp = out.with_suffix(".whl.part")
        rows: list[str] = []
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:

            def put(arcname: str, data: bytes, mode: int = 0o644) -> None:
                info = zipfile.ZipInfo(arcname, date_time=(2020, 1, 1, 0, 0, 0))
                info.external_attr = (0o100000 | mode) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                dst.writestr(info, data)
                rows.append(f"{arcname},{_digest(data)},{len(data)}")

            for info in infos:
                path = info.filename
                if path.endswith("/") or path == f"{old_info}/RECORD":
                    continue
                data = src.read(info)
                if path.startswith(old_info + "/"):
                    path = new_info + path[len(old_info):]
                    if path.endswith("/METADATA"):
                        data = re.sub(rb"(?m)^Version: .*$", f"Version: {new_version}".encode(), data, count=1)
                    elif path.endswith("/WHEEL"):
                        data = re.sub(rb"(?m)^Tag: .*$", f"Tag: py3-none-{plat}".encode(), data)
                put(path, data, (info.external_attr >> 16) & 0o777 or 0o644)
            for source, arcname in extra:
                put(arcname, source.read_bytes(), 0o755)
            put(f"{new_info}/clawd_build.json", json.dumps(record, indent=1, sort_keys=True).encode() + b"\n")
            dst.writestr(f"{new_info}/RECORD", "\n".join([*rows, f"{new_info}/RECORD,,"]) + "\n")
    tmp.replace(out)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("wheel", type=Path)
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--label", required=True)
    parser.add_argument("--plat", required=True)
    parser.add_argument("--record", required=True, help="the build record, JSON")
    parser.add_argument("--add", action="append", default=[], help="SRC=PATH_IN_WHEEL (made executable)")
    args = parser.parse_args()
    extra = [(Path(a.split("=", 1)[0]), a.split("=", 1)[1]) for a in args.add]
    print(relabel(args.wheel, args.outdir, args.label, args.plat, json.loads(args.record), extra))
    return 0


if __name__ == "__main__":
    sys.exit(main())
