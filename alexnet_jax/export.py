"""Trained parameters to files and back: safetensors in this project's layout or torchvision's.

A file written here holds every parameter as `params/<layer>/<name>` (e.g. `params/conv1/kernel`,
towered kernels with their leading tower axis) and BatchNorm statistics as
`model_state/<layer>/<name>`, plus string metadata that makes it self-describing:

  format, format_version  "alexnet_jax", "1"
  layout                  "alexnet_jax" or "torchvision"
  variant, model_config   the model's name and its whole config section (JSON)
  num_classes, class_names  (class_names: JSON list)
  input_size, resize_size, mean, std   the evaluation preprocessing (mean/std: JSON lists)
  step, dtype             the training step exported, the stored float dtype

`layout="torchvision"` (the owt variant only) writes torchvision's AlexNet state_dict names and
shapes instead (torchvision_io), loadable with `safetensors.torch.load_file` into
`torchvision.models.alexnet()`. Reading accepts both, and torchvision `.pth` files. No pickle is
ever written; `.pth` files are read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np

from alexnet_jax import classnames
from alexnet_jax import configlib
from alexnet_jax import safetensors_io
from alexnet_jax import torchvision_io

FORMAT, FORMAT_VERSION = "alexnet_jax", "1"
LAYOUTS = ("alexnet_jax", "torchvision")
DTYPES = {"float32": np.float32, "bfloat16": jax.numpy.bfloat16}


class ExportError(configlib.ConfigError):
  """A parameter file or work directory that cannot be used as asked (one line, how to fix)."""


@dataclasses.dataclass
class LoadedModel:
  """Parameters plus what is needed to run them: `cfg` is a full config whose `model` section
  and `data` preprocessing (crop_size, resize_size, mean, std) are the model's."""
  cfg: Any
  params: dict
  model_state: dict
  class_names: tuple[str, ...]
  step: int | None
  source: str

  @property
  def num_classes(self) -> int:
    return self.cfg.model.num_classes

  def float32(self) -> "LoadedModel":
    """The same model with float32 arrays (bfloat16 files are computed with in float32)."""
    return dataclasses.replace(self, params=cast_floats(self.params, np.float32),
                               model_state=cast_floats(self.model_state, np.float32))


def cast_floats(tree, dtype):
  """Floating-point leaves (bfloat16 included) cast to `dtype`, others as numpy arrays."""
  def cast(a):
    a = np.asarray(a)
    return a.astype(dtype) if jax.numpy.issubdtype(a.dtype, jax.numpy.floating) else a
  return jax.tree.map(cast, tree)


# --- configs and expected shapes ----------------------------------------------------------


def model_config(model: dict, *, input_size: int, resize_size: int, mean, std):
  """A full config (base_config) with this model section and preprocessing."""
  cfg = configlib.base_config()
  for key, value in model.items():
    if key not in cfg.model:
      raise ExportError(f"model field {key!r} is unknown to this version of alexnet_jax")
    cfg.model[key] = tuple(value) if isinstance(value, list) else value
  cfg.data.crop_size, cfg.data.resize_size = int(input_size), int(resize_size)
  cfg.data.mean, cfg.data.std = tuple(mean), tuple(std)
  return cfg


def expected_tensors(cfg) -> dict[str, jax.ShapeDtypeStruct]:
  """The tensors a model of `cfg` has, by file name, in the model's order."""
  from alexnet_jax import model as model_lib
  from alexnet_jax import program  # heavy (flax, optax): only when needed

  try:
    model_lib.check_options(*model_lib.options_from_config(cfg.model, cfg.data.crop_size))
  except ValueError as e:  # e.g. a torchvision file read with a config whose crop is too small
    raise ExportError(f"{describe(cfg)} cannot be built: {e}") from None

  params, state = jax.eval_shape(program.model_fns(cfg).init, jax.random.key(0))
  return {**flatten(params, "params"), **flatten(state, "model_state")}


def flatten(tree: dict, prefix: str) -> dict[str, Any]:
  out = {}
  for key in tree:  # insertion order: the model's layer order
    value = tree[key]
    name = f"{prefix}/{key}"
    out.update(flatten(value, name) if isinstance(value, dict) else {name: value})
  return out


