"""The figures and numbers of docs/diagnostics.md, from mpsntk.diagnostics.

    python examples/diagnostics_figures.py [--out docs/figures] [--quick]

Writes diagnostics_regime.png (drift, linearisation error, velocity and per-site drift against
the bond dimension), diagnostics_spectra.png (Marchenko-Pastur at initialisation and the
spectral statistics along training), diagnostics_dbm.png (the Dyson-Brownian-motion collapse)
and diagnostics.json (every number quoted in the docs, with the kernel-regression table).
Needs matplotlib; a few minutes on 2 cores (``--quick``: shorter runs, for a smoke test).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

import mpsntk as mn
from mpsntk import diagnostics as dg
from mpsntk.train import max_ntk_eigenvalue


def regime(quick):
    """Theory 5.1's setting (6 sites, 6 train + 4 test points, sum loss, eta = 0.25 /
    lambda_max(Theta_inf), 400 steps) for several bond dimensions, all monitors in one run."""
    rng = np.random.default_rng(0)
    phi = mn.features.trig(rng.uniform(size=(10, 6)))
    y = rng.standard_normal(6)
    eta = 0.25 / np.linalg.eigvalsh(mn.ntk_infinite(phi[:6])).max()
    out = {}
    for D in (8, 32) if quick else (8, 32, 128):
        mps = mn.MPS.random(6, D, seed=1)
        mons = [dg.KernelDriftMonitor(phi, np.concatenate([y, np.zeros(4)])),
                dg.LinearizationMonitor(phi[:6], y, phi[6:], learning_rate=eta,
                                        reduction="sum")]
        res = mn.train(mps, phi[:6], y, learning_rate=eta, n_steps=400, log_every=10,
                       reduction="sum", callbacks=mons)
        cb = res.callbacks
        out[D] = dict(steps=res.steps.tolist(),
                      ntk_drift=[c["ntk_drift"] for c in cb],
                      lin_error=[c["lin_error"] for c in cb],
                      inf_error=[c["inf_error"] for c in cb],
                      velocity=[c["kernel_velocity"] for c in cb],
                      alignment=[c["alignment"] for c in cb],
                      param_drift=[c["param_drift"] for c in cb],
                      per_site=cb[-1]["ntk_drift_per_site"].tolist(),
                      loss_ratio=float(res.loss[-1] / res.loss[0]))
    return out


def spectra(quick):
    """Marchenko-Pastur at init (interior cores pooled), then a D = 64 model trained on a
    smooth regression task with the spectrum monitor."""
    D = 64 if quick else 128
    init = mn.MPS.random(6, D, seed=2)
    pooled = np.concatenate([dg.core_spectrum(init, j, variance="init").eigenvalues.ravel()
                             for j in range(1, 5)])
    spec = dg.core_spectrum(init, 1, variance="init")
    stats = dg.spectral_statistics(spec)
    rng = np.random.default_rng(3)
    x = rng.uniform(size=(100, 6))
    y = np.sin(np.pi * (x[:, 0] + x[:, 1])) * np.cos(np.pi * x[:, 2])
    phi = mn.features.trig(x)
    mps = mn.MPS.random(6, 64, seed=3)
    eta = 100 / max_ntk_eigenvalue(mps, phi)
    mon = dg.SpectrumMonitor(top_k=1)
    res = mn.train(mps, phi, y, learning_rate=eta, n_steps=200 if quick else 2000,
                   log_every=20, callbacks=[mon])
    cb = res.callbacks
    return dict(D=D, gamma=spec.gamma, pooled=pooled.tolist(),
                ks_init=stats.ks, r_tilde_init=stats.r_tilde, threshold=stats.threshold,
                edge=stats.edge, sites=mon.sites, steps=res.steps.tolist(),
                ks=[c["rmt_ks"].tolist() for c in cb],
                r_tilde=[c["rmt_r_tilde"].tolist() for c in cb],
                top=[c["rmt_top"][:, 0].tolist() for c in cb],
                threshold_train=cb[0]["rmt_threshold"].tolist(),
                n_outliers=[int(c["rmt_n_outliers"].sum()) for c in cb],
                loss_ratio=float(res.loss[-1] / res.loss[0]))


def dbm(quick):
    """Label-noise SGD on all 16 bit strings of 4 sites (4 copies each, one-hot features, a
    bond-dimension-2 teacher), D = 16."""
    x = np.repeat(mn.datasets.all_configurations(4, 2), 4, axis=0)
    phi = mn.features.onehot(x, phys_dim=2)
    y = mn.MPS.random(4, 2, seed=100)(phi)
    mps = mn.MPS.random(4, 16, seed=0)
    out = {}
    for detrend in (True, 50.0):  # one line over the window, or lines over blocks of t = 50
        r = dg.dyson_scaling(mps, phi, y, pairs=((0.1, 8), (0.2, 16), (0.4, 32)),
                             controls=((0.4, 8), (0.1, 32)), label_noise=0.5,
                             duration=240 if quick else 960, burn_in=40, sample_every=2.0,
                             top_k=3, detrend=detrend, seed=0)
        runs = [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in run.items()}
                for run in r.runs]
        out["window" if detrend is True else "blocks_50"] = dict(
            runs=runs, collapse_rel_spread=r.collapse_rel_spread,
            control_rel_spread=r.control_rel_spread,
            control_variance_ratio=r.control_variance_ratio,
            control_ratio_predicted=r.control_ratio_predicted, sites=r.sites)
    return out


def path_table(quick):
    """Kernel ridge regression with Theta_0, Theta_inf, Theta_T and K_path after GD on a smooth
    regression task (6 sites, 100 train + 100 test points)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(200, 6))
    y = np.sin(np.pi * (x[:, 0] + x[:, 1])) * np.cos(np.pi * x[:, 2])
    y = y + 0.1 * rng.standard_normal(200)
    phi = mn.features.trig(x)
    out = {"test_variance": float(y[100:].var())}
    for D in (4, 16):
        mps = mn.MPS.random(6, D, seed=0)
        eta = 100 / max_ntk_eigenvalue(mps, phi[:100])
        path = dg.PathKernel(phi)
        res = mn.train(mps, phi[:100], y[:100], learning_rate=eta,
                       n_steps=200 if quick else 1000, log_every=20, callbacks=[path])
        out[D] = dict(
            table={ridge: dg.compare_kernel_regression(mps, res.mps, path, phi[:100], y[:100],
                                                       phi[100:], y[100:], ridge=ridge)
                   for ridge in (0.01, 0.1, 1.0)},
            model_test_mse=float(np.mean((res.mps(phi[100:]) - y[100:]) ** 2)),
            path_error=path.relative_error, eta=eta)
    return out


