"""Training pins torch's CPU kernels so the shipped checkpoint reproduces on any x86-64
machine (train/determinism.py). No Ray."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import os, sys
from train.determinism import pin_cpu_kernels
pin_cpu_kernels("probe_pin", sys.argv[1:])
import torch
print(torch.backends.cpu.get_cpu_capability())
print(os.environ["MKL_CBWR"])
print(repr(sys.argv[1:]))
"""


def test_a_training_command_runs_again_with_avx2_kernels_and_its_arguments(tmp_path):
    (tmp_path / "probe_pin.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "DNNL_MAX_CPU_ISA")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    out = subprocess.run(
        [sys.executable, "-m", "probe_pin", "--out", "x y.pt"],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    ).stdout.splitlines()
    # torch's kernels are AVX2 here even on an AVX-512 machine; the arguments arrive as given
    assert out == ["AVX2", "AVX2", repr(["--out", "x y.pt"])], out


def test_prae_pretrain_passes_its_options_through_the_pinned_rerun_and_names_a_bad_path(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "DNNL_MAX_CPU_ISA")}
    missing = tmp_path / "no-traces"
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "prae"), "pretrain", "--traces", str(missing), "--out", str(tmp_path / "m.pt")],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("prae: error: ") and str(missing) in proc.stderr and "Traceback" not in proc.stderr
    assert "Fix: pass --traces the folder that holds bitbrains-rnd-2013-07/" in proc.stderr, proc.stderr
    assert not (tmp_path / "m.pt").exists()
