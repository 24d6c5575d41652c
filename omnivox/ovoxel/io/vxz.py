"""`.vxz` files: chunked, octree-coded, compressed sparse voxels with uint8 attributes (spec ovoxel.md 5.1).

Layout::

    bytes 0..2   b"VXZ"
    byte  3      version, 0
    bytes 4..7   big-endian uint32: start of the binary section = 8 + len(JSON)
    bytes 8..    UTF-8 JSON header, ``json.dumps`` with its default separators ", " and ": "
    then         binary section: one blob per chunk

The grid is cut into cubes of ``chunk_size`` voxels per axis. Chunks are stored in lexicographic ``(cx, cy, cz)``
order; inside a chunk, voxels are sorted by the Z-order code of their local coordinates. A chunk blob is the
compressed octree of its voxels (:mod:`omnivox.ovoxel.io.svo`) followed by the compressed attribute streams,
each compressed on its own. The attribute rows are first concatenated along channels in dict order and passed
through a reversible filter (:mod:`omnivox.ovoxel.io.filters`); ``attr_interleave`` then decides how rows are
split into streams:

* ``"as_is"`` one stream per attribute, row-major, named after the attribute;
* ``"none"``  one stream per channel, named ``f"{name}_{channel}"``;
* ``"all"``   one row-major stream of all channels, named ``"attr"``.

The writer is byte-identical to the reference writer for the same input and options (header key order,
number formatting, codec settings). One optional key of ours may follow the reference's keys: ``"source_up_axis"``,
the up axis (``"y"`` or ``"z"``) of the asset file the voxels were converted from (the voxels themselves are in the
Z-up data frame, ``omnivox.assets.frames``); readers that do not know it ignore it. Reading returns voxels in file order, which depends only on the voxel set
and ``chunk_size``: it equals global Z-order only when the whole grid fits in one chunk.

Array convention: writers take NumPy arrays or torch tensors; readers return NumPy arrays (wrap them with
``torch.from_numpy`` without a copy).

Example (the 296-byte file of the spec's golden test)::

    >>> import numpy as np
    >>> data = encode_vxz(np.array([[0, 0, 0], [1, 0, 0], [3, 3, 3]]),
    ...                   {"a": np.array([10, 20, 30], np.uint8)}, chunk_size=4, compression="none")
    >>> len(data), data[-6:].hex()
    (296, '8111800a141e')
"""

from __future__ import annotations

import json
import os
import struct
from typing import Mapping, Optional, Union

import numpy as np

from omnivox.ovoxel.io import compression as codecs

# The octree, filter and Z-order code modules (numba kernels, torch) load inside the functions that encode or
# decode voxels, so reading a header (`read_vxz_info`, `omnivox info`) imports neither numba nor torch.
PathLike = Union[str, os.PathLike]
FILTERS = ("none", "parent", "neighbor")  # the names `omnivox.ovoxel.io.filters` implements

MAGIC = b"VXZ"
VERSION = 0
PREAMBLE_SIZE = 8
INTERLEAVES = ("none", "as_is", "all")
MIN_CHUNK_SIZE = 2
MAX_CHUNK_SIZE = 1024  # chunk-local Z-order codes have 10 bits per axis
MAX_VOXELS = 2**31 - 1  # the reference counts voxels in C ints
_CHUNK_KEYS = ("idx", "svo", "ptr")
SOURCE_UP_AXES = (None, "y", "z")


# --------------------------------------------------------------------------------------------------------------
# Writing


def write_vxz(path: PathLike, coords, attrs: Mapping, **options) -> None:
    """Write voxels and their uint8 attributes to a `.vxz` file.

    ``coords``, ``attrs`` and the keyword ``options`` (chunk_size, filter, compression, compression_level,
    attr_interleave, source_up_axis) are those of :func:`encode_vxz`; the file is only created once encoding has
    succeeded.
    """
    data = encode_vxz(coords, attrs, **options)
    with open(path, "wb") as handle:
        handle.write(data)


