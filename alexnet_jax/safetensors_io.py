"""Reading and writing the safetensors format with numpy (bfloat16 included), no pickle.

The format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length,
a JSON header `{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__":
{str: str}}`, then the tensors' bytes, little-endian and row-major, back to back.

Written here rather than through the `safetensors` package because its numpy loader (0.8) cannot
read bfloat16, and because a file that is cut short or not safetensors at all must give one clear
line; files written here load with `safetensors.torch.load_file` and the other official loaders.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Mapping

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("bool"),
}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}
MAX_HEADER = 100 * 2**20  # the reference implementation's limit


class SafetensorsError(ValueError):
  """A file that is not a complete safetensors file; the message names the file and the fault."""


def save(path: str, tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None,
         *, overwrite: bool = False) -> None:
  """Write `tensors` (in the given order) and string `metadata` to `path`, atomically.

  The file appears complete or not at all: it is written beside `path` and renamed over it.
  """
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
  header: dict = {}
  if metadata:
    bad = [k for k, v in metadata.items() if not (isinstance(k, str) and isinstance(v, str))]
    if bad:
      raise TypeError(f"safetensors metadata must map str to str; not so for {bad}")
    header["__metadata__"] = dict(metadata)
  arrays, offset = [], 0
  for name, value in tensors.items():
    array = np.ascontiguousarray(value)
    if array.dtype.newbyteorder("<") not in _NAMES and array.dtype not in _NAMES:
      raise TypeError(f"tensor {name!r}: dtype {array.dtype} has no safetensors name")
    array = array.astype(array.dtype.newbyteorder("<"), copy=False)
    header[name] = {"dtype": _NAMES[array.dtype], "shape": list(array.shape),
                    "data_offsets": [offset, offset + array.nbytes]}
    arrays.append(array)
    offset += array.nbytes
  encoded = json.dumps(header, separators=(",", ":")).encode()
  encoded += b" " * (-len(encoded) % 8)  # align the data to 8 bytes, as the reference does
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      f.write(struct.pack("<Q", len(encoded)))
      f.write(encoded)
      for array in arrays:
        f.write(array.tobytes())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def read_header(path: str) -> tuple[dict[str, dict], dict[str, str], int]:
  """(tensor entries, metadata, data start) of `path`, checking that the header is sound."""
  try:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
      head = f.read(9)
      if len(head) < 9:
        raise SafetensorsError(f"{path}: not a safetensors file (only {size} bytes)")
      (length,) = struct.unpack("<Q", head[:8])
      if head[8:9] != b"{" or length > MAX_HEADER:  # the header is a JSON object
        raise SafetensorsError(_not_safetensors(path, head))
      f.seek(8)
      if length > size - 8:
        raise SafetensorsError(f"{path}: truncated: its header alone should be {length} bytes but "
                               f"the file holds {size} (an interrupted copy or download?)")
      raw = f.read(length)
  except OSError as e:
    raise SafetensorsError(f"{path}: cannot read ({e.strerror or e})") from None
  try:
    header = json.loads(raw)
  except (UnicodeDecodeError, json.JSONDecodeError):
    raise SafetensorsError(_not_safetensors(path, head)) from None
  if not isinstance(header, dict):
    raise SafetensorsError(_not_safetensors(path, head))
  metadata = header.pop("__metadata__", None) or {}
  data_start, data_size = 8 + length, size - 8 - length
  end = 0
  for name, entry in sorted(header.items(), key=lambda kv: _offsets(path, kv)[0]):
    begin, stop = _offsets(path, (name, entry))
    if entry.get("dtype") not in DTYPES:
      raise SafetensorsError(f"{path}: tensor {name!r} has unknown dtype {entry.get('dtype')!r}")
    nbytes = math.prod(entry.get("shape", [])) * DTYPES[entry["dtype"]].itemsize
    if begin != end or stop - begin != nbytes:
      raise SafetensorsError(f"{path}: tensor {name!r} has inconsistent offsets; the file is damaged")
    end = stop
  if end != data_size:
    raise SafetensorsError(
        f"{path}: the header describes {end} bytes of tensors but the file holds {data_size}; "
        + ("it is truncated (an interrupted copy or download?)" if end > data_size
           else "it has trailing bytes; the file is damaged"))
  return header, dict(metadata), data_start


def load(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """All tensors of `path` (in file order) and its metadata."""
  header, metadata, data_start = read_header(path)
  data = bytearray(os.path.getsize(path) - data_start)  # one writable buffer the arrays share
  with open(path, "rb") as f:
    f.seek(data_start)
    f.readinto(data)
  tensors = {}
  for name, entry in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
    begin, stop = entry["data_offsets"]
    dtype = DTYPES[entry["dtype"]]
    tensors[name] = np.frombuffer(data, dtype, (stop - begin) // dtype.itemsize,
                                  begin).reshape(entry["shape"])
  return tensors, metadata


def _offsets(path: str, item) -> tuple[int, int]:
  name, entry = item
  offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
  if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
    raise SafetensorsError(f"{path}: tensor {name!r} has no valid data_offsets; the file is damaged")
  return offsets[0], offsets[1]


def _not_safetensors(path: str, head: bytes) -> str:
  hint = ""
  if head.startswith(b"PK"):
    hint = " (it is a zip archive: a PyTorch .pth? give it a .pth name to read it with torch)"
  elif head.startswith(b"\x80"):
    hint = " (it looks like a pickle, which this project never reads)"
  return f"{path}: not a safetensors file{hint}"
