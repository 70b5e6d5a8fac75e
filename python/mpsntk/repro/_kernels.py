"""Targets T1 (exact expectations), T2 (finite-D convergence rates) and T6 (positive
definiteness): theory sections 3.1-3.4."""

from __future__ import annotations

import numpy as np

from .. import features
from ..diagnostics._fluctuations import (
    fluctuation_scaling,
    kernel_statistics,
    kurtosis_open_chain,
    output_kurtosis,
)
from ..infinite import ntk_infinite
from ..mps import MPS
from ..ntk import ntk
from . import experiments
from ._runner import Outcome, Target, bond_axis

Z_BAND = 3.0  # statistical widening of a reference band: the estimate's 3 standard errors


def within(value, reference, band, se, z=Z_BAND):
    """``|value - reference| <= band + z se``: consistent with the reference band given the
    estimate's own standard error (for ``se -> 0`` this is the band itself)."""
    return bool(abs(value - reference) <= band + z * se)


# ------------------------------------------------------------------------------------------ T1
def run_t1(s, rng):
    phi = features.trig(rng.uniform(size=(s["n_samples"], s["n_sites"])))
    iu = np.triu_indices(s["n_samples"])
    z_by, cov_by, covz_by, rows = {}, {}, {}, []
    for boundary in s["boundaries"]:
        for D in s["bond_dims"]:
            st = kernel_statistics(phi, D, s["n_draws"], boundary=boundary, seed=rng)
            key = f"{boundary} D={D}"
            z_by[key] = float(st.ntk_z[iu].max())
            cov_err = np.abs(st.nngp_mean - st.nngp_infinite)[iu]
            cov_by[key] = float(cov_err.max())
            covz_by[key] = float(st.nngp_z[iu].max())
            # The spec's absolute bound, where the draws' own standard error allows it.
            bound = np.maximum(s["cov_bound"], s["cov_z"] * st.nngp_se[iu])
            rows.append(dict(key=key, z=st.ntk_z[iu], mean=st.ntk_mean[iu],
                             se=st.ntk_se[iu], inf=st.ntk_infinite[iu],
                             cov=st.nngp_mean[iu], cov_se=st.nngp_se[iu],
                             k=st.nngp_infinite[iu], cov_ok=bool(np.all(cov_err < bound))))
    max_z, max_cov = max(z_by.values()), max(cov_by.values())
    return Outcome(
        measured=dict(max_z=max_z, max_cov_err=max_cov, max_cov_z=max(covz_by.values()),
                      z_by_case=z_by, cov_err_by_case=cov_by, cov_z_by_case=covz_by),
        reference=dict(max_z=3.0, max_cov_err=0.044, mean_ntk="n_sites * K exactly",
                       mean_ff="K exactly"),
        tolerance=dict(
            max_z=f"< {s['z_bound']} (|mean Theta_D - N K| / SE, every entry of every case)",
            max_cov_err=f"< {s['cov_bound']} per entry, or < {s['cov_z']} SE where that SE "
                        "(heavy tails at D = 2) makes the absolute bound unreachable"),
        checks=dict(max_z=max_z < s["z_bound"], cov=all(r["cov_ok"] for r in rows)),
        data=dict(rows=rows, z_bound=s["z_bound"]))


def plot_t1(o, fig):
    ax1, ax2, ax3 = fig.subplots(1, 3)
    rows = o.data["rows"]
    for i, r in enumerate(rows):
        ax1.plot(np.full(len(r["z"]), i), r["z"], "o", ms=4, alpha=0.7)
    ax1.axhline(o.data["z_bound"], color="k", ls="--", lw=1, label="pass bound")
    ax1.set_xticks(range(len(rows)), [r["key"].replace(" D=", "\nD=") for r in rows],
                   fontsize=7)
    ax1.set_ylabel(r"$|\bar\Theta_D - N K|\,/\,\mathrm{SE}$")
    ax1.set_title("entrywise z of the mean NTK", fontsize=9)
    ax1.legend(fontsize=7)
    for r in rows:
        ax2.errorbar(r["inf"], r["mean"] - r["inf"], yerr=r["se"], fmt="o", ms=3, capsize=2,
                     label=r["key"])
        ax3.errorbar(r["k"], r["cov"] - r["k"], yerr=r["cov_se"], fmt="o", ms=3, capsize=2)
    for ax, name in ((ax2, r"$\Theta_\infty = N K$"), (ax3, r"$K$")):
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel(name)
    ax2.set_ylabel(r"$\bar\Theta_D - \Theta_\infty$ ($\pm$SE)")
    ax3.set_ylabel(r"$\overline{f f'} - K$ ($\pm$SE)")
    ax2.set_title("mean NTK minus its limit", fontsize=9)
    ax3.set_title("output covariance minus NNGP kernel", fontsize=9)
    ax2.legend(fontsize=6, ncol=2)