def encode_vxz(
    coords,
    attrs: Mapping,
    chunk_size: int = 256,
    filter: str = "none",
    compression: str = "lzma",
    compression_level: int | None = None,
    attr_interleave: str = "as_is",
    source_up_axis: str | None = None,
) -> bytes:
    """The bytes of a `.vxz` file.

    An empty voxel set is written as a file with no chunks and ``compress_ratio`` 1.0 (the reference would
    divide 0 by 0); the reference reader cannot read such a file, ours can.

    Args:
        coords: (N, 3) non-negative integer voxel coordinates, unique, in any order (NumPy or torch).
        attrs: name -> (N, C) or (N,) uint8 array/tensor, rows aligned with ``coords``. A (N,) attribute is
            stored with one channel and reads back as (N, 1).
        chunk_size: edge of a chunk in voxels, a power of two in [2, 1024].
        filter: attribute filter, ``"none"``, ``"parent"`` or ``"neighbor"``.
        compression: ``"lzma"``, ``"deflate"``, ``"zstd"`` (needs ``omnivox[zstd]``) or ``"none"``.
        compression_level: codec level; ``None`` or ``0`` pick the codec default (9, 9, 22, 0), reproducing the
            reference's handling of 0 (quirk 12, see :func:`omnivox.ovoxel.io.compression.resolve_level`).
        attr_interleave: how attribute bytes are split into streams, ``"as_is"``, ``"none"`` or ``"all"``.
        source_up_axis: ``"y"`` or ``"z"``, recorded in the header (module docstring); None writes the
            reference's header exactly.

    Returns:
        The file content.

    Raises:
        TypeError: non-integer coordinates, a non-uint8 attribute, ``attrs`` not a dict.
        ValueError: bad shapes, negative or duplicate coordinates, a bad option, or an attribute name that
            clashes with a chunk-entry key.
    """
    from omnivox.ovoxel.io._inputs import check_attrs, check_coords
    from omnivox.ovoxel.io.filters import encode_filter
    from omnivox.ovoxel.io.svo import svo_encode

    depth = _check_chunk_size(chunk_size)
    chunk_size = int(chunk_size)  # a NumPy integer would not serialise to JSON
    if filter not in FILTERS:
        raise ValueError(f"filter must be one of {FILTERS}, got {filter!r}")
    if attr_interleave not in INTERLEAVES:
        raise ValueError(f"attr_interleave must be one of {INTERLEAVES}, got {attr_interleave!r}")
    if source_up_axis not in SOURCE_UP_AXES:
        raise ValueError(f"source_up_axis must be one of {SOURCE_UP_AXES}, got {source_up_axis!r}")
    level = codecs.resolve_level(compression, compression_level)
    points = check_coords(coords)
    if points.shape[0] > MAX_VOXELS:
        raise ValueError(f"a .vxz file holds at most {MAX_VOXELS} voxels, got {points.shape[0]}")
    attributes = {
        name: value[:, None] if value.ndim == 1 else value
        for name, value in check_attrs(attrs, points.shape[0], uint8_only=True).items()
    }
    channels = [(name, value.shape[1]) for name, value in attributes.items()]
    stream_layout = _stream_layout(channels, attr_interleave)
    compress = codecs.make_compressor(compression, level)

    order, local_codes, chunks = _sort_into_chunks(points, depth)
    num_voxels = points.shape[0]
    if attributes:
        rows = np.concatenate(list(attributes.values()), axis=1)[order]
    else:
        rows = np.zeros((num_voxels, 0), dtype=np.uint8)

    chunk_entries = []
    blobs = []
    binary_size = 0
    for start, stop, chunk_index in chunks:
        codes = local_codes[start:stop]
        streams = [("svo", compress(svo_encode(codes, depth).tobytes()))]
        filtered = encode_filter(filter, codes, rows[start:stop], depth)
        streams += [(name, compress(_stream_bytes(filtered, columns))) for name, columns in stream_layout]
        entry = {"idx": chunk_index}
        offset = 0
        for name, blob in streams:
            entry[name] = [offset, len(blob)]
            offset += len(blob)
        entry["ptr"] = [binary_size, offset]
        binary_size += offset
        chunk_entries.append(entry)
        blobs.extend(blob for _, blob in streams)

    raw_size = 4 * points.size + sum(value.size for value in attributes.values())
    header = {
        "num_voxel": num_voxels,
        "chunk_size": chunk_size,
        "filter": filter,
        "compression": compression,
        "compression_level": level,
        "raw_size": raw_size,
        "compressed_size": binary_size,
        "compress_ratio": raw_size / binary_size if binary_size else 1.0,
        "attr_interleave": attr_interleave,
        "attr": [[name, count] for name, count in channels],
        "chunks": chunk_entries,
    }
    if source_up_axis is not None:
        header["source_up_axis"] = source_up_axis
    header_bytes = json.dumps(header).encode("utf-8")
    preamble = MAGIC + bytes([VERSION]) + struct.pack(">I", PREAMBLE_SIZE + len(header_bytes))
    return b"".join([preamble, header_bytes, *blobs])


