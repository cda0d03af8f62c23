"""Configs: the full field list with defaults, loading a config file, overrides, validation.

Every `configs/*.py` starts from `base_config()` and changes what its recipe needs, so every
field exists in every config and `--config.a.b=value` works the same everywhere.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import ml_collections

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Eigen-decomposition of the RGB covariance of ImageNet pixels scaled to [0, 1] (PAPER.md).
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = (  # columns are the eigenvectors
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


class ConfigError(ValueError):
  """A config that cannot work; the message names the field and how to fix it."""


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.name = "small"  # paper | paper6 | owt | bn | small | cnn4 (Figure 1)
  c.model.num_classes = 10
  c.model.norm = "default"  # default (the variant's own) | lrn | batch | none
  c.model.pool = "overlap"  # overlap (3x3 stride 2, the paper) | nonoverlap (2x2 stride 2)
  c.model.activation = "relu"  # relu | tanh
  c.model.dropout = 0.5
  c.model.width = 1.0  # multiplies every layer's channel count (tests, ablations)
  # paper/paper6 are the 2012 network at 227 px only; true builds them at another crop anyway
  # (another network: fc6's input size, and so the parameter count, change).
  c.model.allow_other_input_size = False
  c.model.init = "default"  # default (the variant's own) | paper | pytorch | he
  c.model.dtype = "float32"  # compute dtype; parameters stay float32
  c.model.tower_impl = "unrolled"  # unrolled (one conv per tower) | vmap (one grouped conv)
  c.model.pool_impl = "auto"  # auto (slices) | slices | reduce_window
  # auto (direct on CPU, else space_to_depth) | direct | space_to_depth (4x4 blocks, 48
  # channels, stride 1; the same function and parameters)
  c.model.conv1_impl = "auto"
  c.model.conv_impl = "auto"  # auto (oneDNN on one CPU device where it works, else XLA) | xla | onednn
  # LRN's window sum of squares: auto (reduce_window) | reduce_window | matmul | slices; the same
  # function and gradient each way (model.py)
  c.model.lrn_impl = "auto"
  c.model.lrn_k = 2.0
  c.model.lrn_n = 5
  c.model.lrn_alpha = 1e-4  # the paper's alpha: NOT divided by n
  c.model.lrn_beta = 0.75

  c.data = ml_collections.ConfigDict()
  # digits | synthetic | imagenet2012 | folder | any tfds image-classification name
  c.data.name = "digits"
  c.data.data_dir = ""  # tfds data_dir ("" = tfds default)
  c.data.manual_dir = ""  # imagenet2012: folder holding ILSVRC2012_img_{train,val}.tar
  c.data.folder = ""  # folder source: DIR/train/<class>/*, DIR/val/<class>/* (Tiny ImageNet also)
  c.data.train_split = "train"
  c.data.eval_split = "validation"
  c.data.resize_size = 256  # shorter side before cropping
  c.data.crop_size = 224  # network input
  c.data.random_crop = True
  c.data.flip = True
  c.data.pca_lighting = 0.1  # sigma of the PCA lighting alphas; 0 turns it off
  c.data.mean = IMAGENET_MEAN
  c.data.std = IMAGENET_STD
  c.data.shuffle_buffer = 16_384
  c.data.cache = False  # cache decoded examples in memory (small datasets)
  c.data.prefetch = 2  # batches prefetched to the devices
  c.data.num_parallel_calls = -1  # -1 = tf.data AUTOTUNE
  # data.name=synthetic: random images and labels of the config's shape (data/synthetic.py);
  # the split sizes of ImageNet by default, so an epoch is ImageNet's number of steps
  c.data.synthetic_train_size = 1_281_167
  c.data.synthetic_eval_size = 50_000

  c.batch_size = 128  # global, over all devices and processes
  c.eval_batch_size = 256
  c.num_epochs = 90.0

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "sgdw"  # sgdw (decoupled decay) | sgd (coupled, PyTorch) | paper (2012 rule) | lars
  c.optim.learning_rate = 0.01
  c.optim.momentum = 0.9
  c.optim.nesterov = False
  c.optim.weight_decay = 5e-4
  c.optim.decay_exclude = ("bias", "scale")  # regexes over parameter paths left undecayed
  c.optim.schedule = "plateau"  # constant | plateau | step | warmup_cosine
  c.optim.warmup_epochs = 0.0
  c.optim.step_epochs = 30.0  # step: multiply by step_factor every step_epochs
  c.optim.step_factor = 0.1
  c.optim.plateau_factor = 0.1
  c.optim.plateau_patience = 1  # evaluations without improvement before a drop
  c.optim.plateau_max_drops = 3
  c.optim.plateau_min_delta = 0.0
  c.optim.lars_trust = 0.001

  c.sharding = ml_collections.ConfigDict()
  c.sharding.strategy = "data"
  c.sharding.mesh = ""  # e.g. "4x2" (data x model); "" = the strategy's default

  c.log_every_steps = 50
  c.eval_every_epochs = 1.0
  c.checkpoint_every_steps = 1000  # 0 = off; evaluations, the last step and SIGTERM also save
  c.checkpoint_every_minutes = 0.0  # 0 = off; both rules may be on (whichever comes first)
  c.keep_checkpoints = 3  # the last K are kept ...
  c.keep_best_checkpoint = True  # ... plus the one with the lowest validation top-1 error
  c.progress = True  # progress bar on stderr
  # Steps to trace with JAX's profiler into WORKDIR/profile: "10-12", "5" or "" (off); counted
  # from 1 as in the logs. Skip step 1 (it compiles). Viewing: alexnet_jax/profiling.py.
  c.profile_steps = ""
  return c


# --- loading -------------------------------------------------------------------------------


def load_config(path: str) -> ml_collections.ConfigDict:
  """Load `configs/X.py` (optionally `configs/X.py:arg`) and return its get_config(arg).

  Whatever is wrong with the file (a syntax error, no get_config, an argument it does not
  take, an exception of its own) is a ConfigError naming the file and the line.
  """
  path, _, arg = path.partition(":")
  if not os.path.exists(path):
    raise ConfigError(f"config file {path!r} does not exist; pass --config configs/<name>.py")
  if not os.path.isfile(path):
    raise ConfigError(f"config {path!r} is not a file; pass --config configs/<name>.py")
  try:
    spec = importlib.util.spec_from_file_location("_alexnet_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise ConfigError(f"config file {path} has a syntax error at line {e.lineno}: {e.msg}; fix "
                      "the file") from None
  except Exception as e:  # noqa: BLE001 (anything the file runs: NameError, ImportError, ...)
    raise ConfigError(f"config file {path} failed to load{_where(e, path)}: "
                      f"{type(e).__name__}: {_one_line(e)}; fix the file") from None
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise ConfigError(f"config file {path} has no get_config() function; a config file defines "
                      "get_config() returning a ConfigDict (see configs/default.py)")
  takes_arg = _takes_argument(get_config)
  if arg and takes_arg is False:
    raise ConfigError(f"--config {path}:{arg}: this config's get_config() takes no argument; "
                      f"drop ':{arg}'")
  try:
    cfg = get_config(arg) if arg else get_config()
  except TypeError as e:
    if not arg and takes_arg:
      raise ConfigError(f"--config {path}: its get_config() needs an argument; write "
                        f"--config {path}:VALUE") from None
    raise ConfigError(f"config file {path}: get_config() failed{_where(e, path)}: "
                      f"TypeError: {_one_line(e)}; fix the file") from None
  except Exception as e:  # noqa: BLE001
    call = f"get_config({arg!r})" if arg else "get_config()"
    raise ConfigError(f"config file {path}: {call} failed{_where(e, path)}: "
                      f"{type(e).__name__}: {_one_line(e)}; fix the file") from None
  if not isinstance(cfg, ml_collections.ConfigDict):
    raise ConfigError(f"config file {path}: get_config() returned a {type(cfg).__name__}, not an "
                      "ml_collections.ConfigDict; start from configlib.base_config()")
  missing = _missing_fields(cfg, base_config())
  if missing:
    raise ConfigError(f"config file {path}: get_config() lacks config.{missing}; start from "
                      "configlib.base_config(), which has every field")
  cfg.lock()  # a misspelt override must fail, not silently add a field
  return cfg


def _missing_fields(cfg, base, prefix: str = "") -> str | None:
  """The first field of `base` that `cfg` lacks (dotted), or None."""
  for key, value in base.items():
    if key not in cfg:
      return prefix + key
    if isinstance(value, ml_collections.ConfigDict):
      if not isinstance(cfg[key], ml_collections.ConfigDict):
        return prefix + key
      missing = _missing_fields(cfg[key], value, f"{prefix}{key}.")
      if missing:
        return missing
  return None


def _takes_argument(fn) -> bool | None:
  """Whether `fn` accepts one positional argument (None: cannot tell)."""
  import inspect
  try:
    inspect.signature(fn).bind("x")
    return True
  except TypeError:
    return False
  except ValueError:
    return None


def _where(e: BaseException, path: str) -> str:
  """' (line N)' of the deepest frame of `e` inside the config file, or ''."""
  tb, line = e.__traceback__, None
  while tb is not None:
    if os.path.abspath(tb.tb_frame.f_code.co_filename) == os.path.abspath(path):
      line = tb.tb_lineno
    tb = tb.tb_next
  return f" (line {line})" if line else ""


def _one_line(e: BaseException) -> str:
  text = " ".join(str(e).split()) or type(e).__name__
  return text if len(text) <= 200 else text[:197] + "..."


def _parse_value(text: str, current: Any) -> Any:
  if isinstance(current, str):
    return text
  if isinstance(current, bool):
    if text.lower() in ("true", "1", "yes"):
      return True
    if text.lower() in ("false", "0", "no"):
      return False
    raise ValueError(f"expected true or false, got {text!r}")
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if isinstance(current, tuple) and isinstance(value, (list, str)):
    value = tuple(value) if isinstance(value, list) else tuple(v for v in value.split(",") if v)
  return value


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
  """Apply `a.b=value` overrides; the value is parsed to the field's existing type."""
  for item in overrides:
    key, sep, text = item.partition("=")
    if not sep:
      raise ConfigError(f"override {item!r} has no '='; write --config.{key}=VALUE")
    node = cfg
    parts = key.split(".")
    for part in parts[:-1]:
      if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
        raise ConfigError(f"--config.{key}: {part!r} is not a config section")
      node = node[part]
    leaf = parts[-1]
    if leaf not in node:
      raise ConfigError(f"--config.{key}: no such field; fields here: {', '.join(sorted(node.keys()))}")
    try:
      with node.unlocked():
        node[leaf] = _parse_value(text, node[leaf])
    except (TypeError, ValueError) as e:
      raise ConfigError(f"--config.{key}={text}: {e}") from None