def summary_t1(o):
    m = o.measured
    return (f"max z {m['max_z']:.2f} (spec < 4), max |Cov f - K| {m['max_cov_err']:.3f} "
            f"(spec < 0.06; max {m['max_cov_z']:.2f} SE)")


# ------------------------------------------------------------------------------------------ T2
SPEC_T2 = dict(  # theory 7: E ||Theta_D - Theta_inf||_F / ||Theta_inf||_F at N = 6
    open={8: 0.92, 16: 0.61, 32: 0.45, 64: 0.32, 128: 0.24, 256: 0.16},
    periodic={8: 0.54, 16: 0.29, 32: 0.14, 64: 0.073, 128: 0.035, 256: 0.018},
)
REF_T2 = dict(open=(-0.5, 0.1, 2.5, 0.5), periodic=(-1.0, 0.15, 4.6, 1.0))  # slope, band, a, band


def run_t2(s, rng):
    phi = features.trig(rng.uniform(size=(s["n_samples"], s["n_sites"])))
    measured, checks, curves = {}, {}, {}
    for boundary, tag in (("open", "obc"), ("periodic", "pbc")):
        sc = fluctuation_scaling(phi, s["bond_dims"], s["n_draws"], boundary=boundary,
                                 seed=rng)
        fit = sc.fit
        slope, slope_band, pref, pref_band = REF_T2[boundary]
        measured.update({
            f"{tag}_slope": fit.slope, f"{tag}_slope_se": fit.slope_se,
            f"{tag}_prefactor": fit.prefactor, f"{tag}_prefactor_se": fit.prefactor_se,
            f"{tag}_chi2_red": fit.chi2_red,
            f"{tag}_err_by_D": dict(zip(sc.bond_dims.tolist(), sc.mean.tolist())),
            f"{tag}_err_se_by_D": dict(zip(sc.bond_dims.tolist(), sc.se.tolist()))})
        checks[f"{tag}_slope"] = within(fit.slope, slope, slope_band, fit.slope_se)
        checks[f"{tag}_prefactor"] = within(fit.prefactor, pref, pref_band, fit.prefactor_se)
        curves[boundary] = dict(D=sc.bond_dims, mean=sc.mean, se=sc.se, slope=fit.slope,
                                prefactor=fit.prefactor)
    kurt, exact, kse, rel = {}, {}, {}, {}
    for D in s["kurtosis_dims"]:
        k = output_kurtosis(phi[:1], D, s["kurtosis_draws"], seed=rng)
        kurt[D], kse[D] = float(k.kurtosis[0]), float(k.se[0])
        exact[D] = kurtosis_open_chain(s["n_sites"], D)
        rel[D] = kurt[D] / exact[D] - 1
        checks[f"kurtosis_D{D}"] = abs(kurt[D] - exact[D]) < s["kurtosis_z"] * kse[D]
    measured.update(kurtosis_by_D=kurt, kurtosis_se_by_D=kse, kurtosis_exact_by_D=exact,
                    kurtosis_rel_err_by_D=rel,
                    kurtosis_rel_err=max(abs(v) for v in rel.values()),
                    kurtosis_max_z=max(abs(kurt[D] - exact[D]) / kse[D] for D in kurt))
    return Outcome(
        measured=measured,
        reference=dict(obc_slope=-0.5, obc_prefactor=2.5, pbc_slope=-1.0, pbc_prefactor=4.6,
                       obc_err_by_D=SPEC_T2["open"], pbc_err_by_D=SPEC_T2["periodic"],
                       kurtosis_law="3 (1 + 2/D)^(N-1)", kurtosis_exact_by_D=exact,
                       kurtosis_N6_D4="22.76 measured vs 22.78"),
        tolerance=dict(
            obc_slope="+-0.1 (+ 3 SE of the fit)", obc_prefactor="+-0.5 (+ 3 SE)",
            pbc_slope="+-0.15 (+ 3 SE)", pbc_prefactor="+-1 (+ 3 SE)",
            kurtosis=f"|measured - exact| < {s['kurtosis_z']} SE at every D"),
        checks=checks,
        data=dict(curves=curves, kurtosis=dict(D=list(kurt), value=list(kurt.values()),
                                               se=list(kse.values())), n_sites=s["n_sites"]))


