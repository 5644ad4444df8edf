"""Every error PRAE raises on purpose, in one tree.

    PraeError
    ├── ConfigError            a workload/engine YAML is wrong: names file, field, problem, fix
    ├── TraceFormatError       a trace file cannot be read in the format asked for
    ├── StoreError             the feedback store cannot be read or written
    │   └── CorruptStoreFileError   one Parquet file is unreadable (quarantined, not deleted)
    ├── CheckpointError        a model checkpoint is missing, corrupt or of another shape
    ├── PredictorUnavailable   the Serve predictor cannot be reached (callers fall back to a rule)
    └── WorkloadError          a workload failed to start or crashed
"""

from __future__ import annotations


class PraeError(Exception):
    """Base of every error PRAE raises on purpose."""


class ConfigError(PraeError):
    """A configuration file is invalid.

    The message always says which file, which field (a dotted path such as
    ``workloads[1].shadow.fraction``), what was wrong, and how to fix it.
    """

    def __init__(self, source: str, field: str, problem: str, fix: str) -> None:
        self.source = source
        self.field = field
        self.problem = problem
        self.fix = fix
        super().__init__(f"{source}: field '{field}': {problem}. Fix: {fix}")


class TraceFormatError(PraeError):
    """A trace file does not match the format it was read as."""


class StoreError(PraeError):
    """The feedback store cannot be read or written."""


class CorruptStoreFileError(StoreError):
    """One file of the store is unreadable; it is moved aside, never deleted."""


class CheckpointError(PraeError):
    """A model checkpoint is missing, unreadable, or does not fit the model."""


class PredictorUnavailable(PraeError):
    """The predictor Serve app did not answer; callers fall back to a rule-based forecast."""


class WorkloadError(PraeError):
    """A workload failed to start or exited with an error."""
