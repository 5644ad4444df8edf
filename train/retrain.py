"""Retraining from the feedback store with Ray Train (``TorchTrainer``).

The training function is the same plain-torch ``prae.model.training.fit`` that pretraining
uses; Ray Train supplies the worker (GPU if asked), the checkpointing and the storage.
Run from the loop as a background task (``RayRetrainer``), or by hand::

    python -m train.retrain --store prae_runs/demo/store --base builtin --out model.pt
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

CHECKPOINT_FILE = "model.pt"


def _train_loop(config: dict[str, Any]) -> None:
    """Runs on the Ray Train worker: fine-tune the base model on the store's windows."""
    import ray.train

    from prae.model.predictor import Predictor
    from prae.model.training import fit
    from prae.store.feedback import FeedbackStore
    from train.store_data import windows_from_store

    device = "cuda" if config["use_gpu"] else "cpu"
    base = config["base_checkpoint"]
    predictor = Predictor.builtin(device=device) if base == "builtin" else Predictor.load(base, device=device)
    windows, rows = windows_from_store(
        FeedbackStore(config["store_root"]), predictor.window_steps, predictor.horizon_steps, config["horizon_steps"]
    )
    metrics: dict[str, float] = {"rows": float(rows), "windows": 0.0}
    if windows is not None:
        metrics.update(fit(predictor, windows, epochs=config["epochs"], seed=config["seed"], device=device))
        metrics["windows"] = float(len(windows))
    with tempfile.TemporaryDirectory() as tmp:
        predictor.save(os.path.join(tmp, CHECKPOINT_FILE))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def retrain_from_store(
    store_root: str,
    base_checkpoint: str,
    out_path: str,
    window_steps: int,
    horizon_steps: int,
    epochs: int = 3,
    min_rows: int = 60,
    num_workers: int = 1,
    use_gpu: bool = False,
    seed: int = 0,
    storage_path: str | None = None,
) -> dict[str, Any]:
    """Fine-tune ``base_checkpoint`` on the store; write the result to ``out_path``.

    Returns ``{"checkpoint": out_path or None, "metrics": {...}, "seconds": ...}``; no
    checkpoint when the store has fewer than ``min_rows`` live rows (nothing to learn yet).
    """
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from prae.store.feedback import FeedbackStore
    from train.store_data import series_from_store

    t0 = time.time()
    rows = sum(len(v[0]) for v in series_from_store(FeedbackStore(store_root)).values())
    if rows < min_rows:
        return {"checkpoint": None, "metrics": {"rows": rows}, "seconds": time.time() - t0, "skipped": "too few rows"}
    storage = storage_path or str(Path(out_path).parent / "ray_train")
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config={
            "store_root": store_root,
            "base_checkpoint": base_checkpoint,
            "window_steps": window_steps,
            "horizon_steps": horizon_steps,
            "epochs": epochs,
            "seed": seed,
            "use_gpu": use_gpu,
        },
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=RunConfig(name=f"prae-retrain-{Path(out_path).stem}-{int(t0)}", storage_path=os.path.abspath(storage)),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train finished without a checkpoint: {result.error!r}")
    metrics = dict(result.metrics or {})
    if not metrics.get("windows"):
        return {"checkpoint": None, "metrics": metrics, "seconds": time.time() - t0, "skipped": "no windows"}
    with result.checkpoint.as_directory() as ckpt_dir:
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{out_path}.tmp"
        shutil.copyfile(os.path.join(ckpt_dir, CHECKPOINT_FILE), tmp)
        os.replace(tmp, out_path)
    return {"checkpoint": out_path, "metrics": metrics, "seconds": time.time() - t0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.retrain", description=__doc__.splitlines()[0])
    p.add_argument("--store", required=True, help="feedback store directory (run.store_dir)")
    p.add_argument("--base", default="builtin", help="checkpoint to fine-tune (default: the shipped one)")
    p.add_argument("--out", required=True, help="where to write the new checkpoint")
    p.add_argument("--window-steps", type=int, default=32)
    p.add_argument("--horizon-steps", type=int, default=5)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--use-gpu", action="store_true")
    args = p.parse_args(argv)
    import ray

    ray.init(address=os.environ.get("RAY_ADDRESS") or "local", num_cpus=None if os.environ.get("RAY_ADDRESS") else 4)
    out = retrain_from_store(
        args.store, args.base, args.out, args.window_steps, args.horizon_steps, args.epochs,
        num_workers=args.num_workers, use_gpu=args.use_gpu,
    )
    print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