def _check_chunk_size(chunk_size) -> int:
    valid = (
        isinstance(chunk_size, (int, np.integer))
        and not isinstance(chunk_size, bool)
        and MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE
        and chunk_size & (chunk_size - 1) == 0
    )
    if not valid:
        raise ValueError(
            f"chunk_size must be a power of two in [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}], got {chunk_size!r}"
        )
    return int(chunk_size).bit_length() - 1


def _stream_layout(channels, interleave: str):
    """[(stream name, column slice of the concatenated rows)] for one chunk, in file order."""
    layout = []
    first = 0
    for name, count in channels:
        if interleave == "as_is":
            layout.append((name, slice(first, first + count)))
        elif interleave == "none":
            layout.extend((f"{name}_{c}", slice(first + c, first + c + 1)) for c in range(count))
        first += count
    if interleave == "all":
        layout.append(("attr", slice(0, first)))
    names = [name for name, _ in layout]
    clashes = sorted({n for n in names if n in _CHUNK_KEYS or names.count(n) > 1})
    if clashes:
        raise ValueError(
            f"attribute stream names {clashes} clash with the chunk keys {_CHUNK_KEYS} or with each other "
            f"(attr_interleave={interleave!r}); rename the attributes"
        )
    return layout


def _stream_bytes(rows: np.ndarray, columns: slice) -> bytes:
    return np.ascontiguousarray(rows[:, columns]).tobytes()


def _sort_into_chunks(points: np.ndarray, depth: int):
    """File order of the voxels: by chunk index (lexicographic), then by local Z-order code.

    Returns:
        order: (N,) int64 permutation of the input rows.
        local_codes: (N,) int64 local Z-order code of each voxel, in file order.
        chunks: list of (start, stop, [cx, cy, cz]) row ranges of the chunks, in file order.

    Raises:
        ValueError: duplicate coordinates.
    """
    from omnivox.ovoxel.serialize import encode_seq

    count = points.shape[0]
    if count == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), []
    chunk = points >> depth
    local_codes = encode_seq(points & ((1 << depth) - 1)).astype(np.int64)
    chunk_bits = int(chunk.max()).bit_length()
    code_bits = 3 * depth
    index_bits = max(1, (count - 1).bit_length())
    if 3 * chunk_bits + code_bits + index_bits <= 63:
        # Fast path: pack (chunk, code, row) into one int64 and sort the values; np.sort is several times faster
        # than argsort or a 4-key lexsort, and the row index comes back from the low bits.
        chunk_key = (chunk[:, 0] << (2 * chunk_bits)) | (chunk[:, 1] << chunk_bits) | chunk[:, 2]
        key = (chunk_key << code_bits) | local_codes
        packed = np.sort((key << index_bits) | np.arange(count, dtype=np.int64))
        order = packed & ((1 << index_bits) - 1)
        key = packed >> index_bits
        local_codes = key & ((1 << code_bits) - 1)
        chunk_key = key >> code_bits
        same_voxel = key[1:] == key[:-1]
        starts = np.flatnonzero(np.concatenate([[True], chunk_key[1:] != chunk_key[:-1]]))
        # Only the first voxel of each chunk needs its chunk index spelled out.
        chunk_indices = chunk[order[starts]]
    else:
        order = np.lexsort((local_codes, chunk[:, 2], chunk[:, 1], chunk[:, 0]))
        chunk = chunk[order]
        local_codes = local_codes[order]
        new_chunk = (chunk[1:] != chunk[:-1]).any(axis=1)
        same_voxel = ~new_chunk & (local_codes[1:] == local_codes[:-1])
        starts = np.flatnonzero(np.concatenate([[True], new_chunk]))
        chunk_indices = chunk[starts]
    if same_voxel.any():
        first = int(order[np.flatnonzero(same_voxel)[0] + 1])
        raise ValueError(
            f"coords must be unique, but {points[first].tolist()} appears more than once "
            f"({int(same_voxel.sum())} duplicate rows)"
        )
    stops = np.append(starts[1:], count)
    chunks = [(int(a), int(b), index.tolist()) for a, b, index in zip(starts, stops, chunk_indices, strict=True)]
    return order, local_codes, chunks


# --------------------------------------------------------------------------------------------------------------
# Reading


