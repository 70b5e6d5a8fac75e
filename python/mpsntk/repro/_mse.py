"""Targets T3 (squared-loss kernel dynamics, theory 4.1, 5.1, 5.2) and T4 (the mean mode
decays at the corrected top eigenvalue, theory 4.2)."""

from __future__ import annotations

import numpy as np

from ..diagnostics._fluctuations import fit_power_law
from . import experiments
from ._kernels import within
from ._runner import Outcome, Target, bond_axis

SPEC_T3 = dict(  # theory 5.1, 5.2
    obc_dlin={8: 0.32, 16: 0.16, 32: 0.046, 64: 0.049, 128: 0.019, 256: 0.0069},
    pbc_dlin={8: 0.12, 16: 0.029, 32: 0.014, 64: 0.0016, 128: 0.0006},
    obc_drift={8: 0.57, 16: 0.25, 32: 0.11, 64: 0.065, 128: 0.035, 256: 0.017},
    pbc_drift={8: 0.13, 16: 0.069, 32: 0.021, 64: 0.0031, 128: 0.0009},
)


def _seeds(rng, n):
    return [int(v) for v in rng.integers(0, 2**31 - 1, size=n)]


def _mean_se(values):
    values = np.asarray(values, dtype=float)
    se = values.std(ddof=1) / np.sqrt(values.size) if values.size > 1 else np.nan
    return float(values.mean()), float(se)


def _slope_fit(dims, per_seed):
    """Power-law fit of the seed-mean against D, weighted by its SE when there are >= 2 seeds."""
    mean = np.array([np.mean(v) for v in per_seed])
    if len(per_seed[0]) > 1:
        se = np.array([np.std(v, ddof=1) / np.sqrt(len(v)) for v in per_seed])
        return fit_power_law(dims, mean, np.maximum(se, 1e-3 * mean))
    return fit_power_law(dims, mean)


# ------------------------------------------------------------------------------------------ T3
def run_t3(s, rng):
    seeds = _seeds(rng, s["n_seeds"])
    measured, checks, curves = {}, {}, {}
    for boundary, tag in (("open", "obc"), ("periodic", "pbc")):
        dims = s[f"{tag}_dims"]
        dlin, dinf, drift = [], [], []
        for D in dims:
            runs = [experiments.mse_run(D, boundary, seed, n_steps=s["n_steps"],
                                        log_every=s["log_every"]) for seed in seeds]
            dlin.append([r.comparison.delta_lin for r in runs])
            dinf.append([r.comparison.delta_inf for r in runs])
            drift.append([r.ntk_drift for r in runs])
            c = runs[0].comparison
            curves.setdefault(boundary, {})[D] = dict(steps=c.steps, loss=c.loss,
                                                      loss_lin=c.loss_lin, loss_inf=c.loss_inf)
        fit = _slope_fit(dims, drift)
        measured.update({
            f"{tag}_dlin_by_D": dict(zip(dims, (float(np.mean(v)) for v in dlin))),
            f"{tag}_dinf_by_D": dict(zip(dims, (float(np.mean(v)) for v in dinf))),
            f"{tag}_drift_by_D": dict(zip(dims, (float(np.mean(v)) for v in drift))),
            f"{tag}_drift_slope": fit.slope, f"{tag}_drift_slope_se": fit.slope_se})
        checks[f"{tag}_drift_slope"] = within(fit.slope, -1.0 if tag == "obc" else -2.0, 0.3,
                                              fit.slope_se)
        curves[boundary]["fit"] = dict(slope=fit.slope, prefactor=fit.prefactor)
    ratios = [float(c["loss"][-1] / c["loss"][0]) for b in ("open", "periodic")
              for D, c in curves[b].items() if D != "fit"]
    measured["final_loss_ratio_max"] = max(ratios)  # training converged in every run
    dl_o, dl_p = measured["obc_dlin_by_D"], measured["pbc_dlin_by_D"]
    if 256 in dl_o:
        checks["obc_dlin_D256"] = dl_o[256] < 0.02
    if 64 in dl_p:
        checks["pbc_dlin_D64"] = dl_p[64] < 0.01
    checks["dlin_falls_with_D"] = (dl_o[max(dl_o)] < dl_o[min(dl_o)]
                                   and dl_p[max(dl_p)] < dl_p[min(dl_p)])
    return Outcome(
        measured=measured,
        reference=dict(obc_dlin_by_D=SPEC_T3["obc_dlin"], pbc_dlin_by_D=SPEC_T3["pbc_dlin"],
                       obc_drift_by_D=SPEC_T3["obc_drift"], pbc_drift_by_D=SPEC_T3["pbc_drift"],
                       obc_drift_slope=-1.0, pbc_drift_slope=-2.0,
                       obc_dinf="0.34 (D=16) -> 0.06 (D=256)",
                       pbc_dinf="0.11 (D=16) -> 0.018 (D=128)"),
        tolerance=dict(obc_dlin_D256="< 0.02 (mean over seeds; when D = 256 is run)",
                       pbc_dlin_D64="< 0.01 (mean over seeds; when D = 64 is run)",
                       drift_slope="+-0.3 (+ 3 SE of the fit)",
                       dlin_falls_with_D="largest D below smallest D, both boundaries"),
        checks=checks,
        data=dict(curves=curves, dlin=dict(open=dl_o, periodic=dl_p),
                  dinf=dict(open=measured["obc_dinf_by_D"], periodic=measured["pbc_dinf_by_D"]),
                  drift=dict(open=measured["obc_drift_by_D"],
                             periodic=measured["pbc_drift_by_D"])))


