"""Image preprocessing for image-to-3D (spec models.md 9.1): alpha, crop to the object, premultiply on black.

* RGBA input whose alpha is not all opaque: that alpha is the object mask.
* Otherwise (RGB, or RGBA that is opaque everywhere) a background remover computes the alpha. None is bundled:
  pass a `BackgroundRemover` (any callable ``PIL RGB image -> PIL "L" mask of the same size``), for example
  `BiRefNetOnnx` with a local ONNX export of BiRefNet / RMBG-2.0. Without one, RGB input raises a `ValueError`
  that lists the options.
* Images larger than 1024 pixels on their long side are first shrunk to 1024 (LANCZOS).
* The crop is the square around the pixels with ``alpha > 0.8 * 255``: centre of their bounding box, side the
  longer extent; parts outside the image are transparent black (as PIL's ``crop`` gives).
* Premultiply: ``rgb = trunc(rgb / 255 * alpha / 255 * 255)`` as uint8 on black; the result is RGB.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Protocol, Union, runtime_checkable

import numpy as np
from PIL import Image

MAX_SIDE = 1024
ALPHA_THRESHOLD = 0.8 * 255
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Bounds on input images: a decompression bomb must not exhaust memory before the 1024 downscale.
MAX_INPUT_PIXELS = 16384 * 16384

NO_BACKGROUND_REMOVER = (
    "{what} has no transparent background (RGB or fully opaque alpha), so the object must be cut out first. "
    "Options: (1) pass an RGBA image whose alpha marks the object; (2) pass a background model: "
    "`background_model=PATH.onnx` (Python) or `--background-model PATH.onnx` (CLI), an ONNX export of "
    "BiRefNet such as ZhengPeng7/BiRefNet (MIT) or briaai/RMBG-2.0 (non-commercial; its onnx/model.onnx is found "
    "automatically in a RMBG-2.0 folder beside the weights), run with onnxruntime; (3) pass any callable "
    "`PIL.Image (RGB) -> PIL.Image (L mask)` as background_remover."
)


@runtime_checkable
class BackgroundRemover(Protocol):
    """Anything that maps an RGB image to an ``"L"`` (8-bit) foreground mask of the same size."""

    def __call__(self, image: Image.Image) -> Image.Image: ...


class BiRefNetOnnx:
    """BiRefNet-style matting model exported to ONNX, run with onnxruntime (spec 9.1 step 3).

    The image goes RGB -> 1024 x 1024 (bilinear) -> [0, 1] -> ImageNet normalisation -> model; the last output
    is taken, passed through a sigmoid when it holds logits, turned into 8-bit and resized back to the input size
    (bicubic). Exports differ in whether they end with the sigmoid; by default (``apply_sigmoid=None``) an output
    entirely inside [0, 1] is taken as probabilities and anything else as logits.

    Licences: ``ZhengPeng7/BiRefNet`` is MIT; ``briaai/RMBG-2.0`` (the reference's choice) is non-commercial.

    Args:
        path: the ``.onnx`` file.
        providers: onnxruntime execution providers (default: CUDA if available, else CPU).
        apply_sigmoid: True: the model outputs logits; False: probabilities; None: decide from the values.
        session: an already-created inference session (testing); overrides ``path``.
    """

    input_size = 1024

    def __init__(self, path: Union[str, Path, None] = None, providers: Optional[list] = None,
                 apply_sigmoid: Optional[bool] = None, session=None) -> None:
        if session is None:
            if path is None:
                raise ValueError("BiRefNetOnnx needs the path of an .onnx file")
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"background model {path} not found")
            if path.suffix.lower() != ".onnx":
                raise ValueError(f"background model {path}: expected an .onnx file")
            import onnxruntime

            available = onnxruntime.get_available_providers()
            if providers is None:
                providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
            session = onnxruntime.InferenceSession(str(path), providers=providers)
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.apply_sigmoid = apply_sigmoid

    def __call__(self, image: Image.Image) -> Image.Image:
        rgb = image.convert("RGB")
        resized = rgb.resize((self.input_size, self.input_size), Image.BILINEAR)
        x = np.asarray(resized, dtype=np.float32) / 255.0
        x = (x - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)
        x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])
        outputs = self.session.run(None, {self.input_name: x})
        logits = np.asarray(outputs[-1], dtype=np.float32).reshape(self.input_size, self.input_size)
        is_logits = self.apply_sigmoid if self.apply_sigmoid is not None else not (
            logits.min() >= 0.0 and logits.max() <= 1.0)
        prob = 1.0 / (1.0 + np.exp(-logits)) if is_logits else logits
        mask = Image.fromarray((np.clip(prob, 0, 1) * 255).astype(np.uint8), mode="L")
        return mask.resize(rgb.size, Image.BICUBIC)


def load_image(path: Union[str, Path]) -> Image.Image:
    """Open an image file with clear errors (missing, unreadable, too large)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} not found")
    try:
        with Image.open(path) as handle:
            if handle.width * handle.height > MAX_INPUT_PIXELS:
                raise ValueError(f"image {path} is {handle.width}x{handle.height}, larger than the "
                                 f"{MAX_INPUT_PIXELS} pixels accepted")
            image = handle.copy()
            image.load()
    except (OSError, Image.DecompressionBombError) as error:
        raise ValueError(f"image {path} could not be read: {error}") from error
    return image


