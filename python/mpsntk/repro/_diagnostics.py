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
from ._runner import Outcome, Target, TargetPending, bond_axis

#: The public routines of mpsntk.diagnostics each target runs on.
REQUIRES = dict(
    T7=("core_spectrum", "ks_distance", "marchenko_pastur_pdf", "spacing_ratios"),
    T8=("dyson_scaling",),
    T9=("taylor_terms", "order_kernels"),
)


def available(target):
    """Whether this installation has every routine ``target`` (T7, T8 or T9) needs."""
    try:
        from .. import diagnostics
    except ImportError:  # pragma: no cover - the package ships with mpsntk
        return False
    return all(hasattr(diagnostics, n) for n in REQUIRES[target])


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
GOE_R, GUE_R, POISSON_R = 0.5307, 0.5996, 2 * math.log(2) - 1  # theory 5.5 (Atas et al.)


def run_t7(s, rng):
    core_spectrum, ks_distance, mp_pdf, spacing_ratios = _require(*REQUIRES["T7"])
    ks_by, r_by, r_se_by, hist, edges = {}, {}, {}, {}, {}
    for D in s["bond_dims"]:
        # Interior cores of NTK-parametrised draws (W ~ N(0, 1): the variance is known), pooled
        # over sites and draws: left matricisations (d D) x D, MP ratio gamma = 1/d.
        spectra = [core_spectrum(MPS.random(s["n_sites"], D, phys_dim=s["phys_dim"], seed=rng),
                                 j, matrix="left", variance="init")
                   for _ in range(s["n_draws"]) for j in range(1, s["n_sites"] - 1)]
        ev = np.concatenate([sp.eigenvalues for sp in spectra])  # (n_matrices, D)
        ks_by[D] = float(ks_distance(ev.reshape(-1), spectra[0].cdf))
        r = spacing_ratios(ev)
        r_by[D], r_se_by[D] = float(r.mean()), float(r.std(ddof=1) / np.sqrt(r.size))
        hist[D] = ev.reshape(-1)
        # observed edges: the smallest and largest eigenvalue of each matrix, averaged
        edges[D] = [float(ev.min(axis=1).mean()), float(ev.max(axis=1).mean())]
    gamma = 1.0 / s["phys_dim"]
    big = [D for D in s["bond_dims"] if D >= 128]
    top = max(r_by)
    r_tilde, r_se = r_by[top], r_se_by[top]
    grid = np.linspace((1 - gamma**0.5) ** 2, (1 + gamma**0.5) ** 2, 400)[1:-1]
    return Outcome(
        measured=dict(mp_ks_by_D=ks_by, r_tilde=r_tilde, r_tilde_se=r_se, r_tilde_by_D=r_by,
                      r_tilde_se_by_D=r_se_by, mp_edges=edges[top],
                      mp_edges_theory=[(1 - gamma**0.5) ** 2, (1 + gamma**0.5) ** 2]),
        reference=dict(mp_ks_D256=0.0015, mp_edges=[0.0858, 2.914], r_tilde_goe=GOE_R,
                       r_tilde_gue=GUE_R, r_tilde_poisson=POISSON_R, r_tilde_mps_init=0.534),
        tolerance=dict(mp_ks="< 0.01 for D >= 128 (pooled interior cores and draws)",
                       r_tilde=f"in [0.52, 0.55] at D = {top}"),
        checks=dict(mp_ks=bool(big) and all(ks_by[D] < 0.01 for D in big),
                    r_tilde=0.52 <= r_tilde <= 0.55),
        data=dict(hist=hist[top], D=top, grid=grid, pdf=mp_pdf(grid, gamma), ks=ks_by, r=r_by,
                  r_se=r_se_by))


def plot_t7(o, fig):
    ax1, ax2, ax3 = fig.subplots(1, 3)
    ax1.hist(o.data["hist"], bins=100, density=True, alpha=0.6,
             label=f"interior cores, D={o.data['D']}")
    ax1.plot(o.data["grid"], o.data["pdf"], "k-", lw=1.2, label=r"Marchenko-Pastur, $\gamma=1/d$")
    ax1.set(xlabel=r"eigenvalue of $A_L^TA_L/(p v)$", ylabel="density")
    ax1.set_title("spectrum at initialisation", fontsize=9)
    ax1.legend(fontsize=7)
    ks = o.data["ks"]
    ax2.loglog(list(ks), list(ks.values()), "o-", label="KS distance to MP")
    ax2.axhline(0.01, color="k", ls="--", lw=1, label="pass bound (D >= 128)")
    ax2.set(xlabel="bond dimension D", ylabel="KS distance")
    bond_axis(ax2, ks)
    ax2.legend(fontsize=7)
    r, se = o.data["r"], o.data["r_se"]
    ax3.errorbar(list(r), list(r.values()), yerr=list(se.values()), fmt="o", capsize=3,
                 label=r"$\langle\tilde r\rangle$ (bulk 60%)")
    for val, name, ls in ((GOE_R, "GOE", "-"), (GUE_R, "GUE", "--"),
                          (POISSON_R, "Poisson", ":")):
        ax3.axhline(val, color="k", ls=ls, lw=1, label=f"{name} {val:.4f}")
    ax3.axhspan(0.52, 0.55, color="0.9")
    ax3.set(xlabel="bond dimension D", ylabel=r"$\langle\tilde r\rangle$")
    bond_axis(ax3, r)
    ax3.set_title("spacing ratio: GOE class at init", fontsize=9)
    ax3.legend(fontsize=6)


