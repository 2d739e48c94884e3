"""kernels/gradcam.cu compiles for sm_80 and sm_90, every variant, with no warning: with nvcc and with NVRTC
(the compiler CuPy uses), without a GPU; its constants agree with the NumPy reference and the wrapper."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from onnx_gradcam.cam import fused, reference

ARCHS = ["sm_80", "sm_90"]
HEADER = Path(__file__).resolve().parents[2] / "kernels" / "gradcam_math.cuh"
# What CuPy's RawModule adds to our options when it compiles with NVRTC (cupy/cuda/compiler.py).
CUPY_NVRTC_OPTIONS = ("-ftz=true", "--device-as-default-execution-space")


def test_kernel_source_inlines_the_header():
    source = fused.kernel_source()
    assert '#include "gradcam_math.cuh"' not in source
    assert "struct half_bits" in source and "__global__ void gradcam_fused" in source


def test_every_contract_method_has_a_kernel_and_only_known_ids_compile():
    assert set(fused.kernel_ids()) >= set(reference.METHODS)
    enum = {int(value) for value in re.findall(r"GRADCAM_METHOD_\w+ = (\d+)", HEADER.read_text())}
    assert {int(name.split(", ")[1]) for name in fused.kernel_names()} == enum  # the registry ids and the map case


def test_epsilons_match_the_reference():
    defines = dict(re.findall(r"#define (GRADCAM\w*_EPSILON) ([0-9.e+-]+)f", HEADER.read_text()))
    assert float(defines["GRADCAM_EPSILON"]) == reference.EPSILON
    assert float(defines["GRADCAMPP_EPSILON"]) == reference.GRADCAMPP_EPSILON


def test_nvcc_compiles_every_variant_without_warnings(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH (the NVRTC test still compiles the kernel)")
    source = tmp_path / "gradcam.cu"
    source.write_text(fused.kernel_source())
    builds = {  # one process per arch, run side by side
        arch: subprocess.Popen(
            [nvcc, "-std=c++17", "-cubin", f"-arch={arch}", "-DGRADCAM_INSTANTIATE_ALL", "-Werror", "all-warnings",
             "-Xptxas", "-v,-warn-spills,-warn-lmem-usage", str(source), "-o", str(tmp_path / f"{arch}.cubin")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for arch in ARCHS
    }
    for arch, build in builds.items():
        log = build.communicate()[0]
        assert build.returncode == 0, f"{arch}:\n{log}"
        assert "warning" not in log.lower(), f"{arch}:\n{log}"
        entries = set(re.findall(r"Compiling entry function '(\w+)'", log))
        assert len(entries) == len(fused.kernel_names()) == 20, f"{arch}:\n{log}"


@pytest.mark.parametrize("arch", ARCHS)
def test_nvrtc_compiles_every_variant_without_warnings(arch):
    nvrtc = pytest.importorskip("cupy_backends.cuda.libs.nvrtc", reason="CuPy is not installed; nvcc covers the kernel")
    names = fused.kernel_names()
    program = nvrtc.createProgram(fused.kernel_source(), "gradcam.cu", [], [])
    try:
        for name in names:
            nvrtc.addNameExpression(program, name)
        options = [*fused.COMPILE_OPTIONS, *CUPY_NVRTC_OPTIONS, f"--gpu-architecture={arch}"]
        try:
            nvrtc.compileProgram(program, options)
        except nvrtc.NVRTCError as error:
            pytest.fail(f"{error}\n{nvrtc.getProgramLog(program)}")
        log = nvrtc.getProgramLog(program).strip("\x00\n ")
        assert log == "", log
        cubin = nvrtc.getCUBIN(program)
        lowered = {nvrtc.getLoweredName(program, name) for name in names}
        assert len(lowered) == len(names)
        assert all(symbol.encode() in cubin for symbol in lowered)
    finally:
        nvrtc.destroyProgram(program)


def test_nvrtc_refuses_an_id_without_a_kernel_case():
    """An id no case computes fails to compile, so no method can silently run another method's math."""
    nvrtc = pytest.importorskip("cupy_backends.cuda.libs.nvrtc", reason="CuPy is not installed; nvcc covers the kernel")
    unknown = max(int(name.split(", ")[1]) for name in fused.kernel_names()) + 1
    program = nvrtc.createProgram(fused.kernel_source(), "gradcam.cu", [], [])
    try:
        nvrtc.addNameExpression(program, fused.kernel_name("float32", unknown, False))
        with pytest.raises(nvrtc.NVRTCError):
            nvrtc.compileProgram(program, [*fused.COMPILE_OPTIONS, *CUPY_NVRTC_OPTIONS,
                                           f"--gpu-architecture={ARCHS[0]}"])
        assert "must be a GRADCAM_METHOD_* id" in nvrtc.getProgramLog(program)
    finally:
        nvrtc.destroyProgram(program)
