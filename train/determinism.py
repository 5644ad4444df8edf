"""Training that reproduces bit for bit on any x86 machine: one set of CPU kernels.

torch picks its vectorised kernels by the CPU it finds: ATen's own (AVX2 or AVX-512), MKL's
and oneDNN's likewise. Kernels for different instruction sets sum in different orders, so
the same command with the same seed, torch build and thread count trains other weights on
another CPU. Measured on 2026-11-29: ``python -m train.pretrain --no-median-head`` on an
AVX-512 machine (AMD EPYC) wrote LSTM ``5d34582aa6b3``, from the code of today and from the
commit that shipped ``dbdcb85c437f`` alike; with the variables below it wrote
``dbdcb85c437f``, the shipped LSTM, bit for bit (both 2 threads, ~165 s).

The libraries read these when they load, so they must be set before the first ``import
torch``: ``pin_cpu_kernels`` runs the command again in a fresh interpreter with them set.
"""

from __future__ import annotations

import os
import sys

# AVX2: what every x86-64 machine of the last decade has, and the widest the shipped
# checkpoint's machine had.
PINNED_KERNELS: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "MKL_CBWR": "AVX2",
    "DNNL_MAX_CPU_ISA": "AVX2",
}


def kernels_pinned() -> bool:
    return all(os.environ.get(k) == v for k, v in PINNED_KERNELS.items())


def pin_cpu_kernels(module: str, argv: list[str] | None) -> None:
    """Unless the kernels are pinned already, replace this process by ``python -m module
    argv`` with ``PINNED_KERNELS`` set (returns only when they are)."""
    if kernels_pinned():
        return
    args = sys.argv[1:] if argv is None else list(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *args], {**os.environ, **PINNED_KERNELS})
