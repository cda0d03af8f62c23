"""torchvision's AlexNet `state_dict` layout <-> the `owt` variant's parameters.

torchvision's AlexNet is `features` (Conv2d at indices 0, 3, 6, 8, 10 with ReLU and MaxPool2d
between), AdaptiveAvgPool2d((6, 6)), and `classifier` (Dropout, Linear at 1, 4, 6). The `owt`
variant is the same network, so the conversion is a renaming plus layout changes:

  convolutions  torch (out, in, kh, kw)          <-> here (kh, kw, in, out)    (OIHW vs HWIO)
  fc6           torch (out, C*6*6), columns in (c, h, w) order: PyTorch flattens NCHW
                <-> here (6*6*C, out), rows in (h, w, c) order: this model flattens NHWC
  fc7, fc8      torch (out, in)                  <-> here (in, out)

PyTorch is imported only to read a `.pth` file (with `weights_only=True`: tensors only, never
arbitrary pickled objects).
"""

from __future__ import annotations

import math
import re

import numpy as np

CONVS = {"conv1": "features.0", "conv2": "features.3", "conv3": "features.6",
         "conv4": "features.8", "conv5": "features.10"}
DENSES = {"fc6": "classifier.1", "fc7": "classifier.4", "fc8": "classifier.6"}
LAYERS = {**CONVS, **DENSES}  # in network order


class LayoutError(ValueError):
  pass


def is_torchvision_layout(names) -> bool:
  return "features.0.weight" in names and "classifier.6.weight" in names


def _fc6_geometry(fc6_inputs: int, channels: int) -> tuple[int, int]:
  side = math.isqrt(fc6_inputs // channels) if channels else 0
  if side * side * channels != fc6_inputs:
    raise LayoutError(f"fc6 has {fc6_inputs} inputs, not a square grid of {channels} channels")
  return side, channels


def to_torchvision(params: dict) -> dict[str, np.ndarray]:
  """owt parameters (nested dict, HWIO / (in, out)) -> torchvision's state_dict, as numpy."""
  out = {}
  for layer, name in CONVS.items():
    out[f"{name}.weight"] = np.transpose(np.asarray(params[layer]["kernel"]), (3, 2, 0, 1))
    out[f"{name}.bias"] = np.asarray(params[layer]["bias"])
  side, channels = _fc6_geometry(np.shape(params["fc6"]["kernel"])[0],
                                 np.shape(params["conv5"]["kernel"])[-1])
  fc6 = np.asarray(params["fc6"]["kernel"]).reshape(side, side, channels, -1)
  out["classifier.1.weight"] = np.transpose(fc6, (3, 2, 0, 1)).reshape(fc6.shape[-1], -1)
  out["classifier.1.bias"] = np.asarray(params["fc6"]["bias"])
  for layer in ("fc7", "fc8"):
    out[f"{DENSES[layer]}.weight"] = np.asarray(params[layer]["kernel"]).T
    out[f"{DENSES[layer]}.bias"] = np.asarray(params[layer]["bias"])
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def from_torchvision(state: dict[str, np.ndarray]) -> dict:
  """torchvision's state_dict (numpy) -> owt parameters. Shapes must already be checked."""
  params = {}
  for layer, name in CONVS.items():
    params[layer] = {"kernel": np.transpose(state[f"{name}.weight"], (2, 3, 1, 0)),
                     "bias": state[f"{name}.bias"]}
  weight = state["classifier.1.weight"]
  side, channels = _fc6_geometry(weight.shape[1], state["features.10.weight"].shape[0])
  fc6 = weight.reshape(weight.shape[0], channels, side, side)
  params["fc6"] = {"kernel": np.transpose(fc6, (2, 3, 1, 0)).reshape(-1, weight.shape[0]),
                   "bias": state["classifier.1.bias"]}
  for layer in ("fc7", "fc8"):
    params[layer] = {"kernel": state[f"{DENSES[layer]}.weight"].T,
                     "bias": state[f"{DENSES[layer]}.bias"]}
  return {layer: {k: np.ascontiguousarray(v) for k, v in p.items()} for layer, p in params.items()}


def expected_shapes(owt_shapes: dict) -> dict[str, tuple[int, ...]]:
  """torchvision names -> shapes, from the owt parameter shapes (nested dict of shapes)."""
  shapes = {}
  for layer, name in LAYERS.items():
    kernel = tuple(owt_shapes[layer]["kernel"])
    if layer in CONVS:
      shapes[f"{name}.weight"] = (kernel[3], kernel[2], kernel[0], kernel[1])
    else:
      shapes[f"{name}.weight"] = (kernel[1], kernel[0])
    shapes[f"{name}.bias"] = tuple(owt_shapes[layer]["bias"])
  return shapes


def _refusal(e: Exception) -> str:
  """Why torch.load(weights_only=True) refused a file, without PyTorch's advice to load it with
  weights_only=False: that would run whatever code the file holds."""
  import pickle

  text = " ".join(str(e).split())
  if isinstance(e, pickle.UnpicklingError) or "Weights only load failed" in text:
    # PyTorch's message names what it met ("... unsupported GLOBAL posix.system whose module
    # posix is blocked", or "WeightsUnpickler error: Unsupported global: GLOBAL x.Y ...") among
    # its advice; only that name is kept.
    match = re.search(r"GLOBAL ([\w.]+)", text)
    detail = f"it refers to {match.group(1)}" if match else ""
    found = f" ({detail})" if detail else ""
    return (f"holds pickled Python objects besides tensors{found}, which could run code when "
            "loaded; it was not loaded. Only plain state_dicts of tensors are read: re-save the "
            "weights with torch.save(model.state_dict(), ...) or as safetensors")
  return (f"not a readable PyTorch state_dict ({text[:160]}); only files of plain tensors are "
          "read")


def read_pth(path: str) -> dict[str, np.ndarray]:
  """A torchvision-style `.pth` state_dict as numpy arrays, read with weights_only=True."""
  try:
    import torch
  except ImportError:
    raise LayoutError(f"{path}: reading a .pth file needs PyTorch (pip install torch); or "
                      "convert it to safetensors first") from None
  try:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
  except FileNotFoundError:
    raise LayoutError(f"{path}: no such file") from None
  except Exception as e:  # torch raises UnpicklingError, RuntimeError, zip errors, EOFError...
    raise LayoutError(f"{path}: {_refusal(e)}") from None
  if isinstance(loaded, dict):  # a training checkpoint wrapping the state_dict
    for key in ("state_dict", "model", "model_state_dict"):
      if isinstance(loaded.get(key), dict):
        loaded = loaded[key]
        break
  if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
    raise LayoutError(f"{path}: holds a {type(loaded).__name__}, not a state_dict of tensors")
  out = {}
  for name, tensor in loaded.items():
    name = name.removeprefix("module.")  # saved from DataParallel / DistributedDataParallel
    tensor = tensor.detach().cpu()
    if tensor.dtype in (torch.bfloat16, torch.float16):
      tensor = tensor.float()
    out[name] = tensor.numpy()
  return out
