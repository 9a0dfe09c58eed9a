"""The training plan before FORMAT_VERSION 2, kept only so tools/ can compare against it.

Rows were stored in input order with KL partners drawn over the whole dataset; each epoch
shuffled them, cut the shuffle into mega-batches of 16 steps, sorted each by length, cut
micro-batches and shuffled the steps.
"""

from __future__ import annotations

import numpy as np

from kto.train.data import MicroBatchShape, steps_per_epoch


def legacy_plan(lengths: np.ndarray, shape: MicroBatchShape, seed: int, epoch: int) -> np.ndarray:
    """[steps, world, accum, batch] row indices, -1 = filler, as train/data.py epoch_plan was."""
    n, G = len(lengths), shape.rows_per_step
    steps = steps_per_epoch(n, shape)
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(n)
    mega = G * 16
    order = np.concatenate([perm[a : a + mega][np.argsort(-lengths[perm[a : a + mega]], kind="stable")] for a in range(0, n, mega)])
    padded = np.full(steps * G, -1, dtype=np.int64)
    padded[:n] = order
    plan = padded.reshape(steps, shape.grad_accum, shape.world_size, shape.batch_size).transpose(0, 2, 1, 3)
    return plan[rng.permutation(steps)] if steps > 1 else plan
