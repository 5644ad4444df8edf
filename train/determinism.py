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

import argparse
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


def add_kernels_option(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--native-kernels",
        action="store_true",
        help="use the CPU's widest kernels (faster on AVX-512; not the shipped weights)",
    )


def kernels_text() -> str:
    """What a checkpoint's metadata says of the kernels it was trained with."""
    return "avx2 (train.determinism.PINNED_KERNELS)" if kernels_pinned() else "native"


def pin_cpu_kernels(module: str, argv: list[str] | None, native: bool = False) -> None:
    """Unless the kernels are pinned already (or ``native``: ``--native-kernels``), replace
    this process by ``python -m module argv`` with ``PINNED_KERNELS`` set."""
    if native or kernels_pinned():
        return
    args = sys.argv[1:] if argv is None else list(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *args], {**os.environ, **PINNED_KERNELS})
