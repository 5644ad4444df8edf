"""Built-in ``train``: a small torch MLP classifier with epoch and evaluation phases.

    prepare     0.00–0.08  synthesise a dataset (Gaussian clusters + label noise), write it as
                           .npy, fsync, drop it from the page cache → CPU, disk write
    per epoch   0.08–1.00 split evenly between epochs:
      train       82 %     mini-batch SGD (Adam) over a memory-mapped training split read from
                           disk the first time → CPU, disk read on epoch 1
      eval        13 %     the whole evaluation split loaded into memory, big-batch forward
                           passes, per-class confusion matrix → memory spike, CPU
      checkpoint   5 %     model + optimizer state written with fsync → disk write

A shadow (``fraction`` f) trains the same model for the same epochs on f × samples (at least
256), in its own directory. ``threads`` sets torch's intra-op threads (default 1).
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from prae.workloads.context import WorkloadContext
from prae.workloads.phases import flush_and_drop

PREPARE = 0.08
EPOCH_SPLIT = {"train": 0.82, "eval": 0.13, "checkpoint": 0.05}


def run(ctx: WorkloadContext) -> dict[str, Any]:
    p = ctx.params
    torch.set_num_threads(int(p["threads"]))
    torch.manual_seed(ctx.seed)
    rng = np.random.default_rng(ctx.seed)
    n = max(256, int(p["samples"] * ctx.fraction))
    feats, classes, epochs = int(p["features"]), int(p["classes"]), int(p["epochs"])
    data = ctx.data_dir / "train"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    try:
        return _run(ctx, p, rng, data, n, feats, classes, epochs)
    finally:
        shutil.rmtree(data, ignore_errors=True)


def _run(
    ctx: WorkloadContext,
    p: Any,
    rng: np.random.Generator,
    data: Any,
    n: int,
    feats: int,
    classes: int,
    epochs: int,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    ctx.report_progress(0.0, "prepare")
    x_path, y_path = _prepare(ctx, rng, data, n, feats, classes)
    n_eval = max(classes, int(n * float(p["eval_fraction"])))
    n_train = n - n_eval
    x_all = np.load(x_path, mmap_mode="r")
    y_all = np.load(y_path, mmap_mode="r")
    model = nn.Sequential(
        nn.Linear(feats, int(p["hidden"])),
        nn.ReLU(),
        nn.Linear(int(p["hidden"]), int(p["hidden"])),
        nn.ReLU(),
        nn.Linear(int(p["hidden"]), classes),
    )
    opt = Adam(list(model.parameters()), lr=float(p["lr"]))
    loss_fn = nn.CrossEntropyLoss()
    bs = int(p["batch_size"])
    per_epoch = (1.0 - PREPARE) / epochs
    history = []
    for epoch in range(epochs):
        base = PREPARE + epoch * per_epoch
        order = rng.permutation(n_train // bs) * bs
        model.train()
        total_loss = 0.0
        for i, start in enumerate(order):
            xb = torch.from_numpy(np.array(x_all[start : start + bs]))
            yb = torch.from_numpy(np.array(y_all[start : start + bs]))
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            total_loss += loss.item()
            if i % 16 == 0:
                ctx.report_progress(
                    base + per_epoch * EPOCH_SPLIT["train"] * i / len(order), "train"
                )
        acc = _evaluate(ctx, model, x_all, y_all, n_train, n, classes, base, per_epoch)
        _checkpoint(model, opt, data / f"ckpt-{epoch:03d}.pt")
        ctx.report_progress(base + per_epoch, "checkpoint")
        history.append({"epoch": epoch, "loss": total_loss / max(1, len(order)), "eval_acc": acc})
    return {"samples": n, "epochs": epochs, "history": history, "seconds": time.perf_counter() - t0}


class Adam:
    """Adam, written out. ``torch.optim``'s first use imports ``torch._dynamo`` (~2 CPU-seconds
    here): a fixed cost the live run hardly notices and that would be most of a 5 % shadow's."""

    def __init__(
        self, params: list[torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999)
    ) -> None:
        self.params = params
        self.lr = lr
        self.b1, self.b2 = betas
        self.eps = 1e-8
        self.t = 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        c1, c2 = 1 - self.b1**self.t, 1 - self.b2**self.t
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            if p.grad is None:
                continue
            m.mul_(self.b1).add_(p.grad, alpha=1 - self.b1)
            v.mul_(self.b2).addcmul_(p.grad, p.grad, value=1 - self.b2)
            p.addcdiv_(m / c1, (v / c2).sqrt_().add_(self.eps), value=-self.lr)

    def state_dict(self) -> dict[str, Any]:
        return {"t": self.t, "m": self.m, "v": self.v, "lr": self.lr}


def _prepare(
    ctx: WorkloadContext, rng: np.random.Generator, data: Any, n: int, feats: int, classes: int
) -> tuple[str, str]:
    centers = rng.normal(0.0, 1.0, (classes, feats)).astype(np.float32)
    y = rng.integers(0, classes, n)
    x = np.lib.format.open_memmap(
        str(data / "x.npy"), mode="w+", dtype=np.float32, shape=(n, feats)
    )
    chunk = 65_536
    for start in range(0, n, chunk):
        end = min(n, start + chunk)
        noise = rng.normal(0.0, 2.0, (end - start, feats)).astype(np.float32)
        x[start:end] = centers[y[start:end]] + noise
        ctx.report_progress(PREPARE * end / n, "prepare")
    x.flush()
    del x
    flip = rng.random(n) < 0.05  # label noise, so accuracy saturates below 1
    y = np.where(flip, rng.integers(0, classes, n), y).astype(np.int64)
    np.save(data / "y.npy", y)
    for name in ("x.npy", "y.npy"):
        flush_and_drop(data / name)
    return str(data / "x.npy"), str(data / "y.npy")


def _evaluate(
    ctx: WorkloadContext,
    model: nn.Module,
    x_all: np.ndarray,
    y_all: np.ndarray,
    lo: int,
    hi: int,
    classes: int,
    base: float,
    per_epoch: float,
) -> float:
    model.eval()
    start = base + per_epoch * EPOCH_SPLIT["train"]
    ctx.report_progress(start, "eval")
    xs = torch.from_numpy(np.array(x_all[lo:hi]))  # the whole split in memory at once
    ys = torch.from_numpy(np.array(y_all[lo:hi]))
    confusion = torch.zeros((classes, classes), dtype=torch.int64)
    body, head = model[:-1], model[-1]  # type: ignore[index]
    embeddings = []  # penultimate activations of the whole split: the evaluation's memory spike
    step = 8192
    with torch.no_grad():
        for s in range(0, len(xs), step):
            emb = body(xs[s : s + step])
            pred = head(emb).argmax(dim=1)
            embeddings.append(emb)
            confusion.index_put_((ys[s : s + step], pred), torch.ones_like(pred), accumulate=True)
            ctx.report_progress(
                start + per_epoch * EPOCH_SPLIT["eval"] * min(1.0, (s + step) / len(xs)), "eval"
            )
        # Class prototypes and each sample's distance to its own: a separability check.
        emb_all = torch.cat(embeddings)
        protos = torch.zeros((classes, emb_all.shape[1])).index_add_(0, ys, emb_all)
        protos /= torch.bincount(ys, minlength=classes).clamp(min=1).unsqueeze(1).float()
        float((emb_all - protos[ys]).norm(dim=1).mean())
    return float(confusion.diag().sum()) / max(1, len(xs))


def _checkpoint(model: nn.Module, opt: Adam, path: Any) -> None:
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
