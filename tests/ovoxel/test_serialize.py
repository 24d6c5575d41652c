"""Z-order / Hilbert codes: golden values from the reference (spec ovoxel.md 6.3), inverses, curve properties."""

import numpy as np
import pytest
import torch

from omnivox.ovoxel.serialize import decode_seq, encode_seq

GOLDEN_POINTS = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1), (3, 5, 7), (511, 0, 1000), (1023, 1023, 1023)]
GOLDEN_Z_ORDER = [0, 4, 2, 1, 7, 239, 230083364, 1073741823]
GOLDEN_HILBERT = [0, 7, 3, 1, 5, 391, 172569965, 766958445]
FIRST_HILBERT_POINTS = [
    (0, 0, 0), (0, 0, 1), (0, 1, 1), (0, 1, 0), (1, 1, 0), (1, 1, 1), (1, 0, 1), (1, 0, 0), (2, 0, 0), (3, 0, 0),
]
PERMUTATIONS = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]


@pytest.mark.parametrize("mode, golden", [("z_order", GOLDEN_Z_ORDER), ("hilbert", GOLDEN_HILBERT)])
def test_golden_codes_numpy_and_torch(mode, golden):
    points = np.array(GOLDEN_POINTS, dtype=np.int64)
    codes = encode_seq(points, mode=mode)
    assert isinstance(codes, np.ndarray) and codes.dtype == np.int32
    assert codes.tolist() == golden
    codes_t = encode_seq(torch.from_numpy(points).to(torch.int32), mode=mode)
    assert isinstance(codes_t, torch.Tensor) and codes_t.dtype == torch.int32
    assert codes_t.tolist() == golden
    assert decode_seq(np.array(golden), mode=mode).tolist() == [list(p) for p in GOLDEN_POINTS]


def test_first_hilbert_codes_visit_the_reference_points():
    assert decode_seq(np.arange(10), mode="hilbert").tolist() == [list(p) for p in FIRST_HILBERT_POINTS]


@pytest.mark.parametrize("mode", ["z_order", "hilbert"])
@pytest.mark.parametrize("permute", PERMUTATIONS)
def test_decode_inverts_encode_on_random_points(mode, permute):
    generator = torch.Generator().manual_seed(PERMUTATIONS.index(permute) + 10 * (mode == "hilbert"))
    points = torch.randint(0, 1024, (20000, 3), generator=generator, dtype=torch.int32)
    codes = encode_seq(points, permute, mode)
    assert codes.min() >= 0 and codes.max() < 2**30
    assert torch.equal(decode_seq(codes, permute, mode), points)
    # Distinct points get distinct codes (a bijection on the 1024^3 cube).
    unique_points = torch.unique(points, dim=0).shape[0]
    assert torch.unique(codes).shape[0] == unique_points


@pytest.mark.parametrize("mode", ["z_order", "hilbert"])
def test_permute_moves_axes_to_the_significant_bits(mode):
    rng = np.random.default_rng(3)
    points = rng.integers(0, 1024, (500, 3))
    for permute in PERMUTATIONS:
        assert np.array_equal(encode_seq(points, permute, mode), encode_seq(points[:, list(permute)], mode=mode))


def test_hilbert_consecutive_codes_are_face_neighbours():
    # Every step of the curve moves to a face-adjacent voxel; check a 32^3 block and a window deep in the curve.
    for start in (0, 123_456_789):
        points = decode_seq(np.arange(start, start + 32**3), mode="hilbert").astype(np.int64)
        steps = np.abs(np.diff(points, axis=0)).sum(axis=1)
        assert (steps == 1).all()


def test_hilbert_fills_aligned_blocks_first():
    # The first 8^k codes cover exactly the cube [0, 2^k)^3: the curve is a locality-preserving ordering.
    points = decode_seq(np.arange(8**4), mode="hilbert")
    assert points.max() == 15 and np.unique(points, axis=0).shape[0] == 8**4


def test_z_order_sorts_octants_hierarchically():
    rng = np.random.default_rng(4)
    points = rng.integers(0, 1024, (2000, 3))
    codes = encode_seq(points).astype(np.int64)
    # The top bit triple is (x >= 512, y >= 512, z >= 512) with x most significant.
    top = (points[:, 0] >= 512) * 4 + (points[:, 1] >= 512) * 2 + (points[:, 2] >= 512)
    assert np.array_equal(codes >> 27, top)


def test_empty_input():
    assert encode_seq(np.zeros((0, 3), np.int64)).shape == (0,)
    assert decode_seq(torch.zeros(0, dtype=torch.int64), mode="hilbert").shape == (0, 3)


@pytest.mark.parametrize("bad", [-1, 1024, 5000])
def test_out_of_range_coordinates_raise(bad):
    points = np.array([[0, 0, 0], [1, bad, 2]])
    with pytest.raises(ValueError, match=r"coords must lie in \[0, 1023\]"):
        encode_seq(points)


def test_out_of_range_codes_raise():
    with pytest.raises(ValueError, match="codes must lie in"):
        decode_seq(np.array([2**30]))
    with pytest.raises(ValueError, match="codes must lie in"):
        decode_seq(torch.tensor([-1]), mode="hilbert")


def test_bad_arguments_raise():
    points = np.zeros((2, 3), np.int64)
    with pytest.raises(ValueError, match="mode must be one of"):
        encode_seq(points, mode="peano")
    with pytest.raises(ValueError, match="permute must be a permutation"):
        encode_seq(points, permute=(0, 0, 1))
    with pytest.raises(ValueError, match="permute must be a permutation"):
        decode_seq(np.zeros(2, np.int64), permute=(0, 1))
    with pytest.raises(TypeError, match="integer"):
        encode_seq(points.astype(np.float32))
    with pytest.raises(TypeError, match="integer"):
        encode_seq(torch.zeros(2, 3))
    with pytest.raises(TypeError, match="numpy.ndarray or torch.Tensor"):
        encode_seq([[0, 0, 0]])
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        encode_seq(np.zeros((2, 4), np.int64))
    with pytest.raises(ValueError, match=r"shape \(N,\)"):
        decode_seq(np.zeros((2, 3), np.int64))


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["z_order", "hilbert"])
def test_cuda_matches_cpu(mode):
    generator = torch.Generator().manual_seed(7)
    points = torch.randint(0, 1024, (100_000, 3), generator=generator)
    codes_cpu = encode_seq(points, (2, 0, 1), mode)
    codes_gpu = encode_seq(points.cuda(), (2, 0, 1), mode)
    assert codes_gpu.device.type == "cuda" and codes_gpu.dtype == torch.int32
    assert torch.equal(codes_gpu.cpu(), codes_cpu)
    decoded = decode_seq(codes_gpu, (2, 0, 1), mode)
    assert decoded.device.type == "cuda" and torch.equal(decoded.cpu(), points.to(torch.int32))
