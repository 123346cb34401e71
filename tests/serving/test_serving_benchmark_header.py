"""The header of ``benchmarks/results/**/serving.md`` says which CPU measured it, beyond its name.

Under a hypervisor the name can be as bare as "AMD EPYC"; the int8 kernel class and ISA extensions
(the engine's own ``/proc/cpuinfo`` parser) and the family/model numbers tell the machines apart.
Pure tests on sample ``/proc/cpuinfo`` text; nothing is measured.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from kondense_testing.benchmarks import load_benchmark

EPYC_ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 sha_ni vaes

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu
"""


@pytest.fixture(scope="module")
def serving() -> ModuleType:
    return load_benchmark("serving")


def test_a_bare_cpu_name_comes_with_family_model_and_int8_kernel(serving: ModuleType, tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(EPYC_ZEN3)
    meta = serving.cpu_meta(cpuinfo)
    assert meta["cpu"] == "AMD EPYC"
    assert (meta["cpu_vendor"], meta["cpu_family_model"], meta["int8_kernel"]) == (
        "AuthenticAMD",
        "25/1",
        "avx2",
    )
    line = serving.cpu_line(meta)
    assert line == "AMD EPYC (AuthenticAMD; family/model 25/1; int8 kernel avx2: avx2 fma f16c)"


def test_results_recorded_before_the_cpu_details_render_the_name_alone(serving: ModuleType) -> None:
    assert serving.cpu_line({"cpu": "Intel(R) Xeon(R) Processor"}) == "Intel(R) Xeon(R) Processor"


def test_unreadable_cpuinfo_still_names_a_processor(serving: ModuleType, tmp_path: Path) -> None:
    meta = serving.cpu_meta(tmp_path / "missing")
    assert meta["cpu_family_model"] is None and meta["int8_kernel"] == "baseline"
    assert isinstance(meta["cpu"], str) and meta["cpu"]
