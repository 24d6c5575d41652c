"""Untrusted asset files: references stay inside the asset's folder, errors are one clean ValueError naming the file.

Every confinement test also records the files Python opens (an audit hook) and checks that nothing outside
the asset's folder was opened.
"""

import base64
import io
import json
import os
import re
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omnivox.assets import MAX_TEXTURE_SIDE, load_asset
from omnivox.assets.images import decode_image

_OPENED = []
_RECORDING = [False]


def _audit(event, args):
    if _RECORDING[0] and event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


class _Opens:
    def __enter__(self):
        _OPENED.clear()
        _RECORDING[0] = True
        return _OPENED

    def __exit__(self, *exc):
        _RECORDING[0] = False


def _triangle_buffer() -> bytes:
    return np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32).tobytes()


def _gltf(uri: str) -> dict:
    return {
        "asset": {"version": "2.0"},
        "buffers": [{"uri": uri, "byteLength": 36}],
        "bufferViews": [{"buffer": 0, "byteLength": 36}],
        "accessors": [{"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3"}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}}]}],
        "nodes": [{"mesh": 0}],
    }


@pytest.fixture
def folders(tmp_path):
    """(asset folder, outside folder holding secret.bin: a valid 36-byte buffer, so only confinement stops it)."""
    inside, outside = tmp_path / "asset", tmp_path / "outside"
    inside.mkdir()
    outside.mkdir()
    (outside / "secret.bin").write_bytes(_triangle_buffer())
    (outside / "x.mtl").write_text("newmtl red\nKd 1 0 0\n")
    return inside, outside


def _assert_refused(file: Path, reference: str, outside: Path, **kwargs):
    with _Opens() as opened, pytest.raises(ValueError) as info:
        load_asset(file, **kwargs)
    message = str(info.value)
    assert "\n" not in message and str(file) in message and reference in message and "refused" in message
    # Nothing about the outside file (its 36-byte size); the paths themselves may hold digits (".../pytest-136/").
    rest = message.replace(str(file), "").replace(outside.as_uri(), "").replace(str(outside), "")
    assert not re.search(r"\b36\b", rest), rest
    assert not [p for p in opened if str(outside) in p or p == "/etc/hostname"], opened
    return message


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "percent", "file_uri", "symlink"])
def test_gltf_buffer_outside_the_folder_is_refused(folders, kind):
    inside, outside = folders
    uri = {
        "absolute": str(outside / "secret.bin"),
        "dotdot": "../outside/secret.bin",
        "percent": "%2e%2e/outside/secret.bin",
        "file_uri": (outside / "secret.bin").as_uri(),
        "symlink": "link.bin",
    }[kind]
    if kind == "symlink":
        (inside / "link.bin").symlink_to(outside / "secret.bin")
    file = inside / "scene.gltf"
    file.write_text(json.dumps(_gltf(uri)))
    _assert_refused(file, uri, outside)
    # The opt-in follows paths (never URLs): the same triangle loads.
    if kind != "file_uri":
        assert load_asset(file, allow_outside=True).num_faces == 1
    else:
        assert load_asset(file, allow_outside=True).num_faces == 1


def test_small_gltf_pointing_at_an_absolute_path_is_refused(folders):
    inside, outside = folders
    file = inside / "tiny.gltf"
    file.write_text(json.dumps(_gltf(str(outside / "secret.bin")), separators=(",", ":")))
    assert file.stat().st_size < 400  # the 369-byte attack
    _assert_refused(file, "secret.bin", outside)


@pytest.mark.parametrize("uri", ["http://example.com/a.bin", "https://example.com/a.bin", "ftp://x/a.bin"])
def test_remote_urls_are_never_fetched(folders, uri):
    inside, _ = folders
    file = inside / "scene.gltf"
    file.write_text(json.dumps(_gltf(uri)))
    for allow in (False, True):
        with pytest.raises(ValueError, match="never fetched"):
            load_asset(file, allow_outside=allow)


def test_gltf_image_outside_the_folder_is_refused(folders):
    inside, outside = folders
    Image.new("RGB", (2, 2), (255, 0, 0)).save(outside / "tex.png")
    document = _gltf("data:application/octet-stream;base64," + base64.b64encode(_triangle_buffer()).decode())
    document.update(images=[{"uri": "../outside/tex.png"}], textures=[{"source": 0}],
                    materials=[{"pbrMetallicRoughness": {"baseColorTexture": {"index": 0}}}])
    document["meshes"][0]["primitives"][0]["material"] = 0
    file = inside / "scene.gltf"
    file.write_text(json.dumps(document))
    _assert_refused(file, "../outside/tex.png", outside)