def to_json(cfg: ml_collections.ConfigDict) -> str:
  return json.dumps(cfg.to_dict(), indent=2, sort_keys=True, default=str)


def from_json(text: str) -> ml_collections.ConfigDict:
  """Inverse of to_json (tuples come back as tuples, as base_config has them)."""
  base = base_config()
  data = json.loads(text)

  def merge(node, values):
    for k, v in values.items():
      if isinstance(v, dict):
        if k not in node:
          node[k] = ml_collections.ConfigDict()
        merge(node[k], v)
      else:
        node[k] = tuple(v) if isinstance(v, list) else v

  merge(base, data)
  return base


# --- loading a config by name, with command-line overrides ----------------------------------

DEFAULT_CONFIG = "default"
REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def shipped_configs() -> list[str]:
  """The names of the repository's configs (what `--config NAME` accepts bare)."""
  return sorted(p.stem for p in REPO_CONFIGS.glob("*.py") if p.stem != "__init__")


def resolve_config_path(name: str) -> str:
  """A config file path, or a bare name looked up in the repository's (or installed) configs/."""
  path, sep, arg = name.partition(":")
  candidates = [Path(path), REPO_CONFIGS / path, REPO_CONFIGS / f"{path}.py"]
  try:
    import configs as installed_configs  # present when the package was installed
    base = Path(installed_configs.__file__).parent
    candidates += [base / Path(path).name, base / f"{Path(path).name}.py"]
  except ImportError:
    pass
  for candidate in candidates:
    if candidate.is_file():
      return str(candidate) + sep + arg
  raise ConfigError(
      f"--config {name}: no such config; pass a file such as configs/default.py or one of: "
      + ", ".join(shipped_configs()))