def unflatten(flat: dict[str, Any], prefix: str) -> dict:
  tree: dict = {}
  for name, value in flat.items():
    parts = name.split("/")
    if parts[0] != prefix:
      continue
    node = tree
    for part in parts[1:-1]:
      node = node.setdefault(part, {})
    node[parts[-1]] = value
  return tree


def check_tensors(found: dict[str, tuple], expected: dict[str, tuple], path: str,
                  what: str) -> None:
  """Raise ExportError naming the first tensor (in the model's order) that is missing or has
  another shape, or else the first unexpected one."""
  for name, shape in expected.items():
    if name not in found:
      raise ExportError(f"{path} does not fit {what}: tensor {name} {tuple(shape)} is missing "
                        f"from the file")
    if tuple(found[name]) != tuple(shape):
      raise ExportError(f"{path} does not fit {what}: tensor {name} has shape "
                        f"{tuple(found[name])} in the file but {tuple(shape)} is expected")
  extra = [name for name in found if name not in expected]
  if extra:
    raise ExportError(f"{path} does not fit {what}: the file has tensor {extra[0]} "
                      f"{tuple(found[extra[0]])}, which the model does not")


def describe(cfg) -> str:
  width = f", width {cfg.model.width:g}" if cfg.model.width != 1 else ""
  return f"variant {cfg.model.name!r}{width} with {cfg.model.num_classes} classes"


# --- from a training work directory ---------------------------------------------------------


def from_workdir(workdir: str, checkpoint: str = "latest") -> LoadedModel:
  """The parameters of a work directory's checkpoint: "latest", "best" or a step number."""
  from alexnet_jax import checkpoint as ckpt_lib  # Orbax: only when a run is read
  from alexnet_jax import optim, program

  config_path = os.path.join(workdir, "config.json")
  if not os.path.isfile(config_path):
    raise ExportError(f"{workdir} is not a training work directory (no config.json); pass the "
                      "--workdir given to train")
  with open(config_path) as f:
    cfg = configlib.from_json(f.read())
  try:
    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  except ckpt_lib.CheckpointError as e:
    raise ExportError(str(e)) from None
  steps = checkpointer.all_steps()
  if not steps:
    raise ExportError(f"{workdir} has no checkpoint yet; train longer (checkpoints are written "
                      "every config.checkpoint_every_steps steps and at every evaluation)")
  if checkpoint == "latest":
    step = None
  elif checkpoint == "best":
    step = checkpointer.best_step()
    if step is None:
      raise ExportError(f"{workdir}: no kept checkpoint has validation metrics; use "
                        f"--checkpoint latest or one of the steps {steps}")
  else:
    try:
      step = int(checkpoint)
    except ValueError:
      raise ExportError(f"--checkpoint {checkpoint!r}: write latest, best or a step number") from None
    if step not in steps:
      raise ExportError(f"{workdir} has no checkpoint at step {step}; it has steps {steps}")

  fns = program.model_fns(cfg)
  shapes = jax.eval_shape(program.init_state_fn(fns, optim.make_optimizer(cfg.optim), cfg.seed))
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device), shapes)
  try:
    restored = checkpointer.restore(abstract, step)
  except ckpt_lib.CheckpointError as e:
    raise ExportError(str(e)) from None
  finally:
    checkpointer.close()
  state = jax.device_get(restored.state)
  class_names = tuple(restored.meta.get("class_names") or ())
  return LoadedModel(cfg, state.params, state.model_state, class_names, restored.step,
                     os.path.join(checkpointer.directory, str(restored.step)))


# --- writing --------------------------------------------------------------------------------


def metadata(model: LoadedModel, *, layout: str, dtype: str) -> dict[str, str]:
  cfg = model.cfg
  return {
      "format": FORMAT, "format_version": FORMAT_VERSION, "layout": layout,
      "variant": cfg.model.name, "num_classes": str(cfg.model.num_classes),
      "class_names": json.dumps(list(model.class_names)),
      "input_size": str(cfg.data.crop_size), "resize_size": str(cfg.data.resize_size),
      "mean": json.dumps(list(cfg.data.mean)), "std": json.dumps(list(cfg.data.std)),
      "step": "" if model.step is None else str(model.step),
      "model_config": json.dumps(cfg.model.to_dict(), sort_keys=True),
      "dtype": dtype,
  }


