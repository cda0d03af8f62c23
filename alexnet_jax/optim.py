"""Optimizers (optax chains) and learning-rate schedules.

Every optimizer is wrapped in `optax.inject_hyperparams`, so its learning rate is a value in the
optimizer state that the train step sets each step: `schedule(step) * lr_scale`. The schedule is a
pure function of the step; `lr_scale` is the plateau schedule's factor, which only the
evaluation loop can change (it is driven by the validation metric), and which lives in the train
state so a resumed run continues with it.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("sgdw", "sgd", "paper", "lars")
SCHEDULES = ("constant", "plateau", "step", "warmup_cosine")


def check_config(optim_cfg) -> None:
  """Raise ValueError naming the field for an optimizer or schedule this module does not have."""
  if optim_cfg.name not in OPTIMIZERS:
    raise ValueError(f"config.optim.name={optim_cfg.name!r}: choose one of {', '.join(OPTIMIZERS)}")
  if optim_cfg.schedule not in SCHEDULES:
    raise ValueError(f"config.optim.schedule={optim_cfg.schedule!r}: choose one of "
                     f"{', '.join(SCHEDULES)}")


def path_str(path) -> str:
  """A tree path as 'conv1/kernel' (the names sharding rules and masks match against)."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def decay_mask(params, exclude: Sequence[str]):
  """True where a parameter is decayed: its path matches none of the `exclude` regexes."""
  patterns = [re.compile(p) for p in exclude]
  return jax.tree_util.tree_map_with_path(
      lambda path, _: not any(p.search(path_str(path)) for p in patterns), params)


# --- the paper's rule -----------------------------------------------------------------------


class PaperMomentumState(NamedTuple):
  velocity: Any


def paper_momentum(learning_rate: float, momentum: float = 0.9, weight_decay: float = 5e-4,
                   mask: Any = True) -> optax.GradientTransformation:
  """Section 5 of the paper: v <- m*v - wd*lr*w - lr*g ; w <- w + v.

  The learning rate is inside the velocity, so a learning-rate drop only shrinks new
  contributions; optax's sgd(momentum) scales the whole trace instead (they agree only while the
  rate is constant). `mask` (a pytree of bools, or a function of params) says which parameters
  are decayed.
  """

  def init(params):
    return PaperMomentumState(jax.tree.map(jnp.zeros_like, params))

  def update(grads, state, params):
    decayed = mask(params) if callable(mask) else mask
    if not isinstance(decayed, bool):
      decayed = jax.tree.map(lambda d, p: jnp.asarray(d, p.dtype), decayed, params)
    else:
      decayed = jax.tree.map(lambda p: jnp.asarray(decayed, p.dtype), params)
    velocity = jax.tree.map(
        lambda v, g, w, d: momentum * v - weight_decay * learning_rate * d * w - learning_rate * g,
        state.velocity, grads, params, decayed)
    return velocity, PaperMomentumState(velocity)

  return optax.GradientTransformation(init, update)


def sgdw(learning_rate: float, momentum: float = 0.9, weight_decay: float = 5e-4,
         mask: Any = True, nesterov: bool = False) -> optax.GradientTransformation:
  """Momentum SGD with decoupled weight decay: w <- w - lr * (trace(g) + wd * w)."""
  return optax.chain(
      optax.trace(decay=momentum, nesterov=nesterov),
      optax.add_decayed_weights(weight_decay, mask),
      optax.scale_by_learning_rate(learning_rate),
  )


def sgd(learning_rate: float, momentum: float = 0.9, weight_decay: float = 1e-4,
        mask: Any = True, nesterov: bool = False) -> optax.GradientTransformation:
  """PyTorch's SGD: decay *coupled* into the gradient before momentum (torchvision's recipe)."""
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask),
      optax.trace(decay=momentum, nesterov=nesterov),
      optax.scale_by_learning_rate(learning_rate),
  )


