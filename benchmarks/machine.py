"""The CPU a benchmark ran on, so results from different VMs are told apart."""
from __future__ import annotations

import os
import platform

# The instruction sets that decide which kernels can run (fp32 AVX-512,
# bf16 dot products, AMX tiles).
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_info() -> dict:
    """Model name, family and model number (VMs often name only the vendor:
    "AMD EPYC" is Zen 3 at family 25 model 1 and Zen 4 at model 17), cores, FLAGS."""
    model, family, number, flags = platform.processor() or platform.machine(), None, None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "cpu family":
                    family = int(value)
                elif key.strip() == "model":
                    number = int(value)
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "family": family, "model_number": number, "cores": os.cpu_count(),
            **{flag: flag in flags for flag in FLAGS}}


def describe(info: dict) -> str:
    present = [flag for flag in FLAGS if info.get(flag)]
    family = f" family {info['family']} model {info['model_number']}" if info.get("family") is not None else ""
    return f"{info['model']}{family}, {info['cores']} cores ({', '.join(present) or 'no AVX2'})"
