"""Voxel files: octree stream, attribute filters, `.vxz` container, `.npz`, `.ply` and extension dispatch.

Golden values come from spec ovoxel.md 5 and 11 (verified there against the reference writer). The octree and
filter kernels are also checked against small recursive implementations written here straight from the spec's
definitions, on random voxel sets.
"""

import itertools
import json
import lzma
import struct
import sys
import zlib

import numpy as np
import pytest
import torch

from omnivox.ovoxel import io
from omnivox.ovoxel.io import compression as codecs
from omnivox.ovoxel.serialize import encode_seq

FILTERS = ["none", "parent", "neighbor"]
COMPRESSIONS = ["none", "deflate", "lzma", "zstd"]
INTERLEAVES = ["as_is", "none", "all"]

GOLDEN_HEADER = (
    '{"num_voxel": 3, "chunk_size": 4, "filter": "none", "compression": "none", "compression_level": 0, '
    '"raw_size": 39, "compressed_size": 6, "compress_ratio": 6.5, "attr_interleave": "as_is", "attr": [["a", '
    '1]], "chunks": [{"idx": [0, 0, 0], "svo": [0, 3], "a": [3, 3], "ptr": [0, 6]}]}'
)


# ---------------------------------------------------------------------------------------------------------------
# Helpers: independent implementations from the spec's definitions, random voxel sets, file surgery


def spec_svo(codes, depth):
    """Octree bytes by recursion over the node tree (pre-order, children ascending)."""
    codes = sorted(int(c) for c in codes)
    out = []

    def visit(prefix, level, members):
        shift = 3 * (depth - 1 - level)
        digits = sorted({(c >> shift) & 7 for c in members})
        out.append(sum(1 << d for d in digits))
        if level < depth - 1:
            for d in digits:
                visit(prefix * 8 + d, level + 1, [c for c in members if (c >> shift) & 7 == d])

    visit(0, 0, codes)
    return bytes(out)


def spec_parent_filter(codes, values, depth):
    """Parent filter by recursion: root representative, then m-1 sibling deltas per node in pre-order."""
    order = np.argsort(codes)
    codes, values = [int(c) for c in np.asarray(codes)[order]], values[order]
    rows = [values[0]]

    def visit(level, members):  # members: indices into codes, ascending
        shift = 3 * (depth - 1 - level)
        children = {}
        for i in members:
            children.setdefault((codes[i] >> shift) & 7, []).append(i)
        groups = [children[d] for d in sorted(children)]
        for previous, current in zip(groups, groups[1:]):
            rows.append(values[current[0]] - values[previous[0]])
        if level < depth - 1:
            for group in groups:
                visit(level + 1, group)

    visit(0, list(range(len(codes))))
    return np.stack(rows).astype(np.uint8)


def spec_neighbor_filter(coords, values):
    """Neighbour filter with a coordinate dictionary: residual to the last existing neighbour of the list."""
    index = {tuple(p): i for i, p in enumerate(coords.tolist())}
    offsets = [(-1, 0, 0), (0, -1, 0), (0, 0, -1), (-1, -1, 0), (-1, 0, -1), (0, -1, -1), (-1, -1, -1)]
    out = values.copy()
    for i, (x, y, z) in enumerate(coords.tolist()):
        predictor = None
        for dx, dy, dz in offsets:
            predictor = index.get((x + dx, y + dy, z + dz), predictor)
        if predictor is not None:
            out[i] = values[i] - values[predictor]
    return out


def random_voxels(rng, count, extent, channels=(("base_color", 3), ("alpha", 1))):
    coords = np.unique(rng.integers(0, extent, (count, 3)), axis=0)
    rng.shuffle(coords)
    attrs = {name: rng.integers(0, 256, (len(coords), c), dtype=np.uint8) for name, c in channels}
    return coords, attrs