# Limits on what a file may make the reader allocate (its header's claims are checked against them before any
# voxel is decoded). The voxel count bounds memory (about 40 bytes per voxel while decoding); the ratio of the
# claimed raw size to the compressed size stops small files that claim huge contents: a flat single-colour
# 512^2 plane, about the most compressible real content, has a ratio near 2,800, LZMA's ceiling is near 7,000.
DEFAULT_MAX_VOXELS = 2**27
DEFAULT_MAX_RATIO = 4096
_RATIO_FREE_BYTES = 64 * 2**20  # contents up to this raw size are never refused by ratio


def check_vxz_limits(header: dict, max_voxels: Optional[int] = None, max_ratio: Optional[float] = None,
                     source: str = "<bytes>") -> None:
    """Raise ValueError when a parsed header (`read_vxz_info`) claims more than the limits allow."""
    max_voxels = DEFAULT_MAX_VOXELS if max_voxels is None else max_voxels
    max_ratio = DEFAULT_MAX_RATIO if max_ratio is None else max_ratio
    if header["num_voxel"] > max_voxels:
        raise ValueError(f"{source}: the file claims {header['num_voxel']} voxels, more than the limit {max_voxels} "
                         "(raise it with max_voxels= / --max-voxels for trusted files)")
    raw, compressed = header["raw_size"], max(1, header["compressed_size"])
    if raw > _RATIO_FREE_BYTES and raw > max_ratio * compressed:
        raise ValueError(f"{source}: the file claims {raw} bytes of voxel data in {compressed} compressed bytes "
                         f"(ratio {raw / compressed:.0f}, limit {max_ratio:g}); refused as a decompression bomb")


def read_vxz(path: PathLike, max_voxels: Optional[int] = None, max_ratio: Optional[float] = None
             ) -> tuple[np.ndarray, dict]:
    """Read a `.vxz` file, whatever its filter, compression and interleave.

    **[quirk 12, fixed]** The reference reader fails on files written with ``attr_interleave="all"``; this one
    reads them like the other layouts.

    Args:
        path: the file.
        max_voxels: refuse files claiming more voxels (default ``DEFAULT_MAX_VOXELS``).
        max_ratio: refuse files whose claimed raw size exceeds this multiple of their compressed size (above
            64 MiB raw; default ``DEFAULT_MAX_RATIO``). Both are checked before any voxel is decoded.

    Returns:
        coords: (N, 3) int32 voxel coordinates in file order (chunk order, then local Z-order).
        attrs: dict name -> (N, C) uint8, in the header's order.

    Raises:
        ValueError: the file is not a `.vxz` file, is truncated or corrupt, or its header contradicts its data;
            the message names the file.
    """
    with open(path, "rb") as handle:
        file_size = os.fstat(handle.fileno()).st_size
        preamble = handle.read(PREAMBLE_SIZE)
        binary_start = _parse_preamble(preamble, file_size, os.fspath(path))
        header = _parse_header(handle.read(binary_start - PREAMBLE_SIZE), file_size - binary_start, os.fspath(path))
        check_vxz_limits(header, max_voxels, max_ratio, os.fspath(path))  # before the data is read
        handle.seek(0)
        data = handle.read()
    return decode_vxz(data, source=os.fspath(path), max_voxels=max_voxels, max_ratio=max_ratio)


def read_vxz_info(path: PathLike) -> dict:
    """The JSON header of a `.vxz` file, read without touching the voxel data.

    Returns:
        The header dict (``num_voxel``, ``chunk_size``, ``filter``, ``compression``, ``compression_level``,
        ``raw_size``, ``compressed_size``, ``compress_ratio``, ``attr_interleave``, ``attr``, ``chunks``), checked
        for consistency with itself and with the file size.

    Raises:
        ValueError: not a `.vxz` file, or an inconsistent header.
    """
    source = os.fspath(path)
    with open(path, "rb") as handle:
        file_size = os.fstat(handle.fileno()).st_size
        preamble = handle.read(PREAMBLE_SIZE)
        binary_start = _parse_preamble(preamble, file_size, source)
        header_bytes = handle.read(binary_start - PREAMBLE_SIZE)
    return _parse_header(header_bytes, file_size - binary_start, source)