def plot_t2(o, fig):
    ax1, ax2, ax3 = fig.subplots(1, 3)
    for (boundary, c), color in zip(o.data["curves"].items(), ("C0", "C3")):
        D = np.asarray(c["D"], dtype=float)
        ax1.errorbar(D, c["mean"], yerr=c["se"], fmt="o", color=color, capsize=2,
                     label=f"{boundary}: measured")
        grid = np.geomspace(D.min(), D.max(), 50)
        ax1.plot(grid, c["prefactor"] * grid ** c["slope"], "-", color=color, lw=1,
                 label=f"fit {c['prefactor']:.2f} D^{c['slope']:.2f}")
        spec = SPEC_T2[boundary]
        ax1.plot(list(spec), list(spec.values()), "x", color=color, ms=6, alpha=0.6,
                 label=f"{boundary}: spec table")
        scale = np.sqrt(D) if boundary == "open" else D
        ax3.errorbar(D, np.asarray(c["mean"]) * scale, yerr=np.asarray(c["se"]) * scale,
                     fmt="o-", color=color, capsize=2,
                     label=r"$\sqrt{D}\,$err (open)" if boundary == "open" else
                     r"$D\,$err (periodic)")
    ax1.set(yscale="log", xlabel="bond dimension D",
            ylabel=r"$E\|\Theta_D-\Theta_\infty\|_F/\|\Theta_\infty\|_F$")
    dims = [d for c in o.data["curves"].values() for d in c["D"]]
    bond_axis(ax1, dims + [d for b in SPEC_T2.values() for d in b])
    bond_axis(ax3, dims)
    ax1.set_title("finite-D fluctuation of the NTK", fontsize=9)
    ax1.legend(fontsize=6)
    ax3.axhline(2.5, color="C0", ls=":", lw=1)
    ax3.axhline(4.6, color="C3", ls=":", lw=1)
    ax3.set(xlabel="bond dimension D", ylabel="scaled error")
    ax3.set_title("scaled error (dotted: spec prefactors)", fontsize=9)
    ax3.legend(fontsize=7)
    k = o.data["kurtosis"]
    ax2.errorbar(k["D"], k["value"], yerr=k["se"], fmt="o", capsize=3, label="measured")
    grid = np.geomspace(min(k["D"]) * 0.8, max(k["D"]) * 1.25, 60)
    ax2.plot(grid, 3 * (1 + 2 / grid) ** (o.data["n_sites"] - 1), "k-", lw=1,
             label=r"$3(1+2/D)^{N-1}$")
    ax2.set(yscale="log", xlabel="bond dimension D", ylabel=r"$E f^4 / (E f^2)^2$")
    bond_axis(ax2, k["D"])
    ax2.set_title("open-chain output kurtosis", fontsize=9)
    ax2.legend(fontsize=7)


def summary_t2(o):
    m = o.measured
    return (f"slope open {m['obc_slope']:.3f} (-0.5), periodic {m['pbc_slope']:.3f} (-1.0); "
            f"prefactor {m['obc_prefactor']:.2f} (2.5), {m['pbc_prefactor']:.2f} (4.6); "
            f"kurtosis rel err {m['kurtosis_rel_err']:.3f}")


# ------------------------------------------------------------------------------------------ T6
def run_t6(s, rng):
    cases = experiments.positive_definiteness_cases(s["n_sites"], seed=s["case_seed"])
    kappa = cases["kappa"]
    eig = {name: np.linalg.eigvalsh(ntk_infinite(cases[name]))
           for name in ("distinct", "duplicate", "too_many", "continuous")}
    mps = MPS.random(s["n_sites"], s["bond_dim"], seed=rng)
    eig["finite_D_duplicate"] = np.linalg.eigvalsh(ntk(mps, cases["duplicate"]))
    top = {k: v[-1] for k, v in eig.items()}
    n_many = cases["too_many"].shape[0]
    null_many = np.abs(eig["too_many"][: n_many - cases["rank_bound"]]).max() / top["too_many"]
    n_cont = cases["continuous"].shape[0]
    cont = eig["continuous"]
    null_cont = np.abs(cont[: n_cont - 32]).max() / top["continuous"]
    dup, dist = eig["duplicate"], eig["distinct"]
    measured = dict(
        dup_min_eig=float(dup[0]), dup_min_eig_rel=float(abs(dup[0]) / top["duplicate"]),
        distinct_min_eig=float(dist[0]), kappa=kappa,
        distinct_rel_err=float(np.max(np.abs(dist / kappa - 1))),
        too_many_null_rel=float(null_many), continuous_null_rel=float(null_cont),
        continuous_first_nonzero_rel=float(cont[n_cont - 32] / top["continuous"]),
        finite_D_dup_min_rel=float(abs(eig["finite_D_duplicate"][0]) / top["finite_D_duplicate"]))
    return Outcome(
        measured=measured,
        reference=dict(dup_min_eig=0.0, distinct_min_eig=kappa, kappa=kappa,
                       kappa_formula="(sum_j rho_j) prod_j sigma_j^2 |phi|^2 = N 2^-N",
                       kappa_gd_eq_4_5=1.0),
        tolerance=dict(dup_min_eig="|lambda_min| < 1e-14 lambda_max",
                       distinct_min_eig="all eigenvalues = kappa to 1e-13",
                       too_many="d^N-rank bound: extra eigenvalues < 1e-13 lambda_max",
                       continuous="extra eigenvalues < 1e-12, the rest > 1e-8 lambda_max",
                       finite_D_duplicate="|lambda_min| < 1e-13 lambda_max"),
        checks=dict(
            duplicate=measured["dup_min_eig_rel"] < 1e-14,
            distinct=measured["distinct_rel_err"] < 1e-13,
            too_many=null_many < 1e-13,
            continuous=null_cont < 1e-12 and measured["continuous_first_nonzero_rel"] > 1e-8,
            finite_D_duplicate=measured["finite_D_dup_min_rel"] < 1e-13),
        data=dict(eig=eig, kappa=kappa))


