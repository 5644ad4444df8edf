"""The forecaster as a Ray Serve application: a thin shell around ``prae.model.Predictor``.

One request carries the windows of many workloads at once (vectorised): Serve's per-call
overhead (~4 ms from an actor) is paid once per tick, not once per workload.

Hot swap: ``reconfigure(user_config)`` loads the new checkpoint *beside* the old one and
then swaps one reference, so requests in flight finish on the old weights and no request
fails; the replica process is not restarted. Deploy with
``serve build serve_apps.predictor_app:app_builder -o predictor.yaml`` or through
``prae run`` (which calls :func:`deploy`).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from ray import serve

import prae
from prae.config import PredictorSpec
from prae.model.predictor import Predictor

APP_NAME = "prae-predictor"
DEPLOYMENT_NAME = "PRAEPredictor"
CODE_VERSION = f"prae-{prae.__version__}"


def load_predictor(checkpoint: str, device: str) -> Predictor:
    return Predictor.builtin(device=device) if checkpoint == "builtin" else Predictor.load(checkpoint, device=device)


@serve.deployment(name=DEPLOYMENT_NAME, max_ongoing_requests=64)
class PredictorDeployment:
    def __init__(self, checkpoint: str = "builtin", use_gpu: bool = False) -> None:
        import torch

        self._device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self._lock = threading.Lock()
        self._checkpoint = checkpoint
        predictor = load_predictor(checkpoint, self._device)
        # One attribute, swapped in one assignment, so a request never pairs one model with
        # another's version. Predictor.version hashes every weight: once per load, not per call.
        self._model = (predictor, predictor.version)
        self._swaps = 0

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        checkpoint = user_config.get("checkpoint", self._checkpoint)
        if checkpoint == self._checkpoint:
            return
        fresh = load_predictor(checkpoint, self._device)  # fails here, before anything changes
        version = fresh.version
        with self._lock:
            self._model, self._checkpoint = (fresh, version), checkpoint
            self._swaps += 1

    def predict(self, live: np.ndarray, shadow: np.ndarray | None = None) -> dict[str, Any]:
        """live, shadow: (B, T, 4) raw units -> quantiles (B, H, 4, Q) plus who answered."""
        predictor, version = self._model  # one read: a swap cannot split a request
        quantiles = predictor.predict(np.asarray(live, dtype=np.float32), None if shadow is None else np.asarray(shadow, dtype=np.float32))
        return {"quantiles": quantiles, **self._identity(predictor, version)}

    def info(self) -> dict[str, Any]:
        return self._identity(*self._model)

    def _identity(self, predictor: Predictor, version: str) -> dict[str, Any]:
        ctx = serve.get_replica_context()
        return {
            "version": version,
            "checkpoint": self._checkpoint,
            "replica": ctx.replica_id.unique_id,
            "swaps": self._swaps,
            "device": self._device,
            "window_steps": predictor.window_steps,
            "horizon_steps": predictor.horizon_steps,
        }

    async def __call__(self, request: Any) -> dict[str, Any]:
        """HTTP: POST JSON {"live": [[[cpu, mem, disk, net], ...], ...], "shadow": ... or null}."""
        body = await request.json()
        try:
            live = np.asarray(body["live"], dtype=np.float32)
            shadow = None if body.get("shadow") is None else np.asarray(body["shadow"], dtype=np.float32)
        except (KeyError, TypeError, ValueError) as exc:
            return {"error": f"bad request: {exc}. Send {{'live': B x T x 4 numbers, 'shadow': same or null}}"}
        if live.ndim != 3 or live.shape[-1] != 4:
            return {"error": f"'live' must be B x T x 4, got shape {list(live.shape)}"}
        out = self.predict(live, shadow)
        out["quantiles"] = out["quantiles"].tolist()
        return out


def build(spec: PredictorSpec, checkpoint: str | None = None) -> serve.Application:
    """The application for a predictor spec; ``checkpoint`` overrides ``spec.checkpoint``.

    The constructor always gets ``spec.checkpoint`` and the override travels in
    ``user_config`` only: Serve then treats a new checkpoint as a lightweight update and
    calls ``reconfigure`` on the running replicas instead of replacing them.
    """
    ckpt = checkpoint or spec.checkpoint
    actor_options: dict[str, Any] = {"num_cpus": 0.5}
    if spec.use_gpu:
        actor_options = {"num_cpus": 1, "num_gpus": 1}
    return PredictorDeployment.options(
        num_replicas=spec.num_replicas,
        ray_actor_options=actor_options,
        user_config={"checkpoint": ckpt},
        # serve.run gives every deployment without a version a random one, which turns a
        # user_config change into a full replica replacement (serve/_private/client.py).
        # A fixed code version makes it the lightweight reconfigure the swap relies on,
        # as a `serve deploy` of an unchanged import path would.
        version=CODE_VERSION,
        _internal=True,
    ).bind(checkpoint=spec.checkpoint, use_gpu=spec.use_gpu)


def deploy(spec: PredictorSpec, checkpoint: str | None = None) -> Any:
    """Deploy (or update in place) the predictor app; returns its handle."""
    return serve.run(build(spec, checkpoint), name=APP_NAME, route_prefix="/prae/predict")


def app_builder(args: dict[str, Any]) -> serve.Application:
    """For ``serve build`` / ``serve run``: args ``checkpoint``, ``num_replicas``, ``use_gpu``."""
    spec = PredictorSpec(
        checkpoint=str(args.get("checkpoint", "builtin")),
        num_replicas=int(args.get("num_replicas", 1)),
        use_gpu=str(args.get("use_gpu", "false")).lower() in ("1", "true", "yes"),
    )
    return build(spec)
