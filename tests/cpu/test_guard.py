"""The CPU guard and the profile table: a build the CPU cannot run is refused in one line that says what to do."""
from __future__ import annotations

import pytest

from edge_runtime.cpu import guard, profiles
from edge_runtime.cpu.build import BuildInfo
from edge_runtime.errors import CpuMismatch


def build(profile: str) -> BuildInfo:
    p = profiles.by_name(profile)
    return BuildInfo(version=f"0.3.36+{p.label}", profile=p, details={})


def test_v4_build_is_refused_on_a_cpu_without_avx512(cpuinfo) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CpuMismatch) as caught:
        guard.check(build("x86-64-v4"), cpuinfo("kaby-lake"))
    message = str(caught.value)
    assert "\n" not in message
    assert "profile x86-64-v4" in message
    assert "avx512f" in message and "avx2" not in message.split("needs")[1].split(";", maxsplit=1)[0]
    assert "Intel(R) Core(TM) i7-7700" in message
    assert "scripts/build-wheel.sh --profile x86-64-v3" in message


def test_dotprod_build_is_refused_on_a_pi4(cpuinfo) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CpuMismatch, match=r"needs atomics, asimdrdm, asimddp.*--profile armv8-a"):
        guard.check(build("armv8.2-a+dotprod"), cpuinfo("pi4"))
    guard.check(build("armv8.2-a+dotprod"), cpuinfo("pi5"))


def test_a_build_for_another_architecture_is_refused(cpuinfo) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(CpuMismatch, match=r"built for aarch64 .* but this is a x86_64 machine"):
        guard.check(build("armv8-a"), cpuinfo("kaby-lake"))


@pytest.mark.parametrize(("cpu", "expected"), [
    ("kaby-lake", "x86-64-v3"), ("sapphire-rapids", "x86-64-v4"), ("skylake-sp", "x86-64-v4"),
    ("j1900", "x86-64-v2"),
    ("pi4", "armv8-a"), ("pi5", "armv8.2-a+dotprod"),
])
def test_the_best_profile_for_known_cpus(cpuinfo, cpu: str, expected: str) -> None:  # type: ignore[no-untyped-def]
    info = cpuinfo(cpu)
    chosen = profiles.best(info.arch, info.features)
    assert chosen.name == expected
    guard.check(build(chosen.name), info)  # and the build made for it passes the guard


def test_32_bit_arm_is_refused_with_a_reason() -> None:
    with pytest.raises(KeyError, match="32-bit ARM"):
        profiles.best("armv7l", frozenset({"neon", "vfpv4"}))


def test_no_profile_builds_for_the_build_host_or_with_amx() -> None:
    for profile in profiles.PROFILES:
        args = profile.cmake_args
        assert "-DGGML_NATIVE=OFF" in args and "-DGGML_RPC=ON" in args, profile.name
        assert not [a for a in args if "AMX" in a and a.endswith("=ON")], profile.name
        assert profiles.by_label(profile.label) is profile


# What each ggml x86 option lets the compiler emit, as /proc/cpuinfo flags: a profile must require all of them.
_OPTION_FLAGS = {"GGML_AVX": {"avx"}, "GGML_AVX2": {"avx2"}, "GGML_FMA": {"fma"}, "GGML_F16C": {"f16c"},
                 "GGML_BMI2": {"bmi2"}, "GGML_SSE42": {"sse4_2"},
                 "GGML_AVX512": {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"},
                 "GGML_AVX512_VNNI": {"avx512_vnni"}, "GGML_AVX512_VBMI": {"avx512vbmi"},
                 "GGML_AVX512_BF16": {"avx512_bf16"}, "GGML_AVX_VNNI": {"avx_vnni"}}


def test_x86_profiles_require_every_instruction_set_they_enable() -> None:
    for profile in profiles.for_arch("x86_64"):
        enabled = {a[2:-3] for a in profile.cmake_args if a.endswith("=ON")}
        unknown = {o for o in enabled if o.startswith("GGML_") and o not in _OPTION_FLAGS and o != "GGML_RPC"}
        assert not unknown, f"{profile.name}: add {unknown} to this table"
        needed = set().union(*(_OPTION_FLAGS[o] for o in enabled if o in _OPTION_FLAGS))
        assert needed <= set(profile.requires), profile.name


def test_a_foreign_build_is_checked_against_llama_cpps_own_feature_list(cpuinfo) -> None:  # type: ignore[no-untyped-def]
    native_on_zen4 = "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | REPACK = 1 |"
    expected = r"compiled for a CPU with avx512_vnni, avx512bw, .*avx512vl; this CPU \(Intel.*--profile x86-64-v3"
    with pytest.raises(CpuMismatch, match=expected):
        guard.check_loaded(native_on_zen4, cpuinfo("kaby-lake"))
    guard.check_loaded(native_on_zen4, cpuinfo("sapphire-rapids"))
    guard.check_loaded(native_on_zen4, cpuinfo("pi4"))  # ARM: ggml's list says what the CPU has, not the build


def test_amx_is_turned_off_only_where_it_is_compiled_in_and_the_cpu_has_it(cpuinfo) -> None:  # type: ignore[no-untyped-def]
    spr, kaby = cpuinfo("sapphire-rapids"), cpuinfo("kaby-lake")
    with_amx = "CPU : AVX512 = 1 | AVX512_VNNI = 1 | AMX_INT8 = 1 | REPACK = 1 |"
    without = "CPU : AVX512 = 1 | AVX512_VNNI = 1 | REPACK = 1 |"
    assert guard.amx_is_broken(with_amx, spr)
    assert not guard.amx_is_broken(without, spr)
    assert not guard.amx_is_broken(with_amx, kaby)
