"""The header of ``benchmarks/results/models.md`` names the CPU flags that decide int8 kernels (issue 10).

A rerun once rendered ``avx_vnni=False`` over rows measured where the flag was present: the header
showed the rendering machine, not the machines that measured the merged rows. The header now reads
``/proc/cpuinfo`` with the engine's parser (the one every manifest's hardware record uses) and each
row carries its own CPU record. Pure tests on sample ``/proc/cpuinfo`` text; no model runs.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from kondense_testing.benchmarks import load_benchmark

# this machine's kind: an Intel Xeon with AVX-512 VNNI, AVX-VNNI and AMX (first block of /proc/cpuinfo)
XEON_AMX = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu vme de pse tsc msr sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 avx512f avx512dq avx512bw \
avx512vl avx512_bf16 avx_vnni avx512_vnni avx512_bitalg amx_bf16 avx512_fp16 amx_tile amx_int8
vmx flags\t: vnmi preemption_timer invvpid ept_x_only

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu vme
"""
EPYC_NO_VNNI256 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu avx avx2 fma f16c avx512f avx512bw avx512_vnni
"""


@pytest.fixture(scope="module")
def models() -> ModuleType:
    return load_benchmark("models")


def test_the_cpu_record_reads_every_int8_flag_of_an_amx_xeon(models: ModuleType, tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(XEON_AMX)
    record = models.cpu_record(cpuinfo)
    assert record["cpu"] == "Intel(R) Xeon(R) Processor"
    assert all(record[flag] for flag in ("avx2", "avx512_vnni", "avx_vnni", "amx"))
    assert record["int8Kernel"] == "amx"


def test_a_cpu_without_a_flag_says_false(models: ModuleType, tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(EPYC_NO_VNNI256)
    record = models.cpu_record(cpuinfo)
    assert (record["avx512_vnni"], record["avx_vnni"], record["amx"]) == (True, False, False)


def test_the_header_shows_the_cpus_of_the_rows_not_of_the_renderer(
    models: ModuleType, tmp_path: Path
) -> None:
    paths = []
    for name, text in (("xeon", XEON_AMX), ("epyc", EPYC_NO_VNNI256)):
        paths.append(tmp_path / name)
        paths[-1].write_text(text)
    xeon, epyc = (models.cpu_record(p) for p in paths)
    row = {"model": "m", "technique": "fp16", "size": 2.0, "speedup": 1.0, "delta": 0.0, "gate": "no budget"}

    one = models.render([{**row, "cpu": xeon}], [], {**epyc, "load": None})
    assert "avx_vnni=True" in one and "amx=True" in one and "avx_vnni=False" not in one

    mixed = models.render([{**row, "cpu": xeon}, {**row, "cpu": epyc}, row], [], {**xeon, "load": None})
    assert "Intel(R) Xeon(R) Processor" in mixed and "AMD EPYC" in mixed
    assert "avx_vnni=True" in mixed and "avx_vnni=False" in mixed
    assert "recorded no CPU" in mixed  # a merged row without a record is not passed off as this machine's
