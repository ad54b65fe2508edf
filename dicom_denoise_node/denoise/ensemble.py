"""③ Self-ensemble: the generator averaged over flips and 90° turns of each tile (the dihedral group of the square).

Why: a convolutional generator is not exactly equivariant to flips and rotations. What it gets right (anatomy,
edges, lesions) comes out the same in every orientation; what it gets wrong (the low-frequency noise it leaves)
differs from one orientation to the next, so the mean of N transformed passes keeps the first and averages down
the second. Each transformed input is one the generator was trained on: training patches are drawn with the same
random flips and turns (trainer/data.py), and quantum noise from a full-rotation acquisition has no preferred
orientation. On the validation patients the paired model's error vs REF falls by ≈ 7 % (0.6 dB) at N = 8
(docs/model-card.md, ablations). Cost: N × the generator's arithmetic per slice.
"""

from __future__ import annotations

import torch
from torch import nn

# (horizontal flip first?, quarter turns), in the order N takes them: the identity and the mirror image first (N = 2),
# then the vertical flip and the half turn (N = 4), then the quarter turns and the two diagonal reflections (N = 8).
DIHEDRAL: tuple[tuple[bool, int], ...] = (
    (False, 0),
    (True, 0),
    (True, 2),
    (False, 2),
    (False, 1),
    (True, 1),
    (False, 3),
    (True, 3),
)
ALLOWED = (1, 2, 4, 8)


def transform(x: torch.Tensor, flip: bool, turns: int) -> torch.Tensor:
    """One element of DIHEDRAL on the last two axes: mirror (if ``flip``), then ``turns`` quarter turns."""
    if flip:
        x = x.flip(-1)
    return torch.rot90(x, turns, dims=(-2, -1)) if turns else x


def untransform(y: torch.Tensor, flip: bool, turns: int) -> torch.Tensor:
    """The inverse of :func:`transform`: turn back, then mirror."""
    if turns:
        y = torch.rot90(y, -turns, dims=(-2, -1))
    return y.flip(-1) if flip else y


class SelfEnsemble(nn.Module):
    """mean over the first ``count`` of DIHEDRAL of T⁻¹(network(T(x))); ``count`` 1 is the network itself."""

    def __init__(self, network: nn.Module, count: int) -> None:
        super().__init__()
        if count not in ALLOWED:
            raise ValueError(f"self-ensemble of {count} transforms: choose one of {', '.join(map(str, ALLOWED))}")
        self.network = network
        self.count = count

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = self.network(x)
        for flip, turns in DIHEDRAL[1 : self.count]:
            total = total + untransform(self.network(transform(x, flip, turns)), flip, turns)
        return total / self.count


def with_self_ensemble(network: nn.Module, count: int) -> nn.Module:
    """The network itself for ``count`` 1 (bit-identical output, no wrapper), else its self-ensemble."""
    return network if count == 1 else SelfEnsemble(network, count)
