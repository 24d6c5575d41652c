"""Tests of omnivox.ovoxel.materials: known answers from independent float64 computations and real assets."""

import math

import numpy as np
import pytest
import torch

from omnivox.assets import AlphaMode, FilterMode, Material, Scene, Texture, WrapMode, load_asset
from omnivox.ovoxel import mesh_to_dual_grid
from omnivox.ovoxel.materials import _pot_side, build_mip_pyramid, resize_to_pot_square, voxelize_materials


# --------------------------------------------------------------------------------------------- builders
def make_scene(vertices, faces, uvs, material, colors=None):
    vertices = np.asarray(vertices, np.float32)
    faces = np.asarray(faces, np.int64)
    tri = vertices[faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    return Scene(
        vertices=vertices,
        faces=faces,
        uvs=[np.asarray(uvs, np.float32)],
        normals=np.repeat(normal[:, None], 3, axis=1).astype(np.float32),
        colors=None if colors is None else np.asarray(colors, np.float32),
        material_ids=np.zeros(len(faces), np.int32),
        materials=[material],
    )


def quad_scene(material, half=0.4, z=0.0137, uv_low=(0.0, 0.0), uv_high=(1.0, 1.0), colors=None):
    """A square in the plane z, UVs affine in (x, y): u from uv_low[0] at -half to uv_high[0] at +half."""
    corners = np.array([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    u = np.array([uv_low[0], uv_high[0], uv_high[0], uv_low[0]])
    v = np.array([uv_low[1], uv_low[1], uv_high[1], uv_high[1]])
    corner_uv = np.stack([u, v], axis=1)[faces]
    corner_colors = None if colors is None else np.asarray(colors, np.float32)[faces]
    return make_scene(corners, faces, corner_uv, material, corner_colors)


def sphere_scene(material, radius=0.35):
    import trimesh

    mesh = trimesh.creation.icosphere(subdivisions=3, radius=radius)
    faces = np.asarray(mesh.faces)
    return make_scene(mesh.vertices, faces, np.zeros((len(faces), 3, 2)), material)


def voxel_uv(coords, resolution, half=0.4, uv_low=(0.0, 0.0), uv_high=(1.0, 1.0)):
    """Float64 UV of each voxel centre's projection onto `quad_scene`'s plane (UV is affine there)."""
    centre = (coords.astype(np.float64) + 0.5) / resolution - 0.5
    t = (centre[:, :2] + half) / (2 * half)
    low, high = np.asarray(uv_low, np.float64), np.asarray(uv_high, np.float64)
    return low + t * (high - low)


def wrap_reference(k, size, mode):
    if mode == WrapMode.CLAMP_TO_EDGE:
        return np.clip(k, 0, size - 1)
    if mode == WrapMode.MIRRORED_REPEAT:
        m = np.mod(k, 2 * size)
        return np.where(m < size, m, 2 * size - m - 1)
    return np.mod(k, size)


def bilinear_reference(image, u, v):
    """Float64 REPEAT bilinear read (texel centres at +0.5) of an (S, S, C) uint8 level -> values in [0, 1]."""
    height, width = image.shape[:2]
    x, y = u * width - 0.5, (1 - v) * height - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    xs = [np.mod(x0, width), np.mod(x0 + 1, width)]
    ys = [np.mod(y0, height), np.mod(y0 + 1, height)]
    img = image.astype(np.float64)
    top = img[ys[0], xs[0]] * (1 - fx) + img[ys[0], xs[1]] * fx
    bottom = img[ys[1], xs[0]] * (1 - fx) + img[ys[1], xs[1]] * fx
    return (top * (1 - fy) + bottom * fy) / 255


def assert_bytes_near(actual, expected_float, tolerance=1):
    """Bytes must equal trunc(expected * 255) up to `tolerance` (float32 rounding of the weighted mean)."""
    expected = np.floor(np.clip(expected_float, 0, 1) * 255 + 1e-9).astype(np.int64)
    difference = np.abs(actual.astype(np.int64) - expected)
    assert difference.max() <= tolerance, f"max byte difference {difference.max()} (> {tolerance})"


# --------------------------------------------------------------------------------------------- voxel set
def test_voxels_equal_geometry_voxels_in_order(assets):
    scene = load_asset(assets / "gltf" / "Avocado" / "Avocado.gltf").normalized()
    coords, attributes = voxelize_materials(scene, 64)
    geometry_coords, _, _ = mesh_to_dual_grid(scene.vertices, scene.faces, 64)
    np.testing.assert_array_equal(coords.numpy(), geometry_coords)
    assert set(attributes) == {"base_color", "metallic", "roughness", "alpha"}
    assert attributes["base_color"].shape == (len(coords), 3) and attributes["base_color"].dtype == torch.uint8


# --------------------------------------------------------------------------------------------- factors
def test_constant_factor_material():
    rng = np.random.default_rng(1)
    factor = rng.uniform(0.1, 0.9, size=3)
    material = Material(
        base_color_factor=np.array([*factor, 0.3], np.float32),
        metallic_factor=float(rng.uniform(0.1, 0.9)),
        roughness_factor=1.0,
    )
    coords, attributes = voxelize_materials(sphere_scene(material), 48)
    assert len(coords) > 1000
    base = attributes["base_color"].numpy().astype(np.int64)
    expected = np.floor(factor.astype(np.float32) * 255).astype(np.int64)
    assert np.all((base == expected) | (base == expected - 1))
    metallic = attributes["metallic"].numpy()
    expected_metallic = math.floor(np.float32(material.metallic_factor) * 255)
    assert set(np.unique(metallic)) <= {expected_metallic, expected_metallic - 1}
    assert np.all(attributes["roughness"].numpy() == 255)  # factor 1.0 is exact
    assert np.all(attributes["alpha"].numpy() == 255)  # OPAQUE ignores the alpha factor

    material.alpha_mode = AlphaMode.BLEND
    _, blended = voxelize_materials(sphere_scene(material), 48)
    assert set(np.unique(blended["alpha"].numpy())) <= {76, 75}  # trunc(0.3 * 255) = 76


def test_vertex_colors_multiply_base_color():
    color = np.array([0.5, 0.25, 1.0, 0.6], np.float32)
    material = Material(base_color_factor=np.array([0.8, 1.0, 0.5, 1.0], np.float32), alpha_mode=AlphaMode.BLEND)
    scene = quad_scene(material, colors=np.tile(color, (4, 1)))
    _, attributes = voxelize_materials(scene, 32)
    expected = color[:3] * material.base_color_factor[:3]
    assert_bytes_near(attributes["base_color"].numpy(), np.broadcast_to(expected, (len(attributes["alpha"]), 3)))
    assert_bytes_near(attributes["alpha"].numpy()[:, 0], np.full(len(attributes["alpha"]), 0.6))


# --------------------------------------------------------------------------------------------- textures
def checker_texture(cells, filter_mode=FilterMode.NEAREST, **kwargs):
    pattern = (np.add.outer(np.arange(cells), np.arange(cells)) % 2).astype(bool)
    image = np.zeros((cells, cells, 4), np.uint8)
    image[..., 3] = 255
    image[pattern, 0] = 255
    image[~pattern, 2] = 255
    image[:, :, 1] = (np.arange(cells) * (255 // cells))[None, :]  # distinct per column, to catch x/y swaps
    return Texture(image, filter=filter_mode, **kwargs)


@pytest.mark.parametrize(
    "transform",
    [np.eye(3), np.array([[2.0, 0, 0.25], [0, 0.5, -0.125], [0, 0, 1]]),
     np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 1.0], [0, 0, 1]])],
    ids=["identity", "scale-offset", "rotation"],
)
def test_nearest_checkerboard_on_uv_aligned_quad(transform):
    texture = checker_texture(8, uv_transform=transform.astype(np.float32))
    material = Material(base_color_factor=np.ones(4, np.float32), base_color_texture=texture)
    coords, attributes = voxelize_materials(quad_scene(material), 32)
    uv = voxel_uv(coords.numpy(), 32)
    uv = uv @ transform[:2, :2].T + transform[:2, 2]
    column = wrap_reference(np.floor(uv[:, 0] * 8).astype(np.int64), 8, WrapMode.REPEAT)
    row = wrap_reference(np.floor((1 - uv[:, 1]) * 8).astype(np.int64), 8, WrapMode.REPEAT)
    np.testing.assert_array_equal(attributes["base_color"].numpy(), texture.image[row, column, :3])


@pytest.mark.parametrize("wrap_s", list(WrapMode))
@pytest.mark.parametrize("wrap_t", [WrapMode.REPEAT, WrapMode.MIRRORED_REPEAT])
def test_wrap_modes_outside_unit_square(wrap_s, wrap_t):
    rng = np.random.default_rng(int(wrap_s) * 3 + int(wrap_t))
    image = rng.integers(0, 256, size=(4, 4, 4), dtype=np.uint8)
    texture = Texture(image, filter=FilterMode.NEAREST, wrap_s=wrap_s, wrap_t=wrap_t)
    material = Material(base_color_factor=np.ones(4, np.float32), base_color_texture=texture)
    low, high = (-1.3, -0.9), (2.1, 1.7)
    coords, attributes = voxelize_materials(quad_scene(material, uv_low=low, uv_high=high), 32)
    uv = voxel_uv(coords.numpy(), 32, uv_low=low, uv_high=high)
    column = wrap_reference(np.floor(uv[:, 0] * 4).astype(np.int64), 4, wrap_s)
    row = wrap_reference(np.floor((1 - uv[:, 1]) * 4).astype(np.int64), 4, wrap_t)
    # Voxel centres whose texel coordinate lies within float32 rounding of a texel edge may go either way.
    x, y = uv[:, 0] * 4, (1 - uv[:, 1]) * 4
    clear = (np.abs(x - np.round(x)) > 1e-4) & (np.abs(y - np.round(y)) > 1e-4)
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(attributes["base_color"].numpy()[clear], image[row, column, :3][clear])


def manual_pyramid(image):
    levels = [image.astype(np.int64)]
    while levels[-1].shape[0] > 1:
        a = levels[-1]
        levels.append((a[0::2, 0::2] + a[0::2, 1::2] + a[1::2, 0::2] + a[1::2, 1::2]) // 4)
    return [level.astype(np.uint8) for level in levels]


def test_mip_pyramid_truncates():
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, size=(16, 16, 4), dtype=np.uint8)
    ours = build_mip_pyramid(torch.from_numpy(image))
    for mine, reference in zip(ours, manual_pyramid(image), strict=True):
        np.testing.assert_array_equal(mine.numpy(), reference)
    from omnivox.ovoxel.kernels.materials_numba import mip_pyramid

    texels, offsets = mip_pyramid(image)
    for level, reference in enumerate(manual_pyramid(image)):
        size = reference.shape[0]
        np.testing.assert_array_equal(texels[offsets[level] : offsets[level] + size * size], reference.reshape(-1, 4))


@pytest.mark.parametrize("offset, level", [(0.0, 2), (-2.0, 0), (1.0, 3)])
def test_mip_level_selection(offset, level):
    # 256-texel texture over a 0.5-wide quad at G = 128: one voxel spans 256 / 64 = 4 texels -> level 2.
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, size=(256, 256, 4), dtype=np.uint8)
    material = Material(
        base_color_factor=np.ones(4, np.float32),
        base_color_texture=Texture(image, filter=FilterMode.LINEAR),
    )
    coords, attributes = voxelize_materials(quad_scene(material, half=0.25), 128, mip_level_offset=offset)
    uv = voxel_uv(coords.numpy(), 128, half=0.25)
    expected = bilinear_reference(manual_pyramid(image)[level], uv[:, 0], uv[:, 1])[:, :3]
    actual = attributes["base_color"].numpy().astype(np.int64)
    # The level is 2 up to float32 rounding of log2(4); a tiny trilinear blend may move a byte by one.
    difference = np.abs(actual - np.floor(expected * 255))
    assert np.mean(difference <= 1) > 0.99 and difference.max() <= 3
    other = bilinear_reference(manual_pyramid(image)[level + 1], uv[:, 0], uv[:, 1])[:, :3]
    # The neighbouring level is clearly further away (random texels average towards grey level by level).
    assert np.abs(actual - np.floor(other * 255)).mean() > 3 * difference.mean() + 1


def test_non_power_of_two_texture_is_resized_like_the_blender_path():
    assert [_pot_side(w, 1) for w in (1, 3, 5, 6, 12, 1536, 2048)] == [1, 4, 4, 8, 16, 2048, 2048]
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, size=(48, 80, 4), dtype=np.uint8)
    assert resize_to_pot_square(image).shape == (64, 64, 4)
    constant = np.full((30, 50, 4), (200, 100, 50, 255), np.uint8)
    material = Material(base_color_factor=np.ones(4, np.float32), base_color_texture=Texture(constant))
    _, attributes = voxelize_materials(quad_scene(material), 32)
    assert_bytes_near(attributes["base_color"].numpy(), np.broadcast_to([200 / 255, 100 / 255, 50 / 255],
                                                                         attributes["base_color"].shape))