def summary_t7(o):
    m = o.measured
    ks = ", ".join(f"D={D} {v:.4f}" for D, v in m["mp_ks_by_D"].items())
    return f"MP KS {ks}; r~ {m['r_tilde']:.4f}+-{m['r_tilde_se']:.4f} ([0.52, 0.55])"


# ------------------------------------------------------------------------------------------ T8
def run_t8(s, rng):
    (dyson_scaling,) = _require(*REQUIRES["T8"])
    mps, phi, y = experiments.dbm_task(seed=int(rng.integers(0, 2**31 - 1)))
    res = dyson_scaling(mps, phi, y, pairs=[tuple(p) for p in s["pairs"]],
                        controls=[tuple(p) for p in s["controls"]],
                        label_noise=s["label_noise"], duration=s["duration"],
                        burn_in=s["burn_in"], sample_every=s["sample_every"], top_k=s["top_k"],
                        seed=int(rng.integers(0, 2**31 - 1)))
    spread = float(res.collapse_rel_spread)
    runs = [dict(alpha=r["alpha"], batch_size=r["batch_size"], ratio=r["ratio"],
                 control=r["control"], variance=r["variance"],
                 normalized_variance=r["normalized_variance"], times=r["times"],
                 top=np.asarray(r["top"])[:, 0, 0]) for r in res.runs]
    return Outcome(
        measured=dict(collapse_rel_spread=spread,
                      control_rel_spread=list(res.control_rel_spread),
                      control_variance_ratio=list(res.control_variance_ratio),
                      control_ratio_predicted=list(res.control_ratio_predicted),
                      normalized_variance={f"({r['alpha']:g}, {r['batch_size']})":
                                           r["normalized_variance"] for r in runs}),
        reference=dict(collapse_rel_spread="< 0.15 (new experiment; no reference numbers)",
                       control_variance_ratio=list(res.control_ratio_predicted)),
        tolerance=dict(collapse_rel_spread=f"< {s['collapse_bound']} across the equal-ratio "
                                           "pairs (spec: 0.15)",
                       control="each control's spread above the pairs' collapse spread"),
        checks=dict(collapse=spread < s["collapse_bound"],
                    control=all(c > spread for c in res.control_rel_spread)),
        data=dict(runs=runs, sites=list(res.sites)))


def plot_t8(o, fig):
    ax1, ax2, ax3 = fig.subplots(1, 3, width_ratios=[1.3, 1, 1])
    runs = o.data["runs"]
    for r in runs:
        ax1.plot(r["times"], r["top"], lw=0.8, alpha=0.8,
                 label=f"alpha={r['alpha']:g}, |B|={r['batch_size']}"
                       + (" (control)" if r["control"] else ""))
    ax1.set(xlabel=r"$t = \alpha\cdot$step",
            ylabel=f"top eigenvalue of $X_j$ (site {o.data['sites'][0]})")
    ax1.set_title("label-noise SGD: eigenvalue fluctuations", fontsize=9)
    ax1.legend(fontsize=6)
    pairs = [r for r in runs if not r["control"]]
    c = np.mean([r["normalized_variance"] for r in pairs])
    grid = np.geomspace(min(r["ratio"] for r in runs) / 1.5, max(r["ratio"] for r in runs) * 1.5)
    ax2.loglog(grid, c * grid, "k--", lw=1, label=r"$\propto \alpha/|B|$ (through the pairs)")
    for r in runs:
        ax2.loglog(r["ratio"], r["variance"], "s" if r["control"] else "o",
                   color="C3" if r["control"] else "C0", ms=7, alpha=0.7)
    ax2.set(xlabel=r"$\alpha/|B|$", ylabel="stationary variance of the top eigenvalues")
    ax2.xaxis.set_minor_formatter(_plain_ticks())
    ax2.set_title("variance against the noise scale", fontsize=9)
    ax2.legend(fontsize=7)
    labels = [f"({r['alpha']:g}, {r['batch_size']})" for r in runs]
    ax3.bar(range(len(runs)), [r["normalized_variance"] for r in runs],
            color=["C3" if r["control"] else "C0" for r in runs], alpha=0.7)
    ax3.axhline(c, color="k", ls="--", lw=1)
    ax3.set_xticks(range(len(runs)), labels, rotation=30, fontsize=7)
    ax3.set(xlabel=r"$(\alpha, |B|)$", ylabel=r"variance $/\ (\alpha/|B|)$")
    ax3.set_title(f"collapse: spread {o.measured['collapse_rel_spread']:.3f} over equal "
                  r"$\alpha/|B|$ (blue)", fontsize=9)


