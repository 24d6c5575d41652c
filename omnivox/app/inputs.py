"""Checking what users upload before any model sees it: size limits, image decoding, mesh file types.

Uploads are untrusted. An image is decoded by Pillow only after its header says the dimensions are within
`Limits.max_image_side`, so a small file that expands to a huge bitmap (a "decompression bomb") is refused without
allocating it. Every problem raises `InputError` with a message that names the upload and the problem; the HTTP
service turns it into a 4xx answer and the web app shows it.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from omnivox.assets.loader import SUPPORTED_SUFFIXES


class InputError(ValueError):
    """An upload was refused. `status` is the HTTP status that describes why (400, 413 or 422)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may upload.

    Attributes:
        max_upload_bytes: the largest request body (all files and fields together).
        max_image_side: the largest width or height of an input image, in pixels.
        min_image_side: the smallest width or height (a few pixels carry no object).
        max_mesh_bytes: the largest mesh file for texturing.
    """

    max_upload_bytes: int = 32 * 1024 * 1024
    max_image_side: int = 4096
    min_image_side: int = 16
    max_mesh_bytes: int = 64 * 1024 * 1024


def read_image(data: bytes, name: str, limits: Limits) -> Image.Image:
    """Decode an uploaded image after checking its size; returns it in RGBA (alpha kept) or RGB mode.

    Args:
        data: the file's bytes.
        name: what to call the upload in error messages (its file name).
        limits: the size bounds.

    Returns:
        A loaded PIL image. Images with an alpha channel (RGBA, LA, palette with transparency) come back as RGBA
        and are used as they are; others come back as RGB and go through background removal in the pipeline.

    Raises:
        InputError: empty, too large, not an image, or dimensions out of bounds.
    """
    if len(data) == 0:
        raise InputError(f"image {name!r} is empty")
    if len(data) > limits.max_upload_bytes:
        raise InputError(f"image {name!r} has {len(data)} bytes, more than the limit of "
                         f"{limits.max_upload_bytes}", status=413)
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as exc:  # Pillow's own pixel-count bound, hit before ours
        raise InputError(f"image {name!r} claims too many pixels ({exc})", status=422) from exc
    except UnidentifiedImageError as exc:
        raise InputError(f"image {name!r} is not an image file Pillow can read (use PNG, JPEG or WebP)",
                         status=422) from exc
    except OSError as exc:
        raise InputError(f"image {name!r} is not a readable image file ({exc})", status=422) from exc
    width, height = image.size
    if max(width, height) > limits.max_image_side:
        raise InputError(f"image {name!r} is {width}x{height} pixels; the largest side allowed is "
                         f"{limits.max_image_side}", status=422)
    if min(width, height) < limits.min_image_side:
        raise InputError(f"image {name!r} is {width}x{height} pixels; each side needs at least "
                         f"{limits.min_image_side}", status=422)
    try:
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # truncated or corrupt pixel data
        raise InputError(f"image {name!r} could not be decoded ({exc})", status=422) from exc
    return normalize_mode(image)


def normalize_mode(image: Image.Image) -> Image.Image:
    """RGBA for images that carry transparency, RGB for the rest (the two modes the pipelines accept)."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    return image.convert("RGBA" if has_alpha else "RGB")


def check_mesh_upload(data: bytes, name: str, limits: Limits) -> tuple[str, bytes]:
    """Check an uploaded mesh file and make it self-contained; returns (lower-case suffix, bytes to save).

    A mesh file can name other files: glTF/GLB buffers and images by URI, OBJ materials by ``mtllib``. The asset
    loader resolves those next to the file, and a path such as ``../../etc/passwd`` would let an upload read
    server files into the geometry it sends back. So uploads must be self-contained: glTF/GLB may only use the
    GLB binary chunk or ``data:`` URIs (others are refused), and OBJ ``mtllib`` lines are dropped (texturing
    replaces the materials anyway).

    Raises:
        InputError: empty, too large, a file type the loader does not read, or external references.
    """
    suffix = Path(name or "").suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise InputError(f"mesh {name!r}: unsupported file type {suffix or '(none)'!r}; use one of "
                         f"{', '.join(SUPPORTED_SUFFIXES)}", status=422)
    if len(data) == 0:
        raise InputError(f"mesh {name!r} is empty")
    if len(data) > limits.max_mesh_bytes:
        raise InputError(f"mesh {name!r} has {len(data)} bytes, more than the limit of {limits.max_mesh_bytes}",
                         status=413)
    if suffix in (".glb", ".gltf"):
        _check_gltf_self_contained(data, name, binary=suffix == ".glb")
    elif suffix == ".obj":
        lines = data.split(b"\n")
        data = b"\n".join(line for line in lines if not line.lstrip().startswith(b"mtllib"))
    return suffix, data


def _check_gltf_self_contained(data: bytes, name: str, binary: bool) -> None:
    if binary:
        if len(data) < 20 or data[:4] != b"glTF":
            raise InputError(f"mesh {name!r} is not a GLB file (no glTF header)", status=422)
        length, kind = struct.unpack_from("<I4s", data, 12)
        if kind != b"JSON" or 20 + length > len(data):
            raise InputError(f"mesh {name!r}: the GLB's first chunk is not a complete JSON chunk", status=422)
        text = data[20:20 + length]
    else:
        text = data
    try:
        document = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"mesh {name!r}: the glTF JSON is not readable ({exc})", status=422) from exc
    if not isinstance(document, dict):
        raise InputError(f"mesh {name!r}: the glTF JSON is not an object", status=422)
    for kind in ("buffers", "images"):
        entries = document.get(kind) or []
        for index, entry in enumerate(entries if isinstance(entries, list) else []):
            uri = entry.get("uri") if isinstance(entry, dict) else None
            if uri is not None and not (isinstance(uri, str) and uri.startswith("data:")):
                raise InputError(f"mesh {name!r}: {kind[:-1]} {index} refers to the external file {uri!r}; upload "
                                 "a self-contained file (GLB, or glTF with embedded data: URIs)", status=422)
