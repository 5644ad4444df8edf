"""Workload and engine configuration: YAML parsed once into frozen, typed objects.

Every later component receives these objects, never raw dicts. Every mistake is a
:class:`~prae.errors.ConfigError` naming the file, the dotted field path, the problem
and the fix. Unknown keys are errors too: a typo must not silently become a default.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from prae.errors import ConfigError
from prae.resources import QUANTILES

WorkloadKind = Literal["python", "command", "etl", "train", "replay", "service", "tasks"]
ShadowMode = Literal["sample", "mirror", "simulate", "none"]
# What a 'simulate' shadow of a kind without a timeline plays: the profile's phases, or
# the workload's previous complete live run from the feedback store.
SimulateSource = Literal["profile", "history"]
SIMULATE_SOURCES: tuple[str, ...] = ("profile", "history")
BUILTIN_KINDS: tuple[str, ...] = ("etl", "train", "replay", "service", "tasks")
# Kinds whose workload is a timeline of its own: a 'simulate' shadow plays it faster.
TIMELINE_KINDS: tuple[str, ...] = ("replay", "service", "tasks")
WORKLOAD_KINDS: tuple[str, ...] = ("python", "command", *BUILTIN_KINDS)
SHADOW_MODES: tuple[str, ...] = ("sample", "mirror", "simulate", "none")

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


# ----------------------------------------------------------------------------- objects


@dataclass(frozen=True)
class ResourceAmount:
    """An amount of each resource; ``None`` means 'not specified'."""

    cpu: float | None = None  # cores
    mem: int | None = None  # bytes


@dataclass(frozen=True)
class Bounds:
    """Per-workload limits the allocator never leaves (from the profile)."""

    cpu_min: float = 0.0
    cpu_max: float = math.inf
    mem_min: int = 0
    mem_max: float = math.inf


@dataclass(frozen=True)
class Phase:
    """One expected phase of a workload profile, used as a cold-start prior."""

    name: str
    progress_end: float  # fraction of progress at which the phase ends, in (0, 1]
    cpu: float | None = None
    mem: int | None = None


@dataclass(frozen=True)
class Profile:
    """The user's description of a workload: a prior for the predictor, bounds for the allocator."""

    priority: int = 0  # higher is more important
    max_pending_s: float | None = None  # SLO: longest tolerated wait for resources
    bounds: Bounds = field(default_factory=Bounds)
    phases: tuple[Phase, ...] = ()
    # CPUs of one of the workload's tasks/actors: reservations are whole numbers of them,
    # one placement-group bundle each, so every bundle fits a task. None = the kind's own
    # (a 'tasks' job's task_cpu), else one bundle of any size.
    unit_cpu: float | None = None


@dataclass(frozen=True)
class ShadowSpec:
    mode: ShadowMode = "sample"
    fraction: float = 0.05
    resources: ResourceAmount = field(default_factory=lambda: ResourceAmount(cpu=0.5))
    # Where shadows run, so they never take the live workload's resources: a custom
    # resource name (e.g. a node pool's) or, when None, their own placement-group bundle.
    custom_resource: str | None = None
    timeout_s: float | None = None  # a shadow running longer is stopped; the live run goes on
    source: SimulateSource = "profile"  # mode 'simulate' only (see prae.workloads.history)
    # kind 'python' only: modules the node's fork server imports before it forks this
    # shadow (e.g. torch), so each shadow does not pay them (see prae.workloads.forkserver)
    preload: tuple[str, ...] = ()


@dataclass(frozen=True)
class WorkloadSpec:
    name: str
    kind: WorkloadKind
    entrypoint: str | None = None  # python: "module:function"; command: a shell-free argv string
    params: Mapping[str, Any] = field(default_factory=dict)
    resources: ResourceAmount = field(default_factory=lambda: ResourceAmount(cpu=1.0))
    shadow: ShadowSpec = field(default_factory=ShadowSpec)
    profile: Profile = field(default_factory=Profile)
    start_delay_s: float = 0.0

    @property
    def shadow_plays_curve(self) -> bool:
        """A 'simulate' shadow of a kind without a timeline of its own: it plays a resource
        curve (the profile's phases, or the previous run), not the workload's code."""
        return self.shadow.mode == "simulate" and self.kind not in TIMELINE_KINDS