def test_emissive_uses_its_own_texture():
    emissive = np.full((8, 8, 4), (10, 200, 90, 255), np.uint8)
    metal_rough = np.full((16, 16, 4), (0, 60, 240, 255), np.uint8)
    material = Material(
        base_color_factor=np.ones(4, np.float32),
        emissive_factor=np.ones(3, np.float32),
        emissive_texture=Texture(emissive),
        metallic_roughness_texture=Texture(metal_rough),
    )
    _, attributes = voxelize_materials(quad_scene(material), 32, emissive=True)
    count = len(attributes["emissive"])
    assert_bytes_near(attributes["emissive"].numpy(), np.broadcast_to(emissive[0, 0, :3] / 255, (count, 3)))
    assert_bytes_near(attributes["metallic"].numpy()[:, 0], np.full(count, 240 / 255))
    assert_bytes_near(attributes["roughness"].numpy()[:, 0], np.full(count, 60 / 255))


def test_mask_thresholds_each_sample_before_averaging():
    # Alpha ramps from 0 (u = 0) to 1 (u = 1) along x; MASK at 0.5 must give 0 left and 255 right.
    ramp = np.zeros((1, 256, 4), np.uint8)
    ramp[..., :3] = 255
    ramp[0, :, 3] = np.arange(256)
    texture = Texture(ramp, filter=FilterMode.NEAREST, wrap_s=WrapMode.CLAMP_TO_EDGE)
    material = Material(base_color_texture=texture, alpha_mode=AlphaMode.MASK, alpha_cutoff=0.5)
    coords, attributes = voxelize_materials(quad_scene(material), 32)
    u = voxel_uv(coords.numpy(), 32)[:, 0]
    alpha = attributes["alpha"].numpy()[:, 0]
    assert np.all(alpha[u < 0.45] == 0) and np.all(alpha[u > 0.55] == 255)
    material.alpha_mode = AlphaMode.BLEND
    _, blended = voxelize_materials(quad_scene(material), 32)
    assert len(np.unique(blended["alpha"].numpy())) > 20  # BLEND keeps the gradient


