"""Where a variant was evaluated: the CPU and the instruction sets that decide ONNX Runtime's int8 kernels.

int8 accuracy and speed depend on the CPU: ORT's MLAS picks its int8 GEMM by ISA (AVX2 without VNNI
saturates ``u8*s8`` pairs, AVX-512 VNNI and AVX-VNNI use dot-product instructions, AMX tiles on
Sapphire Rapids and later), so the same quantized model can score differently on another node class.
The manifest records this next to every measurement; the operator shows the short form in status.

``cpu_info_from_text`` is pure (tested on sample ``/proc/cpuinfo`` text); ``evaluation_hardware``
reads this machine.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

# /proc/cpuinfo flag -> the name the record uses. Only flags that change which kernels ORT runs.
ISA_FLAGS: dict[str, str] = {
    "avx2": "avx2",
    "fma": "fma",
    "f16c": "f16c",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512_vnni": "avx512vnni",
    "avx_vnni": "avxvnni",
    "avx512_bf16": "avx512bf16",
    "amx_tile": "amx-tile",
    "amx_int8": "amx-int8",
    "amx_bf16": "amx-bf16",
    # arm64 (/proc/cpuinfo "Features"): int8 dot products and matrix multiply
    "asimddp": "neon-dotprod",
    "i8mm": "neon-i8mm",
    "sve": "sve",
}


@dataclass(frozen=True)
class CpuInfo:
    model: str
    vendor: str | None = None
    isa: tuple[str, ...] = ()  # ISA_FLAGS values present, in ISA_FLAGS order

    @property
    def int8_kernel(self) -> str:
        """The class of int8 GEMM kernel ORT's MLAS picks on this CPU (most capable first)."""
        isa = set(self.isa)
        if {"amx-tile", "amx-int8"} <= isa:
            return "amx"
        if "avx512vnni" in isa:
            return "avx512-vnni"
        if "avxvnni" in isa:
            return "avx-vnni"
        if "avx512bw" in isa:
            return "avx512"
        if "avx2" in isa:
            return "avx2"
        if "neon-i8mm" in isa:
            return "neon-i8mm"
        if "neon-dotprod" in isa:
            return "neon-dotprod"
        return "baseline"


def cpu_info_from_text(text: str, machine: str = "") -> CpuInfo:
    """Parse ``/proc/cpuinfo`` text (x86 ``flags`` or arm64 ``Features``; the first CPU is enough)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:  # end of the first processor block
                break
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    flags = set((fields.get("flags") or fields.get("features") or "").split())
    model = fields.get("model name") or fields.get("hardware") or fields.get("cpu model") or ""
    if not model and "cpu implementer" in fields:  # arm64 without a model name line
        model = f"arm implementer {fields['cpu implementer']} part {fields.get('cpu part', '?')}"
    return CpuInfo(
        model=model or machine or "unknown",
        vendor=fields.get("vendor_id") or fields.get("cpu implementer"),
        isa=tuple(name for flag, name in ISA_FLAGS.items() if flag in flags),
    )


@dataclass(frozen=True)
class Hardware:
    cpu: CpuInfo
    cores: int | None  # CPUs this process may run on (a container's cpuset), not the host's count
    machine: str
    onnxruntime: str | None
    executionProvider: str
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The manifest's ``hardware`` object."""
        data = asdict(self)
        cpu = data.pop("cpu")
        return {
            "cpuModel": cpu["model"],
            "cpuVendor": cpu["vendor"],
            "isa": list(cpu["isa"]),
            "int8Kernel": self.cpu.int8_kernel,
            "cores": self.cores,
            "machine": self.machine,
            "onnxruntime": self.onnxruntime,
            "executionProvider": self.executionProvider,
            **data.pop("extra"),
        }

    def summary(self, limit: int = 120) -> str:
        """One short line for status: ``AMD EPYC · int8 avx512-vnni (avx2 avx512vnni) · ORT 1.32.0 CPU``."""
        kernels = [f for f in self.cpu.isa if f in ("avx2", "avx512vnni", "avxvnni", "amx-int8", "neon-i8mm")]
        provider = self.executionProvider.removesuffix("ExecutionProvider")
        text = (
            f"{self.cpu.model} · int8 {self.cpu.int8_kernel}"
            + (f" ({' '.join(kernels)})" if kernels else "")
            + f" · ORT {self.onnxruntime or '?'} {provider}"
        )
        return text if len(text) <= limit else text[: limit - 1] + "…"


def summary_of(record: dict[str, Any]) -> str:
    """The status line of a manifest's ``hardware`` record (as ``Hardware.summary``)."""
    return hardware_from_record(record).summary()


def hardware_from_record(record: dict[str, Any]) -> Hardware:
    cpu = CpuInfo(
        record.get("cpuModel") or "unknown", record.get("cpuVendor"), tuple(record.get("isa") or ())
    )
    return Hardware(
        cpu=cpu,
        cores=record.get("cores"),
        machine=record.get("machine") or "",
        onnxruntime=record.get("onnxruntime"),
        executionProvider=record.get("executionProvider") or "CPUExecutionProvider",
    )


def evaluation_hardware(
    provider: str = "CPUExecutionProvider", cpuinfo: Path = Path("/proc/cpuinfo")
) -> Hardware:
    """This machine, as evaluation ran on it (the CPU provider is what kondense evaluates with)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    try:
        ort_version: str | None = metadata.version("onnxruntime")
    except metadata.PackageNotFoundError:
        ort_version = None
    return Hardware(
        cpu=cpu_info_from_text(text, platform.processor() or platform.machine()),
        cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        machine=platform.machine(),
        onnxruntime=ort_version,
        executionProvider=provider,
    )
