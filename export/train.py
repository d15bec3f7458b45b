"""Deterministic training of the built-in digits networks, with a rich progress bar.

Contract: same seed, same thread count, same library versions -> bit-identical
weights. :func:`seed_everything` fixes torch, numpy and Python's RNGs, the thread
count, and asks torch for deterministic algorithms.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

# Training threads are pinned: CPU kernels may reduce in a thread-count-dependent
# order, and the committed models must not depend on the machine's core count.
TRAIN_THREADS = 2


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run."""

    epochs: int = 12
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    max_steps: int | None = None  # stop early (tests train for a few steps only)


@dataclass(frozen=True)
class TrainResult:
    """What a run did: epochs and steps taken, final training loss."""

    epochs: int
    steps: int
    final_loss: float


def seed_everything(seed: int) -> None:
    """Seed every RNG training touches and make torch deterministic."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(TRAIN_THREADS)
    torch.use_deterministic_algorithms(True, warn_only=True)


def train(
    model: nn.Module, images: np.ndarray, labels: np.ndarray, config: TrainConfig, show_progress: bool = True
) -> TrainResult:
    """Train ``model`` in place on float32 ``images [N,C,H,W]`` and int64 ``labels [N]``.

    AdamW with a one-cycle schedule; batches are shuffled by a generator seeded from
    ``config.seed``. Leaves the model in eval mode.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    seed_everything(config.seed)
    x = torch.from_numpy(images)
    y = torch.from_numpy(labels)
    batches_per_epoch = (len(x) + config.batch_size - 1) // config.batch_size
    total = config.epochs * batches_per_epoch
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.learning_rate, total_steps=total)
    generator = torch.Generator().manual_seed(config.seed)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    steps, epoch, loss_value = 0, 0, float("nan")
    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(),
    )
    with Progress(*columns, disable=not show_progress, transient=False) as progress:
        task = progress.add_task(f"training {type(model).__name__}", total=total, loss=float("nan"))
        while steps < total:
            epoch += 1
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), config.batch_size):
                if steps >= total:
                    break
                index = order[start : start + config.batch_size]
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x[index]), y[index])
                loss.backward()
                optimizer.step()
                schedule.step()
                steps += 1
                loss_value = float(loss.detach())
                progress.update(task, advance=1, loss=loss_value)
    model.eval()
    return TrainResult(epochs=epoch, steps=steps, final_loss=loss_value)


@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Eval-mode logits ``[N, classes]`` float32 for ``images``."""
    model.eval()
    parts = [model(torch.from_numpy(images[i : i + batch_size])).numpy() for i in range(0, len(images), batch_size)]
    return np.concatenate(parts).astype(np.float32)