# --------------------------------------------------------------------------------------------- real assets
def test_metal_rough_spheres_factors(assets):
    scene = load_asset(assets / "gltf" / "MetalRoughSpheresNoTextures.glb").normalized()
    resolution = 96
    coords, attributes = voxelize_materials(scene, resolution)
    centres = (coords.numpy() + 0.5) / resolution - 0.5
    triangles = scene.triangles()
    checked = 0
    for material_id, material in enumerate(scene.materials):
        corners = triangles[scene.material_ids == material_id].reshape(-1, 3)
        low, high = corners.min(0) + 1.5 / resolution, corners.max(0) - 1.5 / resolution
        inside = np.all((centres > low) & (centres < high), axis=1)
        if inside.sum() < 20:
            continue
        for name, factor in (("metallic", material.metallic_factor), ("roughness", material.roughness_factor)):
            expected = math.floor(np.float32(factor) * 255)
            values = attributes[name].numpy()[inside, 0].astype(np.int64)
            assert np.all((values == expected) | (values == expected - 1)), (material.name, name)
        checked += 1
    assert checked >= 49  # at least the whole 7 x 7 grid


def voxels_of_each_material(scene, resolution):
    """For each material, the voxel keys its triangles alone touch (the scan of a sub-scene)."""
    keys = []
    for material_id in range(len(scene.materials)):
        faces = scene.faces[scene.material_ids == material_id]
        if len(faces) == 0:
            keys.append(set())
            continue
        coords, _, _ = mesh_to_dual_grid(scene.vertices, faces, resolution)
        keys.append(set(map(tuple, coords.tolist())))
    return keys


