"""Targets T7 (random-matrix statistics at initialisation), T8 (Dyson-Brownian-motion scaling)
and T9 (exact Taylor expansion): theory 5.3, 5.5.

They run on :mod:`mpsntk.diagnostics`; where an installation lacks a routine they need, the
target is reported as pending (exit status 2), naming it.
"""

from __future__ import annotations

import math

import numpy as np

from .. import features
from ..infinite import nngp_infinite
from ..mps import MPS
from . import experiments
from ._runner import Outcome, Target, TargetPending


def _require(*names):
    """The named public routines of mpsntk.diagnostics, or TargetPending naming the missing."""
    try:
        from .. import diagnostics
    except ImportError as exc:  # pragma: no cover - the package ships with mpsntk
        raise TargetPending(f"mpsntk.diagnostics cannot be imported: {exc}") from None
    missing = [n for n in names if not hasattr(diagnostics, n)]
    if missing:
        raise TargetPending("needs mpsntk.diagnostics." + ", mpsntk.diagnostics.".join(missing)
                            + ", not in this installation")
    return [getattr(diagnostics, n) for n in names]


# ------------------------------------------------------------------------------------------ T7
GOE_R, GUE_R, POISSON_R = 0.5307, 0.5996, 2 * math.log(2) - 1


def run_t7(s, rng):
    core_spectrum, mp_pdf, mp_ks, spacing_ratio = _require(
        "core_spectrum", "marchenko_pastur_pdf", "mp_ks_distance", "spacing_ratio")
    gamma = 1.0 / s["phys_dim"]
    ks_by, r_by, hist = {}, {}, None
    for D in s["bond_dims"]:
        mps = MPS.random(s["n_sites"], D, phys_dim=s["phys_dim"], seed=rng)
        sites = range(1, s["n_sites"] - 1)  # interior cores: (d D) x D matricisations
        spectra = [core_spectrum(mps, j) for j in sites]
        ks_by[D] = float(np.mean([mp_ks(ev, gamma) for ev in spectra]))
        r_by[D] = float(np.mean([spacing_ratio(ev) for ev in spectra]))
        hist = np.concatenate(spectra)
    big = [D for D in s["bond_dims"] if D >= 128]
    r_tilde = r_by[max(r_by)]
    grid = np.linspace((1 - gamma**0.5) ** 2, (1 + gamma**0.5) ** 2, 200)
    return Outcome(
        measured=dict(mp_ks_by_D=ks_by, r_tilde=r_tilde, r_tilde_by_D=r_by),
        reference=dict(mp_ks_D256=0.0015, mp_edges=[0.0858, 2.914], r_tilde_goe=GOE_R,
                       r_tilde_gue=GUE_R, r_tilde_poisson=POISSON_R, r_tilde_mps_init=0.534),
        tolerance=dict(mp_ks="< 0.01 for D >= 128", r_tilde="in [0.52, 0.55]"),
        checks=dict(mp_ks=all(ks_by[D] < 0.01 for D in big) and bool(big),
                    r_tilde=0.52 <= r_tilde <= 0.55),
        data=dict(hist=hist, grid=grid, pdf=mp_pdf(grid, gamma), ks=ks_by, r=r_by))


def plot_t7(o, fig):
    ax1, ax2 = fig.subplots(1, 2)
    ax1.hist(o.data["hist"], bins=80, density=True, alpha=0.6, label="core eigenvalues")
    ax1.plot(o.data["grid"], o.data["pdf"], "k-", lw=1.2, label="Marchenko-Pastur")
    ax1.set(xlabel=r"eigenvalue of $A_L^TA_L/(p v)$", ylabel="density")
    ax1.legend(fontsize=7)
    ks = o.data["ks"]
    ax2.loglog(list(ks), list(ks.values()), "o-", label="KS distance to MP")
    ax2.axhline(0.01, color="k", ls="--", lw=1)
    ax2.set(xlabel="bond dimension D", ylabel="KS distance")
    ax2.legend(fontsize=7)


