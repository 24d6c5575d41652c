"""Low-memory (spatially chunked) SC-VAE decoding equals the plain decoding."""

import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from omnivox.models import FlexiDualGridVaeDecoder, SparseUnetVaeDecoder, SparseUnetVaeEncoder
from omnivox.models import sc_vae_chunks
from omnivox.models.sc_vae_chunks import chunk_groups, morton_order, tail_halo
from omnivox.sparse import SparseTensor

from .helpers import (random_voxels, randomize, relative_error, sparse_from, tiny_decoder_config,
                      tiny_encoder_config, tiny_shape_decoder_config)


def _latent(seed: int, batch: int = 2, channels: int = 4) -> SparseTensor:
    """A dense 3^3 block (chunks must cut through it) plus scattered voxels, in two batch items."""
    gen = torch.Generator().manual_seed(seed)
    items = []
    for b in range(batch):
        block = torch.stack(torch.meshgrid(*[torch.arange(3)] * 3, indexing="ij"), -1).reshape(-1, 3) + 1
        scattered = torch.randint(0, 7, (12, 3), generator=gen)
        xyz = torch.unique(torch.cat([block, scattered]), dim=0)
        items.append(torch.cat([torch.full((len(xyz), 1), b), xyz], 1))
    coords = torch.cat(items).to(torch.int32)
    return SparseTensor.from_coords(coords, torch.randn(len(coords), channels, generator=gen))


def _shape_decoder(seed: int, num_blocks=(1, 1, 0)) -> FlexiDualGridVaeDecoder:
    model = randomize(FlexiDualGridVaeDecoder(tiny_shape_decoder_config(num_blocks=num_blocks)), seed=seed)
    with torch.no_grad():  # about half of the children survive each subdivision
        for stage in model.blocks[:-1]:
            stage[-1].to_subdiv.bias.zero_()
    return model


def test_tail_halo_counts_convolutions_at_both_levels():
    assert tail_halo(4, 0) == 6  # released decoders: 4 ConvNeXt + conv1 coarse, conv2 fine (half a voxel)
    assert tail_halo(1, 0) == 3
    assert tail_halo(0, 1) == 2  # conv2 and one block at the fine level: two fine steps = one coarse step


