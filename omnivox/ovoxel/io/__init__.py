"""Voxel files: `.vxz` (the TRELLIS.2 container), `.npz` and `.ply`.

    read(path) -> (coords, attrs)           any of the three, chosen by extension
    write(path, coords, attrs, **options)
    read_vxz / write_vxz / read_vxz_info     `.vxz` files; encode_vxz / decode_vxz for bytes in memory
    read_npz / write_npz, read_ply / write_ply
    svo_encode / svo_decode                  the octree coordinate stream of a `.vxz` chunk
    encode_filter / decode_filter            the reversible attribute filters of a `.vxz` chunk

Writers take NumPy arrays or torch tensors; readers return NumPy arrays: coords (N, 3) int32 and a dict of
attributes.
"""

from omnivox.ovoxel.io.dispatch import read, write
from omnivox.ovoxel.io.filters import decode_filter, encode_filter
from omnivox.ovoxel.io.npz import read_npz, write_npz
from omnivox.ovoxel.io.ply import read_ply, write_ply
from omnivox.ovoxel.io.svo import svo_decode, svo_encode
from omnivox.ovoxel.io.vxz import decode_vxz, encode_vxz, read_vxz, read_vxz_info, write_vxz

__all__ = [
    "decode_filter",
    "decode_vxz",
    "encode_filter",
    "encode_vxz",
    "read",
    "read_npz",
    "read_ply",
    "read_vxz",
    "read_vxz_info",
    "svo_decode",
    "svo_encode",
    "write",
    "write_npz",
    "write_ply",
    "write_vxz",
]
