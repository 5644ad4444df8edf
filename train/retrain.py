"""Retraining from the feedback store with Ray Train (``TorchTrainer``).

The training function is the same plain-torch ``prae.model.training.fit`` that pretraining
uses; Ray Train supplies the worker (GPU if asked), the checkpointing and the storage.
Run from the loop as a background task (``RayRetrainer``), or by hand::

    python -m train.retrain --store prae_runs/demo/store --base builtin --out model.pt
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

CHECKPOINT_FILE = "model.pt"


def _train_loop(config: dict[str, Any]) -> None:
    """Runs on the Ray Train worker: fine-tune the base model on the store's windows."""
    import ray.train

    from prae.model.predictor import Predictor
    from prae.model.promotion import PromotionRule, compare
    from prae.model.training import fit, window_losses
    from prae.store.feedback import FeedbackStore
    from train.store_data import windows_from_store

    device = "cuda" if config["use_gpu"] else "cpu"
    base = config["base_checkpoint"]
    predictor = Predictor.builtin(device=device) if base == "builtin" else Predictor.load(base, device=device)
    rule = PromotionRule(**config["promotion"])
    data = windows_from_store(
        FeedbackStore(config["store_root"]),
        predictor.window_steps,
        predictor.horizon_steps,
        config["horizon_steps"],
        rule.holdout_rows,
    )
    metrics: dict[str, float] = {"rows": float(data.rows), "windows": 0.0}
    if data.train is not None:
        held = data.holdout
        judged = held is not None and not rule.always
        # The base model is the champion: scored on the held-out windows before it is tuned.
        champion = window_losses(predictor, held, device=device) if judged else None
        metrics.update(fit(predictor, data.train, epochs=config["epochs"], seed=config["seed"], device=device))
        if champion is not None:
            c = compare(champion, window_losses(predictor, held, device=device))
            metrics.update(
                champion_loss=c.champion_loss, challenger_loss=c.challenger_loss, gain_se=c.gain_se,
                holdout_windows=float(c.windows),
            )
        metrics["windows"] = float(len(data.train))
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
    promotion: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``base_checkpoint`` on the store; write the result to ``out_path``.

    ``promotion``: ``PromotionRule`` fields (default: the rule's defaults). The newest rows
    of each workload are held out of the fine-tune, and the base (the champion) and the
    result (the challenger) are both scored on them.

    Returns ``{"checkpoint": out_path or None, "metrics": {...}, "seconds": ...,
    "promote": bool, "verdict": {...}}``; no checkpoint when the store has fewer than
    ``min_rows`` live rows (nothing to learn yet). The checkpoint is written even when
    the verdict is not to promote it (to inspect it); the caller serves it only if promoted.
    """
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from prae.model.promotion import Comparison, PromotionRule, judge
    from prae.store.feedback import FeedbackStore
    from train.store_data import series_from_store

    rule = PromotionRule(**dict(promotion or {}))  # a bad field fails here, not on the worker
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
            "promotion": asdict(rule),
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
    verdict = judge(
        Comparison(
            float(metrics.get("champion_loss", math.nan)),
            float(metrics.get("challenger_loss", math.nan)),
            float(metrics.get("gain_se", math.nan)),
            int(metrics.get("holdout_windows", 0)),
        ),
        rule,
    )
    return {
        "checkpoint": out_path,
        "metrics": metrics,
        "seconds": time.time() - t0,
        "promote": verdict.promote,
        "verdict": verdict.as_dict(),
    }


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
    p.add_argument("--always-promote", action="store_true", help="promote without judging on held-out rows")
    args = p.parse_args(argv)
    import ray

    ray.init(address=os.environ.get("RAY_ADDRESS") or "local", num_cpus=None if os.environ.get("RAY_ADDRESS") else 4)
    out = retrain_from_store(
        args.store, args.base, args.out, args.window_steps, args.horizon_steps, args.epochs,
        num_workers=args.num_workers, use_gpu=args.use_gpu, promotion={"always": args.always_promote},
    )
    print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
