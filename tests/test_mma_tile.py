"""The CUDA NTK kernel's thread-to-tile maps (cpp/include/mpsntk/mma_tile.hpp), replayed on the
CPU against the PTX ISA's definition of each mma instruction.

The kernel stages a depth chunk of the two row blocks in shared memory (``As[k][row]`` and
``Bs[k][col]`` below; the layout in shared memory is each path's ``stage`` map) and accumulates
``G = As^T Bs`` (a 64 x 64 Gram block).  Each thread loads its
fragment registers from the positions the maps give, the warps issue mma instructions, and each
accumulator is written to the tile entry the map gives.  Here the mma instructions are emulated
from the PTX fragment tables (written out below, independently of the C++ header); the
assembled tile must equal ``As^T Bs``.  A map that loads the wrong element, covers a tile entry
twice or stores an accumulator in the wrong place fails.  The shared-memory layouts are checked
for bank conflicts with the usual model of 32 four-byte banks.
"""

from __future__ import annotations

import numpy as np
import pytest

from mpsntk import _core

TILE, WARPS, LANES, DEPTH = 64, 8, 32, 16


def _ptx_fragments(kind):
    """PTX ISA fragment tables, g = lane // 4, t = lane % 4: (row, k) of each A register,
    (k, col) of each B register, (row, col) of each C register, per lane."""
    lanes = np.arange(LANES)
    g, t = lanes // 4, lanes % 4
    if kind == "f64":  # mma.m8n8k4.row.col.f64
        a = [(g, t)]
        b = [(t, g)]
        c = [(g, 2 * t), (g, 2 * t + 1)]
        shape = (8, 8, 4)
    else:  # mma.m16n8k8.row.col: .f32.tf32.tf32.f32 and (sm_90) .f64 share the layout
        a = [(g, t), (g + 8, t), (g, t + 4), (g + 8, t + 4)]
        b = [(t, g), (t + 4, g)]
        c = [(g, 2 * t), (g, 2 * t + 1), (g + 8, 2 * t), (g + 8, 2 * t + 1)]
        shape = (16, 8, 8)
    return a, b, c, shape


def _emulate_mma(kind, a_regs, b_regs):
    """D = A B for one warp from per-lane registers a_regs (32, A_REGS), b_regs (32, B_REGS),
    returned as per-lane accumulators (32, C_REGS)."""
    a_tab, b_tab, c_tab, (m, n, k) = _ptx_fragments(kind)
    A = np.full((m, k), np.nan)
    B = np.full((k, n), np.nan)
    for r, (rows, ks) in enumerate(a_tab):
        A[rows, ks] = a_regs[:, r]
    for r, (ks, cols) in enumerate(b_tab):
        B[ks, cols] = b_regs[:, r]
    assert not np.isnan(A).any() and not np.isnan(B).any()  # the PTX tables cover A and B
    D = A @ B
    return np.stack([D[rows, cols] for rows, cols in c_tab], axis=1)


