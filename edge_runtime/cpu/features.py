"""The running CPU: architecture, model name and feature flags (/proc/cpuinfo on x86, HWCAP on ARM)."""
from __future__ import annotations

import ctypes
import ctypes.util
import platform
from dataclasses import dataclass
from pathlib import Path

# linux/arch/arm64/include/uapi/asm/hwcap.h, AT_HWCAP and AT_HWCAP2 bit -> the name /proc/cpuinfo prints.
_HWCAP = (
    "fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "atomics", "fphp", "asimdhp", "cpuid",
    "asimdrdm", "jscvt", "fcma", "lrcpc", "dcpop", "sha3", "sm3", "sm4", "asimddp", "sha512", "sve", "asimdfhm",
    "dit", "uscat", "ilrcpc", "flagm", "ssbs", "sb", "paca", "pacg",
)
_HWCAP2 = (
    "dcpodp", "sve2", "sveaes", "svepmull", "svebitperm", "svesha3", "svesm4", "flagm2", "frint", "svei8mm",
    "svef32mm", "svef64mm", "svebf16", "i8mm", "bf16", "dgh", "rng", "bti", "mte", "ecv", "afp", "rpres",
    "mte3", "sme", "sme_i16i64", "sme_f64f64", "sme_i8i32", "sme_f16f32", "sme_b16f32", "sme_f32f32",
    "sme_fa64", "wfxt", "ebf16", "sve_ebf16", "cssc", "rprfm", "sve2p1", "sme2", "sme2p1", "sme_i16i32",
    "sme_bi32i32", "sme_b16b16", "sme_f16f16", "mops", "hbc",
)
_AT_HWCAP, _AT_HWCAP2 = 16, 26


@dataclass(frozen=True)
class CpuInfo:
    """What a build has to be checked against."""

    arch: str
    model: str
    features: frozenset[str]
    source: str  # where the features came from

    def has(self, *names: str) -> bool:
        return all(n in self.features for n in names)


def _bits(value: int, names: tuple[str, ...]) -> set[str]:
    return {name for bit, name in enumerate(names) if value >> bit & 1}


def _hwcaps() -> set[str] | None:
    """ARM features from the kernel's auxiliary vector: what user space may really execute (also under qemu-user,
    whose /proc/cpuinfo is the host's)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        getauxval = libc.getauxval
    except (OSError, AttributeError):
        return None
    getauxval.argtypes, getauxval.restype = [ctypes.c_ulong], ctypes.c_ulong
    hwcap, hwcap2 = int(getauxval(_AT_HWCAP)), int(getauxval(_AT_HWCAP2))
    return _bits(hwcap, _HWCAP) | _bits(hwcap2, _HWCAP2) if hwcap else None


def parse_cpuinfo(text: str) -> tuple[str, set[str]]:
    """(model name, flags) from /proc/cpuinfo text of x86 (`model name`, `flags`) or ARM (`Features`)."""
    model, flags = "", set[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


def read_cpu(cpuinfo: Path = Path("/proc/cpuinfo"), arch: str | None = None) -> CpuInfo:
    """This machine's CPU (or, for tests, a saved /proc/cpuinfo and an architecture)."""
    machine = arch or platform.machine()
    try:
        model, flags = parse_cpuinfo(cpuinfo.read_text(errors="replace"))
    except OSError:
        model, flags = "", set[str]()
    source = str(cpuinfo)
    if machine == "aarch64" and arch is None:
        caps = _hwcaps()
        if caps is not None:
            flags, source = caps, "HWCAP"
    return CpuInfo(arch=machine, model=model or f"unknown {machine} CPU", features=frozenset(flags), source=source)
