"""The counting kernel compiles to a cubin for the H100 (sm_90) with NVRTC, no GPU needed."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from gateway.tokens.gpu import KERNEL, LONG_KERNEL, compile_kernel, cubin_path


def _nvrtc_missing() -> str | None:
    try:
        import cuda.core  # noqa: F401
    except ImportError as exc:
        return f"cuda.core is not installed (the `gpu` extra): {exc}"
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib

        load_nvidia_dynamic_lib("nvrtc")
    except Exception as exc:
        return f"NVRTC is not installed (cuda-core[cu13] brings it): {exc}"
    return None


pytestmark = pytest.mark.skipif(_nvrtc_missing() is not None,
                                reason=_nvrtc_missing() or "")


@pytest.mark.parametrize("arch", ["sm_90"])
def test_kernel_compiles_to_a_cubin(arch: str) -> None:
    started = time.perf_counter()
    code = compile_kernel(arch)
    elapsed = time.perf_counter() - started
    assert code.code_type == "cubin"
    cubin = bytes(code.code)
    assert cubin[:4] == b"\x7fELF" and KERNEL.encode() in cubin and LONG_KERNEL.encode() in cubin
    assert elapsed < 60, f"NVRTC took {elapsed:.1f} s"


def test_the_cubin_is_cached(tmp_path: Path) -> None:
    first = bytes(compile_kernel("sm_90", tmp_path).code)
    path = cubin_path(tmp_path, "sm_90")
    assert path.read_bytes() == first
    started = time.perf_counter()
    again = compile_kernel("sm_90", tmp_path)
    assert time.perf_counter() - started < 0.2  # read, not compiled
    assert bytes(again.code) == first
    assert cubin_path(tmp_path, "sm_89") != path  # another architecture: another file