def check_torchvision_compatible(cfg) -> None:
  from alexnet_jax import model as model_lib

  variant, opts = model_lib.options_from_config(cfg.model, cfg.data.crop_size)
  if variant.name != "owt" or opts.width != 1 or opts.norm != "none":
    raise ExportError(f"torchvision's AlexNet layout fits only variant 'owt' at width 1 without "
                      f"BatchNorm; this model is {describe(cfg)}, norm {opts.norm!r}")


def save(model: LoadedModel, path: str, *, dtype: str = "float32", layout: str = "alexnet_jax",
         overwrite: bool = False) -> dict[str, str]:
  """Write `model` to the safetensors file `path`; returns the metadata written."""
  if dtype not in DTYPES:
    raise ExportError(f"--dtype {dtype}: choose {' or '.join(DTYPES)}")
  if layout not in LAYOUTS:
    raise ExportError(f"--layout {layout}: choose {' or '.join(LAYOUTS)}")
  if os.path.exists(path) and not overwrite:
    raise ExportError(f"{path} exists; pass --overwrite to replace it")
  if layout == "torchvision":
    check_torchvision_compatible(model.cfg)
    tensors = torchvision_io.to_torchvision(model.params)
  else:
    tensors = {**flatten(model.params, "params"), **flatten(model.model_state, "model_state")}
  tensors = cast_floats(tensors, DTYPES[dtype])
  meta = metadata(model, layout=layout, dtype=dtype)
  try:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    safetensors_io.save(path, tensors, meta, overwrite=overwrite)  # atomic: whole or nothing
  except OSError as e:
    from alexnet_jax import workdir
    error = workdir.disk_error(e, path, sum(np.asarray(t).nbytes for t in tensors.values()))
    if isinstance(error, workdir.DiskFull):
      raise error from None
    raise ExportError(f"cannot write {path} ({e.strerror or e}); pass another --out") from None
  return meta


# --- reading --------------------------------------------------------------------------------


def load(path: str, *, expect=None, torchvision_cfg=None) -> LoadedModel:
  """Read a parameter file: this project's safetensors, or torchvision's layout (safetensors or
  `.pth`).

  expect: a config whose model the file must fit (else ExportError naming the first mismatched
    tensor and both shapes); default: the model the file's metadata describes.
  torchvision_cfg: for torchvision files without this project's metadata, the config supplying
    the preprocessing (default: torchvision's, 256 -> 224 px, ImageNet mean and std).
  """
  if not os.path.exists(path):
    raise ExportError(f"{path}: no such file")
  if path.endswith((".pth", ".pt")):
    try:
      state = torchvision_io.read_pth(path)
    except torchvision_io.LayoutError as e:
      raise ExportError(str(e)) from None
    return _from_torchvision(state, {}, path, expect, torchvision_cfg)
  try:
    tensors, meta = safetensors_io.load(path)
  except safetensors_io.SafetensorsError as e:
    raise ExportError(str(e)) from None
  if meta.get("layout") == "torchvision" or (meta.get("format") != FORMAT
                                             and torchvision_io.is_torchvision_layout(tensors)):
    return _from_torchvision(tensors, meta, path, expect, torchvision_cfg)
  if meta.get("format") != FORMAT:
    raise ExportError(f"{path}: a safetensors file without alexnet_jax metadata and not in "
                      "torchvision's AlexNet layout; export parameters with `launch.py export`")
  if meta.get("format_version") != FORMAT_VERSION:
    raise ExportError(f"{path}: format version {meta.get('format_version')!r}; this version of "
                      f"alexnet_jax reads version {FORMAT_VERSION}")
  try:
    cfg = model_config(json.loads(meta["model_config"]), input_size=int(meta["input_size"]),
                       resize_size=int(meta["resize_size"]), mean=json.loads(meta["mean"]),
                       std=json.loads(meta["std"]))
    class_names = tuple(json.loads(meta.get("class_names", "[]")))
    step = int(meta["step"]) if meta.get("step") else None
  except (KeyError, ValueError, TypeError) as e:
    raise ExportError(f"{path}: damaged alexnet_jax metadata ({type(e).__name__}: {e})") from None
  target = expect if expect is not None else cfg
  check_tensors({k: v.shape for k, v in tensors.items()},
                {k: v.shape for k, v in expected_tensors(target).items()}, path, describe(target))
  return LoadedModel(cfg if expect is None else _with_model(cfg, expect), unflatten(tensors, "params"),
                     unflatten(tensors, "model_state"), class_names, step, path)


