"""The CPU guard: refuse a llama.cpp build the CPU cannot run (one line, never SIGILL), and spot known-bad paths."""
from __future__ import annotations

from ..errors import CpuMismatch
from .build import BuildInfo
from .features import CpuInfo
from .profiles import best, missing

# The x86 CPU flags AMX needs; a build with AMX compiled in (`AMX_INT8 = 1` in llama.cpp's system info) uses its
# extra buffer type on such a CPU, and that path crashes in this llama.cpp (see profiles.py).
AMX_FLAGS = ("amx_tile", "amx_int8")


def _advice(cpu: CpuInfo) -> str:
    try:
        return f"rebuild for this CPU: scripts/build-wheel.sh --profile {best(cpu.arch, cpu.features).name}"
    except KeyError as exc:
        return str(exc)


def check(build: BuildInfo, cpu: CpuInfo) -> None:
    """Raise CpuMismatch when `build` needs an instruction set `cpu` lacks (before any of its code runs)."""
    profile = build.profile
    if profile is None:
        return  # not ours: checked from llama.cpp's own feature list once loaded (check_loaded)
    if profile.arch != cpu.arch:
        raise CpuMismatch(f"llama.cpp was built for {profile.arch} (profile {profile.name}) but this is a "
                          f"{cpu.arch} machine ({cpu.model}); {_advice(cpu)}")
    lacking = missing(profile, cpu.features)
    if lacking:
        raise CpuMismatch(f"llama.cpp was built with profile {profile.name}, which needs {', '.join(lacking)}; "
                          f"this CPU ({cpu.model}) does not have {'it' if len(lacking) == 1 else 'them'}; "
                          f"{_advice(cpu)}")


# llama.cpp's compile-time CPU features (llama_print_system_info) -> the x86 flags each one needs. On ARM ggml
# reports features only when the CPU has them too, so its list cannot reveal a mismatch: the profile does.
_GGML_X86 = {
    "AVX": ("avx",), "AVX2": ("avx2",), "FMA": ("fma",), "F16C": ("f16c",), "BMI2": ("bmi2",),
    "AVX_VNNI": ("avx_vnni",), "AVX512": ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"),
    "AVX512_VBMI": ("avx512vbmi",), "AVX512_VNNI": ("avx512_vnni",), "AVX512_BF16": ("avx512_bf16",),
    "AMX_INT8": ("amx_int8",), "SSSE3": ("ssse3",),
}


def compiled_features(system_info: str) -> set[str]:
    """`AVX2 = 1 | F16C = 1 | ...` -> {"AVX2", "F16C", ...}."""
    out = set()
    for part in system_info.replace("\n", "|").split("|"):
        name, _, value = part.partition("=")
        if value.strip() == "1":
            out.add(name.strip().rsplit(":", 1)[-1].strip())
    return out


def check_loaded(system_info: str, cpu: CpuInfo) -> None:
    """For a build of unknown profile: compare the x86 features llama.cpp was compiled with against the CPU."""
    if cpu.arch != "x86_64":
        return
    needed = [flag for feat in sorted(compiled_features(system_info)) for flag in _GGML_X86.get(feat, ())]
    lacking = sorted({f for f in needed if f not in cpu.features})
    if lacking:
        raise CpuMismatch(f"this llama-cpp-python was compiled for a CPU with {', '.join(lacking)}; this CPU "
                          f"({cpu.model}) does not have {'it' if len(lacking) == 1 else 'them'}; {_advice(cpu)}")


def amx_is_broken(system_info: str, cpu: CpuInfo) -> bool:
    """True when llama.cpp would put weights in its AMX buffers here (compiled in, and the CPU has AMX)."""
    return "AMX_INT8" in compiled_features(system_info) and cpu.has(*AMX_FLAGS)
