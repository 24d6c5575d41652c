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

from typing import TYPE_CHECKING

from omnivox._lazy import lazy_exports

# Public name -> submodule, imported on first use (see omnivox._lazy): the octree and filter kernels need numba,
# which reading a header does not.
_EXPORTS = {
    "decode_filter": "filters",
    "decode_vxz": "vxz",
    "encode_filter": "filters",
    "encode_vxz": "vxz",
    "read": "dispatch",
    "read_npz": "npz",
    "read_ply": "ply",
    "read_vxz": "vxz",
    "read_vxz_info": "vxz",
    "svo_decode": "svo",
    "svo_encode": "svo",
    "write": "dispatch",
    "write_npz": "npz",
    "write_ply": "ply",
    "write_vxz": "vxz",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

if TYPE_CHECKING:
    from omnivox.ovoxel.io.dispatch import read, write
    from omnivox.ovoxel.io.filters import decode_filter, encode_filter
    from omnivox.ovoxel.io.npz import read_npz, write_npz
    from omnivox.ovoxel.io.ply import read_ply, write_ply
    from omnivox.ovoxel.io.svo import svo_decode, svo_encode
    from omnivox.ovoxel.io.vxz import decode_vxz, encode_vxz, read_vxz, read_vxz_info, write_vxz