def _with_model(cfg, expect):
  """`cfg`'s preprocessing with `expect`'s model section (the file fits it)."""
  out = configlib.base_config()
  out.model = expect.model
  out.data.crop_size, out.data.resize_size = cfg.data.crop_size, cfg.data.resize_size
  out.data.mean, out.data.std = cfg.data.mean, cfg.data.std
  return out


def torchvision_config(num_classes: int, base=None):
  """The owt model at width 1 with torchvision's evaluation preprocessing (or `base`'s)."""
  cfg = configlib.base_config()
  if base is not None:
    cfg.data.crop_size, cfg.data.resize_size = base.data.crop_size, base.data.resize_size
    cfg.data.mean, cfg.data.std = base.data.mean, base.data.std
    cfg.model.dtype = base.model.dtype
  else:
    cfg.data.crop_size, cfg.data.resize_size = 224, 256
  cfg.model.name, cfg.model.width, cfg.model.num_classes = "owt", 1.0, num_classes
  return cfg


def _from_torchvision(state: dict[str, np.ndarray], meta: dict, path: str, expect,
                      torchvision_cfg) -> LoadedModel:
  if not torchvision_io.is_torchvision_layout(state):
    raise ExportError(f"{path}: not torchvision's AlexNet layout (no features.0.weight and "
                      "classifier.6.weight tensors)")
  if meta.get("format") == FORMAT:  # written by this project: its own metadata is exact
    base = model_config(json.loads(meta["model_config"]), input_size=int(meta["input_size"]),
                        resize_size=int(meta["resize_size"]), mean=json.loads(meta["mean"]),
                        std=json.loads(meta["std"]))
    class_names = tuple(json.loads(meta.get("class_names", "[]")))
    step = int(meta["step"]) if meta.get("step") else None
  else:
    base, class_names, step = torchvision_cfg, (), None
  num_classes = state["classifier.6.weight"].shape[0]
  cfg = torchvision_config(num_classes, base)
  target = torchvision_config(expect.model.num_classes, cfg) if expect is not None else cfg
  if expect is not None:
    check_torchvision_compatible(expect)
  owt_shapes = unflatten({k: v.shape for k, v in expected_tensors(target).items()}, "params")
  check_tensors({k: v.shape for k, v in state.items()}, torchvision_io.expected_shapes(owt_shapes),
                path, f"torchvision's AlexNet with {target.model.num_classes} classes")
  params = torchvision_io.from_torchvision({k: np.asarray(v, np.float32) for k, v in state.items()})
  return LoadedModel(cfg, params, {}, classnames.readable(class_names, num_classes), step, path)


# --- the command ----------------------------------------------------------------------------


def export(*, out: str, workdir: str | None = None, params: str | None = None,
           checkpoint: str = "latest", dtype: str = "float32", layout: str = "alexnet_jax",
           overwrite: bool = False) -> tuple[LoadedModel, dict[str, str]]:
  """A work directory's checkpoint (or another parameter file) -> `out`."""
  if (workdir is None) == (params is None):
    raise ExportError("give either --workdir (a training run) or --params (a parameter file)")
  if os.path.exists(out) and not overwrite:  # before the (slow) restore
    raise ExportError(f"{out} exists; pass --overwrite to replace it")
  model = from_workdir(workdir, checkpoint) if workdir is not None else load(params)
  return model, save(model, out, dtype=dtype, layout=layout, overwrite=overwrite)