@dataclass(frozen=True)
class PredictorSpec:
    checkpoint: str = "builtin"  # "builtin" = the pretrained model shipped in prae/checkpoints
    num_replicas: int = 1
    use_gpu: bool = False
    max_batch_size: int = 4096  # workloads per vectorised request
    # The analog point candidate and quantiles (prae.model.analogs): off saves its search,
    # ~0.7 ms per workload and tick (README), for a median that is worse on bursty
    # workloads and intervals from the model alone.
    analog_candidate: bool = True


@dataclass(frozen=True)
class RetrainSpec:
    enabled: bool = True
    every_s: float = 60.0
    min_rows: int = 60
    epochs: int = 3
    num_workers: int = 1
    use_gpu: bool = False
    # Champion/challenger (prae.model.promotion): "better" serves a retrained model only if
    # it beats the serving one on each workload's newest rows (holdout_share of them, at
    # most max_holdout_rows), held out of its training, by more than significance_z standard
    # errors of the paired per-window gains and by min_gain (relative); "always" serves each.
    promote: Literal["better", "always"] = "better"
    holdout_share: float = 0.2
    max_holdout_rows: int = 288
    min_gain: float = 0.0
    significance_z: float = 2.0

    def promotion(self) -> dict[str, Any]:
        """The ``prae.model.promotion.PromotionRule`` fields (no torch import here)."""
        return {
            "holdout_share": self.holdout_share,
            "max_holdout_rows": self.max_holdout_rows,
            "min_gain": self.min_gain,
            "significance_z": self.significance_z,
            "always": self.promote == "always",
        }


@dataclass(frozen=True)
class AllocatorSpec:
    enabled: bool = True  # False = observe-only: forecast and record, reserve nothing
    reserve_quantile: float = 0.9
    # Share of workload-steps allowed short. Set: each workload's amount is its level under
    # one pooled price (prae.policy.violation_budget.PooledBudget, the policy `prae backtest`
    # scores), so steady workloads are held tightly and spiky ones take the budget; None:
    # every workload at reserve_quantile.
    violation_budget: float | None = None
    min_confidence_for_pg: float = 0.3
    hysteresis: float = 0.25  # relative change needed before a reservation is resized
    max_pending_pgs: int = 2
    # Per tick, the broker keeps launching groups while those it launched come up, for at
    # most this long (prae.engine.broker): a cold start places every group that fits at once.
    launch_budget_s: float = 0.25
    cpu_budget: float = math.inf
    mem_budget: float = math.inf
    # Resize limits (prae.policy.resizes.ResizeLimits): shrinks per workload per sliding
    # hour, the least time between a change and a shrink, and how long a peak is held.
    max_shrinks_per_hour: float = 4.0
    min_hold_s: float = 0.0
    peak_hold_s: float = 0.0


@dataclass(frozen=True)
class RunSpec:
    name: str = "prae"
    interval_s: float = 1.0
    window_steps: int = 32
    horizon_steps: int = 5
    duration_s: float | None = None
    store_dir: str = "prae_runs/store"
    seed: int = 0
    ray_num_cpus: int | None = None  # logical CPUs of an embedded Ray (None = Ray's default)


@dataclass(frozen=True)
class PraeConfig:
    source: str
    run: RunSpec
    predictor: PredictorSpec
    retrain: RetrainSpec
    allocator: AllocatorSpec
    workloads: tuple[WorkloadSpec, ...]

    @property
    def lead_s(self) -> float:
        """How far ahead a forecast looks: the last horizon step."""
        return self.run.horizon_steps * self.run.interval_s

    def workload(self, name: str) -> WorkloadSpec:
        for w in self.workloads:
            if w.name == name:
                return w
        raise KeyError(name)


# ----------------------------------------------------------------------------- parsing


