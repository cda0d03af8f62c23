"""Orbax checkpoints of the train state, plus a small JSON of host-side state.

A checkpoint is two items: `state` (the TrainState pytree: parameters, optimizer state, step,
plateau factor) and `meta` (JSON: the plateau schedule's bookkeeping and anything else that
lives on the host). The input pipeline needs no saved position: its order and augmentation are
pure functions of (seed, step), so the step alone says where to continue.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger("alexnet_jax.checkpoint")


class Checkpointer:

  def __init__(self, directory: str, *, every_steps: int, keep: int, async_save: bool = True):
    self.every_steps = every_steps
    _save_replicated_arrays_from_one_replica()
    self.manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save),
        item_names=("state", "meta"),
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, meta: dict[str, Any], *, force: bool = False) -> bool:
    """Save if `step` is due (every_steps) or `force`; returns whether a save started."""
    if not force and (self.every_steps <= 0 or step % self.every_steps):
      return False
    if step in self.manager.all_steps():
      return False
    return self.manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      meta=ocp.args.JsonSave(meta)), force=True)

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict] | None:
    """The latest (or given) checkpoint onto `abstract_state`'s shapes and shardings."""
    step = self.manager.latest_step() if step is None else step
    if step is None:
      return None
    restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                      meta=ocp.args.JsonRestore()))
    log.info("restored checkpoint at step %d", step)
    return restored["state"], dict(restored["meta"] or {})

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _save_replicated_arrays_from_one_replica() -> None:
  """Orbax's replica-parallel saving slices each replicated array across its replicas, which
  compiles one small XLA program per array shape: ~50 compiles (seconds to tens of seconds on a
  CPU) at a run's first save. AlexNet's ~250 MB of state does not need the parallelism."""
  ocp.type_handlers.register_type_handler(
      jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs carrying each array's sharding: what restore lays the data onto."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