def plot_t6(o, fig):
    ax1, ax2 = fig.subplots(1, 2)
    floor = 1e-18
    labels = dict(distinct=r"distinct one-hot, $\Theta_\infty$",
                  duplicate=r"duplicated sample, $\Theta_\infty$",
                  too_many=r"$m = 1.5\,d^N$ one-hot, $\Theta_\infty$",
                  continuous=r"40 trig samples, $N=5$, $\Theta_\infty$",
                  finite_D_duplicate=r"duplicated sample, $\Theta_D$ ($D=5$)")
    for name, lam in o.data["eig"].items():
        lam = np.asarray(lam)
        ax1.semilogy(np.arange(1, lam.size + 1), np.maximum(np.abs(lam) / lam[-1], floor),
                     "o-", ms=3, lw=0.8, label=labels[name])
    ax1.axhline(1e-14, color="k", ls=":", lw=1)
    ax1.set(xlabel="eigenvalue index (ascending)", ylabel=r"$|\lambda| / \lambda_{max}$")
    ax1.set_title("spectra: zero modes at machine precision", fontsize=9)
    ax1.legend(fontsize=7)
    m = o.measured
    ax2.axis("off")
    ax2.text(0.0, 0.95, "\n".join([
        r"distinct configurations: $\Theta_\infty = \kappa I$",
        rf"  $\lambda_{{min}}$ = {m['distinct_min_eig']:.6g},"
        rf"  $\kappa = N 2^{{-N}}$ = {m['kappa']:.6g}",
        r"  (Guo-Draper eq. 4.5: $\kappa = \prod\sigma^2$ = 1)",
        rf"duplicate: $|\lambda_{{min}}|/\lambda_{{max}}$ = {m['dup_min_eig_rel']:.2e}",
        rf"$m > d^N$: extra eigenvalues $\leq$ {m['too_many_null_rel']:.2e} $\lambda_{{max}}$",
        rf"finite D, duplicate: {m['finite_D_dup_min_rel']:.2e} $\lambda_{{max}}$",
    ]), va="top", fontsize=9, transform=ax2.transAxes)


def summary_t6(o):
    m = o.measured
    return (f"dup lambda_min/max {m['dup_min_eig_rel']:.1e}, distinct lambda_min "
            f"{m['distinct_min_eig']:.6g} = kappa {m['kappa']:.6g}")


TARGETS = [
    Target("T1", "NNGP and NTK are exact in expectation", run_t1, plot_t1,
           full=dict(n_sites=6, n_samples=4, bond_dims=[2, 3, 4],
                     boundaries=["open", "periodic"], n_draws=40000, z_bound=4.0,
                     cov_bound=0.06, cov_z=4.0),
           quick=dict(n_sites=6, n_samples=4, bond_dims=[2, 3, 4],
                      boundaries=["open", "periodic"], n_draws=4000, z_bound=5.0,
                      cov_bound=0.06, cov_z=4.0),
           summary=summary_t1),
    Target("T2", "finite-D convergence rates and the open-chain kurtosis law", run_t2, plot_t2,
           full=dict(n_sites=6, n_samples=6, bond_dims=[8, 16, 32, 64, 128, 256], n_draws=300,
                     kurtosis_dims=[4, 8, 16, 32], kurtosis_draws=200000, kurtosis_z=4.0),
           quick=dict(n_sites=6, n_samples=6, bond_dims=[8, 16, 32, 64], n_draws=100,
                      kurtosis_dims=[8, 16], kurtosis_draws=10000, kurtosis_z=4.0),
           summary=summary_t2),
    Target("T6", "positive-definiteness of the limiting kernel", run_t6, plot_t6,
           full=dict(n_sites=4, bond_dim=5, case_seed=0),
           quick=dict(n_sites=4, bond_dim=5, case_seed=0),
           summary=summary_t6),
]