class _Reader:
    """Reads one mapping of the YAML, tracking the dotted path for error messages."""

    def __init__(self, source: str, path: str, data: Any) -> None:
        self.source = source
        self.path = path
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise self.error(
                f"expected a mapping, got {type(data).__name__} ({data!r:.60})",
                "write it as 'key: value' lines indented under its parent",
            )
        self.data = data
        self.used: set[str] = set()

    def sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, problem: str, fix: str, key: str | None = None) -> ConfigError:
        return ConfigError(self.source, self.sub(key) if key else (self.path or "<root>"), problem, fix)

    def child(self, key: str) -> _Reader:
        self.used.add(key)
        return _Reader(self.source, self.sub(key), self.data.get(key))

    def raw(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        return self.data.get(key, default)

    def has(self, key: str) -> bool:
        return key in self.data

    def string(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            if required:
                raise self.error("is missing", f"add '{key}: <text>'", key)
            return default
        value = self.data[key]
        if not isinstance(value, str) or not value.strip():
            raise self.error(f"must be a non-empty string, got {value!r}", f"set '{key}' to text", key)
        return value.strip()

    def choice(self, key: str, choices: tuple[str, ...], default: str | None = None) -> str:
        value = self.string(key, default, required=default is None)
        assert value is not None
        if value not in choices:
            raise self.error(
                f"'{value}' is not one of {', '.join(choices)}", f"set '{key}' to one of {', '.join(choices)}", key
            )
        return value

    def number(
        self,
        key: str,
        default: float | None,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        exclusive_min: bool = False,
        integer: bool = False,
    ) -> float | None:
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            return default
        value = self.data[key]
        kind = "a whole number" if integer else "a number"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            integer and not float(value).is_integer()
        ):
            raise self.error(f"must be {kind}, got {value!r}", f"set '{key}' to {kind}", key)
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error(f"must be finite, got {value!r}", f"set '{key}' to a finite number", key)
        low_bad = minimum is not None and (value <= minimum if exclusive_min else value < minimum)
        if low_bad or (maximum is not None and value > maximum):
            lo = "" if minimum is None else (f"> {minimum:g}" if exclusive_min else f">= {minimum:g}")
            hi = "" if maximum is None else f"<= {maximum:g}"
            rule = " and ".join(x for x in (lo, hi) if x)
            raise self.error(f"must be {rule}, got {value!r}", f"choose a value {rule}", key)
        return int(value) if integer else float(value)

    def boolean(self, key: str, default: bool) -> bool:
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            return default
        value = self.data[key]
        if not isinstance(value, bool):
            raise self.error(f"must be true or false, got {value!r}", f"set '{key}: true' or '{key}: false'", key)
        return value

    def size(self, key: str, default: int | None) -> int | None:
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            return default
        return parse_size(self.data[key], lambda p, f: self.error(p, f, key))

    def finish(self) -> None:
        unknown = sorted(str(k) for k in self.data if k not in self.used)
        if unknown:
            known = ", ".join(sorted(self.used)) or "(none)"
            raise self.error(
                f"unknown key(s) {', '.join(unknown)}",
                f"remove or correct them; the keys allowed here are: {known}",
                unknown[0],
            )


def parse_size(value: Any, error: Any = None) -> int:
    """Bytes from ``123``, ``"512MiB"``, ``"1.5GB"``. Negative or unparsable sizes are errors."""

    def fail(problem: str, fix: str) -> Exception:
        return error(problem, fix) if error else ValueError(f"{problem}. {fix}")

    if isinstance(value, bool):
        raise fail(f"must be a size, got {value!r}", "write a size such as 512MiB or 2GiB")
    if isinstance(value, (int, float)):
        if value < 0 or not math.isfinite(value):
            raise fail(f"must be a non-negative size, got {value!r}", "write a size such as 512MiB or 2GiB")
        return int(value)
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if value.strip().startswith("-"):
            raise fail(f"must be a non-negative size, got {value!r}", "write a size such as 512MiB or 2GiB")
        if m and m.group(2).lower() in _SIZE_UNITS:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    raise fail(f"cannot read {value!r} as a size", "write a size such as 512MiB, 2GiB or 1000000 (bytes)")


def _resources(r: _Reader, default_cpu: float | None) -> ResourceAmount:
    amount = ResourceAmount(
        cpu=r.number("cpu", default_cpu, minimum=0, exclusive_min=True),
        mem=r.size("memory", None),
    )
    r.finish()
    return amount


def _bounds(r: _Reader) -> Bounds:
    def pair(key: str, is_size: bool) -> tuple[float, float]:
        value = r.raw(key)
        if value is None:
            return (0.0, math.inf)
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise r.error(f"must be a [min, max] pair, got {value!r}", f"write '{key}: [min, max]'", key)
        lo, hi = (
            (parse_size(v, lambda p, f: r.error(p, f, key)) for v in value)
            if is_size
            else (_nonneg(r, key, v) for v in value)
        )
        if lo > hi:
            raise r.error(f"min {lo} is above max {hi}", "swap them or widen the range", key)
        return (lo, hi)

    cpu = pair("cpu", False)
    mem = pair("memory", True)
    r.finish()
    return Bounds(cpu_min=cpu[0], cpu_max=cpu[1], mem_min=int(mem[0]), mem_max=mem[1])


def _nonneg(r: _Reader, key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
        raise r.error(f"bounds must be non-negative numbers, got {v!r}", f"write '{key}: [0.5, 4]'", key)
    return float(v)


def _profile(r: _Reader) -> Profile:
    phases = []
    raw_phases = r.raw("phases") or []
    if not isinstance(raw_phases, list):
        raise r.error("must be a list of phases", "write '- {name: load, progress_end: 0.3, cpu: 1}' items", "phases")
    last_end = 0.0
    for i, item in enumerate(raw_phases):
        p = _Reader(r.source, f"{r.sub('phases')}[{i}]", item)
        end = p.number("progress_end", None, minimum=0, maximum=1, exclusive_min=True)
        if end is None:
            raise p.error("is missing", "add 'progress_end: <fraction in (0, 1]>'", "progress_end")
        if end <= last_end:
            raise p.error(
                f"progress_end {end:g} does not come after the previous phase's {last_end:g}",
                "order phases by increasing progress_end",
                "progress_end",
            )
        last_end = end
        phase = Phase(
            name=p.string("name", f"phase{i}") or f"phase{i}",
            progress_end=end,
            cpu=p.number("cpu", None, minimum=0),
            mem=p.size("memory", None),
        )
        p.finish()
        phases.append(phase)
    profile = Profile(
        priority=int(r.number("priority", 0, integer=True) or 0),
        max_pending_s=r.number("max_pending_s", None, minimum=0),
        bounds=_bounds(r.child("bounds")),
        phases=tuple(phases),
        unit_cpu=r.number("unit_cpu", None, minimum=0, exclusive_min=True),
    )
    r.finish()
    return profile


def _shadow(r: _Reader, kind: str) -> ShadowSpec:
    default_mode = "mirror" if kind == "service" else "simulate" if kind == "replay" else "sample"
    mode = r.choice("mode", SHADOW_MODES, default_mode)
    spec = ShadowSpec(
        mode=mode,  # type: ignore[arg-type]
        fraction=float(r.number("fraction", 0.05, minimum=0, maximum=1, exclusive_min=True) or 0.05),
        resources=_resources(r.child("resources"), 0.5),
        custom_resource=r.string("custom_resource"),
        timeout_s=r.number("timeout_s", None, minimum=0, exclusive_min=True),
        source=r.choice("source", SIMULATE_SOURCES, "profile"),  # type: ignore[arg-type]
        preload=_preload(r, kind),
    )
    if spec.source == "history" and mode != "simulate":
        raise r.error(
            f"'source: history' is what a 'simulate' shadow plays, but the mode is '{mode}'",
            "set 'mode: simulate', or remove 'source'",
            "source",
        )
    r.finish()
    return spec


def _preload(r: _Reader, kind: str) -> tuple[str, ...]:
    value = r.raw("preload")
    if value is None:
        return ()
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(
        isinstance(n, str) and re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", n) for n in names
    ):
        raise r.error(
            f"must be a list of module names, got {value!r:.80}",
            "write e.g. 'preload: [torch, mypkg.model]'",
            "preload",
        )
    if names and kind != "python":
        raise r.error(
            f"only a 'python' workload's shadow takes 'preload' (this one is '{kind}')",
            "remove 'preload': a built-in's shadow is forked with its imports done already",
            "preload",
        )
    return tuple(dict.fromkeys(names))


def _workload(r: _Reader) -> WorkloadSpec:
    name = r.string("name", required=True)
    assert name is not None
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise r.error(
            f"'{name}' has characters that cannot name a directory",
            "use letters, digits, '.', '_' and '-' only",
            "name",
        )
    kind = r.choice("kind", WORKLOAD_KINDS)
    entrypoint = r.string("entrypoint")
    if kind == "python" and (entrypoint is None or not re.fullmatch(r"[\w.]+:\w+", entrypoint)):
        raise r.error(
            f"kind 'python' needs 'entrypoint: module:function', got {entrypoint!r}",
            "set 'entrypoint' to an importable function, e.g. mypkg.jobs:nightly",
            "entrypoint",
        )
    if kind == "command" and not entrypoint:
        raise r.error("kind 'command' needs the command to run", "set 'entrypoint: \"./job.sh --flag\"'", "entrypoint")
    if kind in BUILTIN_KINDS and entrypoint:
        raise r.error(f"built-in kind '{kind}' takes no entrypoint", "remove 'entrypoint' or use kind 'python'", "entrypoint")
    params = r.raw("params") or {}
    if not isinstance(params, Mapping):
        raise r.error(f"must be a mapping, got {params!r:.60}", "write 'params:' with 'key: value' lines under it", "params")
    spec = WorkloadSpec(
        name=name,
        kind=kind,  # type: ignore[arg-type]
        entrypoint=entrypoint,
        params=dict(params),
        resources=_resources(r.child("resources"), 1.0),
        shadow=_shadow(r.child("shadow"), kind),
        profile=_profile(r.child("profile")),
        start_delay_s=float(r.number("start_delay_s", 0.0, minimum=0) or 0.0),
    )
    r.finish()
    return spec


def parse_config(data: Any, source: str = "<config>") -> PraeConfig:
    """Validate an already-loaded YAML document. ``source`` names it in errors."""
    root = _Reader(source, "", data)
    run_r = root.child("run")
    run = RunSpec(
        name=run_r.string("name", "prae") or "prae",
        interval_s=float(run_r.number("interval_s", 1.0, minimum=0.05) or 1.0),
        window_steps=int(run_r.number("window_steps", 32, minimum=4, maximum=4096, integer=True) or 32),
        horizon_steps=int(run_r.number("horizon_steps", 5, minimum=1, maximum=512, integer=True) or 5),
        duration_s=run_r.number("duration_s", None, minimum=0, exclusive_min=True),
        store_dir=run_r.string("store_dir", "prae_runs/store") or "prae_runs/store",
        seed=int(run_r.number("seed", 0, minimum=0, integer=True) or 0),
        ray_num_cpus=_opt_int(run_r.number("ray_num_cpus", None, minimum=1, integer=True)),
    )
    run_r.finish()

    p_r = root.child("predictor")
    predictor = PredictorSpec(
        checkpoint=p_r.string("checkpoint", "builtin") or "builtin",
        num_replicas=int(p_r.number("num_replicas", 1, minimum=1, integer=True) or 1),
        use_gpu=p_r.boolean("use_gpu", False),
        max_batch_size=int(p_r.number("max_batch_size", 4096, minimum=1, integer=True) or 4096),
        analog_candidate=p_r.boolean("analog_candidate", True),
    )
    p_r.finish()

    t_r = root.child("retrain")
    retrain = RetrainSpec(
        enabled=t_r.boolean("enabled", True),
        every_s=float(t_r.number("every_s", 60.0, minimum=1) or 60.0),
        min_rows=int(t_r.number("min_rows", 60, minimum=1, integer=True) or 60),
        epochs=int(t_r.number("epochs", 3, minimum=1, integer=True) or 3),
        # 0 = in-process (Ray Train local mode); 1 = one Train worker. Data-parallel
        # retraining (gradient averaging over several workers) is not implemented yet.
        num_workers=int(t_r.number("num_workers", 1, minimum=0, maximum=1, integer=True) or 0),
        use_gpu=t_r.boolean("use_gpu", False),
        promote=t_r.choice("promote", ("better", "always"), "better"),  # type: ignore[arg-type]
        holdout_share=float(t_r.number("holdout_share", 0.2, minimum=0, exclusive_min=True, maximum=0.9) or 0.2),
        max_holdout_rows=int(t_r.number("max_holdout_rows", 288, minimum=1, integer=True) or 288),
        min_gain=float(t_r.number("min_gain", 0.0, minimum=0, maximum=0.9) or 0.0),
        significance_z=float(t_r.number("significance_z", 2.0, minimum=0) or 0.0),
    )
    t_r.finish()

    a_r = root.child("allocator")
    rq = a_r.number("reserve_quantile", 0.9, minimum=0.5, maximum=0.99)
    if rq is not None and rq not in QUANTILES:
        raise a_r.error(
            f"{rq:g} is not a forecast quantile",
            f"choose one of {', '.join(f'{q:g}' for q in QUANTILES if q >= 0.5)}",
            "reserve_quantile",
        )
    allocator = AllocatorSpec(
        enabled=a_r.boolean("enabled", True),
        reserve_quantile=float(rq or 0.9),
        violation_budget=a_r.number("violation_budget", None, minimum=0, exclusive_min=True, maximum=0.5),
        min_confidence_for_pg=float(a_r.number("min_confidence_for_pg", 0.3, minimum=0, maximum=1) or 0.0),
        hysteresis=float(a_r.number("hysteresis", 0.25, minimum=0, maximum=10) or 0.0),
        max_pending_pgs=int(a_r.number("max_pending_pgs", 2, minimum=1, integer=True) or 2),
        launch_budget_s=float(a_r.number("launch_budget_s", 0.25, minimum=0, maximum=60) or 0.0),
        cpu_budget=float(a_r.number("cpu_budget", math.inf, minimum=0, exclusive_min=True) or math.inf),
        mem_budget=float(a_r.size("memory_budget", None) or math.inf),
        max_shrinks_per_hour=float(a_r.number("max_shrinks_per_hour", 4.0, minimum=0) or 0.0),
        min_hold_s=float(a_r.number("min_hold_s", 0.0, minimum=0) or 0.0),
        peak_hold_s=float(a_r.number("peak_hold_s", 0.0, minimum=0) or 0.0),
    )
    a_r.finish()

    raw_workloads = root.raw("workloads")
    if not isinstance(raw_workloads, list) or not raw_workloads:
        raise root.error(
            "is missing or empty" if not raw_workloads else f"must be a list, got {type(raw_workloads).__name__}",
            "add 'workloads:' with at least one '- name: ... kind: ...' item",
            "workloads",
        )
    workloads = tuple(_workload(_Reader(source, f"workloads[{i}]", w)) for i, w in enumerate(raw_workloads))
    seen: set[str] = set()
    for i, w in enumerate(workloads):
        if w.name in seen:
            raise ConfigError(source, f"workloads[{i}].name", f"'{w.name}' is used twice", "give each workload its own name")
        seen.add(w.name)
    root.finish()
    return PraeConfig(source, run, predictor, retrain, allocator, workloads)


def _opt_int(v: float | None) -> int | None:
    return None if v is None else int(v)


def load_config(path: str | Path) -> PraeConfig:
    """Read and validate a PRAE YAML file."""
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ConfigError(source, "<file>", "does not exist or is not a file", "pass the path of a YAML config")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(source, "<yaml>", f"is not valid YAML{where}: {problem}", "fix the YAML syntax there") from exc
    return parse_config(data, source)
