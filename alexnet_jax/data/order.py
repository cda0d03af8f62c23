"""Which examples each reader loads, in which order: plain numpy, no TensorFlow.

Sources with random access (arrays in memory, lists of files) use one global permutation per
epoch, seeded by (seed, epoch). Global batch g of an epoch is `perm[g*B:(g+1)*B]`, cut into S
contiguous blocks of rows; a reader takes block s of S, so the global batch does not depend on
how it is cut. A process reads the block its devices hold (alexnet_jax.sharding.process_rows):
with data parallelism over P processes that is block p of P; processes of one data group (the
towers of two_tower in different processes) read the same block.
"""

from __future__ import annotations

import math

import numpy as np

from alexnet_jax.data.info import DataError


def local_batch_size(global_batch: int, shard_count: int) -> int:
  if global_batch <= 0 or global_batch % shard_count:
    raise DataError(
        f"batch size {global_batch} must be a positive multiple of {shard_count}: the batch is "
        f"split into {shard_count} equal blocks of rows, one per data group of devices")
  return global_batch // shard_count


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
  # SeedSequence takes non-negative words only; masking keeps a negative seed usable and distinct.
  return np.random.default_rng([seed & 0xFFFF_FFFF_FFFF_FFFF, epoch])


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The order of all examples in `epoch`: a function of (seed, epoch) only."""
  return epoch_rng(seed, epoch).permutation(num_examples)


def epoch_seed(seed: int, epoch: int) -> int:
  """A 31-bit integer seed for (seed, epoch), for APIs that take one int (tf.data shuffle)."""
  return int(epoch_rng(seed, epoch).integers(0, 2**31 - 1))


def train_indices(
    *, seed: int, epoch: int, num_examples: int, global_batch: int, shard_index: int,
    shard_count: int, first_batch: int = 0,
) -> np.ndarray:
  """Example indices block `shard_index` reads in `epoch`, from in-epoch batch `first_batch` on.

  The last partial global batch of the permutation is dropped (steps_per_epoch = N // B); the
  examples left out change from epoch to epoch with the permutation.
  """
  steps = num_examples // global_batch
  local = local_batch_size(global_batch, shard_count)
  batches = epoch_permutation(seed, epoch, num_examples)[: steps * global_batch]
  batches = batches.reshape(steps, global_batch)
  mine = batches[first_batch:, shard_index * local:(shard_index + 1) * local]
  return mine.reshape(-1)


def num_eval_batches(num_examples: int, global_batch: int) -> int:
  """Batches every reader yields in one evaluation pass (the last ones padded)."""
  return math.ceil(num_examples / global_batch)


def eval_indices(*, num_examples: int, global_batch: int, shard_index: int,
                 shard_count: int) -> np.ndarray:
  """Indices block `shard_index` evaluates, in order, padding excluded.

  Global batch g holds examples [g*B, (g+1)*B) and block s its s-th slice, as in training.
  Past the end of the split the slices are padding; since indices grow along a block's own
  stream, its real examples form a prefix and the padding a suffix.
  """
  local = local_batch_size(global_batch, shard_count)
  batches = num_eval_batches(num_examples, global_batch)
  positions = np.arange(batches * global_batch).reshape(batches, global_batch)
  mine = positions[:, shard_index * local:(shard_index + 1) * local].reshape(-1)
  return mine[mine < num_examples]


def eval_positions(*, num_examples: int, global_batch: int, shard_index: int,
                   shard_count: int) -> list[np.ndarray]:
  """Per evaluation batch, the positions block `shard_index` holds, padding included (positions
  >= num_examples are padding): what eval_indices lists without the padding, batch by batch."""
  local = local_batch_size(global_batch, shard_count)
  rows = np.arange(shard_index * local, (shard_index + 1) * local)
  return [b * global_batch + rows for b in range(num_eval_batches(num_examples, global_batch))]
