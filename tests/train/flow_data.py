"""Small flow-training datasets built from real assets (`../shared/assets`), in memory.

Four assets are converted to O-Voxels at 32^3 (geometry and materials on the same voxels) and encoded by tiny
random SC-VAE encoders (3 stages: 32^3 -> 8^3 latent grid), giving per-asset shape and material latents on the
same coordinates, normalised per channel like the released data. The dense sparse-structure latent is the 8^3
occupancy of those coordinates folded space-to-channel into ``(8, 4, 4, 4)``. Condition images are the
asset set's example images, 32 x 32.
"""

from pathlib import Path

import numpy as np
import torch

from omnivox.models import DINOv3Config, DINOv3ViT, FlexiDualGridVaeEncoder, SparseUnetVaeEncoder, VaeEncoderConfig
from omnivox.sparse import SparseTensor

ASSET_FILES = ("mesh/spot/spot_triangulated.obj", "gltf/Fox.glb", "gltf/Avocado/Avocado.gltf", "mesh/featuretype.STL")
RESOLUTION = 32
LATENT_CHANNELS = 8
COND_CHANNELS = 16


def tiny_dinov3() -> DINOv3ViT:
    torch.manual_seed(0)
    return DINOv3ViT(DINOv3Config(hidden_size=COND_CHANNELS, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32)).eval()


def _encoder(cls, seed):
    torch.manual_seed(seed)
    config = VaeEncoderConfig(in_channels=6, model_channels=(8, 16, 32), num_blocks=(0, 1, 1),
                              latent_channels=LATENT_CHANNELS, use_fp16=False)
    return cls(config).eval()


def build_samples(assets: Path) -> list:
    """One dict per asset: ``shape``/``pbr`` latents (L, C) and ``coords`` (L, 3) at 8^3, ``ss`` (8, 4, 4, 4),
    ``image`` (3, 32, 32) in [0, 1]."""
    from PIL import Image

    from omnivox.assets import load_asset
    from omnivox.ovoxel import mesh_to_dual_grid, to_local
    from omnivox.ovoxel.materials import voxelize_materials

    threads = torch.get_num_threads()  # the numba conversions below may change torch's intra-op thread count
    shape_encoder, pbr_encoder = _encoder(FlexiDualGridVaeEncoder, 1), _encoder(SparseUnetVaeEncoder, 2)
    images = sorted((assets / "images").glob("*.webp"))
    samples = []
    for i, name in enumerate(ASSET_FILES):
        scene = load_asset(assets / name).normalized()
        coords, dual, flags = mesh_to_dual_grid(scene.vertices, scene.faces, RESOLUTION)
        _, attrs = voxelize_materials(scene, RESOLUTION)
        c = torch.from_numpy(coords)
        local = torch.from_numpy(to_local(coords, dual, 1.0 / RESOLUTION)).clamp(0, 1)
        batch_coords = torch.cat([torch.zeros(len(c), 1, dtype=torch.int32), c.int()], 1)
        verts = SparseTensor.from_coords(batch_coords, local.float())
        inter = SparseTensor.from_coords(batch_coords, torch.from_numpy(flags))
        pbr = torch.cat([attrs["base_color"], attrs["metallic"], attrs["roughness"], attrs["alpha"]], 1)
        with torch.no_grad():
            shape = shape_encoder(verts, inter).mean
            material = pbr_encoder(verts.replace(pbr.float() / 255 * 2 - 1)).mean
        assert torch.equal(shape.coords, material.coords)
        latent_coords = shape.coords[:, 1:].long()
        occupancy = torch.zeros(8, 8, 8)
        occupancy[tuple(latent_coords.T)] = 1.0
        ss = occupancy.view(4, 2, 4, 2, 4, 2).permute(1, 3, 5, 0, 2, 4).reshape(8, 4, 4, 4) * 2 - 1
        image = Image.open(images[i % len(images)]).convert("RGB").resize((32, 32), Image.BILINEAR)
        samples.append({"coords": latent_coords.int(), "shape": shape.feats, "pbr": material.feats, "ss": ss,
                        "image": torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)})
    torch.set_num_threads(threads)
    for key in ("shape", "pbr"):  # per-channel normalisation over all tokens, as the released stats
        allf = torch.cat([s[key] for s in samples])
        mean, std = allf.mean(0), allf.std(0)
        for s in samples:
            s[key] = (s[key] - mean) / std
    return samples


class FlowDataset(torch.utils.data.Dataset):
    """The samples of one stage: ``"ss"``, ``"shape"`` or ``"pbr"``; ``cond`` images, or tokens of ``encoder``."""

    def __init__(self, samples: list, stage: str, encoder=None) -> None:
        self.samples, self.stage = samples, stage
        self.tokens = None
        if encoder is not None:
            from omnivox.models import normalize_images
            with torch.no_grad():
                self.tokens = encoder(normalize_images(torch.stack([s["image"] for s in samples])))
        self.loads = [len(s["coords"]) for s in samples]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        s = self.samples[i]
        cond = self.tokens[i] if self.tokens is not None else s["image"]
        if self.stage == "ss":
            return {"x_0": s["ss"], "cond": cond}
        def one(feats):
            return SparseTensor.from_batch_list([s["coords"]], [feats])

        item = {"x_0": one(s[self.stage]), "cond": cond}
        if self.stage == "pbr":
            item["concat_cond"] = one(s["shape"])
        return item

    @staticmethod
    def collate_fn(samples, split_size=None):
        from omnivox.train.data_stream import collate_samples
        parts = split_size or 1
        step = len(samples) // parts
        groups = [collate_samples(samples[j * step:(j + 1) * step]) for j in range(parts)]
        for g in groups:  # texture stage: concat_cond on the very coords of x_0
            if "concat_cond" in g:
                g["concat_cond"] = g["x_0"].replace(g["concat_cond"].feats)
        return groups if split_size else groups[0]
