"""JSON files that any parser reads (jq, JavaScript, DuckDB's read_json).

``json.dumps`` writes a Python float NaN or inf as the bare tokens ``NaN`` / ``Infinity``,
which are not JSON, and its ``default`` hook is never called for floats. A metric with
nothing to measure (a verdict judged on no held-out windows) is NaN, so every report goes
through here: non-finite numbers become ``null``, numpy values plain ones, other objects
their ``str``.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float (Python or numpy) replaced by None, recursively."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return finite(obj.tolist())
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def strict_dumps(obj: Any, indent: int | None = 2) -> str:
    return json.dumps(finite(obj), indent=indent, allow_nan=False, default=str)