def make_optimizer(optim_cfg) -> optax.GradientTransformation:
  mask = lambda params: decay_mask(params, optim_cfg.decay_exclude)
  name = optim_cfg.name
  if name == "sgdw":
    factory = lambda learning_rate: sgdw(learning_rate, optim_cfg.momentum,
                                         optim_cfg.weight_decay, mask, optim_cfg.nesterov)
  elif name == "sgd":
    factory = lambda learning_rate: sgd(learning_rate, optim_cfg.momentum,
                                        optim_cfg.weight_decay, mask, optim_cfg.nesterov)
  elif name == "paper":
    factory = lambda learning_rate: paper_momentum(learning_rate, optim_cfg.momentum,
                                                   optim_cfg.weight_decay, mask)
  elif name == "lars":
    # Biases and norm parameters get neither decay nor a trust ratio (You et al. 2017).
    factory = lambda learning_rate: optax.lars(
        learning_rate, optim_cfg.weight_decay, mask, optim_cfg.lars_trust, 0.0, mask,
        optim_cfg.momentum, optim_cfg.nesterov)
  else:
    raise ValueError(f"config.optim.name={name!r}: choose one of {', '.join(OPTIMIZERS)}")
  return optax.inject_hyperparams(factory)(learning_rate=optim_cfg.learning_rate)


def set_learning_rate(opt_state, learning_rate):
  """The optimizer state with its injected learning rate replaced (inside jit)."""
  hyperparams = dict(opt_state.hyperparams)
  hyperparams["learning_rate"] = jnp.asarray(learning_rate,
                                             hyperparams["learning_rate"].dtype)
  return opt_state._replace(hyperparams=hyperparams)


# --- schedules ------------------------------------------------------------------------------


def make_schedule(optim_cfg, steps_per_epoch: int, total_steps: int) -> Callable:
  """step -> learning rate, before the plateau factor. Pure, so it runs inside the train step."""
  base = optim_cfg.learning_rate
  warmup = int(round(optim_cfg.warmup_epochs * steps_per_epoch))
  name = optim_cfg.schedule
  if name in ("constant", "plateau"):
    main = lambda step: jnp.asarray(base, jnp.float32)
  elif name == "step":
    every = max(1, int(round(optim_cfg.step_epochs * steps_per_epoch)))
    main = lambda step: base * optim_cfg.step_factor ** (jnp.asarray(step) // every).astype(jnp.float32)
  elif name == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(0.0, base, warmup, max(total_steps, warmup + 1))
  else:
    raise ValueError(f"config.optim.schedule={name!r}: choose one of {', '.join(SCHEDULES)}")
  if warmup <= 0:
    return main
  # Linear warm-up from 0 (Goyal et al. 2017), then the main schedule.
  return lambda step: jnp.minimum(1.0, (step + 1) / warmup) * main(step)


@dataclasses.dataclass
class Plateau:
  """The paper's schedule: divide the rate by 10 when the validation error stops improving.

  `observe(error)` after each evaluation; after `patience` evaluations in a row without an
  improvement of more than `min_delta` on the best error so far, the rate drops by `factor`, at
  most `max_drops` times (the paper: three times, 0.01 -> 1e-5). A drop restarts the count.
  """
  factor: float = 0.1
  patience: int = 1
  max_drops: int = 3
  min_delta: float = 0.0
  best: float = float("inf")
  bad_evals: int = 0
  drops: int = 0

  @property
  def scale(self) -> float:
    return self.factor ** self.drops

  def observe(self, error: float) -> bool:
    """Record one evaluation; True when this evaluation dropped the rate."""
    if error < self.best - self.min_delta:
      self.best, self.bad_evals = error, 0
      return False
    self.bad_evals += 1
    if self.bad_evals >= self.patience and self.drops < self.max_drops:
      self.drops += 1
      self.bad_evals = 0
      return True
    return False

  def state_dict(self) -> dict[str, float]:
    return {"best": self.best, "bad_evals": self.bad_evals, "drops": self.drops}

  def load_state_dict(self, d: dict[str, float]) -> None:
    self.best, self.bad_evals, self.drops = float(d["best"]), int(d["bad_evals"]), int(d["drops"])

  @classmethod
  def from_config(cls, optim_cfg) -> "Plateau":
    return cls(optim_cfg.plateau_factor, optim_cfg.plateau_patience,
               optim_cfg.plateau_max_drops, optim_cfg.plateau_min_delta)
