"""The four stream codecs of `.vxz` files, with the exact settings of the reference writer (spec ovoxel.md 5.4).

* ``none``: raw bytes.
* ``deflate``: a raw DEFLATE stream (no zlib or gzip header), ``zlib.compressobj(level, wbits=-15)``.
* ``lzma``: a raw LZMA2 stream (no .xz container, no check) with the filter chain
  ``[{"id": FILTER_LZMA2, "preset": level}]``. The preset also sets the dictionary size, so the reader needs the
  level from the file header.
* ``zstd``: a standard frame from ``zstandard.ZstdCompressor(level, write_checksum=False,
  write_content_size=True, threads=-1)``; needs the optional ``zstandard`` package (``pip install omnivox[zstd]``).

Decompression treats its input as untrusted: output sizes are bounded before anything large is allocated, and
every codec error becomes a ``ValueError`` that says which stream failed.
"""

from __future__ import annotations

import lzma
import numbers
import zlib
from typing import Callable

CODECS = ("none", "deflate", "lzma", "zstd")
DEFAULT_LEVELS = {"none": 0, "deflate": 9, "lzma": 9, "zstd": 22}
# Inclusive level ranges accepted by each library (zstd's negative levels are its "fast" modes).
LEVEL_RANGES = {"none": (0, 2**31 - 1), "deflate": (0, 9), "lzma": (0, 9), "zstd": (-(1 << 17), 22)}


def resolve_level(codec: str, level) -> int:
    """The level written to the header and used by the codec.

    ``None`` and ``0`` both select the codec's default. **[quirk 12, reproduced]** The reference replaces an
    explicit ``0`` by the default too (``level or default``); we keep that so that headers, and therefore files,
    stay byte-identical to the reference for the same arguments. Level 0 of deflate/lzma ("fastest") is thus not
    reachable; use 1.

    Raises:
        ValueError: unknown codec, or a level that is not an int in the codec's range.
    """
    if codec not in CODECS:
        raise ValueError(f"compression must be one of {CODECS}, got {codec!r}")
    if level is None:
        return DEFAULT_LEVELS[codec]
    if isinstance(level, bool) or not isinstance(level, numbers.Integral):
        raise ValueError(f"compression_level must be an int or None, got {level!r}")
    level = int(level)  # NumPy integers would not serialise to JSON
    if level == 0:
        return DEFAULT_LEVELS[codec]
    low, high = LEVEL_RANGES[codec]
    if not low <= level <= high:
        raise ValueError(f"compression_level for {codec!r} must be in [{low}, {high}], got {level}")
    return level


def make_compressor(codec: str, level: int) -> Callable[[bytes], bytes]:
    """A function compressing one stream with ``codec`` at ``level`` (the level is used as given)."""
    if codec == "none":
        return bytes
    if codec == "deflate":

        def deflate(data: bytes) -> bytes:
            compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
            return compressor.compress(data) + compressor.flush()

        return deflate
    if codec == "lzma":
        filters = [{"id": lzma.FILTER_LZMA2, "preset": level}]
        return lambda data: lzma.compress(data, format=lzma.FORMAT_RAW, filters=filters)
    if codec == "zstd":
        zstandard = _import_zstandard()
        # One compressor per file: creating it (and its worker threads) per stream costs more than small streams.
        compressor = zstandard.ZstdCompressor(level=level, write_checksum=False, write_content_size=True, threads=-1)
        return compressor.compress
    raise ValueError(f"compression must be one of {CODECS}, got {codec!r}")


def decompress(data: bytes, codec: str, level: int, max_size: int, what: str) -> bytes:
    """Decompress one stream, refusing output longer than ``max_size`` bytes.

    Args:
        data: the compressed stream, exactly (no bytes before or after it).
        codec: one of :data:`CODECS`.
        level: the level from the header (lzma needs it to rebuild the filter chain).
        max_size: largest acceptable decompressed size in bytes.
        what: description used in error messages, e.g. ``"file.vxz: chunk 3 stream 'svo'"``.

    Returns:
        The decompressed bytes (at most ``max_size``).

    Raises:
        ValueError: corrupt or truncated stream, trailing bytes, or output larger than ``max_size``.
    """
    if codec == "none":
        out = bytes(data)
    elif codec == "deflate":
        out = _inflate(data, max_size, what)
    elif codec == "lzma":
        out = _unlzma(data, level, max_size, what)
    elif codec == "zstd":
        out = _unzstd(data, max_size, what)
    else:
        raise ValueError(f"{what}: unknown compression {codec!r}")
    if len(out) > max_size:
        raise ValueError(f"{what}: decompresses to more than the {max_size} bytes expected")
    return out


def _inflate(data: bytes, max_size: int, what: str) -> bytes:
    decompressor = zlib.decompressobj(-15)
    try:
        out = decompressor.decompress(data, max_size + 1)
    except zlib.error as error:
        raise ValueError(f"{what}: corrupt deflate stream ({error})") from None
    if len(out) > max_size or decompressor.unconsumed_tail:
        raise ValueError(f"{what}: decompresses to more than the {max_size} bytes expected")
    if not decompressor.eof:
        raise ValueError(f"{what}: deflate stream is truncated")
    if decompressor.unused_data:
        raise ValueError(f"{what}: {len(decompressor.unused_data)} unexpected bytes after the deflate stream")
    return out


def _unlzma(data: bytes, level: int, max_size: int, what: str) -> bytes:
    if not 0 <= level <= 9:
        raise ValueError(f"{what}: lzma preset must be in [0, 9], got {level}")
    decompressor = lzma.LZMADecompressor(
        format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "preset": level}]
    )
    try:
        out = decompressor.decompress(data, max_size + 1)
    except lzma.LZMAError as error:
        raise ValueError(f"{what}: corrupt lzma stream ({error})") from None
    if len(out) > max_size:
        raise ValueError(f"{what}: decompresses to more than the {max_size} bytes expected")
    if not decompressor.eof:
        # Either the input ended early, or the output limit stopped it: both mean the stream is not what the
        # header promised.
        if decompressor.needs_input:
            raise ValueError(f"{what}: lzma stream is truncated")
        raise ValueError(f"{what}: decompresses to more than the {max_size} bytes expected")
    if decompressor.unused_data:
        raise ValueError(f"{what}: {len(decompressor.unused_data)} unexpected bytes after the lzma stream")
    return out


def _unzstd(data: bytes, max_size: int, what: str) -> bytes:
    zstandard = _import_zstandard()
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as error:
        raise ValueError(f"{what}: corrupt zstd frame header ({error})") from None
    if declared > max_size:
        raise ValueError(f"{what}: zstd frame declares {declared} bytes, more than the {max_size} expected")
    try:
        # Frames without a declared size (-1) are bounded by max_output_size instead.
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=max_size, allow_extra_data=False)
    except zstandard.ZstdError as error:
        raise ValueError(f"{what}: corrupt or truncated zstd stream ({error})") from None


def _import_zstandard():
    try:
        import zstandard
    except ImportError as error:
        raise ImportError(
            "the 'zstd' compression needs the optional 'zstandard' package: pip install 'omnivox[zstd]'"
        ) from error
    return zstandard