# ------------------------------------------------------------------------------------------ T8
def run_t8(s, rng):
    (dbm_scaling,) = _require("dbm_scaling")
    res = dbm_scaling(pairs=s["pairs"], control=s["control"], n_steps=s["n_steps"],
                      seed=int(rng.integers(0, 2**31 - 1)))
    spread = float(res.collapse_rel_spread)
    return Outcome(
        measured=dict(collapse_rel_spread=spread),
        reference=dict(collapse_rel_spread="< 0.15 (new experiment; no reference numbers)"),
        tolerance=dict(collapse_rel_spread="< 0.15 across the equal-ratio pairs"),
        checks=dict(collapse=spread < 0.15),
        data=dict(result=getattr(res, "table", {})))


def plot_t8(o, fig):
    ax = fig.subplots(1, 1)
    ax.text(0.5, 0.5, f"collapse relative spread {o.measured['collapse_rel_spread']:.3f}",
            ha="center")


# ------------------------------------------------------------------------------------------ T9
def run_t9(s, rng):
    taylor_terms, order_kernels = _require("taylor_terms", "order_kernels")
    errs, norms = {}, {}
    for boundary in ("open", "periodic"):
        for D in s["bond_dims"]:
            run = experiments.mse_run(D, boundary, int(rng.integers(0, 2**31 - 1)),
                                      n_steps=s["n_steps"], log_every=s["n_steps"])
            phi, mps_0, mps_t = run.probe, run.initial, run.comparison.result.mps
            terms = np.asarray(taylor_terms(mps_0, phi, mps_t))
            f_t = np.asarray(mps_t(phi))
            key = f"{boundary} D={D}"
            errs[key] = float(np.max(np.abs(terms.sum(0) - f_t)) / np.max(np.abs(f_t)))
            norms[key] = np.linalg.norm(terms, axis=1)
    n_sites, D = s["k2_n_sites"], s["k2_bond_dim"]
    phi = features.trig(rng.uniform(size=(s["k2_n_samples"], n_sites)))
    k = math.comb(n_sites, 2) * nngp_infinite(phi)
    ratios = []
    for _ in range(s["k2_draws"]):
        k2 = np.asarray(order_kernels(MPS.random(n_sites, D, seed=rng), phi, orders=(2,)))[0]
        ratios.append(float(np.mean(k2 / k)))
    ratios = np.asarray(ratios)
    mean, se = float(ratios.mean()), float(ratios.std(ddof=1) / np.sqrt(ratios.size))
    max_err = max(errs.values())
    return Outcome(
        measured=dict(taylor_max_err=max_err, taylor_err_by_case=errs, k2_ratio_mean=mean,
                      k2_ratio_se=se),
        reference=dict(taylor_max_err=3e-15, k2_ratio_mean="1.00 +- 0.01"),
        tolerance=dict(taylor_max_err="< 1e-12 relative", k2_ratio_mean="|mean - 1| < 4 SE"),
        checks=dict(taylor=max_err < 1e-12, k2=abs(mean - 1) < 4 * se),
        data=dict(norms=norms))


def plot_t9(o, fig):
    ax = fig.subplots(1, 1)
    for key, n in o.data["norms"].items():
        ax.semilogy(np.arange(len(n)), np.asarray(n) + 1e-300, "o-", label=key)
    ax.set(xlabel="order k", ylabel=r"$\|P_k(\Delta_T)\|$")
    ax.legend(fontsize=7)


TARGETS = [
    Target("T7", "random-matrix statistics of the cores at initialisation", run_t7, plot_t7,
           full=dict(n_sites=6, phys_dim=2, bond_dims=[16, 32, 64, 128, 256]),
           quick=dict(n_sites=4, phys_dim=2, bond_dims=[16, 64, 128])),
    Target("T8", "Dyson-Brownian-motion scaling of the top eigenvalues", run_t8, plot_t8,
           full=dict(pairs=[[0.01, 8], [0.02, 16], [0.04, 32]], control=[0.04, 8],
                     n_steps=20000),
           quick=dict(pairs=[[0.01, 8], [0.02, 16], [0.04, 32]], control=[0.04, 8],
                      n_steps=3000)),
    Target("T9", "exact finite Taylor expansion and order-2 kernels", run_t9, plot_t9,
           full=dict(bond_dims=[8, 32], n_steps=400, k2_n_sites=5, k2_bond_dim=4,
                     k2_n_samples=4, k2_draws=20000),
           quick=dict(bond_dims=[8], n_steps=100, k2_n_sites=5, k2_bond_dim=4, k2_n_samples=4,
                      k2_draws=2000)),
]
