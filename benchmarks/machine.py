"""The CPU a benchmark ran on, so results from different VMs are told apart."""
from __future__ import annotations

import os
import platform

# The instruction sets that decide which kernels can run (fp32 AVX-512,
# bf16 dot products, AMX tiles).
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_info() -> dict:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), **{flag: flag in flags for flag in FLAGS}}


def describe(info: dict) -> str:
    present = [flag for flag in FLAGS if info.get(flag)]
    return f"{info['model']}, {info['cores']} cores ({', '.join(present) or 'no AVX2'})"