def test_morton_order_is_batch_major_and_spatially_coherent():
    coords = random_voxels(60, 8, batch=2, seed=3)
    perm = torch.randperm(len(coords), generator=torch.Generator().manual_seed(4))
    shuffled = coords[perm]
    order = morton_order(shuffled)
    assert sorted(order.tolist()) == list(range(len(coords)))
    batch = shuffled[order, 0]
    assert bool((batch[1:] >= batch[:-1]).all())
    # Within one 4^3 octant of one item, the Morton order is contiguous.
    octant = ((shuffled[order, 1:] // 4) * torch.tensor([4, 2, 1])).sum(1) + 8 * batch
    changes = int((octant[1:] != octant[:-1]).sum())
    assert changes == len(torch.unique(octant)) - 1


def test_groups_partition_the_voxels_and_halos_are_graph_balls():
    x = sparse_from(random_voxels(150, 8, batch=2, seed=5), 3)
    groups = chunk_groups(x, chunk_voxels=23, halo=2)
    own_count = torch.zeros(x.num_voxels, dtype=torch.int64)
    coords = x.coords.long()
    for rows, own in groups:
        own_count[rows[own]] += 1
        assert bool((rows[1:] > rows[:-1]).all())
        own_xyz = coords[rows[own]]
        # Every voxel within Chebyshev distance 1 of an own voxel (same item) is in the group.
        near = ((coords[:, None, 1:] - own_xyz[None, :, 1:]).abs().amax(-1) <= 1) & \
               (coords[:, None, 0] == own_xyz[None, :, 0])
        assert set(torch.nonzero(near.any(1)).squeeze(1).tolist()) <= set(rows.tolist())
    assert bool((own_count == 1).all())


@pytest.mark.parametrize("chunk_voxels", [23, 90, 10**6])
@pytest.mark.parametrize("num_blocks", [(1, 1, 0), (1, 2, 1)])
def test_chunked_shape_decoder_matches_plain(chunk_voxels, num_blocks):
    decoder = _shape_decoder(seed=30, num_blocks=num_blocks)
    z = _latent(seed=31)
    with torch.no_grad():
        plain = decoder(z)
        chunked = decoder(z, chunk_voxels=chunk_voxels)
    assert torch.equal(chunked.coords, plain.coords)
    assert relative_error(chunked.vertices, plain.vertices) < 1e-6
    assert torch.equal(chunked.intersected, plain.intersected)
    assert relative_error(chunked.split_weights, plain.split_weights) < 1e-6
    assert len(chunked.subdivision_logits) == len(plain.subdivision_logits) == 2
    for a, b in zip(chunked.subdivision_logits, plain.subdivision_logits):
        assert torch.equal(a.coords, b.coords) and relative_error(a.feats, b.feats) < 1e-6


def test_chunked_tail_with_a_too_small_halo_differs():
    """The halo is what makes it exact: one step less changes the output near group borders."""
    decoder = _shape_decoder(seed=32, num_blocks=(1, 2, 1))
    z = _latent(seed=33)
    with torch.no_grad():
        plain = decoder(z)
        original = sc_vae_chunks.tail_halo
        try:
            sc_vae_chunks.tail_halo = lambda before, after: original(before, after) - 1
            short = decoder(z, chunk_voxels=23)
        finally:
            sc_vae_chunks.tail_halo = original
    same_voxels = len(short.coords) == len(plain.coords) and torch.equal(short.coords, plain.coords)
    assert not same_voxels or relative_error(short.vertices, plain.vertices) > 1e-4


def test_chunked_material_decoder_follows_guides_and_maps():
    shape = _shape_decoder(seed=34)
    texture = randomize(SparseUnetVaeDecoder(tiny_decoder_config(num_blocks=(1, 2, 1))), seed=35)
    z = _latent(seed=36)
    with torch.no_grad():
        guides = shape(z).subdivision_logits
        plain = texture(z, guide_subdivisions=guides)
        chunked = texture(z, guide_subdivisions=guides, chunk_voxels=40, chunk_rows=13)
    assert torch.equal(chunked.voxels.coords, plain.voxels.coords)
    assert relative_error(chunked.voxels.feats, plain.voxels.feats) < 1e-6
    assert chunked.subdivision_logits == ()

    encoder = randomize(SparseUnetVaeEncoder(tiny_encoder_config()), seed=37)
    voxels = random_voxels(200, 12, batch=2, seed=38)
    perm = torch.cat([torch.randperm(200, generator=torch.Generator().manual_seed(39)),
                      200 + torch.randperm(200, generator=torch.Generator().manual_seed(40))])
    x = sparse_from(voxels[perm], 6, seed=41)
    with torch.no_grad():
        encoded = encoder(x)
        plain = texture(encoded.mean, downsample_maps=encoded.downsample_maps)
        chunked = texture(encoded.mean, downsample_maps=encoded.downsample_maps, chunk_voxels=30)
    assert torch.equal(chunked.voxels.coords, x.coords)
    assert relative_error(chunked.voxels.feats, plain.voxels.feats) < 1e-6


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of live tensor storages created under this mode (CPU stand-in for the CUDA peak counter).

    Every aten op's outputs are seen; a storage counts from its creation until it is freed. Scratch memory
    inside one kernel is not seen, which is the same for both runs compared below.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.tracked: set = set()

    def _freed(self, key: int, size: int) -> None:
        self.tracked.discard(key)
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and id(t.untyped_storage()) not in self.tracked:
                storage = t.untyped_storage()
                self.tracked.add(id(storage))
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._freed, id(storage), storage.nbytes())
        return out


def test_chunked_decoding_holds_fewer_live_bytes():
    decoder = _shape_decoder(seed=46)
    z = _latent(seed=47)
    peaks = {}
    with torch.no_grad():
        for chunk_voxels in (None, 23):
            tracker = LiveTensorBytes()
            with tracker:
                out = decoder(z, chunk_voxels=chunk_voxels)
            peaks[chunk_voxels] = tracker.peak
            del out
    assert 0 < peaks[23] < peaks[None]


def test_chunk_voxels_errors_are_clear():
    decoder = _shape_decoder(seed=42)
    z = _latent(seed=43)
    for bad in (0, -3, 2.5, True, "8"):
        with pytest.raises(ValueError, match="chunk_voxels"):
            decoder(z, chunk_voxels=bad)
    texture = SparseUnetVaeDecoder(tiny_decoder_config())
    other = _shape_decoder(seed=44)(_latent(seed=45)).subdivision_logits
    with pytest.raises(ValueError, match="guide_subdivisions"):
        texture(z, guide_subdivisions=other, chunk_voxels=4)
