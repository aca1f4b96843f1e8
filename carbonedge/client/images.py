"""Client-side image preparation with Pillow and numpy only (no torch).

:func:`image_pixels` does the geometric half of torchvision's ImageNet evaluation
transform, ``Resize(256) -> CenterCrop(224)``, and gives the crop as uint8 pixels: what a
producer sends (see :mod:`carbonedge.protocol.pixels`; the node normalises them).
:func:`preprocess_image` adds ``ToTensor() -> Normalize(mean, std)``, for callers that want
the model's float input itself.

Memory and time are bounded *before* anything is decoded, from the header's size alone:
a few hundred bytes of PNG can declare 60000x1 pixels, which resizing the short side to
256 would blow up to 15 million x 256. An image is refused (:class:`InvalidRequest`
naming the limit) when a side is over :data:`MAX_SIDE`, its aspect ratio over
:data:`MAX_ASPECT` or its pixels over :data:`MAX_PIXELS` (Pillow's decompression-bomb
warning is an error here too). A large JPEG is decoded at a reduced scale
(``Image.draft``, a power of two that keeps the short side at least twice the resize
target), so it never occupies its full size in memory.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from carbonedge.errors import InvalidRequest
from carbonedge.protocol.pixels import normalise_pixels

__all__ = ["CROP_SIZE", "IMAGENET_MEAN", "IMAGENET_STD", "MAX_ASPECT", "MAX_PIXELS", "MAX_SIDE",
           "RESIZE_SIZE", "image_pixels", "preprocess_image"]

RESIZE_SIZE = 256
CROP_SIZE = 224
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
MAX_SIDE = 16_384
"""Longest side accepted, in pixels."""
MAX_ASPECT = 20.0
"""Longest side over shortest side: wide panoramas are 8:1; 60000x1 is a bomb."""
MAX_PIXELS = 50_000_000
"""Pixels accepted (a 50-megapixel camera's photo); decoded as RGB that is 150 MB."""
DRAFT_ABOVE_PIXELS = 4_000_000
"""JPEGs larger than this are decoded at a reduced scale (smaller ones exactly)."""
ImageSource = str | Path | bytes | bytearray | memoryview | Image.Image


def image_pixels(src: ImageSource, *, resize: int = RESIZE_SIZE,
                 crop: int = CROP_SIZE) -> np.ndarray:
    """Turn an image (path, encoded bytes or PIL image) into uint8 RGB pixels,
    ``(1, crop, crop, 3)``: shorter side resized to ``resize`` (256, bilinear), centre crop
    ``crop`` x ``crop`` (224). An unreadable, corrupt or missing image raises
    :class:`InvalidRequest` (field ``image``)."""
    img = _open_rgb(src)
    try:
        img = _resize_shorter(img, resize)
        img = _center_crop(img, crop)
        arr = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError) as e:
        raise InvalidRequest(f"cannot preprocess image: {e}", field="image") from e
    return np.ascontiguousarray(arr[np.newaxis])


def preprocess_image(src: ImageSource, *, resize: int = RESIZE_SIZE, crop: int = CROP_SIZE,
                     mean: Sequence[float] = IMAGENET_MEAN,
                     std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """The model's float32 ``(1, 3, crop, crop)`` input for an image: :func:`image_pixels`,
    scaled to [0, 1] and normalised with ``mean`` and ``std`` (ImageNet's)."""
    return normalise_pixels(image_pixels(src, resize=resize, crop=crop), mean, std)


def _open_rgb(src: ImageSource) -> Image.Image:
    """Open, decode and convert ``src`` to RGB, mapping every read failure to InvalidRequest."""
    if isinstance(src, Image.Image):
        check_size(src.size, "image")
        try:
            return src.convert("RGB")
        except (OSError, ValueError) as e:
            raise InvalidRequest(f"cannot convert image to RGB: {e}", field="image") from e
    if isinstance(src, (bytes, bytearray, memoryview)):
        what = f"image bytes ({len(src)} bytes)"
        stream: io.BytesIO | Path = io.BytesIO(bytes(src))
    elif isinstance(src, (str, Path)):
        what = f"image file {str(src)!r}"
        stream = Path(src)
        if not stream.is_file():
            raise InvalidRequest(f"{what} does not exist or is not a file", field="image")
    else:
        raise InvalidRequest(
            f"image must be a path, bytes or PIL image, got {type(src).__name__}", field="image"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream) as img:  # reads the header only
                check_size(img.size, what)
                _reduce_jpeg(img)
                return img.convert("RGB")  # decodes; a new image independent of the file
    except UnidentifiedImageError as e:
        raise InvalidRequest(f"{what} is not a recognised image format", field="image") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InvalidRequest(f"{what} is over the limit of {MAX_PIXELS:,} pixels ({e})",
                             field="image") from e
    except (OSError, ValueError, SyntaxError) as e:
        raise InvalidRequest(f"{what} cannot be decoded: {e}", field="image") from e


def check_size(size: tuple[int, int], what: str) -> None:
    """Refuse, before decoding, an image whose size would cost unbounded memory or time."""
    w, h = size
    if w <= 0 or h <= 0:
        raise InvalidRequest(f"{what} has an empty side ({w}x{h})", field="image")
    if max(w, h) > MAX_SIDE:
        raise InvalidRequest(f"{what} is {w}x{h}: a side is over the limit of {MAX_SIDE} "
                             "pixels", field="image")
    if max(w, h) / min(w, h) > MAX_ASPECT:
        raise InvalidRequest(f"{what} is {w}x{h}: its aspect ratio {max(w, h) / min(w, h):.0f}:1 "
                             f"is over the limit of {MAX_ASPECT:.0f}:1", field="image")
    if w * h > MAX_PIXELS:
        raise InvalidRequest(f"{what} is {w}x{h} = {w * h:,} pixels, over the limit of "
                             f"{MAX_PIXELS:,}", field="image")


def _reduce_jpeg(img: Image.Image) -> None:
    """Let a large JPEG decode at 1/2, 1/4 or 1/8 scale, keeping its short side at least
    twice :data:`RESIZE_SIZE` (the resize that follows then sees enough detail)."""
    w, h = img.size
    if img.format != "JPEG" or w * h <= DRAFT_ABOVE_PIXELS:
        return
    scale = 2 * RESIZE_SIZE / min(w, h)
    img.draft("RGB", (max(1, round(w * scale)), max(1, round(h * scale))))


def _resize_shorter(img: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size`` (torchvision's rounding of the longer side)."""
    w, h = img.size
    if w == 0 or h == 0:
        raise ValueError(f"image has an empty side ({w}x{h})")
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), Image.Resampling.BILINEAR)


def _center_crop(img: Image.Image, size: int) -> Image.Image:
    """Crop the central ``size`` x ``size`` square (torchvision's rounding of the offsets)."""
    w, h = img.size
    top = round((h - size) / 2.0)
    left = round((w - size) / 2.0)
    return img.crop((left, top, left + size, top + size))