def test_gltf_inside_references_still_load(folders):
    inside, _ = folders
    (inside / "sub").mkdir()
    (inside / "sub" / "tri.bin").write_bytes(_triangle_buffer())
    file = inside / "scene.gltf"
    file.write_text(json.dumps(_gltf("sub/../sub/tri%2Ebin")))
    with _Opens() as opened:
        assert load_asset(file).num_faces == 1
    assert str(inside / "sub" / "tri.bin") in opened


_OBJ = "mtllib {lib}\nv 0 0 0\nv 1 0 0\nv 0 1 0\nusemtl red\nf 1 2 3\n"


def test_obj_mtllib_outside_the_folder_is_refused(folders):
    inside, outside = folders
    file = inside / "a.obj"
    file.write_text(_OBJ.format(lib="../outside/x.mtl"))
    _assert_refused(file, "../outside/x.mtl", outside)
    scene = load_asset(file, allow_outside=True)
    assert np.allclose(scene.materials[0].base_color_factor, [1, 0, 0, 1])


@pytest.mark.parametrize("reference", ["/etc/hostname", "../outside/tex.png"])
def test_mtl_map_outside_the_folder_is_refused(folders, reference):
    inside, outside = folders
    Image.new("RGB", (2, 2), (0, 255, 0)).save(outside / "tex.png")
    (inside / "a.mtl").write_text(f"newmtl red\nKd 1 0 0\nmap_Kd {reference}\n")
    file = inside / "a.obj"
    file.write_text(_OBJ.format(lib="a.mtl"))
    message = _assert_refused(file, reference, outside)
    assert "a.mtl" in message


def test_ply_texture_file_outside_the_folder_is_not_read(folders):
    inside, outside = folders
    Image.new("RGB", (2, 2), (0, 255, 0)).save(outside / "tex.png")
    file = inside / "a.ply"
    file.write_text("ply\nformat ascii 1.0\ncomment TextureFile ../outside/tex.png\nelement vertex 3\n"
                    "property float x\nproperty float y\nproperty float z\nelement face 1\n"
                    "property list uchar int vertex_indices\nend_header\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n")
    with _Opens() as opened:
        scene = load_asset(file)
    assert scene.num_faces == 1 and scene.materials[0].base_color_texture is None
    assert not [p for p in opened if str(outside) in p]


def test_latin1_obj_loads_without_charset_detection(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "charset_normalizer", None)  # importing it now fails
    file = tmp_path / "latin.obj"
    file.write_bytes(b"# mod\xe8le export\xe9 par Blender\nv 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    assert load_asset(file).num_faces == 1


def test_deep_json_is_a_clean_error(tmp_path):
    file = tmp_path / "deep.gltf"
    file.write_text('{"asset": {"version": "2.0"}, "extras": ' + "[" * 100000 + "]" * 100000 + "}")
    with pytest.raises(ValueError, match="deep.gltf"):
        load_asset(file)


@pytest.mark.parametrize("field,value,pointer", [
    ("accessor", -4, "/accessors/0/byteOffset"),
    ("accessor", 2, "/accessors/0/byteOffset"),
    ("view", -12, "/bufferViews/0/byteOffset"),
    ("stride", 4, "/bufferViews/0/byteStride"),
])
def test_bad_offsets_name_the_json_pointer(tmp_path, field, value, pointer):
    document = _gltf("data:application/octet-stream;base64," + base64.b64encode(_triangle_buffer()).decode())
    key = {"accessor": ("accessors", "byteOffset"), "view": ("bufferViews", "byteOffset"),
           "stride": ("bufferViews", "byteStride")}[field]
    document[key[0]][0][key[1]] = value
    file = tmp_path / "bad.gltf"
    file.write_text(json.dumps(document))
    with pytest.raises(ValueError) as info:
        load_asset(file)
    assert str(info.value).startswith(str(file)) and pointer in str(info.value)


@pytest.mark.parametrize("factor", ["baseColorFactor", "metallicFactor"])
def test_non_finite_material_factors_are_refused(tmp_path, factor):
    document = _gltf("data:application/octet-stream;base64," + base64.b64encode(_triangle_buffer()).decode())
    value = [float("nan"), 1, 1, 1] if factor == "baseColorFactor" else float("inf")
    document["materials"] = [{"pbrMetallicRoughness": {factor: value}}]
    document["meshes"][0]["primitives"][0]["material"] = 0
    file = tmp_path / "nan.gltf"
    file.write_text(json.dumps(document))  # writes NaN / Infinity, which Python's json reads back
    with pytest.raises(ValueError, match=f"/materials/0/pbrMetallicRoughness/{factor} holds NaN or infinity"):
        load_asset(file)


def test_corrupt_coloured_ply_is_a_clean_error(tmp_path):
    header = ("ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
              "property float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\nelement face 1\n"
              "property list uchar int vertex_indices\nend_header\n").encode()
    body = struct.pack("<3f3B", 0, 0, 0, 1, 2, 3) * 3 + struct.pack("<B3i", 3, 0, 1, 7)
    file = tmp_path / "bad.ply"
    file.write_bytes(header + body)
    with pytest.raises(ValueError, match="bad.ply"):
        load_asset(file)


def test_ply_declaring_huge_counts_is_refused_before_parsing(tmp_path):
    file = tmp_path / "huge.ply"
    file.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 4000000000\nproperty float x\n"
                     b"property float y\nproperty float z\nend_header\n" + bytes(12))
    with pytest.raises(ValueError, match="huge.ply.*vertex"):
        load_asset(file)


