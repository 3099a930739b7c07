"""Many objects' parts as padded tensors, so one batched call evaluates any mix of objects.

`WorldObject.sdf` loops over parts in Python: clear, and the ground truth. Rendering a batch
that mixes objects that way costs one kernel launch per operation, part and object at every
marching step, which starves a GPU. A PartTable stores, for each part kind, the parameters,
placements and colors of up to K parts per object (padded slots are ignored), and evaluates
each kind once for all rays with the rays' own object's slots: the launch count no longer
grows with the number of objects or parts.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from dreamfusion.world.objects import WorldObject, rotation_z_to
from dreamfusion.world.sdf import SDF_BY_KIND


@dataclass
class KindSlots:
    """Parts of one kind: O objects x K slots (slot k of object o is its k-th part of this kind)."""

    kind: str
    params: Tensor  # (O, K, n_params)
    position: Tensor  # (O, K, 3)
    rotation: Tensor | None  # (O, K, 3, 3) world-from-local, None when no part is rotated
    valid: Tensor  # (O, K) bool: False for padding
    color: Tensor  # (O, K, 3) fixed part color (unused where not fixed)
    fixed: Tensor  # (O, K) bool: the part keeps its own color

    def _take(self, x: Tensor, object_index: Tensor) -> Tensor:
        # With one object, broadcast its slots instead of copying them for every point.
        return x if x.shape[0] == 1 else x[object_index]

    def distances(self, points: Tensor, object_index: Tensor) -> Tensor:
        """(A, 3) points, (A,) object indices -> (A, K) signed distance to each slot (inf if padding)."""
        local = points[:, None, :] - self._take(self.position, object_index)  # (A, K, 3)
        if self.rotation is not None:
            # local_i = sum_j d_j R_ji, written out: a batched 1x3 @ 3x3 matmul per slot would
            # be a cuBLAS call with millions of tiny matrices instead of a fusable product.
            local = (local[..., :, None] * self._take(self.rotation, object_index)).sum(dim=-2)
        params = self._take(self.params, object_index)
        d = SDF_BY_KIND[self.kind](local, *params.unbind(-1))
        return torch.where(self._take(self.valid, object_index), d, torch.inf)


@dataclass
class PartTable:
    """The parts of `num_objects` objects, grouped by kind."""

    slots: list[KindSlots]
    num_objects: int

    @classmethod
    def from_objects(cls, objects: Sequence[WorldObject], device: torch.device | str = "cpu") -> PartTable:
        slots = []
        for kind in SDF_BY_KIND:
            per_object = [[p for p in obj.parts if p.kind == kind] for obj in objects]
            k = max(len(parts) for parts in per_object)
            if k == 0:
                continue
            # Padding copies a real part of the kind, so its (ignored) distance stays finite.
            filler = next(parts[0] for parts in per_object if parts)
            rows = [parts + [filler] * (k - len(parts)) for parts in per_object]
            rotated = any(p.axis is not None for parts in per_object for p in parts)
            identity = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))

            def tensor(values: list, dtype: torch.dtype = torch.float32) -> Tensor:
                return torch.tensor(values, dtype=dtype, device=device)

            slots.append(
                KindSlots(
                    kind=kind,
                    params=tensor([[p.params for p in row] for row in rows]),
                    position=tensor([[p.position for p in row] for row in rows]),
                    rotation=tensor(
                        [[rotation_z_to(p.axis) if p.axis else identity for p in row] for row in rows]
                    )
                    if rotated
                    else None,
                    valid=tensor([[i < len(parts) for i in range(k)] for parts in per_object], torch.bool),
                    color=tensor([[p.color or (0.0, 0.0, 0.0) for p in row] for row in rows]),
                    fixed=tensor([[p.color is not None for p in row] for row in rows], torch.bool),
                )
            )
        return cls(slots, len(objects))

    def sdf(self, points: Tensor, object_index: Tensor) -> Tensor:
        """(A, 3) points, (A,) object index per point -> (A,) signed distance to that object."""
        distance = None
        for s in self.slots:
            d = s.distances(points, object_index).amin(dim=-1)
            distance = d if distance is None else torch.minimum(distance, d)
        return distance

    def albedo(self, points: Tensor, object_index: Tensor, base_color: Tensor) -> Tensor:
        """Albedo (A, 3) of the nearest part; parts without a fixed color take `base_color` (A, 3)."""
        distances = torch.cat([s.distances(points, object_index) for s in self.slots], dim=-1)  # (A, P)
        color = torch.cat([s._take(s.color, object_index) for s in self.slots], dim=-2)  # (A|1, P, 3)
        fixed = torch.cat([s._take(s.fixed, object_index) for s in self.slots], dim=-1)  # (A|1, P)
        nearest = distances.argmin(dim=-1, keepdim=True)  # (A, 1)
        color = color.expand(points.shape[0], -1, -1).gather(1, nearest[..., None].expand(-1, 1, 3))[:, 0]
        fixed = fixed.expand(points.shape[0], -1).gather(1, nearest)  # (A, 1)
        return torch.where(fixed, color.to(base_color), base_color)


@functools.lru_cache(maxsize=64)
def table_for(objects: tuple[WorldObject, ...], device: str) -> PartTable:
    """A cached PartTable of `objects` on `device` (objects are frozen, hence hashable)."""
    return PartTable.from_objects(objects, device)
