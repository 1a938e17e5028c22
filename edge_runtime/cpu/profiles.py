"""Build profiles: the instruction sets a llama.cpp build may use, as CMake flags and as CPU features to check."""
from __future__ import annotations

import re
from dataclasses import dataclass

# Never AMX. The vendored llama.cpp (llama-cpp-python 0.3.36) crashes in ggml_backend_amx_mul_mat at `ldtilecfg`
# on Sapphire Rapids class Xeons: the tile config is built on the stack and optimised away, and XFD permission
# is requested on the main thread only (llama.cpp issue 20824, open fix PR 26954). `-march=native` on such a CPU
# turns it on. Once a fixed llama.cpp is vendored, an `x86-64-v4-amx` profile can add
# -DGGML_AMX_TILE=ON -DGGML_AMX_INT8=ON -DGGML_AMX_BF16=ON and drop the runtime workaround in
# edge_runtime/engine/bufts.py.
_X86_OFF = ("-DGGML_AVX=OFF", "-DGGML_AVX2=OFF", "-DGGML_FMA=OFF", "-DGGML_F16C=OFF", "-DGGML_BMI2=OFF",
            "-DGGML_AVX_VNNI=OFF", "-DGGML_AVX512=OFF", "-DGGML_AVX512_VBMI=OFF", "-DGGML_AVX512_VNNI=OFF",
            "-DGGML_AVX512_BF16=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF")
# Every profile: no -march=native (that binary fits the build host only), the RPC backend (one model over several
# boards). OpenMP stays on, as in pip's default build the engine was measured with.
COMMON_CMAKE_ARGS = ("-DGGML_NATIVE=OFF", "-DGGML_RPC=ON", "-DLLAMA_CURL=OFF")


@dataclass(frozen=True)
class Profile:
    """One named instruction-set level: what the compiler may emit, and what the CPU must have for it."""

    name: str
    arch: str  # `uname -m` of the machines it runs on
    cmake_args: tuple[str, ...]
    requires: tuple[str, ...]  # /proc/cpuinfo `flags` (x86) or HWCAP `Features` names (ARM)
    boards: str

    @property
    def label(self) -> str:
        """The PEP 440 local version label that marks a wheel built for this profile."""
        return "clawd." + re.sub(r"[^a-z0-9]+", ".", self.name.lower())


def _x86(*on: str) -> tuple[str, ...]:
    args = [a for a in _X86_OFF if a.split("=")[0][2:] not in on]
    return (*COMMON_CMAKE_ARGS, "-DGGML_SSE42=ON", *(f"-D{opt}=ON" for opt in on), *args)


def _arm(march: str) -> tuple[str, ...]:
    return (*COMMON_CMAKE_ARGS, f"-DGGML_CPU_ARM_ARCH={march}")


_V2 = ("ssse3", "sse4_1", "sse4_2", "popcnt")
_V3 = (*_V2, "avx", "avx2", "fma", "f16c", "bmi2")
_V4 = (*_V3, "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl")
_V3_OPTIONS = ("GGML_AVX", "GGML_AVX2", "GGML_FMA", "GGML_F16C", "GGML_BMI2")

# Ordered from the most to the least capable per architecture: detection takes the first one the CPU can run.
PROFILES: tuple[Profile, ...] = (
    # No AVX-512 VNNI/VBMI/BF16 on top: a build with VNNI measured level with this one (scripts/bench_build.py,
    # README), and without them the wheel also runs on Skylake-SP.
    Profile("x86-64-v4", "x86_64", _x86(*_V3_OPTIONS, "GGML_AVX512"),
            _V4, "AVX-512 CPUs: Intel Skylake-SP and later Xeons, Ice/Tiger Lake, Sapphire Rapids, AMD Zen 4/5"),
    Profile("x86-64-v3", "x86_64", _x86(*_V3_OPTIONS),
            _V3, "Haswell (2013) and later, AMD Zen 1-3, Intel N100/N97 mini PCs"),
    Profile("x86-64-v2", "x86_64", _x86(), _V2, "Atom/Celeron without AVX (e.g. J1900, J4125)"),
    Profile("armv8.2-a+dotprod", "aarch64", _arm("armv8.2-a+dotprod"),
            ("fp", "asimd", "atomics", "asimdrdm", "asimddp"),
            "Cortex-A55/A76 and later: Raspberry Pi 5, RK3588 (Orange Pi 5, Rock 5), Jetson Orin"),
    Profile("armv8-a", "aarch64", _arm("armv8-a"), ("fp", "asimd"),
            "any 64-bit ARM: Raspberry Pi 3/4/Zero 2 W (64-bit OS), Cortex-A53/A72"),
)

# Architectures that are deliberately not built, and why (said instead of a build that was never run).
REFUSED: dict[str, str] = {
    "armv7l": "32-bit ARM (armv7) is not supported: no armv7 build of llama-cpp-python has been built or tested "
              "here; every Raspberry Pi since the 3 runs the 64-bit Raspberry Pi OS, which uses the armv8-a profile",
    "armv6l": "32-bit ARMv6 (Pi 1, Pi Zero) is not supported: too slow and too little memory for an LLM",
    "i686": "32-bit x86 is not supported: use a 64-bit OS (x86-64-v2 or later)",
}


def by_name(name: str) -> Profile:
    for profile in PROFILES:
        if profile.name == name:
            return profile
    known = ", ".join(p.name for p in PROFILES)
    raise KeyError(f"unknown build profile {name!r} (known: {known})")


def by_label(label: str) -> Profile | None:
    """The profile a wheel's local version label names, if it is one of ours."""
    return next((p for p in PROFILES if p.label == label), None)


def for_arch(arch: str) -> list[Profile]:
    return [p for p in PROFILES if p.arch == arch]


def missing(profile: Profile, features: frozenset[str]) -> list[str]:
    """The features a profile needs that a CPU with `features` lacks."""
    return [f for f in profile.requires if f not in features]


def _candidates(arch: str) -> list[Profile]:
    """The profiles of an architecture, most capable first; KeyError naming why when there are none."""
    if arch in REFUSED:
        raise KeyError(REFUSED[arch])
    candidates = for_arch(arch)
    if not candidates:
        raise KeyError(f"no build profile for the {arch} architecture (known: x86_64, aarch64)")
    return candidates


def portable(arch: str) -> Profile:
    """The profile that runs on every CPU of an architecture (for a build host of another architecture)."""
    return _candidates(arch)[-1]


def best(arch: str, features: frozenset[str]) -> Profile:
    """The most capable profile a CPU can run; raises KeyError naming why when there is none."""
    candidates = _candidates(arch)
    for profile in candidates:
        if not missing(profile, features):
            return profile
    lowest = candidates[-1]
    raise KeyError(f"this {arch} CPU lacks {', '.join(missing(lowest, features))}, which even the lowest "
                   f"profile ({lowest.name}) needs")