def load(name: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """The config `name` (a file, or a bare name from configs/, optionally `:arg`) with
  `field=value` overrides applied: what `--config NAME --config.FIELD=VALUE` asks for."""
  cfg = load_config(resolve_config_path(name))
  apply_overrides(cfg, overrides)
  return cfg


def default_workdir(config_name: str) -> str:
  return os.path.join("workdirs", Path(config_name.partition(":")[0]).stem)


# --- validation: one clear line naming the field, before anything compiles --------------------


def validate(cfg: ml_collections.ConfigDict, *, data_axis: int = 1) -> None:
  """Raise ConfigError for field values that cannot work. `data_axis`: devices the batch splits
  over. The model's and optimizer's own choices are checked beside these by program.validate,
  the one place a config is validated."""
  d, o = cfg.data, cfg.optim
  checks = [
      (o.learning_rate >= 0, f"config.optim.learning_rate={o.learning_rate}: must be >= 0"),
      (o.weight_decay >= 0, f"config.optim.weight_decay={o.weight_decay}: must be >= 0"),
      (0 <= o.momentum < 1, f"config.optim.momentum={o.momentum}: must be in [0, 1)"),
      (o.warmup_epochs >= 0, f"config.optim.warmup_epochs={o.warmup_epochs}: must be >= 0"),
      (0 < o.plateau_factor <= 1, f"config.optim.plateau_factor={o.plateau_factor}: must be in (0, 1]"),
      (o.plateau_patience >= 1, f"config.optim.plateau_patience={o.plateau_patience}: must be >= 1"),
      (o.step_epochs > 0, f"config.optim.step_epochs={o.step_epochs}: must be > 0"),
      (d.pca_lighting >= 0, f"config.data.pca_lighting={d.pca_lighting}: must be >= 0 (0 = off)"),
      (d.crop_size >= 1, f"config.data.crop_size={d.crop_size}: must be >= 1"),
      (d.crop_size <= d.resize_size,
       f"config.data.crop_size={d.crop_size} is larger than config.data.resize_size="
       f"{d.resize_size}: the crop is taken from the resized image; raise resize_size or lower "
       "crop_size"),
      (len(d.mean) == 3 and len(d.std) == 3 and all(s > 0 for s in d.std),
       "config.data.mean and config.data.std need 3 values each, std > 0"),
      (cfg.num_epochs > 0, f"config.num_epochs={cfg.num_epochs}: must be > 0"),
      (cfg.eval_every_epochs > 0, f"config.eval_every_epochs={cfg.eval_every_epochs}: must be > 0"),
      (cfg.log_every_steps >= 1, f"config.log_every_steps={cfg.log_every_steps}: must be >= 1"),
      (cfg.checkpoint_every_steps >= 0,
       f"config.checkpoint_every_steps={cfg.checkpoint_every_steps}: must be >= 0 (0 = off)"),
      (cfg.checkpoint_every_minutes >= 0,
       f"config.checkpoint_every_minutes={cfg.checkpoint_every_minutes}: must be >= 0 (0 = off)"),
      (cfg.keep_checkpoints >= 1, f"config.keep_checkpoints={cfg.keep_checkpoints}: must be >= 1"),
  ]
  for name in ("batch_size", "eval_batch_size"):
    size = cfg[name]
    checks.append((size >= 1, f"config.{name}={size}: must be >= 1"))
    checks.append((size % data_axis == 0,
                   f"config.{name}={size} is not divisible by the {data_axis} devices the batch "
                   f"is split over; use a multiple of {data_axis}"))
  for ok, message in checks:
    if not ok:
      raise ConfigError(message)
  parse_profile_steps(cfg.profile_steps)


def describe_model_choices(cfg: ml_collections.ConfigDict) -> list[str]:
  """Log lines on what the config builds that the config's fields alone do not say: the
  convolution implementation "auto" resolves to, and the parameter count of a paper network
  built at another input size on purpose."""
  import jax
  from flax import nnx

  from alexnet_jax import model as model_lib
  from alexnet_jax.backend import ops

  m = cfg.model
  impl = ops.resolve_conv_impl(m.conv_impl)
  names = {"xla": "XLA's convolutions", "onednn": "oneDNN through XLA:CPU's custom call"}
  how = (f"config.model.conv_impl=auto on {jax.device_count()} {jax.default_backend()} "
         f"device{'s' if jax.device_count() > 1 else ''}") if m.conv_impl == "auto" else (
             f"config.model.conv_impl={m.conv_impl}")
  lines = [f"convolutions: {names.get(impl, impl)} ({how})"]
  variant = model_lib.VARIANTS.get(m.name)
  if m.get("allow_other_input_size") and variant and cfg.data.crop_size != variant.input_size:
    count = lambda size: model_lib.count_params(nnx.eval_shape(
        lambda: model_lib.create_model(m, size, nnx.Rngs(0))))
    lines.append(f"model {m.name} at {cfg.data.crop_size} px (config.model.allow_other_input_size)"
                 f": {count(cfg.data.crop_size):,} parameters; at its own "
                 f"{variant.input_size} px it has {count(variant.input_size):,}")
  return lines


_STEPS = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$")


def parse_profile_steps(spec: str) -> tuple[int, int] | None:
  """config.profile_steps: `"10-12"` -> (10, 12), `"5"` -> (5, 5), `""` -> None (off);
  ConfigError naming the field for anything else."""
  field = "config.profile_steps"
  if not isinstance(spec, str):
    raise ConfigError(f"{field}={spec!r}: write the steps as text, e.g. '10-12' or '5'")
  if not spec.strip():
    return None
  match = _STEPS.match(spec)
  first, last = (int(match[1]), int(match[2] or match[1])) if match else (0, 0)
  if not match or first < 1 or last < first:
    raise ConfigError(f"{field}={spec!r}: write one step (5) or a range of steps (10-12), "
                      "counted from 1; '' turns profiling off")
  return first, last


def check_against_dataset(cfg: ml_collections.ConfigDict, info) -> None:
  """Errors that need the dataset's metadata (class count, split sizes)."""
  if info.num_classes != cfg.model.num_classes:
    raise ConfigError(f"config.model.num_classes={cfg.model.num_classes} but dataset "
                      f"{cfg.data.name!r} has {info.num_classes} classes; set "
                      f"--config.model.num_classes={info.num_classes}")
  n_train = info.num_examples.get(cfg.data.train_split, 0)
  if n_train < cfg.batch_size:
    raise ConfigError(f"config.batch_size={cfg.batch_size} is larger than the {n_train} examples "
                      f"of split {cfg.data.train_split!r}; lower the batch size")