def smooth_voxels(rng, extent):
    """A noisy sphere shell with attributes that vary smoothly, so that filters matter for compression."""
    grid = np.stack(np.meshgrid(*[np.arange(extent)] * 3, indexing="ij"), -1).reshape(-1, 3)
    radius = np.linalg.norm(grid - extent / 2 + 0.5, axis=1)
    coords = grid[np.abs(radius - extent * 0.35) < 1.0]
    rng.shuffle(coords)
    color = (coords * (255 // extent)).astype(np.uint8) + rng.integers(0, 3, coords.shape, dtype=np.uint8)
    return coords, {"base_color": color, "alpha": np.full(len(coords), 255, np.uint8)}


def file_order(coords, chunk_size):
    """Expected read order: chunk index lexicographic, then local Z-order code."""
    chunk = coords // chunk_size
    local_code = encode_seq(coords % chunk_size)
    return np.lexsort((local_code, chunk[:, 2], chunk[:, 1], chunk[:, 0]))


def split_file(data):
    start = struct.unpack(">I", data[4:8])[0]
    return json.loads(data[8:start]), data[start:]


def join_file(header, binary, version=0):
    text = json.dumps(header).encode()
    return b"VXZ" + bytes([version]) + struct.pack(">I", 8 + len(text)) + text + binary


def chunk_streams(data):
    """{(chunk number, stream name): stored bytes} of a file."""
    header, binary = split_file(data)
    streams = {}
    for number, entry in enumerate(header["chunks"]):
        blob = binary[entry["ptr"][0]:entry["ptr"][0] + entry["ptr"][1]]
        for name, value in entry.items():
            if name not in ("idx", "ptr"):
                streams[number, name] = blob[value[0]:value[0] + value[1]]
    return streams


# ---------------------------------------------------------------------------------------------------------------
# Octree stream


def test_svo_golden_bytes():
    data = io.svo_encode(np.array([0, 4, 63]), depth=2)
    assert data.tobytes() == bytes([0x81, 0x11, 0x80])
    assert io.svo_decode(data, depth=2, max_voxels=3).tolist() == [0, 4, 63]


def test_svo_empty_chunk_is_one_zero_byte():
    assert io.svo_encode(np.zeros(0, np.int64), 3).tobytes() == b"\x00"
    assert io.svo_decode(np.zeros(1, np.uint8), 3, 10).shape == (0,)


@pytest.mark.parametrize("depth", [1, 2, 3, 5, 8])
def test_svo_matches_spec_recursion_and_round_trips(depth):
    rng = np.random.default_rng(depth)
    for count in (1, 2, 7, 300):
        count = min(count, 8**depth)
        codes = np.sort(rng.choice(8**depth, count, replace=False))
        data = io.svo_encode(codes, depth)
        assert data.tobytes() == spec_svo(codes, depth)
        assert np.array_equal(io.svo_decode(data, depth, count), codes)


def test_svo_rejects_bad_streams_and_inputs():
    with pytest.raises(ValueError, match="truncated"):
        io.svo_decode(np.array([0x81, 0x11], np.uint8), 2, 10)
    with pytest.raises(ValueError, match="after the end"):
        io.svo_decode(np.array([0x81, 0x11, 0x80, 0x01], np.uint8), 2, 10)
    with pytest.raises(ValueError, match="more than the 2 voxels"):
        io.svo_decode(np.array([0x81, 0x11, 0x80], np.uint8), 2, 2)
    with pytest.raises(ValueError, match="strictly ascending"):
        io.svo_encode(np.array([4, 0]), 2)
    with pytest.raises(ValueError, match="strictly ascending"):
        io.svo_encode(np.array([4, 4]), 2)
    with pytest.raises(ValueError, match=r"must lie in \[0, 8\*\*2\)"):
        io.svo_encode(np.array([64]), 2)
    with pytest.raises(ValueError, match="depth"):
        io.svo_encode(np.array([0]), 0)


# ---------------------------------------------------------------------------------------------------------------
# Attribute filters


def test_parent_filter_golden_rows():
    values = np.array([[10], [20], [30]], np.uint8)
    filtered = io.encode_filter("parent", np.array([0, 4, 63]), values, 2)
    assert filtered.ravel().tolist() == [10, 20, 10]
    assert np.array_equal(io.decode_filter("parent", np.array([0, 4, 63]), filtered, 2), values)


def test_neighbor_filter_golden_values():
    coords = np.array([(0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 0, 1)])
    values = np.array([10, 20, 35, 7], np.uint8)[:, None]
    codes = encode_seq(coords).astype(np.int64)
    order = np.argsort(codes)  # the filter works on rows sorted by code; rows stay in place
    filtered = io.encode_filter("neighbor", codes[order], values[order], 2)
    expected = np.empty(4, np.uint8)
    expected[order] = filtered.ravel()
    assert expected.tolist() == [10, 10, 25, 253]


@pytest.mark.parametrize("depth", [1, 2, 4, 6])
def test_filters_match_spec_definitions_and_invert(depth):
    rng = np.random.default_rng(10 + depth)
    size = 2**depth
    for count in (1, 5, min(400, size**3)):
        coords = np.unique(rng.integers(0, size, (count, 3)), axis=0)
        codes = encode_seq(coords).astype(np.int64)
        order = np.argsort(codes)
        coords, codes = coords[order], codes[order]
        values = rng.integers(0, 256, (len(codes), 3), dtype=np.uint8)
        parent = io.encode_filter("parent", codes, values, depth)
        assert np.array_equal(parent, spec_parent_filter(codes, values, depth))
        neighbor = io.encode_filter("neighbor", codes, values, depth)
        assert np.array_equal(neighbor, spec_neighbor_filter(coords, values))
        assert np.array_equal(io.encode_filter("none", codes, values, depth), values)
        for name, filtered in (("parent", parent), ("neighbor", neighbor)):
            assert np.array_equal(io.decode_filter(name, codes, filtered, depth), values)


def test_filters_reject_bad_inputs():
    values = np.zeros((3, 2), np.uint8)
    with pytest.raises(ValueError, match="filter must be one of"):
        io.encode_filter("median", np.array([0, 1, 2]), values, 2)
    with pytest.raises(ValueError, match="strictly ascending"):
        io.encode_filter("neighbor", np.array([0, 2, 1]), values, 2)
    with pytest.raises(ValueError, match="strictly ascending"):
        io.decode_filter("parent", np.array([0, 1, 1]), values, 2)
    with pytest.raises(ValueError, match=r"\(3, C\) uint8"):
        io.encode_filter("parent", np.array([0, 1, 2]), values.astype(np.int16), 2)


def test_filters_reduce_smooth_data_to_small_residuals():
    rng = np.random.default_rng(5)
    coords, attrs = smooth_voxels(rng, 16)
    codes = encode_seq(coords).astype(np.int64)
    order = np.argsort(codes)
    values = attrs["base_color"][order]
    for name in ("parent", "neighbor"):
        residual = io.encode_filter(name, codes[order], values, 4).astype(np.int16)
        small = np.minimum(residual, 256 - residual)  # distance to 0 mod 256
        assert np.median(small) < np.median(values)


# ---------------------------------------------------------------------------------------------------------------
# .vxz: golden file, round trips, order, codecs


def test_vxz_golden_file(tmp_path):
    path = tmp_path / "golden.vxz"
    io.write_vxz(path, np.array([[0, 0, 0], [1, 0, 0], [3, 3, 3]]), {"a": np.array([10, 20, 30], np.uint8)},
                 chunk_size=4, compression="none")
    data = path.read_bytes()
    assert len(data) == 296
    assert data[:8] == bytes.fromhex("56585A0000000122")
    assert data[8:290].decode("utf-8") == GOLDEN_HEADER
    assert data[290:] == bytes.fromhex("811180 0A141E")
    coords, attrs = io.read_vxz(path)
    assert coords.dtype == np.int32 and coords.tolist() == [[0, 0, 0], [1, 0, 0], [3, 3, 3]]
    assert list(attrs) == ["a"] and attrs["a"].dtype == np.uint8 and attrs["a"].ravel().tolist() == [10, 20, 30]
    assert io.read_vxz_info(path) == json.loads(GOLDEN_HEADER)


@pytest.mark.parametrize("filter_name, codec, interleave", list(itertools.product(FILTERS, COMPRESSIONS, INTERLEAVES)))
def test_vxz_round_trip_every_option(filter_name, codec, interleave):
    rng = np.random.default_rng(FILTERS.index(filter_name) * 100 + COMPRESSIONS.index(codec) * 10)
    coords, attrs = random_voxels(rng, 600, 24)
    # lzma's default preset 9 costs ~60 ms per stream (it clears a 64 MiB match-finder table); preset 1 keeps
    # this matrix fast, and the default preset is exercised by the golden, codec and damage tests.
    level = 1 if codec == "lzma" else None
    data = io.encode_vxz(coords, attrs, chunk_size=8, filter=filter_name, compression=codec,
                         compression_level=level, attr_interleave=interleave)
    header, _ = split_file(data)
    assert (header["filter"], header["compression"], header["attr_interleave"]) == (filter_name, codec, interleave)
    assert header["compression_level"] == (level or codecs.DEFAULT_LEVELS[codec])
    read_coords, read_attrs = io.decode_vxz(data)
    order = file_order(coords, 8)
    assert np.array_equal(read_coords, coords[order])
    assert list(read_attrs) == ["base_color", "alpha"]
    for name in attrs:
        assert np.array_equal(read_attrs[name], attrs[name][order])


def test_vxz_header_layout_and_stream_names():
    rng = np.random.default_rng(1)
    coords, attrs = random_voxels(rng, 200, 12)
    expected_names = {"as_is": ["base_color", "alpha"], "none": ["base_color_0", "base_color_1", "base_color_2",
                                                                 "alpha_0"], "all": ["attr"]}
    for interleave, names in expected_names.items():
        data = io.encode_vxz(coords, attrs, chunk_size=8, compression="deflate", attr_interleave=interleave)
        text_start = struct.unpack(">I", data[4:8])[0]
        header = json.loads(data[8:text_start], object_pairs_hook=lambda pairs: pairs)
        assert [key for key, _ in header] == ["num_voxel", "chunk_size", "filter", "compression", "compression_level",
                                              "raw_size", "compressed_size", "compress_ratio", "attr_interleave",
                                              "attr", "chunks"]
        values = dict(header)
        assert values["raw_size"] == len(coords) * (12 + 4)
        assert values["compressed_size"] == len(data) - text_start
        assert values["compress_ratio"] == values["raw_size"] / values["compressed_size"]
        assert values["attr"] == [["base_color", 3], ["alpha", 1]]
        chunks = [dict(entry) for entry in values["chunks"]]
        assert [list(entry) for entry in chunks] == [["idx", "svo", *names, "ptr"]] * len(chunks)
        assert [entry["idx"] for entry in chunks] == sorted(entry["idx"] for entry in chunks)
        assert sum(entry["ptr"][1] for entry in chunks) == values["compressed_size"]


def test_vxz_large_grid_multi_chunk_order():
    rng = np.random.default_rng(2)
    coords, attrs = random_voxels(rng, 3000, 2048, channels=(("vertices", 3), ("intersected", 1)))
    data = io.encode_vxz(coords, attrs, chunk_size=256, filter="parent", compression="deflate")
    header, _ = split_file(data)
    assert len(header["chunks"]) == len(np.unique(coords // 256, axis=0)) > 100
    read_coords, read_attrs = io.decode_vxz(data)
    order = file_order(coords, 256)
    assert read_coords.max() > 1024
    assert np.array_equal(read_coords, coords[order])
    assert np.array_equal(read_attrs["vertices"], attrs["vertices"][order])


def test_vxz_is_deterministic_and_independent_of_input_order():
    rng = np.random.default_rng(3)
    coords, attrs = smooth_voxels(rng, 20)
    first = io.encode_vxz(coords, attrs, chunk_size=8, filter="neighbor", compression_level=1)
    shuffle = rng.permutation(len(coords))
    second = io.encode_vxz(coords[shuffle], {k: v[shuffle] for k, v in attrs.items()}, chunk_size=8,
                           filter="neighbor", compression_level=1)
    assert first == second


def test_vxz_codecs_use_the_reference_settings():
    rng = np.random.default_rng(4)
    coords, attrs = smooth_voxels(rng, 16)
    coords = np.concatenate([coords, [[40, 40, 40]]])  # a second chunk
    attrs = {name: np.concatenate([value, value[:1]]) for name, value in attrs.items()}
    raw = chunk_streams(io.encode_vxz(coords, attrs, chunk_size=16, compression="none"))
    expected = {
        "deflate": lambda b: (lambda c: c.compress(b) + c.flush())(zlib.compressobj(9, zlib.DEFLATED, -15)),
        "lzma": lambda b: lzma.compress(b, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "preset": 9}]),
    }
    for codec, compress in expected.items():
        stored = chunk_streams(io.encode_vxz(coords, attrs, chunk_size=16, compression=codec))
        assert stored.keys() == raw.keys()
        assert all(stored[key] == compress(raw[key]) for key in raw)
    import zstandard

    stored = chunk_streams(io.encode_vxz(coords, attrs, chunk_size=16, compression="zstd"))
    for key, blob in stored.items():
        params = zstandard.get_frame_parameters(blob)
        assert params.content_size == len(raw[key]) and not params.has_checksum
        assert zstandard.ZstdDecompressor().decompress(blob) == raw[key]


def test_vxz_filters_help_compression_on_smooth_data():
    rng = np.random.default_rng(6)
    coords, attrs = smooth_voxels(rng, 24)
    sizes = {f: len(io.encode_vxz(coords, attrs, chunk_size=32, filter=f, compression="deflate")) for f in FILTERS}
    assert sizes["neighbor"] < sizes["none"] and sizes["parent"] < sizes["none"]


def test_vxz_compression_level_zero_means_default():
    rng = np.random.default_rng(7)
    coords, attrs = random_voxels(rng, 300, 16)
    default = io.encode_vxz(coords, attrs, chunk_size=8, compression="deflate")
    assert io.encode_vxz(coords, attrs, chunk_size=8, compression="deflate", compression_level=0) == default
    assert io.encode_vxz(coords, attrs, chunk_size=8, compression="deflate", compression_level=9) == default
    fast = io.encode_vxz(coords, attrs, chunk_size=np.int64(8), compression="lzma", compression_level=1)
    assert split_file(fast)[0]["compression_level"] == 1
    assert np.array_equal(io.decode_vxz(fast)[0], coords[file_order(coords, 8)])


def test_vxz_torch_input_and_flat_attributes(tmp_path):
    rng = np.random.default_rng(8)
    coords, attrs = random_voxels(rng, 100, 10)
    path = tmp_path / "t.vxz"
    io.write_vxz(path, torch.from_numpy(coords).to(torch.int32),
                 {"alpha": torch.from_numpy(attrs["alpha"][:, 0]), "base_color": torch.from_numpy(attrs["base_color"])},
                 chunk_size=16)
    read_coords, read_attrs = io.read_vxz(path)
    order = file_order(coords, 16)
    assert isinstance(read_coords, np.ndarray) and read_attrs["alpha"].shape == (len(coords), 1)
    assert np.array_equal(read_attrs["alpha"], attrs["alpha"][order])
    assert io.read_vxz_info(path)["attr"] == [["alpha", 1], ["base_color", 3]]


@pytest.mark.parametrize("interleave", INTERLEAVES)
def test_vxz_empty_voxel_set_and_no_attributes(interleave):
    data = io.encode_vxz(np.zeros((0, 3), np.int64), {"a": np.zeros((0, 2), np.uint8)}, attr_interleave=interleave)
    header, binary = split_file(data)
    assert header["num_voxel"] == 0 and header["chunks"] == [] and binary == b""
    coords, attrs = io.decode_vxz(data)
    assert coords.shape == (0, 3) and attrs["a"].shape == (0, 2)
    coords, attrs = io.decode_vxz(io.encode_vxz(np.array([[5, 6, 7]]), {}, attr_interleave=interleave))
    assert coords.tolist() == [[5, 6, 7]] and attrs == {}


# ---------------------------------------------------------------------------------------------------------------
# .vxz: writer validation


def test_vxz_writer_rejects_bad_inputs():
    coords = np.array([[0, 0, 0], [1, 2, 3]])
    good = {"a": np.zeros((2, 1), np.uint8)}
    cases = [
        (TypeError, "must be uint8", dict(attrs={"a": np.zeros((2, 1), np.float32)})),
        (ValueError, r"must have shape \(2,\)", dict(attrs={"a": np.zeros((3, 1), np.uint8)})),
        (ValueError, "non-negative", dict(coords=np.array([[0, 0, 0], [-1, 2, 3]]))),
        (TypeError, "integers", dict(coords=coords.astype(np.float64))),
        (ValueError, r"shape \(N, 3\)", dict(coords=np.zeros((2, 2), np.int64))),
        (ValueError, r"\[1, 2, 3\] appears more than once", dict(coords=np.array([[1, 2, 3], [1, 2, 3]]))),
        (ValueError, "chunk_size must be a power of two", dict(chunk_size=3)),
        (ValueError, "chunk_size must be a power of two", dict(chunk_size=1)),
        (ValueError, "chunk_size must be a power of two", dict(chunk_size=2048)),
        (ValueError, "filter must be one of", dict(filter="median")),
        (ValueError, "compression must be one of", dict(compression="bz2")),
        (ValueError, "attr_interleave must be one of", dict(attr_interleave="planar")),
        (ValueError, r"compression_level for 'lzma' must be in \[0, 9\]", dict(compression_level=12)),
        (ValueError, "clash with the chunk keys", dict(attrs={"svo": np.zeros((2, 1), np.uint8)})),
        (ValueError, "clash with the chunk keys", dict(attrs={"ptr": np.zeros((2, 1), np.uint8)})),
        (TypeError, "attrs must be a dict", dict(attrs=[np.zeros((2, 1), np.uint8)])),
    ]
    for error, message, override in cases:
        arguments = dict(coords=coords, attrs=good) | override
        with pytest.raises(error, match=message):
            io.encode_vxz(**arguments)


def test_vxz_duplicates_detected_across_chunks_and_large_coordinates():
    coords = np.array([[5000, 3, 1], [0, 0, 0], [5000, 3, 1]])
    with pytest.raises(ValueError, match=r"\[5000, 3, 1\] appears more than once"):
        io.encode_vxz(coords, {}, chunk_size=4)
    huge = np.array([[2**30, 0, 0], [0, 2**30, 5]])  # chunk keys too wide for one int64: the lexsort path
    read_coords, _ = io.decode_vxz(io.encode_vxz(huge, {}, chunk_size=2))
    assert read_coords.tolist() == [[0, 2**30, 5], [2**30, 0, 0]]


def test_zstd_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(ImportError, match=r"omnivox\[zstd\]"):
        io.encode_vxz(np.array([[0, 0, 0]]), {}, compression="zstd")


# ---------------------------------------------------------------------------------------------------------------
# .vxz: reading damaged or lying files


@pytest.fixture(scope="module")
def sample_file():
    rng = np.random.default_rng(9)
    coords, attrs = random_voxels(rng, 150, 16)
    return io.encode_vxz(coords, attrs, chunk_size=8, filter="parent", compression="lzma")


def test_vxz_reader_rejects_wrong_magic_and_version(tmp_path, sample_file):
    path = tmp_path / "bad.vxz"
    path.write_bytes(b"PK\x03\x04" + sample_file[4:])
    with pytest.raises(ValueError, match=r"bad\.vxz: not a \.vxz file"):
        io.read_vxz(path)
    with pytest.raises(ValueError, match="not a .vxz file"):
        io.read_vxz_info(path)
    path.write_bytes(sample_file[:3] + b"\x01" + sample_file[4:])
    with pytest.raises(ValueError, match="unsupported .vxz version 1"):
        io.read_vxz(path)


def test_vxz_reader_rejects_every_truncation(tmp_path, sample_file):
    path = tmp_path / "cut.vxz"
    for length in list(range(0, 40)) + list(range(40, len(sample_file), 7)):
        path.write_bytes(sample_file[:length])
        with pytest.raises(ValueError, match="cut.vxz"):
            io.read_vxz(path)


def test_vxz_reader_survives_corrupted_bytes(sample_file):
    # A flipped byte must give either a clean ValueError or well-formed output, never another exception.
    rng = np.random.default_rng(10)
    header_end = struct.unpack(">I", sample_file[4:8])[0]
    positions = np.concatenate([rng.integers(8, header_end, 60), rng.integers(header_end, len(sample_file), 140)])
    outcomes = {"error": 0, "decoded": 0}
    for position in positions:
        damaged = bytearray(sample_file)
        damaged[position] ^= 1 << int(rng.integers(0, 8))
        try:
            coords, attrs = io.decode_vxz(bytes(damaged), source="damaged")
        except ValueError as error:
            assert "damaged" in str(error)
            outcomes["error"] += 1
        else:
            assert coords.dtype == np.int32 and coords.shape[1] == 3
            assert all(v.shape[0] == coords.shape[0] for v in attrs.values())
            outcomes["decoded"] += 1
    assert outcomes["error"] > 100  # lzma streams and the JSON header detect most damage


@pytest.mark.parametrize("lie, message", [
    (lambda h: h.update(num_voxel=h["num_voxel"] + 1, raw_size=h["raw_size"] + 16), "the chunks hold"),
    (lambda h: h.update(num_voxel=10**12), "num_voxel"),
    (lambda h: h.update(num_voxel=10**6, raw_size=16 * 10**6), "cannot fit"),
    (lambda h: h.update(raw_size=h["raw_size"] + 1), "raw_size"),
    (lambda h: h.update(compressed_size=h["compressed_size"] + 1), "compressed_size"),
    (lambda h: h["chunks"][0].update(ptr=[0, 10**9]), "runs past the end"),
    (lambda h: h["chunks"][0].update(svo=[0, h["chunks"][0]["svo"][1] - 1]), r"chunk 0 .* stream 'svo'"),
    (lambda h: h["chunks"][1].update(idx=h["chunks"][0]["idx"]), "appears twice"),
    (lambda h: h["chunks"][0].pop("base_color"), "lacks the keys"),
    (lambda h: h.update(attr=[["base_color", 4], ["alpha", 1]], raw_size=h["num_voxel"] * 17), "stream 'base_color'"),
    (lambda h: h.update(chunk_size=6), "chunk_size"),
    (lambda h: h.update(compression="brotli"), "compression"),
    (lambda h: h.update(compression_level=42), "compression_level"),
    (lambda h: h.update(filter=None), "filter"),
    (lambda h: h.update(attr="base_color"), "attr"),
])
def test_vxz_reader_rejects_lying_headers(tmp_path, sample_file, lie, message):
    header, binary = split_file(sample_file)
    lie(header)
    path = tmp_path / "lying.vxz"
    path.write_bytes(join_file(header, binary))
    with pytest.raises(ValueError, match=message) as error:
        io.read_vxz(path)
    assert "lying.vxz" in str(error.value)


def test_vxz_reader_rejects_bad_json(tmp_path):
    path = tmp_path / "json.vxz"
    for text in (b"{not json", b"[" * 100_000, b"\xff\xfe", b"[1, 2]"):
        path.write_bytes(b"VXZ\x00" + struct.pack(">I", 8 + len(text)) + text)
        with pytest.raises(ValueError, match="corrupt .vxz header"):
            io.read_vxz(path)


def test_vxz_lzma_bomb_is_bounded(tmp_path):
    # A stream that inflates far beyond what the header allows must be refused, not allocated.
    data = io.encode_vxz(np.array([[0, 0, 0]]), {"a": np.zeros((1, 1), np.uint8)}, chunk_size=2)
    header, _ = split_file(data)
    compress = codecs.make_compressor("lzma", 9)
    svo, bomb = compress(io.svo_encode(np.array([0]), 1).tobytes()), compress(bytes(5_000_000))
    header["chunks"][0].update(svo=[0, len(svo)], a=[len(svo), len(bomb)], ptr=[0, len(svo) + len(bomb)])
    header["compressed_size"] = len(svo) + len(bomb)
    with pytest.raises(ValueError, match=r"stream 'a': decompresses to more than the 1 bytes"):
        io.decode_vxz(join_file(header, svo + bomb))


# ---------------------------------------------------------------------------------------------------------------
# .npz, .ply and dispatch


def test_npz_round_trip_and_layout(tmp_path):
    rng = np.random.default_rng(11)
    coords, attrs = random_voxels(rng, 200, 60000)
    attrs["weight"] = rng.random(len(coords)).astype(np.float32)
    for compressed in (True, False):
        path = tmp_path / f"v{compressed}.npz"
        io.write_npz(path, coords, attrs, compressed=compressed)
        with np.load(path) as archive:
            assert archive.files == ["coord", "base_color", "alpha", "weight"]
            assert archive["coord"].dtype == np.uint16
        read_coords, read_attrs = io.read_npz(path)
        assert read_coords.dtype == np.int32 and np.array_equal(read_coords, coords)
        assert all(np.array_equal(read_attrs[k], v) and read_attrs[k].dtype == v.dtype for k, v in attrs.items())


def test_npz_rejects_bad_inputs_and_files(tmp_path):
    path = tmp_path / "v.npz"
    with pytest.raises(ValueError, match="at most 65535"):
        io.write_npz(path, np.array([[70000, 0, 0]]), {})
    with pytest.raises(ValueError, match="reserved"):
        io.write_npz(path, np.array([[1, 0, 0]]), {"coord": np.zeros(1)})
    path.write_bytes(b"garbage that is not a zip archive")
    with pytest.raises(ValueError, match=r"v\.npz: not a readable \.npz"):
        io.read_npz(path)
    np.savez(path, other=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="no 'coord' array"):
        io.read_npz(path)
    np.savez(path, coord=np.zeros((3, 3), np.uint16), a=np.zeros(2))
    with pytest.raises(ValueError, match="expected 3 rows"):
        io.read_npz(path)
    io.write_npz(path, np.array([[1, 2, 3]]), {"a": np.ones((1, 2), np.uint8)})
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(ValueError, match="not a readable"):
        io.read_npz(path)


def test_ply_round_trip_and_property_names(tmp_path):
    from plyfile import PlyData

    rng = np.random.default_rng(12)
    coords, attrs = random_voxels(rng, 150, 5000)
    attrs["normal_map"] = rng.standard_normal((len(coords), 2))
    attrs["label"] = rng.integers(-100, 100, len(coords)).astype(np.int16)
    path = tmp_path / "v.ply"
    io.write_ply(path, coords, attrs)
    vertex = PlyData.read(path)["vertex"]
    assert [p.name for p in vertex.properties] == [
        "x", "y", "z", "base_color_0", "base_color_1", "base_color_2", "alpha_0", "normal_map_0", "normal_map_1",
        "label_0"]
    assert vertex.data.dtype["x"] == np.float32 and vertex.data.dtype["normal_map_0"] == np.float64
    read_coords, read_attrs = io.read_ply(path)
    assert read_coords.dtype == np.int32 and np.array_equal(read_coords, coords)
    assert list(read_attrs) == ["base_color", "alpha", "normal_map", "label"]
    assert np.array_equal(read_attrs["label"], attrs["label"][:, None])
    assert np.array_equal(read_attrs["normal_map"], attrs["normal_map"])


def test_ply_reads_foreign_files_and_rejects_bad_ones(tmp_path):
    from plyfile import PlyData, PlyElement

    table = np.array([(1.4, 2.6, -0.0, 7, 8), (3.0, 4.0, 5.0, 9, 10)],
                     dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("uv_1", "u1")])
    path = tmp_path / "foreign.ply"
    PlyData([PlyElement.describe(table, "vertex")], text=True).write(path)
    with pytest.raises(ValueError, match=r"'uv' has channels \[1\]"):
        io.read_ply(path)
    table = table[["x", "y", "z", "red"]]
    PlyData([PlyElement.describe(np.array(table.tolist(), dtype=[(n, table.dtype[n]) for n in table.dtype.names]),
                                 "vertex")], text=True).write(path)
    coords, attrs = io.read_ply(path)
    assert coords.tolist() == [[1, 3, 0], [3, 4, 5]] and attrs["red"].ravel().tolist() == [7, 9]
    path.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 10\nproperty float x\nend_header\n\x00")
    with pytest.raises(ValueError, match=r"foreign\.ply: not a readable PLY"):
        io.read_ply(path)
    with pytest.raises(TypeError, match="PLY cannot store"):
        io.write_ply(path, np.array([[0, 0, 0]]), {"a": np.zeros(1, np.int64)})
    with pytest.raises(ValueError, match="whitespace"):
        io.write_ply(path, np.array([[0, 0, 0]]), {"a b": np.zeros(1, np.uint8)})


@pytest.mark.parametrize("suffix", [".vxz", ".npz", ".ply", ".VXZ"])
def test_dispatch_by_extension(tmp_path, suffix):
    rng = np.random.default_rng(13)
    coords, attrs = random_voxels(rng, 80, 20)
    path = tmp_path / f"voxels{suffix}"
    io.write(path, coords, attrs)
    read_coords, read_attrs = io.read(path)
    order = np.lexsort(read_coords.T[::-1])
    expected = np.lexsort(coords.T[::-1])
    assert np.array_equal(read_coords[order], coords[expected])
    assert np.array_equal(read_attrs["base_color"][order], attrs["base_color"][expected])


def test_dispatch_options_and_unknown_extension(tmp_path):
    path = tmp_path / "v.vxz"
    io.write(path, np.array([[0, 0, 0]]), {}, compression="deflate", chunk_size=16)
    assert io.read_vxz_info(path)["compression"] == "deflate"
    with pytest.raises(ValueError, match=r"unknown voxel file extension '\.obj'"):
        io.write(tmp_path / "v.obj", np.array([[0, 0, 0]]), {})
    with pytest.raises(ValueError, match="unknown voxel file extension"):
        io.read(tmp_path / "v")
