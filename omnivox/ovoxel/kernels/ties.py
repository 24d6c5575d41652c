"""Crossings exactly on a lattice vertex: one rule for both backends (a deliberate departure from the reference;
design.md, "Crossings on a lattice vertex").

The reference's scan puts a crossing at height exactly ``K`` on the lattice edge above it, on every axis. Where the
surface passes exactly through a lattice vertex, that is not one consistent choice: the three axis lines through
the vertex need the vertex on one side of the surface, and "above on every axis" puts it on different sides for
different axes. Along a lattice line that lies in the surface (the demo's sheet, issue 25 item 7) the extracted
surface then opens into a crack with a dangling fin: about 600 open edges at 256^3.

Every such tie is decided here as if the lattice were moved by ``-(ex, ey, ez)`` with ``ez >> ex >> ey > 0``
(simulation of simplicity). That order agrees with the scan's half-open row and column rules, which decide which
triangle a z line or a y line through a mesh edge belongs to as such a move would. The crossing's height, moved
with its line, then lies below the moved lattice plane (the edge below takes it) exactly when:

* z lines: never (``ez`` dominates the line's own move): the reference's edge above;
* x lines: ``n_z * n_x < 0``; the edge above where ``n_z == 0``;
* y lines: ``n_z * n_y < 0``; where ``n_z == 0``, ``n_x * n_y < 0``; the edge above where both are zero;

with ``n`` the crossing triangle's normal; only the signs of its components matter. What it does not settle: x
lines through a mesh edge in projection at the same time (the scan's claim order there is y before z) and faces
lying in a lattice plane; such inputs extract as in the reference, with a few open or doubled edges. Crossings not
exactly on a lattice vertex are untouched, so meshes without such ties convert bit-identically to the reference.
"""

from __future__ import annotations

import numpy as np


def settle_vertex_ties(triangles: np.ndarray, tri: np.ndarray, axis: np.ndarray, owner: np.ndarray,
                       tie: np.ndarray) -> None:
    """Move the owner of every tied crossing that belongs to the edge below one step down along its axis, in place.

    Args:
        triangles: (T, 3, 3) float32 triangles of the scan.
        tri: (M,) triangle of each crossing.
        axis: (M,) axis of each crossing's lattice line.
        owner: (M, 3) int32 owner voxel of each crossing's edge; changed in place.
        tie: (M,) bool, the crossings exactly on a lattice vertex.
    """
    ties = np.flatnonzero(tie)
    if len(ties) == 0:
        return
    P = triangles[tri[ties]].astype(np.float64)
    n = np.cross(P[:, 1] - P[:, 0], P[:, 2] - P[:, 1])
    sx, sy, sz = np.sign(n[:, 0]), np.sign(n[:, 1]), np.sign(n[:, 2])
    c = axis[ties].astype(np.int64)
    y_line_lead = np.where(sz != 0, sz, sx)  # a y line moves along z first, then along x
    below = np.where(c == 0, sz * sx < 0, np.where(c == 1, y_line_lead * sy < 0, False))
    below &= owner[ties, c] > 0  # the edge below the grid's first plane does not exist: keep it
    owner[ties[below], c[below]] -= 1
