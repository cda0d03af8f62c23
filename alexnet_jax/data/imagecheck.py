"""A cheap check of one image file: its header and its end marker, without decoding it.

Decoding a truncated or corrupt file inside tf.data raises and would stop training, so image
folders are checked once (the verdicts are cached, see folder.py). Reading a few hundred bytes
per file finds what breaks in practice: files that are not images, empty files, and files cut
short (a JPEG missing its end-of-image marker, a PNG missing IEND). Files that TensorFlow decodes
to RGB although they are not stored as RGB (grey, CMYK, palette, alpha, PNG data behind a .JPEG
name) are kept and reported as converted.
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO, NamedTuple

OK, CONVERTED, SKIPPED = "ok", "converted", "skipped"
JPEG_NAMES = (".jpg", ".jpeg")
IMAGE_EXTENSIONS = (*JPEG_NAMES, ".png", ".gif", ".bmp")

_TAIL_BYTES = 1024  # where to look for the end marker (some writers append padding after it)
# Start-of-frame markers (SOF0..SOF15 minus DHT C4, JPG C8, DAC CC); the frame header after
# them holds the number of colour components.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOUR_NOTES = {0: "grayscale PNG", 3: "palette PNG", 4: "grayscale PNG with alpha",
                     6: "RGBA PNG, alpha dropped"}


class Verdict(NamedTuple):
  status: str  # OK | CONVERTED | SKIPPED
  note: str  # why, for the log ("" when OK)
  height: int = 0  # a usable JPEG's, from its frame header (0 for other formats)
  width: int = 0


def check_image_file(path: str) -> Verdict:
  try:
    size = os.path.getsize(path)
    if size == 0:
      return Verdict(SKIPPED, "empty file")
    with open(path, "rb") as f:
      head = f.read(32)
      f.seek(max(0, size - _TAIL_BYTES))
      tail = f.read()
      if head.startswith(b"\xff\xd8\xff"):
        return _check_jpeg(f, tail)
      if head.startswith(_PNG_SIGNATURE):
        return _check_png(head, tail, path)
      if head[:6] in (b"GIF87a", b"GIF89a"):
        return Verdict(OK, "") if tail.rstrip(b"\0").endswith(b";") else Verdict(
            SKIPPED, "truncated GIF: no trailer")
      if head.startswith(b"BM") and len(head) >= 30:
        return _check_bmp(head, size)
      return Verdict(SKIPPED, "corrupt: not a JPEG, PNG, GIF or BMP image")
  except OSError as e:
    return Verdict(SKIPPED, f"unreadable: {e.strerror or e}")


def _jpeg_frame(f: BinaryIO) -> tuple[int, int, int] | None:
  """(colour components, height, width) from the frame header, or None unless the header is
  well formed up to the scan.

  Walks the marker segments from the start of the file to the start of the compressed data:
  most corruption that makes decoders fail lands in these segments.
  """
  f.seek(2)
  frame = None
  while True:
    if f.read(1) != b"\xff":
      return None  # lost sync: not a well-formed marker sequence
    marker = f.read(1)
    while marker == b"\xff":  # fill bytes
      marker = f.read(1)
    if not marker:
      return None
    code = marker[0]
    if code in (0x01, *range(0xD0, 0xD8)):  # markers without a length field
      continue
    if code == 0xDA:  # start of scan: the header is complete
      return frame
    if code == 0xD9 or code < 0xC0:  # end of image before any scan, or not a marker at all
      return None
    length_bytes = f.read(2)
    if len(length_bytes) < 2 or struct.unpack(">H", length_bytes)[0] < 2:
      return None
    length = struct.unpack(">H", length_bytes)[0]
    segment = f.read(length - 2)
    if len(segment) < length - 2:
      return None
    if code in _JPEG_SOF:  # precision, height, width, components
      frame = (segment[5], *struct.unpack(">HH", segment[1:5])) if len(segment) >= 6 else None


def _check_jpeg(f: BinaryIO, tail: bytes) -> Verdict:
  frame = _jpeg_frame(f)
  if frame is None:
    return Verdict(SKIPPED, "corrupt JPEG header")
  components, height, width = frame
  # 0xFF in compressed data is always stuffed with 0x00, so FF D9 only appears as the marker.
  if b"\xff\xd9" not in tail:
    return Verdict(SKIPPED, "truncated JPEG: no end-of-image marker")
  if components == 1:
    return Verdict(CONVERTED, "grayscale JPEG", height, width)
  if components == 4:
    return Verdict(CONVERTED, "CMYK JPEG", height, width)
  return Verdict(OK, "", height, width)


def _check_png(head: bytes, tail: bytes, path: str) -> Verdict:
  if head[12:16] != b"IHDR":
    return Verdict(SKIPPED, "corrupt PNG: no IHDR header")
  if b"IEND" not in tail:
    return Verdict(SKIPPED, "truncated PNG: no IEND chunk")
  notes = []
  if path.lower().endswith(JPEG_NAMES):
    notes.append("PNG data in a JPEG-named file")
  colour_type = head[25]
  if colour_type in _PNG_COLOUR_NOTES:
    notes.append(_PNG_COLOUR_NOTES[colour_type])
  return Verdict(CONVERTED, ", ".join(notes)) if notes else Verdict(OK, "")


def _check_bmp(head: bytes, size: int) -> Verdict:
  declared_size = struct.unpack("<I", head[2:6])[0]
  bits = struct.unpack("<H", head[28:30])[0]
  if declared_size > size:
    return Verdict(SKIPPED, "truncated BMP")
  if bits not in (24, 32):
    # TensorFlow reads palette BMPs' indices as grey values: wrong colours, so skip them.
    return Verdict(SKIPPED, f"{bits}-bit BMP: TensorFlow decodes only 24- and 32-bit BMP")
  return Verdict(OK, "")
