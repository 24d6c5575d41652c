"""Tests of omnivox.assets: every shared asset loads; glTF/OBJ features on small files written here."""

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import omnivox.assets.gltf as gltf_module
from omnivox.assets import AlphaMode, FilterMode, WrapMode, load_asset, normalize_vertices

ALL_ASSETS = [
    "gltf/AlphaBlendModeTest.glb",
    "gltf/MetalRoughSpheresNoTextures.glb",
    "gltf/SheenChair/SheenChair.gltf",
    "gltf/ToyCar/ToyCar.gltf",
    "gltf/SheenCloth/SheenCloth.gltf",
    "gltf/TwoSidedPlane/TwoSidedPlane.gltf",
    "gltf/NegativeScaleTest.glb",
    "gltf/OrientationTest.glb",
    "gltf/GlassVaseFlowers.glb",
    "gltf/Fox.glb",
    "gltf/MeshPrimitiveModes/MeshPrimitiveModes.gltf",
    "gltf/VertexColorTest.glb",
    "gltf/Avocado/Avocado.gltf",
    "mesh/spot/spot_triangulated.obj",
    "mesh/stanford-bunny.obj",
    "mesh/featuretype.STL",
    "mesh/capsule/capsule.obj",
    "mesh/wallhole.obj",
    "mesh/joined_tetrahedra.obj",
    "mesh/soup.stl",
    "mesh/1002_tray_bottom.STL",
    "mesh/large_block.STL",
    "mesh/thingi10k/68254.stl",
    "mesh/thingi10k/73340.stl",
]


@pytest.mark.parametrize("relative", ALL_ASSETS)
def test_every_asset_loads_and_normalises(assets, relative):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # wallhole.obj warns about its missing MTL (tested below)
        scene = load_asset(assets / relative)
    assert scene.num_faces > 0
    normalized = scene.normalized()
    low, high = normalized.vertices.min(0), normalized.vertices.max(0)
    assert np.all(low >= -0.5) and np.all(high <= 0.5)
    assert abs(float((high - low).max()) - 0.99999) < 1e-5
    assert np.isfinite(normalized.normals).all() and all(np.isfinite(uv).all() for uv in scene.uvs)
    for material in scene.materials:
        assert material.base_color_factor.shape == (4,)
        for texture in material.textures():
            assert texture.image.dtype == np.uint8 and texture.image.ndim == 3 and texture.image.shape[2] == 4


def test_normalisation_formula_is_float32():
    rng = np.random.default_rng(0)
    vertices = (rng.normal(size=(50, 3)) * [3, 1, 0.5] + 7).astype(np.float32)
    result, center, scale = normalize_vertices(vertices)
    low, high = vertices.min(0), vertices.max(0)
    expected_center = (low + high) / np.float32(2)
    expected_scale = np.float32(0.99999) / (high - low).max()
    np.testing.assert_array_equal(center, expected_center)
    np.testing.assert_array_equal(result, (vertices - expected_center) * expected_scale)
    with pytest.raises(ValueError, match="coincide"):
        normalize_vertices(np.ones((4, 3), np.float32))


def test_primitive_modes_strips_and_fans(assets):
    scene = load_asset(assets / "gltf" / "MeshPrimitiveModes" / "MeshPrimitiveModes.gltf")
    assert scene.num_faces == 16  # TRIANGLES + TRIANGLE_STRIP + TRIANGLE_FAN; points and lines ignored
    assert len(scene.materials) == 1 and scene.materials[0].name == "default"


def geometric_normals(scene):
    tri = scene.triangles().astype(np.float64)
    return np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])


def test_negative_scale_keeps_counter_clockwise_winding(assets):
    scene = load_asset(assets / "gltf" / "NegativeScaleTest.glb")
    geometric = geometric_normals(scene)
    usable = np.linalg.norm(geometric, axis=1) > 1e-12
    agreement = np.einsum("fi,fi->f", geometric[usable], scene.normals[usable].mean(axis=1))
    assert np.all(agreement > 0)


