"""Decoding texture images into (H, W, 4) uint8 RGBA arrays, with size limits checked before decoding."""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np

from omnivox.assets.scene import MAX_TEXTURE_SIDE


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode PNG / JPEG / WebP / any Pillow format into RGBA bytes.

    Grey images are replicated into RGB; missing alpha becomes 255; 16-bit images keep their high byte.

    Args:
        data: the encoded file contents.
        name: file or image name for error messages.

    Returns:
        (H, W, 4) uint8, row 0 = top of the image.

    Raises:
        ValueError: undecodable data, or a side larger than ``MAX_TEXTURE_SIDE``.
    """
    from PIL import Image, UnidentifiedImageError

    # Pillow's own bomb limit (about 179 megapixels) would refuse legitimate MAX_TEXTURE_SIDE textures: make
    # it agree with the documented limit, which the side check below enforces before any pixel is decoded.
    if (Image.MAX_IMAGE_PIXELS or 0) < MAX_TEXTURE_SIDE * MAX_TEXTURE_SIDE:
        Image.MAX_IMAGE_PIXELS = MAX_TEXTURE_SIDE * MAX_TEXTURE_SIDE
    try:
        with warnings.catch_warnings():
            # Sizes are bounded by the explicit check below instead of Pillow's pixel-count heuristic.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width < 1 or height < 1 or max(width, height) > MAX_TEXTURE_SIDE:
            raise ValueError(
                f"{name}: texture is {width}x{height}; sides must be between 1 and {MAX_TEXTURE_SIDE}"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
    except Image.DecompressionBombError as error:
        raise ValueError(f"{name}: texture is too large to decode ({error})") from error
    except (UnidentifiedImageError, OSError, SyntaxError, EOFError, struct.error, ValueError, TypeError) as error:
        if isinstance(error, ValueError) and str(error).startswith(name):
            raise
        raise ValueError(f"{name}: cannot decode image ({error})") from error
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / 32-bit grey: Pillow's convert() clips instead of rescaling, so rescale by hand.
        grey = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(grey.max()), 1.0)
        grey = np.clip(grey / top * 255.0, 0, 255).astype(np.uint8)
        rgba = np.empty(grey.shape + (4,), dtype=np.uint8)
        rgba[..., :3] = grey[..., None]
        rgba[..., 3] = 255
        return rgba
    if image.mode != "RGBA":
        image = image.convert("RGBA")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
