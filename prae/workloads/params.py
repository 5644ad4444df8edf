"""Typed ``params`` of the built-in workloads, validated when a WorkloadProcess is built.

A built-in declares ``PARAMS = {"rows": Param(int, 2_000_000, minimum=1), ...}``; a wrong type,
an out-of-range value or an unknown key is a :class:`~prae.errors.ConfigError` naming the
workload, the field (``params.rows``), the problem and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prae.errors import ConfigError


@dataclass(frozen=True)
class Param:
    type: type  # int, float, str or bool
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    help: str = ""


def read_params(
    workload: str, params: Mapping[str, Any], schema: Mapping[str, Param]
) -> dict[str, Any]:
    """``params`` checked against ``schema`` with defaults filled in."""
    source = f"workload '{workload}'"
    unknown = sorted(str(k) for k in params if k not in schema)
    if unknown:
        raise ConfigError(
            source,
            f"params.{unknown[0]}",
            f"unknown parameter(s) {', '.join(unknown)}",
            f"remove or correct them; this kind takes: {', '.join(sorted(schema))}",
        )
    out: dict[str, Any] = {}
    for key, rule in schema.items():
        value = params.get(key, rule.default)
        field = f"params.{key}"
        if value is None and rule.default is None:
            out[key] = None
            continue
        if rule.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) != (rule.type is bool) or not isinstance(value, rule.type):
            raise ConfigError(
                source,
                field,
                f"must be {rule.type.__name__}, got {value!r}",
                f"set '{key}' to a {rule.type.__name__}",
            )
        if rule.choices is not None and value not in rule.choices:
            raise ConfigError(
                source,
                field,
                f"'{value}' is not one of {', '.join(rule.choices)}",
                f"choose one of {', '.join(rule.choices)}",
            )
        if rule.minimum is not None and value < rule.minimum:
            raise ConfigError(
                source,
                field,
                f"must be >= {rule.minimum:g}, got {value!r}",
                f"choose a value >= {rule.minimum:g}",
            )
        if rule.maximum is not None and value > rule.maximum:
            raise ConfigError(
                source,
                field,
                f"must be <= {rule.maximum:g}, got {value!r}",
                f"choose a value <= {rule.maximum:g}",
            )
        out[key] = value
    return out
