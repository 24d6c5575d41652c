"""Upload checks: real images decode in the right mode; bad, huge or tiny uploads are refused with clear errors."""

import io
import json
import struct
import zlib

import pytest
from PIL import Image

from omnivox.app.inputs import InputError, Limits, check_mesh_upload, read_image

RGBA_IMAGE = "images/0a34fae7ba57cb8870df5325b9c30ea474def1b0913c19c596655b85a79fdee4.webp"
RGB_IMAGE = "images/ToyCar_screenshot_large.jpg"


def test_real_images_keep_alpha_or_come_back_rgb(assets):
    rgba = read_image((assets / RGBA_IMAGE).read_bytes(), "crown.webp", Limits())
    assert rgba.mode == "RGBA" and rgba.size == (774, 774)
    alpha = rgba.getchannel("A")
    assert alpha.getextrema() == (0, 255)  # a real cut-out: transparent background, opaque object
    rgb = read_image((assets / RGB_IMAGE).read_bytes(), "car.jpg", Limits())
    assert rgb.mode == "RGB" and rgb.size == (1870, 1033)


def test_limits_on_bytes_and_dimensions(assets):
    data = (assets / RGB_IMAGE).read_bytes()
    with pytest.raises(InputError, match="'car.jpg' has .* bytes, more than the limit") as err:
        read_image(data, "car.jpg", Limits(max_upload_bytes=len(data) - 1))
    assert err.value.status == 413
    with pytest.raises(InputError, match=r"'car.jpg' is 1870x1033 pixels; the largest side allowed is 1024"):
        read_image(data, "car.jpg", Limits(max_image_side=1024))
    tiny = io.BytesIO()
    Image.new("RGB", (8, 40), (200, 10, 10)).save(tiny, format="PNG")
    with pytest.raises(InputError, match="8x40 pixels; each side needs at least 16"):
        read_image(tiny.getvalue(), "tiny.png", Limits())


def _png_header_only(width, height):
    """A PNG that declares `width` x `height` but holds no pixel data (what a decompression bomb looks like
    to a header check; costs nothing to build)."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def test_huge_dimensions_are_refused_from_the_header():
    with pytest.raises(InputError, match="'wide.png' is 6000x500 pixels; the largest side allowed is 4096") as err:
        read_image(_png_header_only(6000, 500), "wide.png", Limits())
    assert err.value.status == 422
    with pytest.raises(InputError, match="'bomb.png' claims too many pixels") as err:
        read_image(_png_header_only(60000, 60000), "bomb.png", Limits())
    assert err.value.status == 422


def test_garbage_empty_and_truncated(assets):
    with pytest.raises(InputError, match="'notes.txt' is not an image file Pillow can read"):
        read_image(b"this is not an image at all" * 10, "notes.txt", Limits())
    with pytest.raises(InputError, match="'empty.png' is empty"):
        read_image(b"", "empty.png", Limits())
    data = (assets / RGB_IMAGE).read_bytes()
    with pytest.raises(InputError, match="'half.jpg' could not be decoded"):
        read_image(data[: len(data) // 3], "half.jpg", Limits())


def test_mesh_upload_checks(assets):
    data = (assets / "mesh/spot/spot_triangulated.obj").read_bytes()
    assert check_mesh_upload(data, "Spot.OBJ", Limits()) == (".obj", data)  # no mtllib: unchanged
    with pytest.raises(InputError, match=r"mesh 'model.fbx': unsupported file type '.fbx'"):
        check_mesh_upload(data, "model.fbx", Limits())
    with pytest.raises(InputError, match="mesh 'a.glb' has 10 bytes, more than the limit of 5") as err:
        check_mesh_upload(b"0123456789", "a.glb", Limits(max_mesh_bytes=5))
    assert err.value.status == 413


def _glb(document: dict, binary: bytes = b"") -> bytes:
    text = json.dumps(document).encode()
    text += b" " * (-len(text) % 4)
    chunks = struct.pack("<I4s", len(text), b"JSON") + text
    if binary:
        chunks += struct.pack("<I4s", len(binary), b"BIN\x00") + binary
    return struct.pack("<4sII", b"glTF", 2, 12 + len(chunks)) + chunks


def test_mesh_uploads_must_be_self_contained(assets):
    """Uploads may not make the loader read other server files (glTF URIs, OBJ mtllib)."""
    glb = (assets / "gltf/Fox.glb").read_bytes()
    assert check_mesh_upload(glb, "Fox.glb", Limits()) == (".glb", glb)  # a real self-contained GLB passes
    stolen = _glb({"asset": {"version": "2.0"}, "buffers": [{"uri": "../../../etc/passwd", "byteLength": 100}]})
    with pytest.raises(InputError, match="buffer 0 refers to the external file '../../../etc/passwd'") as err:
        check_mesh_upload(stolen, "evil.glb", Limits())
    assert err.value.status == 422
    gltf = (assets / "gltf/Avocado/Avocado.gltf").read_bytes()  # a real glTF with Avocado.bin beside it
    with pytest.raises(InputError, match="buffer 0 refers to the external file 'Avocado.bin'"):
        check_mesh_upload(gltf, "Avocado.gltf", Limits())
    with pytest.raises(InputError, match="'broken.glb' is not a GLB file"):
        check_mesh_upload(b"not a glb at all, really", "broken.glb", Limits())
    obj = (assets / "mesh/capsule/capsule.obj").read_bytes()
    assert b"mtllib capsule.mtl" in obj
    suffix, cleaned = check_mesh_upload(obj, "capsule.obj", Limits())
    assert suffix == ".obj" and b"mtllib" not in cleaned
    assert [line for line in obj.splitlines() if not line.startswith(b"mtllib")] == cleaned.splitlines()
