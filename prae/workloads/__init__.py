"""Workloads and their shadows as child process trees (no Ray import).

process.py   WorkloadProcess: start / sample / stop one role (live or shadow)
launch.py    the child's entry point: sandbox, context, run, result files
context.py   WorkloadContext handed to workload code
kinds.py     kinds, shadow modes, the built-ins' parameters, checks before start
sandbox.py   Landlock: a shadow writes only to its own directory, cannot signal the live run
etl.py, train.py, replay.py, service.py   the built-ins
curve.py, tracesrc.py, simulate.py          resource curves from traces and profiles
"""

from prae.workloads.context import WorkloadContext
from prae.workloads.process import WorkloadProcess

__all__ = ["WorkloadContext", "WorkloadProcess"]