@pytest.mark.parametrize("kind", ["f64", "f64_sm90", "tf32"])
def test_tensor_core_maps_assemble_the_gram_block(kind):
    mp = _core.mma_tile_map(kind)
    m, n, k, mi_count, ni_count = mp["m"], mp["n"], mp["k"], mp["mi"], mp["ni"]
    a_map, b_map, acc_map = mp["a"], mp["b"], mp["acc"]
    assert mi_count * m * 2 == TILE and ni_count * n * 4 == TILE  # 2 x 4 warps of 32 x 16
    rng = np.random.default_rng(0)
    As = rng.standard_normal((DEPTH, TILE))
    Bs = rng.standard_normal((DEPTH, TILE))
    tile = np.zeros((TILE, TILE))
    written = np.zeros((TILE, TILE), dtype=int)
    for w in range(WARPS):
        acc = np.zeros((LANES, mi_count, ni_count, acc_map.shape[2] // (mi_count * ni_count)))
        for k0 in range(0, DEPTH, k):
            for mi in range(mi_count):
                rows, ks = a_map[w, :, mi, :, 0], a_map[w, :, mi, :, 1]
                a_regs = As[k0 + ks, rows]
                for ni in range(ni_count):
                    cols, kb = b_map[w, :, ni, :, 0], b_map[w, :, ni, :, 1]
                    b_regs = Bs[k0 + kb, cols]
                    acc[:, mi, ni, :] += _emulate_mma(kind, a_regs, b_regs)
        acc = acc.reshape(LANES, -1)  # accumulator e = (mi * NI + ni) * C_REGS + r
        for lane in range(LANES):
            rows, cols = acc_map[w, lane, :, 0], acc_map[w, lane, :, 1]
            np.add.at(tile, (rows, cols), acc[lane])
            np.add.at(written, (rows, cols), 1)
    assert np.all(written == 1)  # every tile entry owned by exactly one accumulator
    np.testing.assert_allclose(tile, As.T @ Bs, rtol=1e-13, atol=1e-13)


def test_simt_map_covers_the_tile_once():
    acc = _core.mma_tile_map("simt")["acc"]
    written = np.zeros((TILE, TILE), dtype=int)
    np.add.at(written, (acc[..., 0].ravel(), acc[..., 1].ravel()), 1)
    assert np.all(written == 1)
    # thread t = (ty, tx) owns the row pairs 2 ty, 32 + 2 ty and the column pairs 2 tx, 32 + 2 tx;
    # accumulator e = 4 i + j: row (i // 2) * 32 + 2 ty + i % 2, column (j // 2) * 32 + 2 tx + j % 2
    t = np.arange(256)[:, None]
    i, j = np.arange(16)[None, :] // 4, np.arange(16)[None, :] % 4
    assert np.array_equal(acc[..., 0], 32 * (i // 2) + 2 * (t // 16) + i % 2)
    assert np.array_equal(acc[..., 1], 32 * (j // 2) + 2 * (t % 16) + j % 2)


def _wavefronts(offsets, element_bytes):
    """Shared-memory wavefronts of one warp-wide access to the given element offsets: 32 banks
    of 4-byte words, distinct words of one bank served one per wavefront, equal words broadcast."""
    words = {w for o in np.ravel(offsets) for w in
             range(int(o) * element_bytes // 4, (int(o) + 1) * element_bytes // 4)}
    per_bank = np.bincount([w % 32 for w in words], minlength=32)
    return int(per_bank.max())


def _fewest(offsets, element_bytes):
    return -(-len(set(np.ravel(offsets).tolist())) * element_bytes // 128)


def _staging_stores(stage, element_bytes):
    """Wavefronts of every warp's staging store: element e = (row e // 16, depth e % 16)."""
    out = []
    for e0 in range(0, TILE * DEPTH, LANES):
        e = np.arange(e0, e0 + LANES)
        out.append(_wavefronts(stage[e // DEPTH, e % DEPTH], element_bytes))
    return out


def _fragment_loads(mp, stage):
    """(wavefronts, fewest) of every fragment load of the tensor-core product."""
    out = []
    for w in range(WARPS):
        for k0 in range(0, DEPTH, mp["k"]):
            for frag in (mp["a"], mp["b"]):
                for blk in range(frag.shape[2]):
                    for r in range(frag.shape[3]):
                        offs = stage[frag[w, :, blk, r, 0], k0 + frag[w, :, blk, r, 1]]
                        out.append((_wavefronts(offs, mp["element_bytes"]),
                                    _fewest(offs, mp["element_bytes"])))
    return out


@pytest.mark.parametrize("kind", ["f64", "f64_sm90", "tf32"])
def test_tensor_core_staging_is_free_of_bank_conflicts(kind):
    """Row-major chunks padded by 16 bytes: every fragment load takes the fewest wavefronts,
    every staging store at most two (a warp stores 32 elements of two rows)."""
    mp = _core.mma_tile_map(kind)
    stage, eb = mp["stage"], mp["element_bytes"]
    assert len(set(stage.ravel().tolist())) == TILE * DEPTH  # a layout: one slot per element
    loads = _fragment_loads(mp, stage)
    assert all(got == fewest for got, fewest in loads)
    assert max(_staging_stores(stage, eb)) <= 2
    # the depth-major layout of the SIMT path would double (f64) or quadruple (tf32) the loads
    depth_major = _core.mma_tile_map("simt")["stage"]
    worse = _fragment_loads(mp, depth_major)
    assert sum(w for w, _ in worse) == (2 if eb == 8 else 4) * sum(w for w, _ in loads)


@pytest.mark.parametrize("element_bytes", [4, 8])
def test_simt_staging_is_free_of_bank_conflicts(element_bytes):
    """The SIMT product reads, per depth, two row pairs and two column pairs, each pair one
    aligned vector load (8 or 16 bytes) taking the fewest wavefronts; two rows of 66 keep the
    staging stores at the fewest too, and the pairs aligned."""
    stage = _core.mma_tile_map("simt")["stage"]
    assert len(set(stage.ravel().tolist())) == TILE * DEPTH
    assert np.all(stage[0::2] % 2 == 0)  # every pair starts at an even element: aligned
    for w in range(WARPS):
        t = np.arange(w * LANES, (w + 1) * LANES)
        ty, tx = t // 16, t % 16
        for kk in range(DEPTH):
            for p in range(2):
                for first in (32 * p + 2 * ty, 32 * p + 2 * tx):
                    offs = np.stack([stage[first, kk], stage[first + 1, kk]])
                    assert np.all(offs[1] == offs[0] + 1)  # the pair is contiguous
                    assert _wavefronts(offs, element_bytes) == _fewest(offs, element_bytes)
    stores = _staging_stores(stage, element_bytes)
    assert max(stores) == (1 if element_bytes == 4 else 2)


def test_unknown_map_kind_is_rejected():
    with pytest.raises(ValueError, match="kind must be 'f64', 'f64_sm90', 'tf32' or 'simt'"):
        _core.mma_tile_map("fp8")


@pytest.mark.parametrize("t1,t2,upper", [(1, 1, True), (7, 7, True), (8, 8, True), (10, 10, True),
                                         (1024, 1024, True), (10, 4, False), (4, 10, False),
                                         (17, 300, False), (256, 256, False)])
def test_tile_order_covers_each_tile_once_in_groups(t1, t2, upper):
    """Block b of the NTK kernel computes tile _core.tile_order(...)[b]: every tile (kb >= ib
    when upper) exactly once, and blocks of one group of 8 tile rows are consecutive, column by
    column, so that a wave of resident blocks spans few tile rows."""
    order = _core.tile_order(t1, t2, upper)
    ib, kb = order[:, 0], order[:, 1]
    want = {(i, k) for i in range(t1) for k in range(t2) if not upper or k >= i}
    got = list(zip(ib.tolist(), kb.tolist()))
    assert len(got) == len(want) and set(got) == want
    group = ib // 8
    assert np.all(np.diff(group) >= 0)  # groups one after another
    for g in np.unique(group):  # columns ascending within a group
        assert np.all(np.diff(kb[group == g]) >= 0)
    if len(got) >= 132:  # an H100 wave: at most 8 tile rows (and not every column)
        assert len(np.unique(ib[:132])) <= 8


def test_tile_order_rejects_bad_shapes():
    with pytest.raises(ValueError, match="t1 == t2 when upper"):
        _core.tile_order(3, 4, True)
    with pytest.raises(ValueError, match="t1, t2 >= 1"):
        _core.tile_order(0, 4, False)


@pytest.mark.parametrize("kind", ["f64", "f64_sm90", "tf32", "simt"])
def test_row_groups_cover_each_row_once_per_slot(kind):
    """The row reductions of the GEMM epilogues (normalisation, jvp dots): a thread's 4 row
    groups of 4 accumulators each share a tile row, and the threads sharing a row have 16
    distinct slots, so (row, slot) names each partial result once."""
    mp = _core.mma_tile_map(kind)
    acc, groups, slot = mp["acc"].reshape(256, 16, 2), mp["groups"], mp["slot"]  # (warp, lane): t
    seen = set()
    for t in range(256):
        assert sorted(groups[t].ravel().tolist()) == list(range(16))
        for i in range(4):
            rows = {int(acc[t, e, 0]) for e in groups[t, i]}
            assert len(rows) == 1
            key = (rows.pop(), int(slot[t]))
            assert key not in seen
            seen.add(key)
    assert len(seen) == 64 * 16 and {s for _, s in seen} == set(range(16))