def _plain_ticks():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _: "")


def summary_t8(o):
    m = o.measured
    return (f"collapse spread {m['collapse_rel_spread']:.3f} (spec < 0.15); control spread "
            f"{', '.join(f'{v:.2f}' for v in m['control_rel_spread'])}")


# ------------------------------------------------------------------------------------------ T9
def run_t9(s, rng):
    taylor_terms, order_kernels = _require(*REQUIRES["T9"])
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
    counts = np.unique(np.geomspace(10, ratios.size, 40).astype(int))
    running = [(int(c), float(ratios[:c].mean()), float(ratios[:c].std(ddof=1) / np.sqrt(c)))
               for c in counts]
    max_err = max(errs.values())
    return Outcome(
        measured=dict(taylor_max_err=max_err, taylor_err_by_case=errs, k2_ratio_mean=mean,
                      k2_ratio_se=se),
        reference=dict(taylor_max_err=3e-15, k2_ratio_mean="1.00 +- 0.01"),
        tolerance=dict(taylor_max_err="< 1e-12 relative", k2_ratio_mean="|mean - 1| < 4 SE"),
        checks=dict(taylor=max_err < 1e-12, k2=abs(mean - 1) < 4 * se),
        data=dict(norms=norms, k2_running=running))


def plot_t9(o, fig):
    ax, ax2 = fig.subplots(1, 2)
    for key, n in o.data["norms"].items():
        ax.semilogy(np.arange(len(n)), np.asarray(n) + 1e-300, "o-", label=key)
    ax.set(xlabel="order k", ylabel=r"$\|P_k(\Delta_T)\|$ on the probe set")
    ax.set_title(r"Taylor terms of $f(W_0 + \Delta_T)$ after training; "
                 f"$\\sum_k P_k = f$ to {o.measured['taylor_max_err']:.1e}", fontsize=9)
    ax.legend(fontsize=7)
    run = np.asarray(o.data.get("k2_running", []), dtype=float)
    if run.size:
        n, m, se = run.T
        ax2.semilogx(n, m, "C0-", label="running mean")
        ax2.fill_between(n, m - 2 * se, m + 2 * se, color="C0", alpha=0.2, label=r"$\pm 2$ SE")
    ax2.axhline(1.0, color="k", ls="--", lw=1, label="theory: exactly 1 at every D")
    ax2.set(xlabel="number of draws", ylabel=r"$E\,K_2 / (\binom{N}{2} K)$")
    ax2.set_title("order-2 kernel in expectation (heavy-tailed at small D)", fontsize=9)
    ax2.legend(fontsize=7)


TARGETS = [
    Target("T7", "random-matrix statistics of the cores at initialisation", run_t7, plot_t7,
           full=dict(n_sites=6, phys_dim=2, bond_dims=[16, 32, 64, 128, 256], n_draws=20),
           quick=dict(n_sites=6, phys_dim=2, bond_dims=[16, 64, 128], n_draws=20),
           summary=summary_t7),
    Target("T8", "Dyson-Brownian-motion scaling of the top eigenvalues", run_t8, plot_t8,
           full=dict(pairs=[[0.1, 8], [0.2, 16], [0.4, 32]], controls=[[0.4, 8], [0.1, 32]],
                     label_noise=0.5, duration=960, burn_in=40, sample_every=2.0, top_k=3,
                     collapse_bound=0.15),
           quick=dict(pairs=[[0.1, 8], [0.2, 16], [0.4, 32]], controls=[[0.4, 8]],
                      label_noise=0.5, duration=240, burn_in=40, sample_every=2.0, top_k=3,
                      # 240 time units: spreads 0.03-0.24 over seeds (variance estimates from
                      # ~100 correlated samples), so the quick bound is 0.5, not the spec's 0.15
                      collapse_bound=0.5),
           summary=summary_t8),
    Target("T9", "exact finite Taylor expansion and order-2 kernels", run_t9, plot_t9,
           full=dict(bond_dims=[8, 32], n_steps=400, k2_n_sites=5, k2_bond_dim=4,
                     k2_n_samples=4, k2_draws=20000),
           quick=dict(bond_dims=[8], n_steps=100, k2_n_sites=5, k2_bond_dim=4, k2_n_samples=4,
                      k2_draws=2000),
           summary=lambda o: (f"sum_k P_k - f: {o.measured['taylor_max_err']:.1e} (< 1e-12); "
                              f"E K_2 / (C(N,2) K) = {o.measured['k2_ratio_mean']:.4f} +- "
                              f"{o.measured['k2_ratio_se']:.4f}")),
]