def test_alpha_blend_mode_test(assets):
    scene = load_asset(assets / "gltf" / "AlphaBlendModeTest.glb").normalized()
    resolution = 128
    coords, attributes = voxelize_materials(scene, resolution)
    row_of = {key: row for row, key in enumerate(map(tuple, coords.numpy().tolist()))}
    alpha = attributes["alpha"].numpy()[:, 0]
    per_material = voxels_of_each_material(scene, resolution)
    opaque_fraction = {}
    for material_id, material in enumerate(scene.materials):
        others = set().union(*(k for i, k in enumerate(per_material) if i != material_id))
        exclusive = per_material[material_id] - others  # voxels no other material touches
        values = alpha[[row_of[key] for key in exclusive]]
        assert len(values) > 50, material.name
        if material.alpha_mode == AlphaMode.OPAQUE:
            assert np.all(values == 255), material.name
        elif material.alpha_mode == AlphaMode.MASK:
            assert np.mean((values == 0) | (values == 255)) > 0.9, material.name
            opaque_fraction[material.alpha_cutoff] = np.mean(values == 255)
        else:
            assert len(np.unique(values)) > 10, material.name
    assert opaque_fraction[0.25] > opaque_fraction[0.5] > opaque_fraction[0.75] > 0


@pytest.mark.parametrize(
    "relative",
    ["gltf/Avocado/Avocado.gltf", "gltf/SheenChair/SheenChair.gltf", "gltf/GlassVaseFlowers.glb",
     "gltf/VertexColorTest.glb", "gltf/ToyCar/ToyCar.gltf"],
)
def test_numba_kernel_matches_torch_reference(assets, relative):
    # Covers LINEAR + mips, NEAREST, KHR_texture_transform, a second UV set, MASK / BLEND, vertex colours,
    # emissive textures. Both paths are float32; they differ only in operation order (lerp, FMA), so bytes
    # may differ by one: most often where a texture is nearly flat (Avocado's roughness texels are 216-220, so
    # weighted means land on byte boundaries and truncate either way on ~14% of its voxels).
    scene = load_asset(assets / relative).normalized()
    fast_coords, fast = voxelize_materials(scene, 64, emissive=True, backend="numba")
    reference_coords, reference = voxelize_materials(scene, 64, emissive=True, backend="torch")
    np.testing.assert_array_equal(fast_coords.numpy(), reference_coords.numpy())
    for name in reference:
        difference = (fast[name].long() - reference[name].long()).abs()
        assert difference.max() <= 1 and (difference > 0).float().mean() < 0.2, name


