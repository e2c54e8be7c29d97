"""The one image decoder: an image file or encoded image bytes -> uint8 [H, W, C].

Every format decodes through it: image folders (`decode_image`), the bytes of ArrayRecord
shards and Parquet files (`decode_bytes`), and the checks of every image by `vistas data pack`
(`verify_bytes`) and `vistas data verify` (`verify_image`). So the same rules hold everywhere:

- an image of more than `MAX_IMAGE_PIXELS` pixels (width x height as its header claims) is
  refused before it is decoded: a small file claiming a huge size (a "decompression bomb")
  would otherwise take all memory;
- any decoder failure is a one-line `BadImage` (a DataError) naming where the image is;
  training's `data.on_bad_image` (vistas.data.pipeline) decides whether it stops the run;
- any PIL mode (gray, gray+alpha, RGBA, palette, CMYK, 16-bit, float) becomes 1 or 3 uint8
  channels as PIL's own conversion gives them (`pil_to_array`).
"""

from __future__ import annotations

import io
import os

import numpy as np

from vistas.errors import DataError

# Images with more pixels are refused before they are decoded. 2^26 is 8192 x 8192.
MAX_IMAGE_PIXELS = 1 << 26


class BadImage(DataError):
    """An image that cannot be decoded, or is refused past the pixel limit; the message
    names where it is. Only the decoder raises it, so a caller that may replace a bad
    example (``data.on_bad_image=skip``) catches exactly these and nothing else."""


def pil_to_array(img, channels: int) -> np.ndarray:
    """Any PIL mode -> uint8 [H, W, channels]."""
    from PIL import Image

    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img)
        if mode == "F":
            a = a * 255.0 if a.size and np.nanmax(a) <= 1.0 else a
            a = np.clip(np.nan_to_num(a), 0, 255)
        elif mode.startswith("I;16") or (a.size and a.max() > 255):
            a = np.clip(a, 0, 65535) >> 8  # 16-bit range -> 8 bits
        img = Image.fromarray(a.astype(np.uint8), "L")
        mode = "L"
    if mode == "PA" or (mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
    target = "RGB" if channels == 3 else "L"
    if img.mode != target:
        img = img.convert(target)
    a = np.asarray(img)
    return a[..., None] if a.ndim == 2 else a


def _decode(file, where, channels: int, draft_size: int | None, max_pixels: int | None,
            to_array: bool) -> np.ndarray | None:
    """Opens ``file`` (a path or a binary file object), refuses it past the pixel limit,
    decodes it in full and, with ``to_array``, converts it to uint8 [H, W, channels]."""
    from PIL import Image

    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with Image.open(file) as img:
            w, h = img.size
            if w * h > limit:
                raise BadImage(f"image {where} is {w}x{h} = {w * h:,} pixels, more than the limit "
                                f"of {limit:,} (vistas.data.decode.MAX_IMAGE_PIXELS); refused as a "
                                "possible decompression bomb")
            if draft_size and img.format == "JPEG":
                img.draft("RGB" if channels == 3 else "L", (draft_size, draft_size))
            img.load()  # decodes fully: truncated or corrupt files fail here
            return pil_to_array(img, channels) if to_array else None
    except BadImage:
        raise
    except Exception as e:  # any decoder failure means a bad image
        raise BadImage(f"cannot decode image {where}: {str(e) or type(e).__name__}") from None


def decode_image(path: str | os.PathLike, channels: int = 3, max_pixels: int | None = None) -> np.ndarray:
    """Decodes an image file to uint8 [H, W, channels]; DataError naming the file if it can't
    or if it has more than ``max_pixels`` (default ``MAX_IMAGE_PIXELS``) pixels."""
    return _decode(path, path, channels, None, max_pixels, True)


def decode_bytes(data: bytes, channels: int, where: str, draft_size: int | None = None,
                 max_pixels: int | None = None) -> np.ndarray:
    """Encoded image bytes -> uint8 [H, W, channels], as ``decode_image`` (errors name
    ``where``). With ``draft_size``, a JPEG is decoded at the smallest of the scales 1, 1/2,
    1/4, 1/8 whose sides stay >= ``draft_size`` (libjpeg's DCT scaling, much faster than
    decoding in full and resizing); the pixel limit applies to the image's full size."""
    return _decode(io.BytesIO(data), where, channels, draft_size, max_pixels, True)


def verify_bytes(data: bytes, where: str, max_pixels: int | None = None) -> None:
    """Decodes encoded image bytes in full without converting them; DataError as
    ``decode_bytes`` if they are not a readable image within the pixel limit."""
    _decode(io.BytesIO(data), where, 3, None, max_pixels, False)


def verify_image(path: str | os.PathLike, max_pixels: int | None = None) -> None:
    """Decodes an image file in full without converting it; DataError as ``decode_image``
    if it is not a readable image within the pixel limit."""
    _decode(path, path, 3, None, max_pixels, False)


__all__ = ["MAX_IMAGE_PIXELS", "BadImage", "decode_bytes", "decode_image", "pil_to_array", "verify_bytes",
           "verify_image"]
