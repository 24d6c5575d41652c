"""Compute kernels of the O-Voxel conversions: numba (CPU), PyTorch (any device), hash tables."""


def kernels_need_compiling() -> bool:
    """Whether numba has no usable cached machine code for the O-Voxel scan (the first kernel a conversion compiles).

    Reads numba's cache index the way numba does before compiling (an index for another source version counts as
    missing). That is numba's internal API; if it changes, the answer is True, which only prints a note.
    """
    try:
        from omnivox.ovoxel.kernels import scan_numba

        return not scan_numba.scan_crossings_as_reference._cache._cache_file._load_index()
    except Exception:  # noqa: BLE001 - any change in numba's internals: say the kernels may need compiling
        return True