@pytest.mark.parametrize("relative", ["gltf/Fox.glb", "gltf/ToyCar/ToyCar.gltf", "gltf/NegativeScaleTest.glb"])
def test_world_geometry_matches_trimesh(assets, relative):
    import trimesh

    scene = load_asset(assets / relative, up_axis="z")  # "the file is Z-up": kept in the file's own frame
    reference = trimesh.load(assets / relative, force="scene").to_geometry()
    np.testing.assert_allclose(scene.vertices.min(0), reference.bounds[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scene.vertices.max(0), reference.bounds[1], rtol=1e-5, atol=1e-6)
    area = np.linalg.norm(geometric_normals(scene), axis=1).sum() / 2
    assert abs(area - reference.area) <= 1e-5 * reference.area


def test_asset_materials(assets):
    blend = load_asset(assets / "gltf" / "AlphaBlendModeTest.glb")
    modes = {m.name: (m.alpha_mode, m.alpha_cutoff) for m in blend.materials}
    assert modes["MatCutoff25"] == (AlphaMode.MASK, 0.25)
    assert modes["MatCutoffDefault"] == (AlphaMode.MASK, 0.5)
    assert modes["MatBlend"][0] == AlphaMode.BLEND
    chair = load_asset(assets / "gltf" / "SheenChair" / "SheenChair.gltf")
    assert len(chair.uvs) == 2
    uses_transform = [t for m in chair.materials for t in m.textures() if not np.allclose(t.uv_transform, np.eye(3))]
    assert uses_transform
    colored = load_asset(assets / "gltf" / "VertexColorTest.glb")
    assert colored.colors is not None and colored.colors.min() < 0.5
    capsule = load_asset(assets / "mesh" / "capsule" / "capsule.obj")
    material = capsule.materials[0]
    assert material.base_color_texture.image.shape == (1024, 2048, 4)
    assert material.alpha_mode == AlphaMode.OPAQUE  # "Tr 1" is ignored, see omnivox.assets.meshfiles
    assert material.roughness_factor == 1.0  # Ns 0 -> rough


def test_missing_mtl_warns_exactly_once(assets):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scene = load_asset(assets / "mesh" / "wallhole.obj")
    assert len(caught) == 1 and "00.mtl" in str(caught[0].message)
    assert scene.materials[0].name == "default"


def test_obj_material_mapping_and_missing_image(tmp_path):
    (tmp_path / "m.obj").write_text(
        "mtllib m.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nv 1 1 0\nvt 0 0\nvt 1 0\nvt 0 1\nvt 1 1\n"
        "usemtl red\nf 1/1 2/2 3/3\nusemtl gone\nf 2/2 4/4 3/3\n"
    )
    (tmp_path / "m.mtl").write_text(
        "newmtl red\nKd 0.8 0.1 0.2\nd 0.5\nPm 0.7\nPr 0.3\n\nnewmtl gone\nmap_Kd missing1.png\nNs 250\n"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scene = load_asset(tmp_path / "m.obj")
    assert len(caught) == 1 and "missing1.png" in str(caught[0].message)
    by_name = {m.name: m for m in scene.materials}
    red = by_name["red"]
    np.testing.assert_allclose(red.base_color_factor, [0.8, 0.1, 0.2, 0.5])
    assert red.alpha_mode == AlphaMode.BLEND and red.metallic_factor == pytest.approx(0.7)
    assert red.roughness_factor == pytest.approx(0.3)
    gone = by_name["gone"]
    assert gone.base_color_texture is None and gone.roughness_factor == pytest.approx(0.5)  # 1 - sqrt(250/1000)


# --------------------------------------------------------------------------------------------- glTF builder
def png_bytes(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_gltf(folder: Path, primitive_mode=4, extra_attributes=None, texture_info=None, sampler=None,
               node=None, image_uri="tex.png", write_image=True):
    """A one-quad glTF: 4 vertices, indices [0,1,2, 0,2,3] (or a 4-index strip / fan), one textured material."""
    positions = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float32)
    uv0 = np.array([[0, 1], [1, 1], [1, 0], [0, 0]], np.float32)
    uv1 = uv0 * 0.5
    colors = np.array([[1, 0, 0, 1], [0, 1, 0, 1], [0, 0, 1, 1], [1, 1, 1, 0.5]], np.float32)
    if primitive_mode == 4:
        indices = np.array([0, 1, 2, 0, 2, 3], np.uint16)
    elif primitive_mode == 5:
        indices = np.array([0, 1, 3, 2], np.uint16)  # strip: (0,1,3), (3,1,2) after the odd-triangle swap
    else:
        indices = np.array([0, 1, 2, 3], np.uint16)  # fan: (1,2,0), (2,3,0)
    blobs = [indices.tobytes() + b"\0" * (-indices.nbytes % 4), positions.tobytes(), uv0.tobytes(),
             uv1.tobytes(), colors.tobytes()]
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    (folder / "q.bin").write_bytes(b"".join(blobs))
    views = [{"buffer": 0, "byteOffset": int(offsets[i]), "byteLength": len(b)} for i, b in enumerate(blobs)]
    accessors = [
        {"bufferView": 0, "componentType": 5123, "count": len(indices), "type": "SCALAR"},
        {"bufferView": 1, "componentType": 5126, "count": 4, "type": "VEC3", "min": [0, 0, 0], "max": [1, 1, 0]},
        {"bufferView": 2, "componentType": 5126, "count": 4, "type": "VEC2"},
        {"bufferView": 3, "componentType": 5126, "count": 4, "type": "VEC2"},
        {"bufferView": 4, "componentType": 5126, "count": 4, "type": "VEC4"},
    ]
    attributes = {"POSITION": 1, "TEXCOORD_0": 2, "TEXCOORD_1": 3}
    attributes.update(extra_attributes or {})
    if write_image:
        image = np.zeros((4, 6, 3), np.uint8)
        image[..., 0] = 200
        (folder / "tex.png").write_bytes(png_bytes(image))
    document = {
        "asset": {"version": "2.0"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [dict(node or {}, mesh=0)],
        "meshes": [{"primitives": [{"attributes": attributes, "indices": 0, "mode": primitive_mode, "material": 0}]}],
        "materials": [{"pbrMetallicRoughness": {"baseColorTexture": dict(texture_info or {}, index=0)}}],
        "textures": [dict({"source": 0}, **({"sampler": 0} if sampler else {}))],
        "samplers": [sampler] if sampler else [],
        "images": [{"uri": image_uri}],
        "buffers": [{"uri": "q.bin", "byteLength": int(offsets[-1])}],
        "bufferViews": views,
        "accessors": accessors,
    }
    path = folder / "q.gltf"
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize("mode", [4, 5, 6])
def test_strip_and_fan_triangulation_winding(tmp_path, mode):
    scene = load_asset(write_gltf(tmp_path, primitive_mode=mode))
    assert scene.num_faces == 2
    assert np.all(geometric_normals(scene)[:, 1] < 0)  # all counter-clockwise seen from the file's +z, now -y
    covered = np.sort(scene.faces.reshape(-1))
    assert set(covered.tolist()) == {0, 1, 2, 3}


def test_node_transform_mirror_flips_winding(tmp_path):
    plain = load_asset(write_gltf(tmp_path), up_axis="z")
    mirrored = load_asset(write_gltf(tmp_path, node={"scale": [-1, 1, 1], "translation": [5, 0, 0]}), up_axis="z")
    np.testing.assert_allclose(mirrored.vertices[:, 0], 5 - plain.vertices[:, 0])
    # Mirroring turns the geometric normal around; the flipped winding turns it back to +z.
    assert np.all(geometric_normals(mirrored)[:, 2] > 0)


def test_sampler_uv_set_transform_and_colors(tmp_path):
    transform = {"offset": [0.5, 0.25], "rotation": 0.0, "scale": [2, 3], "texCoord": 1}
    path = write_gltf(
        tmp_path,
        extra_attributes={"COLOR_0": 4},
        texture_info={"texCoord": 0, "extensions": {"KHR_texture_transform": transform}},
        sampler={"magFilter": 9728, "wrapS": 33071, "wrapT": 33648},
    )
    scene = load_asset(path)
    texture = scene.materials[0].base_color_texture
    assert texture.uv_set == 1  # the extension's texCoord overrides the textureInfo's
    assert texture.filter == FilterMode.NEAREST
    assert (texture.wrap_s, texture.wrap_t) == (WrapMode.CLAMP_TO_EDGE, WrapMode.MIRRORED_REPEAT)
    # glTF maps its (u, t) = (1, 1) to (2.5, 3.25); the scene holds (u, v) = (u, 1 - t), so the same point is
    # (1, 0) -> (2.5, 1 - 3.25).
    np.testing.assert_allclose(texture.uv_transform @ [1, 0, 1], [2.5, -2.25, 1])
    assert texture.image.shape == (4, 6, 4) and np.all(texture.image[..., 0] == 200)
    assert len(scene.uvs) == 2
    file_uv0 = np.stack([scene.uvs[0][..., 0], 1 - scene.uvs[0][..., 1]], -1)  # back to glTF's (u, t)
    file_uv1 = np.stack([scene.uvs[1][..., 0], 1 - scene.uvs[1][..., 1]], -1)
    np.testing.assert_allclose(file_uv1, file_uv0 * 0.5)
    assert scene.colors is not None and scene.colors.shape == (2, 3, 4)
    np.testing.assert_allclose(scene.colors[0, 0], [1, 0, 0, 1])


def test_missing_image_warns_once_and_drops_texture(tmp_path):
    path = write_gltf(tmp_path, image_uri="nowhere.png", write_image=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scene = load_asset(path)
    assert len(caught) == 1 and "nowhere.png" in str(caught[0].message)
    assert scene.materials[0].base_color_texture is None


# --------------------------------------------------------------------------------------------- errors
def test_truncated_and_corrupt_files(tmp_path, assets):
    data = (assets / "gltf" / "Fox.glb").read_bytes()
    truncated = tmp_path / "fox.glb"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"fox\.glb.*truncated"):
        load_asset(truncated)
    garbage = tmp_path / "bad.gltf"
    garbage.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.gltf.*not a valid glTF"):
        load_asset(garbage)
    stl = tmp_path / "cut.stl"
    stl.write_bytes((assets / "mesh" / "featuretype.STL").read_bytes()[:3000])
    with pytest.raises(ValueError, match=r"cut\.stl.*truncated"):
        load_asset(stl)
    empty = tmp_path / "empty.obj"
    empty.write_text("# nothing\n")
    with pytest.raises(ValueError, match=r"empty\.obj.*no triangles"):
        load_asset(empty)
    bad_index = write_gltf(tmp_path)
    document = json.loads(bad_index.read_text())
    document["accessors"][1]["count"] = 400  # reads past the end of its bufferView
    bad_index.write_text(json.dumps(document))
    with pytest.raises(ValueError, match=r"q\.gltf.*accessor 1"):
        load_asset(bad_index)
    document["accessors"][1]["count"] = 4
    document["extensionsRequired"] = ["KHR_draco_mesh_compression"]
    bad_index.write_text(json.dumps(document))
    with pytest.raises(ValueError, match=r"q\.gltf.*KHR_draco_mesh_compression"):
        load_asset(bad_index)
    with pytest.raises(ValueError, match="unsupported file type"):
        (tmp_path / "x.fbx").write_bytes(b"x")
        load_asset(tmp_path / "x.fbx")
    with pytest.raises(TypeError):
        load_asset(3)
    with pytest.raises(FileNotFoundError):
        load_asset(tmp_path / "absent.glb")


def test_size_limits(tmp_path, monkeypatch):
    from omnivox.assets.images import decode_image

    with pytest.raises(ValueError, match="texture is 20000x1"):
        decode_image(png_bytes(np.zeros((1, 20000, 3), np.uint8)), "wide.png")
    with pytest.raises(ValueError, match="cannot decode"):
        decode_image(b"\x89PNG\r\n\x1a\n broken", "broken.png")
    monkeypatch.setattr(gltf_module, "MAX_TRIANGLES", 1)
    with pytest.raises(ValueError, match=r"q\.gltf.*more than"):
        load_asset(write_gltf(tmp_path))


def test_ply_vertex_colors_and_truncation(tmp_path):
    import trimesh

    mesh = trimesh.creation.icosphere(subdivisions=1)
    mesh.visual.vertex_colors = np.tile([255, 0, 0, 255], (len(mesh.vertices), 1))
    path = tmp_path / "red.ply"
    mesh.export(path)
    scene = load_asset(path)
    assert scene.num_faces == len(mesh.faces)
    np.testing.assert_allclose(scene.colors[..., :3].reshape(-1, 3), np.tile([1, 0, 0], (scene.num_faces * 3, 1)))
    np.testing.assert_allclose(scene.materials[0].base_color_factor, 1.0)  # colours show unchanged
    data = path.read_bytes()
    (tmp_path / "cut.ply").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.ply.*cannot parse"):
        load_asset(tmp_path / "cut.ply")
