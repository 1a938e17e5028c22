"""/proc/cpuinfo texts of real CPUs (flags abridged to what matters and a few neighbours), for the guard tests."""
from __future__ import annotations

from pathlib import Path

import pytest

CPUINFO = {
    # Intel Core i7-7700 (Kaby Lake): AVX2, no AVX-512
    "kaby-lake": ("x86_64", "model name\t: Intel(R) Core(TM) i7-7700 CPU @ 3.60GHz\nflags\t\t: fpu vme sse sse2 ht "
                  "pni ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand bmi1 avx2 bmi2 erms\n"),
    # Intel Xeon Platinum 8480+ (Sapphire Rapids): AVX-512 and AMX
    "sapphire-rapids": ("x86_64", "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu sse sse2 pni ssse3 "
                        "fma sse4_1 sse4_2 popcnt avx f16c bmi1 avx2 bmi2 avx512f avx512dq avx512cd avx512bw "
                        "avx512vl avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8\n"),
    # Intel Xeon Gold 6148 (Skylake-SP): AVX-512 without VNNI
    "skylake-sp": ("x86_64", "model name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz\nflags\t\t: fpu sse sse2 pni "
                   "ssse3 fma sse4_1 sse4_2 popcnt avx f16c bmi1 avx2 bmi2 avx512f avx512dq avx512cd avx512bw "
                   "avx512vl\n"),
    # Intel Celeron J1900 (Silvermont): SSE4.2, no AVX
    "j1900": ("x86_64", "model name\t: Intel(R) Celeron(R) CPU  J1900  @ 1.99GHz\nflags\t\t: fpu sse sse2 pni ssse3 "
              "cx16 sse4_1 sse4_2 movbe popcnt aes rdrand\n"),
    # Raspberry Pi 4 (Cortex-A72, ARMv8.0)
    "pi4": ("aarch64", "processor\t: 0\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n"
            "CPU implementer\t: 0x41\nCPU part\t: 0xd08\nHardware\t: BCM2835\n"),
    # Raspberry Pi 5 (Cortex-A76, ARMv8.2 with dot product)
    "pi5": ("aarch64", "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp "
            "cpuid asimdrdm lrcpc dcpop asimddp\nCPU part\t: 0xd0b\n"),
}


@pytest.fixture
def cpuinfo(tmp_path: Path):  # type: ignore[no-untyped-def]
    """cpuinfo("kaby-lake") -> a CpuInfo read from that saved /proc/cpuinfo, as read_cpu reads this machine's."""
    from edge_runtime.cpu.features import read_cpu

    def load(name: str):  # type: ignore[no-untyped-def]
        arch, text = CPUINFO[name]
        path = tmp_path / f"{name}.cpuinfo"
        path.write_text(text)
        return read_cpu(path, arch)

    return load