# --------------------------------------------------------------------------------------------- errors / GPU
def test_bad_arguments():
    scene = quad_scene(Material())
    with pytest.raises(TypeError, match="Scene"):
        voxelize_materials("scene.glb", 32)
    with pytest.raises(ValueError, match="mip_level_offset"):
        voxelize_materials(scene, 32, mip_level_offset=float("nan"))
    with pytest.raises(ValueError, match="too large"):
        voxelize_materials(scene, 4, aabb=((-4, -4, -4), (4, 4, 4)))
    with pytest.raises(ValueError, match="resolution"):
        voxelize_materials(scene, 0)
    with pytest.raises(ValueError, match="backend must be"):
        voxelize_materials(scene, 16, backend="triton")


def test_scene_outside_box_gives_no_voxels():
    coords, attributes = voxelize_materials(quad_scene(Material(), z=3.0), 16)
    assert coords.shape == (0, 3) and attributes["alpha"].shape == (0, 1)


@pytest.mark.gpu
def test_gpu_matches_cpu_on_textured_sphere():
    rng = np.random.default_rng(11)
    image = rng.integers(0, 256, size=(64, 48, 4), dtype=np.uint8)  # non-square: resized to 64 x 64
    material = Material(
        base_color_factor=np.array([0.9, 0.8, 1.0, 0.7], np.float32),
        base_color_texture=Texture(image, wrap_t=WrapMode.MIRRORED_REPEAT),
        metallic_roughness_texture=Texture(image[::-1].copy(), filter=FilterMode.NEAREST),
        alpha_mode=AlphaMode.MASK,
        alpha_cutoff=0.4,
    )
    scene = sphere_scene(material)
    tri = scene.triangles()
    # Spherical UVs that wrap beyond [0, 1].
    scene.uvs[0] = np.stack([np.arctan2(tri[..., 1], tri[..., 0]), tri[..., 2] * 3], axis=-1).astype(np.float32)
    cpu_coords, cpu = voxelize_materials(scene, 96)
    gpu_coords, gpu = voxelize_materials(scene, 96, device="cuda")
    np.testing.assert_array_equal(cpu_coords.numpy(), gpu_coords.cpu().numpy())
    for name in cpu:
        difference = (cpu[name].long() - gpu[name].cpu().long()).abs()
        if name == "base_color":  # bilinear / trilinear: continuous in the sample position
            assert difference.max() <= 1 and (difference > 0).float().mean() < 0.01, name
        else:
            # NEAREST texels (metallic, roughness) and MASK thresholds (alpha) jump: a sample within float
            # rounding of a texel edge or of the cutoff may land on the other side on the GPU.
            assert (difference > 1).float().mean() < 0.005, name


@pytest.mark.gpu
def test_gpu_matches_cpu(assets):
    scene = load_asset(assets / "gltf" / "GlassVaseFlowers.glb").normalized()
    cpu_coords, cpu = voxelize_materials(scene, 128)
    gpu_coords, gpu = voxelize_materials(scene, 128, device="cuda")
    np.testing.assert_array_equal(cpu_coords.numpy(), gpu_coords.cpu().numpy())
    for name in cpu:
        difference = (cpu[name].long() - gpu[name].cpu().long()).abs()
        assert difference.max() <= 1 and (difference > 0).float().mean() < 0.01, name