def plot_t3(o, fig):
    ax1, ax2, ax3 = fig.subplots(1, 3)
    curves = o.data["curves"]["open"]
    dims = [D for D in curves if D != "fit"]
    for D, color in zip((min(dims), max(dims)), ("C3", "C0")):
        c = curves[D]
        ax1.semilogy(c["steps"], c["loss"], "o", ms=3, color=color, label=f"real GD, D={D}")
        ax1.semilogy(c["steps"], c["loss_lin"], "-", color=color, lw=1,
                     label=r"closed form, $\Theta_0$")
        ax1.semilogy(c["steps"], c["loss_inf"], ":", color=color, lw=1.2,
                     label=r"closed form, $\Theta_\infty$")
    ax1.set(xlabel="step", ylabel="training loss (sum)")
    ax1.set_title("open chain: real vs predicted loss", fontsize=9)
    ax1.legend(fontsize=6)
    for (b, dl), color in zip(o.data["dlin"].items(), ("C0", "C3")):
        ax2.loglog(list(dl), list(dl.values()), "o-", color=color, label=rf"$\Delta_{{lin}}$ {b}")
        di = o.data["dinf"][b]
        ax2.loglog(list(di), list(di.values()), "s--", color=color, ms=4, alpha=0.6,
                   label=rf"$\|f_T - f^\infty_T\|/\|Y\|$ {b}")
        spec = SPEC_T3["obc_dlin" if b == "open" else "pbc_dlin"]
        ax2.loglog(list(spec), list(spec.values()), "x", color=color, alpha=0.6)
    ax2.set(xlabel="bond dimension D", ylabel="deviation / |Y|")
    bond_axis(ax2, [d for b in SPEC_T3.values() for d in b])
    ax2.set_title(r"linearisation error (x: spec)", fontsize=9)
    ax2.legend(fontsize=6)
    for (b, dr), color in zip(o.data["drift"].items(), ("C0", "C3")):
        D = np.array(list(dr), dtype=float)
        ax3.loglog(D, list(dr.values()), "o", color=color, label=f"{b}")
        fit = o.data["curves"][b]["fit"]
        ax3.loglog(D, fit["prefactor"] * D ** fit["slope"], "-", color=color, lw=1,
                   label=f"fit slope {fit['slope']:.2f}")
        spec = SPEC_T3["obc_drift" if b == "open" else "pbc_drift"]
        ax3.loglog(list(spec), list(spec.values()), "x", color=color, alpha=0.6)
    ax3.set(xlabel="bond dimension D", ylabel=r"$\|\Theta_T-\Theta_0\|_F/\|\Theta_0\|_F$")
    bond_axis(ax3, [d for b in SPEC_T3.values() for d in b])
    ax3.set_title("NTK drift over training (x: spec)", fontsize=9)
    ax3.legend(fontsize=6)


def summary_t3(o):
    m = o.measured
    o_, p_ = m["obc_dlin_by_D"], m["pbc_dlin_by_D"]
    return (f"dlin open D={max(o_)} {o_[max(o_)]:.4f} (D=256: <0.02), periodic D={max(p_)} "
            f"{p_[max(p_)]:.4f} (D=64: <0.01); drift slopes {m['obc_drift_slope']:.2f} (-1), "
            f"{m['pbc_drift_slope']:.2f} (-2)")