def has_transparency(image: Image.Image) -> bool:
    """True when ``image`` is RGBA and some pixel's alpha is below 255."""
    if image.mode != "RGBA":
        return False
    return bool(np.asarray(image.getchannel("A")).min() < 255)


def preprocess_image(image: Union[Image.Image, str, Path], background_remover: Optional[BackgroundRemover] = None,
                     ) -> Image.Image:
    """Cut out the object, crop a square around it and premultiply it onto black (spec 9.1).

    Args:
        image: a PIL image or an image file.
        background_remover: used when the image has no transparency (see `BackgroundRemover`).

    Returns:
        RGB image (square, object centred; at most 1024 pixels on the side before the square crop).

    Raises:
        ValueError: no transparency and no remover (the message lists the options), or an empty mask.
    """
    what = "the input image"
    if isinstance(image, (str, Path)):
        what = f"image {image}"
        image = load_image(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL image or a path, got {type(image).__name__}")
    if image.width * image.height > MAX_INPUT_PIXELS:
        raise ValueError(f"{what} is {image.width}x{image.height}, larger than {MAX_INPUT_PIXELS} pixels")
    if has_transparency(image):
        rgba = image
    else:
        if background_remover is None:
            raise ValueError(NO_BACKGROUND_REMOVER.format(what=what))
        rgb = image.convert("RGB")
        scale = min(1.0, MAX_SIDE / max(rgb.size))
        if scale < 1:
            rgb = rgb.resize((int(rgb.width * scale), int(rgb.height * scale)), Image.LANCZOS)
        mask = background_remover(rgb)
        if not isinstance(mask, Image.Image) or mask.size != rgb.size:
            raise ValueError(f"the background remover must return a PIL mask of size {rgb.size}")
        rgba = rgb.copy()
        rgba.putalpha(mask.convert("L"))
    if rgba.mode != "RGBA":
        rgba = rgba.convert("RGBA")
    scale = min(1.0, MAX_SIDE / max(rgba.size))
    if scale < 1:  # the reference shrinks before background removal; with a given alpha order does not matter
        rgba = rgba.resize((int(rgba.width * scale), int(rgba.height * scale)), Image.LANCZOS)
    alpha = np.asarray(rgba.getchannel("A"))
    ys, xs = np.nonzero(alpha > ALPHA_THRESHOLD)
    if len(xs) == 0:
        raise ValueError(f"{what}: the object mask is empty (no pixel with alpha > 0.8)")
    x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = int(max(x1 - x0, y1 - y0)) // 2
    box = tuple(int(round(v)) for v in (cx - half, cy - half, cx + half, cy + half))
    cropped = np.asarray(rgba.crop(box), dtype=np.float32) / 255.0
    rgb = cropped[..., :3] * cropped[..., 3:4]
    return Image.fromarray((rgb * 255).astype(np.uint8), mode="RGB")
