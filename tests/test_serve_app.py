"""The predictor Serve app on local Ray: vectorised requests, HTTP, hot swap without failed
requests or a replica restart, and the fallback rule when the app is gone."""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request

import numpy as np
import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray  # noqa: E402
from ray import serve  # noqa: E402

from prae.config import PredictorSpec  # noqa: E402
from prae.engine.ray_ports import ServeForecaster  # noqa: E402
from prae.model.predictor import Predictor  # noqa: E402
from prae.resources import QUANTILES  # noqa: E402
from prae.testing.local_cluster import free_port  # noqa: E402
from serve_apps.predictor_app import APP_NAME, deploy  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=8, include_dashboard=False, object_store_memory=200 * 1024**2, namespace="prae-test")
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    paths = []
    for seed in (1, 2):
        p = d / f"m{seed}.pt"
        Predictor.create(seed=seed).save(p)
        paths.append(str(p))
    return paths


def windows(b=3, t=32, seed=0):
    rng = np.random.default_rng(seed)
    base = np.array([2.0, 4e9, 1e7, 1e6], dtype=np.float32)
    return (base * rng.uniform(0.5, 1.5, size=(b, t, 4))).astype(np.float32)


def test_vectorised_predict_and_http(cluster, checkpoints):
    spec = PredictorSpec(checkpoint=checkpoints[0])
    handle = deploy(spec)
    live = windows(b=500)
    out = handle.predict.remote(live, None).result(timeout_s=60)
    q = out["quantiles"]
    assert q.shape[0] == 500 and q.shape[2:] == (4, len(QUANTILES))
    assert np.all(np.diff(q, axis=-1) >= 0) and np.all(q >= 0)
    # the same numbers as the predictor used directly (one model code path, two hosts)
    direct = Predictor.load(checkpoints[0]).predict(live)
    np.testing.assert_allclose(q, direct, rtol=1e-5)

    body = json.dumps({"live": windows(b=2).tolist(), "shadow": None}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{cluster}/prae/predict", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        got = json.loads(resp.read())
    assert np.asarray(got["quantiles"]).shape[0] == 2
    bad = urllib.request.Request(f"http://127.0.0.1:{cluster}/prae/predict", data=b'{"live": [1, 2]}', method="POST")
    with urllib.request.urlopen(bad, timeout=30) as resp:
        assert "B x T x 4" in json.loads(resp.read())["error"]


@pytest.mark.parametrize("replicas", [1, 2])
def test_hot_swap_under_load_no_failed_request_no_restart(cluster, checkpoints, replicas):
    """Four clients keep asking while the checkpoint is swapped: no request fails, every
    replica answers with the old weights until it has the new ones, and with two replicas
    both are reconfigured in place (the same replicas answer after the swap)."""
    spec = PredictorSpec(checkpoint=checkpoints[0], num_replicas=replicas)
    handle = deploy(spec)
    old = Predictor.load(checkpoints[0]).version
    new = Predictor.load(checkpoints[1]).version
    live = windows(b=16)
    errors: list[BaseException] = []
    answers: list[tuple[str, str]] = []  # (replica, version)
    stop = threading.Event()

    def hammer():
        h = serve.get_app_handle(APP_NAME)
        while not stop.is_set():
            try:
                out = h.predict.remote(live, None).result(timeout_s=30)
                answers.append((out["replica"], out["version"]))
            except BaseException as exc:  # any failure counts
                errors.append(exc)

    # warm: every replica has answered with the old weights
    deadline = time.time() + 60
    while len({r for r, _ in answers}) < replicas:
        assert time.time() < deadline, answers[-5:]
        out = handle.predict.remote(live, None).result(timeout_s=30)
        answers.append((out["replica"], out["version"]))
    before = {r for r, _ in answers}
    swaps = {r: 0 for r in before}
    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    during = len(answers)
    deploy(spec, checkpoints[1])  # new weights through user_config only
    swapped_at = len(answers)
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert swapped_at - during > 10  # served while the swap went on
    assert {v for _, v in answers} <= {old, new}
    assert all(v == new for _, v in answers[swapped_at + 8 * replicas :])  # once it returned, the new weights
    after = {r for r, _ in answers[swapped_at:]}
    assert after == before and len(after) == replicas  # the same replicas: reconfigured, not restarted
    for _ in range(8 * replicas):  # each replica's own count of swaps
        info = handle.info.remote().result(timeout_s=30)
        swaps[info["replica"]] = info["swaps"]
        assert info["version"] == new
    assert all(n >= 1 for n in swaps.values()), swaps


def test_forecaster_falls_back_when_app_is_gone(cluster, checkpoints):
    f = ServeForecaster(PredictorSpec(checkpoint=checkpoints[0]), horizon_steps=3, timeout_s=3)
    ok = f.forecast(windows(b=2), np.full((2, 32, 4), np.nan, dtype=np.float32))
    assert ok.source == "model"
    serve.delete(APP_NAME)
    down = f.forecast(windows(b=2), np.full((2, 32, 4), np.nan, dtype=np.float32))
    assert down.source == "fallback"
    assert down.quantiles.shape == (2, 3, 4, len(QUANTILES))