# ------------------------------------------------------------------------------------------ T4
def run_t4(s, rng):
    seeds = _seeds(rng, s["n_seeds"])
    _, lam = experiments.mean_mode_setting()
    n_sites = m = lam.size
    r = np.cos(np.pi * 0.4 / 2) ** 2
    measured, checks, data = {}, {}, dict(traces={}, rates={})
    predicted = None
    for boundary, tag in (("open", "obc"), ("periodic", "pbc")):
        by, se_by = {}, {}
        for D in s[f"{tag}_dims"]:
            runs = [experiments.mean_mode_run(D, boundary, seed) for seed in seeds]
            predicted = runs[0].predicted_rate
            rates = [run.rate for run in runs]
            by[D], se_by[D] = _mean_se(rates)
            data["rates"][f"{boundary} D={D}"] = rates
            data["traces"][f"{boundary} D={D}"] = dict(
                steps=runs[0].steps, ratio=runs[0].mean_residual / runs[0].mean_residual[0])
            if tag == "pbc" and D >= 32:
                checks[f"pbc_rate_D{D}"] = within(by[D], predicted, 0.1 * predicted, se_by[D])
        measured[f"{tag}_rate_by_D"], measured[f"{tag}_rate_se_by_D"] = by, se_by
    measured.update(predicted_rate=predicted, lambda_max=float(lam[-1]),
                    lambda_rest=float(lam[0]), n_seeds=len(seeds))
    data.update(predicted=predicted, eta=0.1 / lam[-1], lam=float(lam[-1]), n_sites=n_sites)
    return Outcome(
        measured=measured,
        reference=dict(predicted_rate=27.0, lambda_max=25.635,
                       lambda_max_formula="(sum rho)(1 + (m-1) r) = N (1 + (m-1) r)",
                       lambda_max_gd_eq_3_16=float(1 + (m - 1) * r),
                       lambda_max_corrected=float(n_sites * (1 + (m - 1) * r)),
                       lambda_rest=2.073, pbc_rate_by_D={32: "27.3 +- 2.4", 128: "27.2 +- 0.95"},
                       obc_rate_by_D={32: "21 +- 5", 128: "25.7 +- 7.7"}),
        tolerance=dict(pbc_rate="within 10% of the predicted rate for D >= 32 (+ 3 SE of the "
                                "seed mean)", obc_rate="reported only (converges slower)",
                       rate_fit="slope of -log|e_k| against eta k while |e_k| >= 0.05 |e_0|"),
        checks=checks, data=data)


def plot_t4(o, fig):
    ax1, ax2 = fig.subplots(1, 2)
    eta, lam = o.data["eta"], o.data["lam"]
    for key, tr in o.data["traces"].items():
        ax1.semilogy(tr["steps"], np.abs(tr["ratio"]), "-", lw=1.2, label=key)
    k = np.arange(max(len(t["steps"]) for t in o.data["traces"].values()))
    ax1.semilogy(k, (1 - eta * lam) ** k, "k--", lw=1,
                 label=r"$(1-\eta\lambda_{max})^k$, $\lambda_{max}=N(1+(m-1)r)$")
    ax1.semilogy(k, (1 - eta * lam / o.data["n_sites"]) ** k, "k:", lw=1,
                 label=r"Guo-Draper rate $1+(m-1)r$")
    ax1.set(xlabel="step k", ylabel=r"$|\bar e_k / \bar e_0|$")
    ax1.set_title("mean residual (first seed)", fontsize=9)
    ax1.legend(fontsize=6)
    keys = list(o.data["rates"])
    for i, key in enumerate(keys):
        v = np.asarray(o.data["rates"][key])
        ax2.plot(np.full(v.size, i), v, "o", alpha=0.5)
        ax2.errorbar(i + 0.15, v.mean(), yerr=v.std(ddof=1) / np.sqrt(v.size) if v.size > 1
                     else 0, fmt="ks", capsize=3)
    p = o.data["predicted"]
    ax2.axhline(p, color="k", lw=1, label=rf"$-\ln(1-\eta\lambda_{{max}})/\eta$ = {p:.2f}")
    ax2.axhspan(0.9 * p, 1.1 * p, color="0.85", label="10% band")
    ax2.set_xticks(range(len(keys)), keys, fontsize=7)
    ax2.set_ylabel("fitted decay rate of the mean residual")
    ax2.set_title("rates per seed (squares: mean +- SE)", fontsize=9)
    ax2.legend(fontsize=7)


def summary_t4(o):
    m = o.measured
    rates = ", ".join(f"D={D} {v:.2f}+-{m['pbc_rate_se_by_D'][D]:.2f}"
                      for D, v in m["pbc_rate_by_D"].items())
    return f"periodic rate {rates} vs predicted {m['predicted_rate']:.2f}"


TARGETS = [
    Target("T3", "squared-loss dynamics: linearisation error and NTK drift", run_t3, plot_t3,
           full=dict(obc_dims=[8, 16, 32, 64, 128, 256], pbc_dims=[8, 16, 32, 64, 128],
                     n_seeds=2, n_steps=400, log_every=10),
           quick=dict(obc_dims=[8, 32, 256], pbc_dims=[8, 16, 32], n_seeds=1, n_steps=400,
                      log_every=20),
           summary=summary_t3),
    Target("T4", "the mean residual decays at the top eigenvalue N(1+(m-1)r)", run_t4, plot_t4,
           full=dict(obc_dims=[32, 128], pbc_dims=[32, 128], n_seeds=6),
           quick=dict(obc_dims=[32], pbc_dims=[32], n_seeds=3),
           summary=summary_t4),
]
