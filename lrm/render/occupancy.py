"""Coarse occupancy grid of a field, for empty-space skipping in the volume renderer (inference only).

The cube [-r, r]^3 is split into G^3 cells. The field's density is queried (no gradient) at the (G+1)^3 cell
corners; a cell is occupied when any of its corners exceeds ``threshold``, and the occupied set is then dilated
by one cell, so a structure is found whenever it contains a corner (any slab thicker than one cell, 2r/G) and
samples near a found structure are never skipped. Build it once per triplane and pass it to every view
(``VolumeRenderer.__call__(..., occupancy=grid)``); it belongs to the field it was built from.

Coarse first (``coarse_factor`` f > 1, ``render.occupancy_coarse_factor``): the grid at G/f is built as above, and
the fine grid queries only the corners of fine cells inside its (dilated) occupied cells; the other corners count
as empty. That finds every structure containing a coarse corner (a slab thicker than f cells, 2rf/G), plus those
within a coarse cell of one, so it suits fields that are smooth at the coarse scale; the checkpoint that enables it
states the image it measured.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class OccupancyGrid:
    occ: torch.Tensor  # [B, G, G, G] bool, index order (x, y, z), cells of the cube [-radius, radius]^3
    radius: float
    threshold: float

    @property
    def resolution(self) -> int:
        return int(self.occ.shape[-1])

    def fraction(self) -> float:
        return float(self.occ.float().mean())

    def lookup(self, points: torch.Tensor) -> torch.Tensor:
        """Occupancy of points [B, ..., 3] -> bool [B, ...]; points outside the cube are unoccupied."""
        b, g = self.occ.shape[0], self.resolution
        shape = points.shape[:-1]
        p = points.reshape(b, -1, 3)
        cell = torch.floor((p + self.radius) * (g / (2 * self.radius))).long()
        inside = ((cell >= 0) & (cell < g)).all(-1)
        cell = cell.clamp(0, g - 1)
        flat = (cell[..., 0] * g + cell[..., 1]) * g + cell[..., 2]
        hit = self.occ.reshape(b, -1).gather(1, flat)
        return (hit & inside).reshape(shape)


def density_threshold(tolerance: float, path_length: float) -> float:
    """Density below which skipping costs at most ``tolerance`` optical depth over ``path_length`` of samples."""
    return float(tolerance) / max(float(path_length), 1e-12)


def corner_points(resolution: int, radius: float, device=None) -> torch.Tensor:
    """The (G+1)^3 cell corners of the cube, [(G+1)^3, 3], index order (x, y, z)."""
    lin = torch.linspace(-radius, radius, resolution + 1, device=device)
    return torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), -1).reshape(-1, 3)


def cells_from_corners(above: torch.Tensor) -> torch.Tensor:
    """[B, G+1, G+1, G+1] bool corners -> [B, G, G, G] cells with any corner set, dilated by one cell."""
    cells = F.max_pool3d(above[:, None].float(), 2, stride=1)  # any of the 8 corners
    return F.max_pool3d(cells, 3, stride=1, padding=1)[:, 0] > 0


def corners_of_cells(cells: torch.Tensor) -> torch.Tensor:
    """[G, G, G] bool cells -> [(G+1)^3] bool: the corners of any set cell."""
    return F.max_pool3d(F.pad(cells[None, None].float(), (1, 1, 1, 1, 1, 1)), 2, stride=1)[0, 0].reshape(-1) > 0


def densities_at(field, pts: torch.Tensor, batch: int, chunk: int) -> torch.Tensor:
    """Density of ``field`` at the same points [M, 3] for each scene -> [B, M] fp32, ``chunk`` points per call."""
    dens = [field(pts[i:i + chunk][None].expand(batch, -1, -1).contiguous())[0].float()
            for i in range(0, pts.shape[0], chunk)]
    return torch.cat(dens, 1) if dens else torch.zeros(batch, 0, device=pts.device)


@torch.no_grad()
def build_occupancy(field, batch: int, radius: float, resolution: int, threshold: float, device=None,
                    chunk: int = 16384, coarse_factor: int = 1) -> OccupancyGrid:
    """Occupancy grid of ``field`` (``field(points [B, M, 3]) -> (density [B, M], rgb)``) over [-r, r]^3;
    ``coarse_factor`` > 1 (dividing ``resolution``): coarse grid first (module docstring)."""
    n = resolution + 1
    dens = corner_densities(field, batch, radius, resolution, threshold, device, chunk, coarse_factor)
    above = (dens > threshold).reshape(batch, n, n, n)
    return OccupancyGrid(cells_from_corners(above), float(radius), float(threshold))


def corner_densities(field, batch: int, radius: float, resolution: int, threshold: float, device, chunk: int,
                     coarse_factor: int = 1) -> torch.Tensor:
    """Density at the (G+1)^3 cell corners -> [B, (G+1)^3]. Coarse first: the coarse corners' densities are reused
    (they are every f-th fine corner), and of the rest only the corners of fine cells inside the coarse grid's
    occupied cells are queried; the others are 0 (below ``threshold``, as every coarse corner outside is)."""
    n = resolution + 1
    pts = corner_points(resolution, radius, device)
    f = int(coarse_factor)
    if not (f > 1 and resolution % f == 0 and resolution // f >= 2):
        return densities_at(field, pts, batch, chunk)
    nc = resolution // f + 1
    coarse = corner_densities(field, batch, radius, resolution // f, threshold, device, chunk)
    cells = cells_from_corners((coarse > threshold).reshape(batch, nc, nc, nc)).any(0)
    for dim in range(3):  # coarse cells -> the fine cells inside them
        cells = cells.repeat_interleave(f, dim)
    dens = torch.zeros(batch, n, n, n, device=pts.device)
    dens[:, ::f, ::f, ::f] = coarse.reshape(batch, nc, nc, nc)
    known = torch.zeros(n, n, n, dtype=torch.bool, device=pts.device)
    known[::f, ::f, ::f] = True
    todo = corners_of_cells(cells) & ~known.reshape(-1)
    dens = dens.reshape(batch, -1)
    dens[:, todo] = densities_at(field, pts[todo], batch, chunk)
    return dens


def cube_diagonal(radius: float) -> float:
    return 2 * radius * math.sqrt(3)