def _png_header_only(width: int, height: int) -> bytes:
    """A 1-bit PNG of that size holding only its first row of pixel data (a few bytes)."""
    import zlib

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = zlib.compress(b"\x00" + bytes((width + 7) // 8))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", row) + chunk(b"IEND", b"")


def test_texture_side_limit_is_the_one_that_applies():
    # A MAX_TEXTURE_SIDE square loads (Pillow's own bomb limit, 179 megapixels, would refuse it); one pixel more
    # is refused by size before decoding.
    big = decode_image(_png_header_only(MAX_TEXTURE_SIDE, MAX_TEXTURE_SIDE), "big.png")
    assert big.shape == (MAX_TEXTURE_SIDE, MAX_TEXTURE_SIDE, 4)
    del big
    with pytest.raises(ValueError, match=f"big.png: texture is {MAX_TEXTURE_SIDE + 1}x1"):
        decode_image(_png_header_only(MAX_TEXTURE_SIDE + 1, 1), "big.png")
    buffer = io.BytesIO()
    Image.new("RGB", (3, 2), (1, 2, 3)).save(buffer, "PNG")
    assert decode_image(buffer.getvalue(), "ok.png").shape == (2, 3, 4)


# ---------------------------------------------------------------------------------------------------- .vxz limits
def _vxz_claiming(tmp_path, num_voxel: int) -> Path:
    """A real small .vxz whose header is rewritten to claim ``num_voxel`` voxels (raw_size kept consistent)."""
    from omnivox.ovoxel.io.vxz import PREAMBLE_SIZE, encode_vxz

    coords = np.array([[0, 0, 0], [1, 0, 0]], np.int32)
    data = encode_vxz(coords, {"base_color": np.full((2, 3), 9, np.uint8)})
    start = struct.unpack(">I", data[4:8])[0]
    header = json.loads(data[PREAMBLE_SIZE:start])
    header["num_voxel"] = num_voxel
    header["raw_size"] = num_voxel * (12 + 3)
    header["chunks"] = header["chunks"] * 1  # one chunk of 256^3 can hold 2^24 voxels
    header["chunk_size"] = 1024  # room for 2^30 voxels in one chunk
    header_bytes = json.dumps(header).encode()
    file = tmp_path / f"claims_{num_voxel}.vxz"
    file.write_bytes(data[:4] + struct.pack(">I", PREAMBLE_SIZE + len(header_bytes)) + header_bytes + data[start:])
    return file


def test_vxz_claiming_2_to_the_30_voxels_is_refused_before_reading_data(tmp_path):
    from omnivox.ovoxel.io.vxz import read_vxz

    file = _vxz_claiming(tmp_path, 2**30)
    with pytest.raises(ValueError, match=r"claims 1073741824 voxels, more than the limit"):
        read_vxz(file)


def test_vxz_ratio_check_refuses_small_files_claiming_huge_contents(tmp_path):
    from omnivox.ovoxel.io.vxz import decode_vxz, read_vxz

    file = _vxz_claiming(tmp_path, 2**26)  # under the voxel limit, ~1 GB raw in a few hundred bytes
    with pytest.raises(ValueError, match="decompression bomb"):
        read_vxz(file)
    with pytest.raises(ValueError, match="more than the limit 1000"):
        decode_vxz(file.read_bytes(), str(file), max_voxels=1000)
    with pytest.raises(ValueError, match="more than the limit 10 "):
        read_vxz(_vxz_claiming(tmp_path, 11), max_voxels=10)


def test_vxz_limit_defaults_agree():
    from omnivox.cli.checks import DEFAULT_MAX_VOXELS
    from omnivox.ovoxel.io import vxz

    assert DEFAULT_MAX_VOXELS == vxz.DEFAULT_MAX_VOXELS


# ---------------------------------------------------------------------------------------------------- commands
def _cli(*args):
    from typer.testing import CliRunner

    from omnivox.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _message_lines(output: str):
    """The lines of ``output`` that are not progress-bar redraws."""
    import re

    output = re.sub(r"[\w ]+:\s+\d+%\|[^|]*\|[^\]]*\]", "", output)  # "convert:   0%|   | 0/3 [...]"
    return [line for line in re.split(r"[\r\n]", output) if line.strip()]


def test_convert_refuses_outside_references_unless_allowed(folders, tmp_path):
    inside, outside = folders
    file = inside / "tiny.gltf"
    file.write_text(json.dumps(_gltf("../outside/secret.bin")))
    result = _cli("convert", file, tmp_path / "out.vxz", "-r", "16", "--device", "cpu")
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = _message_lines(result.output)
    assert len(lines) == 1 and lines[0].startswith("omnivox convert:") and "refused" in lines[0]
    assert not (tmp_path / "out.vxz").exists()
    result = _cli("convert", file, tmp_path / "out.vxz", "-r", "16", "--device", "cpu", "--allow-outside-refs")
    assert result.exit_code == 0, result.output


def test_convert_of_a_mesh_without_voxels_fails_unless_allowed(tmp_path):
    # A triangle, but a degenerate (collinear) one: the scene has an extent and no surface.
    file = tmp_path / "flat.obj"
    file.write_text("v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n")
    result = _cli("convert", file, tmp_path / "out.vxz", "-r", "16", "--device", "cpu")
    assert result.exit_code == 1 and "no voxel" in result.output and "--allow-empty" in result.output
    assert not (tmp_path / "out.vxz").exists()
    result = _cli("convert", file, tmp_path / "out.vxz", "-r", "16", "--device", "cpu", "--allow-empty")
    assert result.exit_code == 0, result.output


def test_render_and_export_apply_max_voxels(tmp_path):
    file = _vxz_claiming(tmp_path, 2**30)
    for args in (["render", file, "-o", tmp_path / "a.png", "--voxels", "--device", "cpu"],
                 ["render", file, "-o", tmp_path / "a.png", "--device", "cpu"],
                 ["export", file, tmp_path / "a.glb", "--device", "cpu"]):
        result = _cli(*args)
        assert result.exit_code == 1 and "more than the limit" in result.output, result.output
        assert "Traceback" not in result.output and len(_message_lines(result.output)) == 1


def test_non_finite_mtl_factors_are_refused(tmp_path):
    (tmp_path / "a.mtl").write_text("newmtl red\nKd nan 1 1\n")
    file = tmp_path / "a.obj"
    file.write_text(_OBJ.format(lib="a.mtl"))
    with pytest.raises(ValueError, match=r"a.mtl: Kd statement 'nan 1 1' holds NaN or infinity"):
        load_asset(file)


def test_scene_to_ovoxel_refuses_non_finite_factors(tmp_path):
    from omnivox.ovoxel.convert import scene_to_ovoxel

    file = tmp_path / "ok.obj"
    file.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    scene = load_asset(file).normalized()
    scene.materials[0].roughness_factor = float("nan")
    with pytest.raises(ValueError, match="ok.obj: material .* non-finite roughness_factor"):
        scene_to_ovoxel(scene, 8, device="cpu")


def test_gltf_zero_filled_accessor_cannot_ask_for_gigabytes(tmp_path):
    document = _gltf("data:application/octet-stream;base64," + base64.b64encode(_triangle_buffer()).decode())
    document["accessors"].append({"componentType": 5126, "count": 100_000_000, "type": "MAT4"})  # 6.4 GB of zeros
    document["meshes"][0]["primitives"][0]["attributes"]["NORMAL"] = 1
    file = tmp_path / "zeros.gltf"
    file.write_text(json.dumps(document))
    with pytest.raises(ValueError, match=r"zeros.gltf: /accessors/1/count 100000000 without a bufferView"):
        load_asset(file)