def plot_regime(data, path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 2, figsize=(10, 7.5))
    for D, d in data.items():
        ax[0, 0].plot(d["steps"][1:], d["ntk_drift"][1:], label=f"D = {D}")
        # (step 0 is left out of the log scales: both errors vanish there)
        ax[0, 1].plot(d["steps"][1:], d["lin_error"][1:], label=f"D = {D}: vs $\\Theta_0$")
        ax[0, 1].plot(d["steps"][1:], d["inf_error"][1:], ls="--",
                      color=ax[0, 1].lines[-1].get_color(), label=f"D = {D}: vs $\\Theta_\\infty$")
        ax[1, 0].semilogy(d["steps"][1:], d["velocity"][1:], label=f"D = {D}")
        ax[1, 1].plot(range(len(d["per_site"])), d["per_site"], "o-", label=f"D = {D}")
    ax[0, 0].set(xlabel="step", ylabel=r"$\|\Theta_t-\Theta_0\|_F/\|\Theta_0\|_F$",
                 title="NTK drift on the probe set", yscale="log")
    ax[0, 1].set(xlabel="step", ylabel=r"$\|f_t-f^{\rm pred}_t\|/\|Y\|$", yscale="log",
                 title="distance from the kernel predictions")
    ax[1, 0].set(xlabel="step", ylabel="kernel velocity (per step)",
                 title="kernel velocity (Fort et al. 2020)")
    ax[1, 1].set(xlabel="site", ylabel="per-site drift after 400 steps", yscale="log",
                 title="per-site NTK drift")
    for a in ax.flat:
        a.legend(fontsize=8)
    fig.suptitle("6 sites, 6 train + 4 test points, "
                 "$\\eta = 0.25/\\lambda_{\\max}(\\Theta_\\infty)$")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_spectra(data, path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(14, 4.2))
    g = data["gamma"]
    lo, hi = dg.marchenko_pastur_edges(g)
    xs = np.linspace(0, hi + 0.4, 600)
    ax[0].hist(data["pooled"], bins=50, density=True, alpha=0.5, label="eigenvalues (4 cores)")
    ax[0].plot(xs, dg.marchenko_pastur_pdf(xs, g), "k", label=f"Marchenko-Pastur, $\\gamma$ = {g}")
    ax[0].axvline(data["threshold"], color="r", ls="--", label="Tracy-Widom threshold (1 %)")
    ax[0].set(xlabel=r"eigenvalue of $A_L^TA_L/(p v)$", ylabel="density",
              title=f"initialisation, D = {data['D']} (KS of site 1: {data['ks_init']:.3f})")
    ax[0].legend(fontsize=8)
    steps = data["steps"]
    ks, top = np.array(data["ks"]), np.array(data["top"])
    for i, j in enumerate(data["sites"]):
        ax[1].plot(steps, ks[:, i], label=f"site {j}")
        ax[2].plot(steps, top[:, i] / np.array(data["threshold_train"])[i], label=f"site {j}")
    ax[1].set(xlabel="step", ylabel="KS distance to MP", title="D = 64, trained by GD")
    ax[2].axhline(1.0, color="r", ls="--", label="Tracy-Widom threshold")
    ax[2].set(xlabel="step", ylabel="largest eigenvalue / threshold",
              title="outlier check along training")
    for a in ax[1:]:
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_dbm(data, path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    for run in data["runs"]:
        t, top = np.array(run["times"]), np.array(run["top"])
        lab = f"$\\alpha$ = {run['alpha']}, |B| = {run['batch_size']}"
        ax[0].plot(t, top[:, 0, 0], lw=0.8, ls=":" if run["control"] else "-",
                   label=lab + (" (control)" if run["control"] else ""))
        ax[1].loglog(run["ratio"], run["variance"], "s" if run["control"] else "o", ms=8,
                     label=lab)
    pairs = [r for r in data["runs"] if not r["control"]]
    c = np.mean([r["normalized_variance"] for r in pairs])
    rs = np.array(sorted({r["ratio"] for r in data["runs"]}))
    ax[1].loglog(rs, c * rs, "k--", lw=1, label=r"$\propto \alpha/|B|$ through the pairs")
    ax[0].set(xlabel=r"$t = \alpha\cdot$step", ylabel=r"largest eigenvalue of $X_1$",
              title="eigenvalue trajectories (site 1)")
    ax[1].xaxis.set_minor_formatter(plt.NullFormatter())
    ax[1].set(xlabel=r"$\alpha/|B|$", ylabel="stationary variance (detrended)",
              title=f"collapse: spread {data['collapse_rel_spread']:.2f} across equal ratios")
    for a in ax:
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join("docs", "figures"))
    parser.add_argument("--quick", action="store_true", help="shorter runs (a smoke test)")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    numbers = {"version": mn.__version__, "quick": args.quick}
    for name, fn in (("regime", regime), ("spectra", spectra), ("dbm", dbm),
                     ("path", path_table)):
        t = time.perf_counter()
        numbers[name] = fn(args.quick)
        print(f"{name}: {time.perf_counter() - t:.1f} s", flush=True)
    plot_regime(numbers["regime"], os.path.join(args.out, "diagnostics_regime.png"))
    plot_spectra(numbers["spectra"], os.path.join(args.out, "diagnostics_spectra.png"))
    plot_dbm(numbers["dbm"]["window"], os.path.join(args.out, "diagnostics_dbm.png"))
    numbers["spectra"].pop("pooled")
    for result in numbers["dbm"].values():
        for run in result["runs"]:
            run.pop("top"), run.pop("times")  # the figure has them
    with open(os.path.join(args.out, "diagnostics.json"), "w") as f:
        json.dump(numbers, f, indent=1, default=float)
    for key, result in numbers["dbm"].items():
        print(key, {k: result[k] for k in ("collapse_rel_spread", "control_variance_ratio",
                                           "control_ratio_predicted")})


if __name__ == "__main__":
    main()
