"""The one catalogue of model cases the tests run on.

A case is ``(bonds, boundary, output_site, n_outputs)``: the bond dimensions ``D_0 .. D_N``
(``n_sites = len(bonds) - 1``; open chains end in ``D_0 = D_N = 1``), the boundary, the site of
the label index (None for a scalar model) and the number of outputs.  The physical dimension
and the dtype are the test's choice.  Each test module runs the group of cases it needs (the
engine's, the device's wider tiles, the Taylor expansion's small chains, ...); a case shared by
several groups is written once here, under one name that is also its test id.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class ModelCase(NamedTuple):
    bonds: tuple
    boundary: str
    output_site: int | None
    n_outputs: int

    @property
    def n_sites(self):
        return len(self.bonds) - 1

    def model(self, rng, phys_dim=2, dtype=np.float64):
        """An :class:`mpsntk.MPS` of this shape with random cores, scales and per-site rates."""
        from conftest import random_model

        return random_model(rng, self.bonds, phys_dim=phys_dim, boundary=self.boundary,
                            output_site=self.output_site, n_outputs=self.n_outputs, dtype=dtype)


CASES = {
    # scalar open chains
    "open": ModelCase((1, 3, 4, 2, 1), "open", None, 1),
    "open-odd": ModelCase((1, 3, 5, 7, 2, 1), "open", None, 1),
    "open-D1": ModelCase((1, 1, 1, 1), "open", None, 1),  # D = 1 everywhere
    "open-D1-N2": ModelCase((1, 1, 1), "open", None, 1),
    "one-site": ModelCase((1, 1), "open", None, 1),
    "open-N4": ModelCase((1, 2, 3, 2, 1), "open", None, 1),
    # open chains with a label site
    "open-label": ModelCase((1, 5, 3, 7, 4, 1), "open", 2, 3),
    "open-label-odd": ModelCase((1, 6, 3, 9, 4, 1), "open", 2, 3),
    "open-label-small": ModelCase((1, 2, 3, 2, 2, 1), "open", 2, 3),
    "open-label-N4": ModelCase((1, 2, 3, 2, 1), "open", 2, 2),
    "open-label-first": ModelCase((1, 2, 3, 1), "open", 0, 2),
    "open-label-last": ModelCase((1, 2, 3, 1), "open", 2, 4),
    "open-label-N2": ModelCase((1, 3, 1), "open", 0, 3),
    # the device's tiles: wider than a 64-column tile, Gram depths filling chunks of 16
    "wide-tile": ModelCase((1, 70, 66, 1), "open", 1, 2),
    "gram-chunks": ModelCase((1, 16, 32, 8, 1), "open", 2, 2),
    "periodic-gram-chunks": ModelCase((4, 4, 8, 4), "periodic", None, 1),  # products Dl * Dr
    # periodic chains
    "periodic": ModelCase((3, 2, 4, 3), "periodic", None, 1),
    "periodic-odd": ModelCase((3, 2, 5, 3), "periodic", None, 1),
    "periodic-N3": ModelCase((2, 3, 4, 2), "periodic", None, 1),
    "periodic-N4": ModelCase((2, 3, 2, 4, 2), "periodic", None, 1),
    "periodic-N2": ModelCase((3, 2, 3), "periodic", None, 1),
    "periodic-D0=1": ModelCase((1, 2, 2, 1, 1), "periodic", None, 1),  # one boundary channel
    "periodic-label": ModelCase((2, 3, 2, 4, 2), "periodic", 1, 3),
    "periodic-label-odd": ModelCase((2, 3, 2, 5, 2), "periodic", 1, 3),
    "periodic-label-last": ModelCase((2, 3, 2, 4, 2), "periodic", 3, 2),
    "periodic-label-small": ModelCase((2, 2, 3, 2, 2), "periodic", 3, 2),
    "periodic-label-N3": ModelCase((2, 3, 1, 2), "periodic", 1, 3),
    "periodic-label-first": ModelCase((2, 2, 3, 2), "periodic", 0, 2),
}


class Group(list):
    """Cases by name, in order; ``ids`` names them for ``pytest.mark.parametrize``."""

    def __init__(self, *names):
        super().__init__(CASES[n] for n in names)
        self.ids = list(names)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Group(*self.ids[index])
        return super().__getitem__(index)


# the host engine: ntk, per-site kernels, forward (test_ntk.py)
ENGINE = Group("open", "open-D1", "open-label", "open-label-first", "open-label-last",
               "periodic", "periodic-label", "one-site")
# Jacobian, vjp and jvp against oracles and finite differences (test_grad.py)
GRAD = Group("open", "open-label", "periodic", "periodic-label-last")
# the CUDA engine against the host (test_cuda.py): odd sizes and the device's tile shapes
DEVICE = Group("open-odd", "open-D1", "open-label-odd", "periodic-odd", "periodic-label-odd",
               "wide-tile", "gram-chunks", "periodic-gram-chunks")
# every kernel and branch of the simulated engine, multi-output open and periodic (test_cuda_sim)
SIMULATOR = Group("open-label-odd", "periodic-label-odd")
# the exact Taylor expansion: small chains, enumerated by subsets of sites (test_taylor.py)
TAYLOR = Group("open", "open-D1-N2", "open-label-small", "periodic-N3", "periodic-label-small",
               "periodic-D0=1")
# the dense reference against brute force (test_reference.py), with their phys_dim
REFERENCE = [("open-N4", 2), ("one-site", 3), ("open-label-N2", 2), ("open-label-N4", 3),
             ("periodic-N4", 2), ("periodic-N2", 3), ("periodic-label-N3", 2),
             ("periodic-label-first", 2)]
