"""Config validation: every kind of mistake names the file, the field and the fix."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from prae.config import load_config, parse_config, parse_size
from prae.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def minimal(**workload):
    w = {"name": "job", "kind": "etl", **workload}
    return {"workloads": [w]}


def test_demo_config_parses_into_frozen_objects():
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    assert 2 <= len(cfg.workloads) <= 3
    assert len({w.kind for w in cfg.workloads}) >= 2
    with pytest.raises(AttributeError):
        cfg.run.interval_s = 5  # type: ignore[misc]
    assert cfg.lead_s == cfg.run.horizon_steps * cfg.run.interval_s


def test_defaults_fill_a_minimal_config():
    cfg = parse_config(minimal(), "mem.yaml")
    w = cfg.workloads[0]
    assert w.shadow.mode == "sample" and w.shadow.fraction == 0.05
    assert w.profile.bounds.cpu_max == math.inf
    assert cfg.allocator.reserve_quantile == 0.9
    assert cfg.allocator.peak_hold_s == 0.0 and cfg.allocator.max_shrinks_per_hour == 4.0
    assert w.profile.unit_cpu is None
    assert cfg.predictor.analog_candidate is True
    off = parse_config({**minimal(), "predictor": {"analog_candidate": False}}, "mem.yaml")
    assert off.predictor.analog_candidate is False


def test_resize_limits_and_task_unit_are_read():
    data = {
        **minimal(kind="tasks", params={"task_cpu": 0.5}, profile={"unit_cpu": 2}),
        "allocator": {"peak_hold_s": 600, "min_hold_s": 30, "max_shrinks_per_hour": 2},
    }
    cfg = parse_config(data, "limits.yaml")
    a = cfg.allocator
    assert (a.peak_hold_s, a.min_hold_s, a.max_shrinks_per_hour) == (600.0, 30.0, 2.0)
    assert cfg.workloads[0].profile.unit_cpu == 2.0


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({}, "workloads", "add 'workloads:'"),
        ({"workloads": []}, "workloads", "at least one"),
        ({"workloads": "etl"}, "workloads", "must be a list"),
        (minimal(kind="spark"), "workloads[0].kind", "one of"),
        ({"workloads": [{"kind": "etl"}]}, "workloads[0].name", "is missing"),
        (minimal(name="a b"), "workloads[0].name", "letters, digits"),
        (minimal(kind="python"), "workloads[0].entrypoint", "module:function"),
        (minimal(kind="python", entrypoint="not a function"), "workloads[0].entrypoint", "module:function"),
        (minimal(kind="command"), "workloads[0].entrypoint", "command to run"),
        (minimal(entrypoint="x:y"), "workloads[0].entrypoint", "takes no entrypoint"),
        (minimal(resources={"cpu": -1}), "workloads[0].resources.cpu", "> 0"),
        (minimal(resources={"cpu": "two"}), "workloads[0].resources.cpu", "must be a number"),
        (minimal(resources={"memory": "-1GiB"}), "workloads[0].resources.memory", "non-negative"),
        (minimal(resources={"memory": "lots"}), "workloads[0].resources.memory", "512MiB"),
        (minimal(shadow={"fraction": 0}), "workloads[0].shadow.fraction", "> 0"),
        (minimal(shadow={"fraction": 1.5}), "workloads[0].shadow.fraction", "<= 1"),
        (minimal(shadow={"mode": "clone"}), "workloads[0].shadow.mode", "sample, mirror, simulate, none"),
        (minimal(shadow={"preload": ["torch"]}), "workloads[0].shadow.preload", "only a 'python'"),
        (
            minimal(kind="python", entrypoint="m:f", shadow={"preload": ["torch", "no such"]}),
            "workloads[0].shadow.preload",
            "list of module names",
        ),
        (
            minimal(kind="python", entrypoint="m:f", shadow={"preload": {"torch": 1}}),
            "workloads[0].shadow.preload",
            "[torch, mypkg.model]",
        ),
        (minimal(profile={"bounds": {"cpu": [4, 1]}}), "workloads[0].profile.bounds.cpu", "swap"),
        (minimal(profile={"bounds": {"cpu": 3}}), "workloads[0].profile.bounds.cpu", "[min, max]"),
        (
            minimal(profile={"phases": [{"progress_end": 0.5}, {"progress_end": 0.4}]}),
            "workloads[0].profile.phases[1].progress_end",
            "order phases",
        ),
        (minimal(profile={"priority": 1.5}), "workloads[0].profile.priority", "whole number"),
        (minimal(params=[1, 2]), "workloads[0].params", "mapping"),
        (minimal(sahdow={"mode": "none"}), "workloads[0].sahdow", "unknown key"),
        ({**minimal(), "run": {"interval_s": 0}}, "run.interval_s", ">= 0.05"),
        ({**minimal(), "run": {"window_steps": 2}}, "run.window_steps", ">= 4"),
        ({**minimal(), "run": {"horizon_steps": 1.5}}, "run.horizon_steps", "whole number"),
        ({**minimal(), "allocator": {"reserve_quantile": 0.8}}, "allocator.reserve_quantile", "forecast quantile"),
        ({**minimal(), "allocator": {"enabled": "yes"}}, "allocator.enabled", "true or false"),
        ({**minimal(), "allocator": {"violation_budget": 0}}, "allocator.violation_budget", "> 0"),
        ({**minimal(), "allocator": {"violation_budget": 0.9}}, "allocator.violation_budget", "<= 0.5"),
        ({**minimal(), "allocator": {"peak_hold_s": -5}}, "allocator.peak_hold_s", ">= 0"),
        ({**minimal(), "allocator": {"max_shrinks_per_hour": "few"}}, "allocator.max_shrinks_per_hour", "number"),
        (minimal(profile={"unit_cpu": 0}), "workloads[0].profile.unit_cpu", "> 0"),
        ({**minimal(), "retrain": {"num_workers": 4}}, "retrain.num_workers", "<= 1"),
        ({**minimal(), "allocator": {"launch_budget_s": -1}}, "allocator.launch_budget_s", ">= 0"),
        ({**minimal(), "retrain": {"promote": "newest"}}, "retrain.promote", "better, always"),
        ({**minimal(), "retrain": {"holdout_share": 1.0}}, "retrain.holdout_share", "<= 0.9"),
        ({**minimal(), "retrain": {"significance_z": -1}}, "retrain.significance_z", ">= 0"),
        ({**minimal(), "predictor": {"num_replicas": 0}}, "predictor.num_replicas", ">= 1"),
        ({**minimal(), "predictor": {"analog_candidate": "off"}}, "predictor.analog_candidate", "true or false"),
        ({"workloads": [{"name": "a", "kind": "etl"}, {"name": "a", "kind": "train"}]}, "workloads[1].name", "twice"),
        ([1, 2], "<root>", "mapping"),
    ],
)
def test_each_mistake_names_field_and_fix(data, field, words):
    with pytest.raises(ConfigError) as info:
        parse_config(data, "bad.yaml")
    err = info.value
    assert err.source == "bad.yaml"
    assert err.field == field
    assert words in str(err)
    assert "Fix:" in str(err)


def test_broken_yaml_names_line(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("workloads:\n  - name: a\n    kind: [etl\n")
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert str(p) in str(info.value) and "line" in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [(0, 0), (123, 123), ("512MiB", 512 * 1024**2), ("1.5GB", 1_500_000_000), ("2 GiB", 2 * 1024**3), ("10k", 10_000)],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["-5", -5, "5 parsecs", True, float("inf"), None])
def test_parse_size_rejects(bad):
    with pytest.raises(ValueError):
        parse_size(bad)


def test_validate_and_run_check_each_workload_before_starting(tmp_path, capsys):
    """A workload's own parameters (here a tasks job's stages) are checked by `prae validate`
    and by `prae run` before Ray starts, against the file and the full field path."""
    from prae.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("workloads:\n  - name: ok\n    kind: etl\n  - name: j\n    kind: tasks\n    params: {stages: '2 by 3'}\n")
    for cmd in (["validate", str(bad)], ["run", str(bad)]):
        assert main(cmd) == 2
        err = capsys.readouterr().err
        assert f"{bad}: field 'workloads[1].params.stages'" in err and "LANESxSECONDS" in err
    assert main(["validate", str(ROOT / "configs" / "demo.yaml")]) == 0


def test_shadow_preload_lists_modules_once():
    cfg = parse_config(
        minimal(kind="python", entrypoint="m:f", shadow={"preload": ["torch", "pkg.model", "torch"]})
    )
    assert cfg.workloads[0].shadow.preload == ("torch", "pkg.model")
    one = parse_config(minimal(kind="python", entrypoint="m:f", shadow={"preload": "torch"}))
    assert one.workloads[0].shadow.preload == ("torch",)
    assert parse_config(minimal()).workloads[0].shadow.preload == ()


def test_retrain_promotion_fields_become_the_rule():
    from prae.model.promotion import PromotionRule

    cfg = parse_config(
        {**minimal(), "retrain": {"holdout_share": 0.3, "max_holdout_rows": 100, "min_gain": 0.01, "significance_z": 3}},
        "x.yaml",
    )
    rule = PromotionRule(**cfg.retrain.promotion())
    assert rule == PromotionRule(holdout_share=0.3, max_holdout_rows=100, min_gain=0.01, significance_z=3.0, always=False)
    assert PromotionRule(**parse_config(minimal(), "x.yaml").retrain.promotion()) == PromotionRule()
    assert PromotionRule(**parse_config({**minimal(), "retrain": {"promote": "always"}}, "x.yaml").retrain.promotion()).always


def test_launch_budget_reaches_the_allocator_spec():
    assert parse_config(minimal(), "x.yaml").allocator.launch_budget_s == 0.25
    cfg = parse_config({**minimal(), "allocator": {"launch_budget_s": 0}}, "x.yaml")
    assert cfg.allocator.launch_budget_s == 0.0  # 0: a tick does not wait for groups to come up


def test_pretrain_and_retrain_get_every_argument_after_the_command():
    """argparse.REMAINDER dropped a leading option: `prae retrain --store DIR --out M` and
    `prae pretrain --out X` were refused with 'unrecognized arguments'."""
    from prae.cli import parse

    args = parse(["-v", "retrain", "--store", "d", "--out", "m.pt"])
    assert args.verbose and args.command == "retrain" and args.rest == ["--store", "d", "--out", "m.pt"]
    args = parse(["pretrain", "--out", "x.pt", "--epochs", "2"])
    assert args.command == "pretrain" and args.rest == ["--out", "x.pt", "--epochs", "2"]
    assert parse(["pretrain"]).rest == []
    assert parse(["validate", "c.yaml"]).config == "c.yaml"  # the others parse as before


def test_prae_retrain_help_is_retrains_own(capsys):
    from prae.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["retrain", "--help"])
    assert stop.value.code == 0 and "--store" in capsys.readouterr().out