def decode_vxz(data: bytes, source: str = "<bytes>", max_voxels: Optional[int] = None,
               max_ratio: Optional[float] = None) -> tuple[np.ndarray, dict]:
    """Decode the bytes of a `.vxz` file; :func:`read_vxz` without the file. ``source`` names it in errors."""
    data = bytes(data)
    binary_start = _parse_preamble(data[:PREAMBLE_SIZE], len(data), source)
    header = _parse_header(data[PREAMBLE_SIZE:binary_start], len(data) - binary_start, source)
    check_vxz_limits(header, max_voxels, max_ratio, source)
    try:
        return _decode_body(data, binary_start, header, source)
    except ValueError:
        raise
    except MemoryError as error:
        raise ValueError(f"{source}: cannot read (out of memory)") from error
    except Exception as error:  # one boundary: whatever a decoder raises, the caller gets the file and the cause
        raise ValueError(f"{source}: cannot read ({type(error).__name__}: {error})") from error


def _decode_body(data: bytes, binary_start: int, header: dict, source: str) -> tuple[np.ndarray, dict]:
    binary = memoryview(data)[binary_start:]
    total_channels = sum(count for _, count in header["attr"])

    coord_parts, row_parts = [], []
    decoded = 0
    for number, entry in enumerate(header["chunks"]):
        blob_start, blob_size = entry["ptr"]
        coords, rows = _decode_chunk(
            binary[blob_start:blob_start + blob_size], entry, header, header["num_voxel"] - decoded,
            f"{source}: chunk {number} {entry['idx']}",
        )
        coord_parts.append(coords)
        row_parts.append(rows)
        decoded += coords.shape[0]

    if decoded != header["num_voxel"]:
        raise ValueError(f"{source}: header says {header['num_voxel']} voxels, the chunks hold {decoded}")
    coords = np.concatenate(coord_parts).astype(np.int32) if coord_parts else np.zeros((0, 3), np.int32)
    rows = np.concatenate(row_parts) if row_parts else np.zeros((0, total_channels), np.uint8)
    attrs = {}
    first = 0
    for name, count in header["attr"]:
        attrs[name] = np.ascontiguousarray(rows[:, first:first + count])
        first += count
    return coords, attrs


def _decode_chunk(blob: memoryview, entry: dict, header: dict, room: int, where: str):
    """Decode one chunk blob into ((n, 3) int64 coords, (n, C) uint8 rows); ``room`` bounds n."""
    from omnivox.ovoxel.io.filters import decode_filter
    from omnivox.ovoxel.io.svo import svo_decode
    from omnivox.ovoxel.serialize import decode_seq

    chunk_size = header["chunk_size"]
    depth = chunk_size.bit_length() - 1
    total_channels = sum(count for _, count in header["attr"])

    def stream(name: str, max_size: int) -> bytes:
        offset, size = entry[name]
        return codecs.decompress(blob[offset:offset + size], header["compression"], header["compression_level"],
                                 max_size, f"{where} stream {name!r}")

    # An octree stores at most `depth` bytes per voxel.
    octree = stream("svo", max(1, min(room, chunk_size**3) * depth))
    try:
        codes = svo_decode(np.frombuffer(octree, dtype=np.uint8), depth, room)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    count = codes.shape[0]
    rows = np.empty((count, total_channels), dtype=np.uint8)
    for name, columns in _stream_layout([tuple(pair) for pair in header["attr"]], header["attr_interleave"]):
        width = columns.stop - columns.start
        content = stream(name, count * width)
        if len(content) != count * width:
            raise ValueError(
                f"{where} stream {name!r}: holds {len(content)} bytes, but {count} voxels x {width} channels "
                f"need {count * width}"
            )
        rows[:, columns] = np.frombuffer(content, dtype=np.uint8).reshape(count, width)
    rows = decode_filter(header["filter"], codes, rows, depth)
    coords = decode_seq(codes) + np.asarray(entry["idx"], dtype=np.int64) * chunk_size
    return coords, rows


def _parse_preamble(preamble: bytes, file_size: int, source: str) -> int:
    """Check the magic and version; return the start of the binary section."""
    if len(preamble) < PREAMBLE_SIZE:
        raise ValueError(f"{source}: not a .vxz file (only {len(preamble)} bytes)")
    if preamble[:3] != MAGIC:
        raise ValueError(f"{source}: not a .vxz file (starts with {preamble[:3]!r}, expected {MAGIC!r})")
    if preamble[3] != VERSION:
        raise ValueError(f"{source}: unsupported .vxz version {preamble[3]} (this reader knows version {VERSION})")
    binary_start = struct.unpack(">I", preamble[4:8])[0]
    if not PREAMBLE_SIZE < binary_start <= file_size:
        raise ValueError(
            f"{source}: header claims the data starts at byte {binary_start}, but the file has {file_size} bytes "
            "(truncated or corrupt)"
        )
    return binary_start


def _parse_header(header_bytes: bytes, binary_size: int, source: str) -> dict:
    """Parse the JSON header and check everything the reader relies on, before any data is decoded."""
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise ValueError(f"{source}: corrupt .vxz header ({type(error).__name__}: {error})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{source}: corrupt .vxz header (not a JSON object)")

    def fail(message: str):
        raise ValueError(f"{source}: bad .vxz header: {message}")

    def require(key: str, kind, check=None, expected: str = ""):
        if key not in header:
            fail(f"missing key {key!r}")
        value = header[key]
        if not isinstance(value, kind) or isinstance(value, bool) or (check is not None and not check(value)):
            fail(f"{key!r} must be {expected or kind.__name__}, got {value!r}")
        return value

    num_voxel = require("num_voxel", int, lambda v: 0 <= v <= MAX_VOXELS, f"an int in [0, {MAX_VOXELS}]")
    chunk_size = require(
        "chunk_size", int, lambda v: MIN_CHUNK_SIZE <= v <= MAX_CHUNK_SIZE and v & (v - 1) == 0,
        f"a power of two in [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}]",
    )
    require("filter", str, lambda v: v in FILTERS, f"one of {FILTERS}")
    if header.get("source_up_axis") not in SOURCE_UP_AXES:
        fail(f"'source_up_axis' must be 'y' or 'z', got {header['source_up_axis']!r}")
    codec = require("compression", str, lambda v: v in codecs.CODECS, f"one of {codecs.CODECS}")
    low, high = codecs.LEVEL_RANGES[codec]
    require("compression_level", int, lambda v: low <= v <= high, f"an int in [{low}, {high}] for {codec!r}")
    interleave = require("attr_interleave", str, lambda v: v in INTERLEAVES, f"one of {INTERLEAVES}")
    attr = require(
        "attr", list,
        lambda v: all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and p[0]
                      and isinstance(p[1], int) and not isinstance(p[1], bool) and p[1] > 0 for p in v)
        and len({p[0] for p in v}) == len(v),
        "a list of [name, channels > 0] pairs with unique names",
    )
    try:
        layout = _stream_layout([tuple(pair) for pair in attr], interleave)
    except ValueError as error:
        fail(str(error))
    total_channels = sum(count for _, count in attr)
    raw_size = require("raw_size", int)
    if raw_size != num_voxel * (12 + total_channels):
        fail(f"raw_size {raw_size} does not match {num_voxel} voxels with {total_channels} attribute channels")
    if require("compressed_size", int) != binary_size:
        fail(f"compressed_size {header['compressed_size']} but the file has {binary_size} data bytes "
             "(truncated or trailing data)")

    chunks = require("chunks", list)
    if num_voxel > len(chunks) * chunk_size**3:
        fail(f"{num_voxel} voxels cannot fit in {len(chunks)} chunks of {chunk_size}^3")
    stream_names = ["svo"] + [name for name, _ in layout]
    seen = set()
    for number, entry in enumerate(chunks):
        if not isinstance(entry, dict):
            fail(f"chunk {number} is not an object")
        missing = [key for key in (*_CHUNK_KEYS, *stream_names) if key not in entry]
        if missing:
            fail(f"chunk {number} lacks the keys {missing}")
        index = entry["idx"]
        if not (isinstance(index, list) and len(index) == 3 and all(_is_int(v) for v in index)):
            fail(f"chunk {number} 'idx' must be 3 ints, got {index!r}")
        if any(v < 0 or (v + 1) * chunk_size - 1 > 2**31 - 1 for v in index):
            fail(f"chunk {number} index {index} puts voxels outside [0, 2**31)")
        if tuple(index) in seen:
            fail(f"chunk index {index} appears twice")
        seen.add(tuple(index))
        blob_size = _check_range(entry["ptr"], binary_size, f"chunk {number} 'ptr'", fail)
        for name in stream_names:
            _check_range(entry[name], blob_size, f"chunk {number} stream {name!r}", fail)
    return header


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_range(pair, limit: int, what: str, fail) -> int:
    """Check an [offset, length] pair against a region of ``limit`` bytes; return the length."""
    if not (isinstance(pair, list) and len(pair) == 2 and all(_is_int(v) and v >= 0 for v in pair)):
        fail(f"{what} must be [offset, length] with non-negative ints, got {pair!r}")
    if pair[0] + pair[1] > limit:
        fail(f"{what} = {pair} runs past the end of its {limit}-byte region")
    return pair[1]
