"""The ``melissa-sa`` command.

::

    melissa-sa run study.json [--resume] [--dry-run] [-v] [--no-progress]
    melissa-sa info OUT/results.h5
    melissa-sa plot OUT/results.h5 [--field F] [--stat mean] [--time-step T]
                    [--cell C] [--index K] -o out.png

Exit codes (:mod:`melissa_sa.exit_codes`): 0 success, 1 study failed (or
another launcher runs this study), 2 invalid config or usage, 130 interrupted
(Ctrl-C), 143 terminated (SIGTERM). ``docs/running.md`` has the details.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from melissa_sa import __version__, exit_codes

PROG = "melissa-sa"


def _err(text: str) -> None:
    print(f"{PROG}: error: {text}", file=sys.stderr)


# ---------------------------------------------------------------------------
# run


def _preview_parameters(cfg, n_groups: int = 3) -> list[str]:
    """The first few groups of the design, as text (best effort)."""
    from melissa_sa.sampling import sampler_from_config

    design = sampler_from_config(cfg)
    n = min(n_groups, cfg.n_groups)
    groups = design.draw_groups(n)
    names = list(cfg.study_options.parameter_names)
    layout = cfg.layout
    members = ([layout.member_name(m) for m in range(layout.size)]
               if layout.sobol else [""])
    lines = []
    for g in range(n):
        for m, label in enumerate(members):
            sim = g * cfg.group_size + m
            values = ", ".join(f"{name}={v:.6g}" for name, v in zip(names, groups[g, m]))
            tag = f"group {g} {label:<4} " if label else f"group {g} "
            lines.append(f"  sim {sim:<4} {tag}{values}")
    return lines


def _group_kind(cfg) -> str:
    """What one group is, for the dry run: its size and rows."""
    layout, p = cfg.layout, cfg.nb_parameters
    if not layout.sobol:
        return "independent runs"
    rows = f"A, B, C_1..C_{p}" + (f", D_1..D_{p}" if layout.second_order else "")
    return f"pick-freeze groups of {layout.size} runs ({rows})"


def cmd_run(args) -> int:
    from melissa_sa.config import ConfigError, format_config, load_config

    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        for line in exc.errors:
            _err(line)
        return exit_codes.USAGE
    if args.dry_run:
        sys.stdout.write(format_config(cfg))
        sys.stdout.flush()
        so = cfg.study_options
        kind = _group_kind(cfg)
        out = sys.stderr
        print(f"{PROG}: dry run: {cfg.n_groups} {kind} -> {cfg.n_runs} simulations of "
              f"{so.nb_time_steps} time steps; server: {cfg.server_config.server_processes} "
              f"process(es); at most {cfg.launcher_config.job_limit} client job(s) at once; "
              f"output: {cfg.output_dir}", file=out)
        try:
            lines = _preview_parameters(cfg)
        except Exception as exc:  # a preview only: never fail the dry run on it
            print(f"{PROG}: (no parameter preview: {exc})", file=out)
        else:
            print(f"{PROG}: first parameter sets ({so.sampler}, seed {so.seed}):", file=out)
            for line in lines:
                print(line, file=out)
        print(f"{PROG}: dry run: nothing started", file=out)
        return exit_codes.OK

    from melissa_sa.launcher import Launcher

    launcher = Launcher(cfg, args.config, resume=args.resume, verbose=args.verbose,
                        progress=False if args.no_progress else None)
    return launcher.run()


# ---------------------------------------------------------------------------
# info


def cmd_info(args) -> int:
    from melissa_sa.convergence import stopping_text
    from melissa_sa.results import ResultsFileError, open_results

    try:
        with open_results(args.results) as res:
            print(res.summary())
            stopping = stopping_text(res.h5.attrs)
            if stopping:
                print(stopping)
    except (FileNotFoundError, ResultsFileError, OSError, KeyError) as exc:
        _err(str(exc).strip("'\""))
        return exit_codes.FAILED
    return exit_codes.OK


# ---------------------------------------------------------------------------
# plot

MAP_STATS = ("mean", "variance", "skewness", "kurtosis", "min", "max",
             "threshold_exceedance", "quantiles", "sobol_first", "sobol_total",
             "sobol_second")
PLOT_STATS = (*MAP_STATS, "std", "sobol", "second", "convergence", "aggregated")


def _square_side(n: int) -> int | None:
    side = math.isqrt(n)
    return side if side * side == n and side > 1 else None


def _plot_map(ax, fig, values, title: str, label: str) -> None:
    side = _square_side(values.size)
    if side is not None:
        im = ax.imshow(values.reshape(side, side), origin="lower", cmap="viridis")
        fig.colorbar(im, ax=ax, label=label)
        ax.set_xlabel("cell (x)")
        ax.set_ylabel("cell (y)")
    else:
        ax.plot(range(values.size), values, lw=1.2)
        ax.set_xlabel("cell")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    ax.set_title(title)


def _plot_aggregated(ax, res, field: str, names) -> None:
    """The whole field's Sobol' indices over time, one line per parameter and
    order, with their confidence interval as a band (when the file has it)."""
    agg = res.aggregated(field)
    bounds = res.aggregated_interval(field)
    for j, (kind, values, style) in enumerate((("first", agg[0], "-o"),
                                               ("total", agg[1], "--s"))):
        for i, v in enumerate(values):
            name = names[i] if i < len(names) else f"p{i + 1}"
            (line,) = ax.plot(range(v.size), v, style, ms=3, label=f"{name} {kind}")
            if bounds is not None:
                low, high = bounds[j]
                ax.fill_between(range(v.size), low[i], high[i], color=line.get_color(),
                                alpha=0.2, lw=0)
    ax.set_xlabel("time step")
    ax.set_ylabel("aggregated Sobol' index")
    band = f" ({100 * bounds[2]:g}% interval shaded)" if bounds is not None else ""
    ax.set_title(f"{field}: Sobol' indices of the whole field{band}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)


def _default_cell(res, field: str, t: int) -> int:
    """The cell a bar chart shows when ``--cell`` is not given: the cell of
    largest variance at time step ``t`` (if the file has it), else 0."""
    import numpy as np

    if "variance" in res.statistics(field):
        return int(np.nanargmax(res.get(field, "variance", t)))
    return 0


def _bar_chart(ax, res, field: str, t: int, cell: int, series, width: float,
               ticks, ylabel: str, what: str, *, tick=str, rotate_past: int | None = None) -> None:
    """Bars of interval-carrying statistics at one cell and time step.

    ``series`` lists ``(statistic, label, colour)``; each statistic's bars sit
    side by side (``width`` each, centred on the tick), with error bars from
    ``<statistic>_low`` / ``_high``. Bar ``i`` is labelled ``ticks[i]``, or
    ``tick(i)`` when ``ticks`` is empty; labels turn 30 degrees when there are
    more than ``rotate_past`` bars. The title names ``what``, the cell, the time
    step and the confidence level (when the file records it).
    """
    import numpy as np

    for i, (stat, label, colour) in enumerate(series):
        val = res.get(field, stat, t)[:, cell]
        low = res.get(field, f"{stat}_low", t)[:, cell]
        high = res.get(field, f"{stat}_high", t)[:, cell]
        err = np.vstack([np.maximum(val - low, 0), np.maximum(high - val, 0)])
        k = np.arange(val.size)
        shift = (i - (len(series) - 1) / 2) * width
        ax.bar(k + shift, val, width, yerr=err, capsize=4, color=colour, label=label)
    rotation = 30 if rotate_past is not None and len(k) > rotate_past else 0
    ax.set_xticks(k, ticks or [tick(i) for i in k], rotation=rotation)
    ax.set_ylabel(ylabel)
    conf = res.confidence(field)
    ci = f", {100 * conf[0]:g}% CI" if conf else ""
    ax.set_title(f"{field}: {what} at cell {cell}, time step {t}{ci}")
    ax.axhline(0, color="black", lw=0.6)
    ax.legend()


def _plot_sobol(ax, res, field: str, t: int, cell: int | None, names) -> None:
    """First- and total-order indices of every parameter at one cell, side by
    side, with their intervals. ``cell`` defaults to :func:`_default_cell`."""
    if cell is None:
        cell = _default_cell(res, field, t)
    _bar_chart(ax, res, field, t, cell,
               (("sobol_first", "first order", None), ("sobol_total", "total order", None)),
               0.38, names, "Sobol' index", "Sobol' indices", tick=lambda i: f"p{i + 1}")


def _plot_second(ax, res, field: str, t: int, cell: int | None) -> None:
    """Second-order indices of every pair at one cell, with their intervals.

    The pairs' counterpart of ``--stat sobol``: one bar per pair ("x1:x2"),
    error bars from ``sobol_second_low`` / ``_high``. ``cell`` defaults to
    :func:`_default_cell`.
    """
    if cell is None:
        cell = _default_cell(res, field, t)
    _bar_chart(ax, res, field, t, cell, (("sobol_second", "second order", "tab:green"),),
               0.6, res.pair_names(field), "second-order Sobol' index",
               "second-order indices", rotate_past=6)


def _map_label(res, field: str, stat: str, k: int, names) -> str:
    """Label of entry ``k`` of a statistic with a leading dimension (not thresholds
    or quantile levels): a parameter name, or a pair "x1:x2" for sobol_second."""
    if stat == "sobol_second":
        pairs = res.pair_names(field)
        return f"{stat} {pairs[k] if k < len(pairs) else k}"
    return f"{stat} {names[k] if k < len(names) else k}"


def cmd_plot(args) -> int:
    try:
        import matplotlib
    except ImportError:
        _err("plot needs matplotlib: pip install 'melissa-sa[plot]' (or pip install matplotlib)")
        return exit_codes.FAILED
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from melissa_sa.results import ResultsFileError, open_results

    try:
        res = open_results(args.results)
    except (FileNotFoundError, ResultsFileError, OSError) as exc:
        _err(str(exc))
        return exit_codes.FAILED
    try:
        field = args.field or res.fields[0]
        if field not in res.fields:
            _err(f"{args.results}: no field {field!r}; fields: {', '.join(res.fields)}")
            return exit_codes.FAILED
        present = res.statistics(field)
        stat = args.stat
        need = {"std": "variance", "sobol": "sobol_first", "aggregated": "sobol_first",
                "convergence": "sobol_first_low", "second": "sobol_second"}.get(stat, stat)
        if need not in present:
            _err(f"{args.results}: field {field!r} has no {need!r}; "
                 f"it has {', '.join(present) or 'no statistics'}")
            return exit_codes.FAILED
        T, N = res.n_time_steps(field), res.n_cells(field)
        t = T - 1 if args.time_step is None else args.time_step
        if not -T <= t < T:
            _err(f"--time-step {t} out of range: {field!r} has {T} time steps (0..{T - 1})")
            return exit_codes.FAILED
        t %= T
        cell = args.cell
        if cell is not None and not 0 <= cell < N:
            _err(f"--cell {cell} out of range: {field!r} has {N} cells (0..{N - 1})")
            return exit_codes.FAILED
        names = res.parameter_names()
        fig, ax = plt.subplots(figsize=(7, 5), layout="constrained")

        if stat == "sobol":
            _plot_sobol(ax, res, field, t, cell, names)
        elif stat == "second":
            _plot_second(ax, res, field, t, cell)
        elif stat == "aggregated":
            if res.aggregated(field) is None:
                _err(f"{args.results}: field {field!r} has no aggregated Sobol' indices "
                     "(a file written before they existed)")
                return exit_codes.FAILED
            _plot_aggregated(ax, res, field, names)
        elif stat == "convergence":
            # mean CI width over cells, per time step and parameter
            for kind, style in (("first", "-"), ("total", "--")):
                low = res.get(field, f"sobol_{kind}_low")
                high = res.get(field, f"sobol_{kind}_high")
                with np.errstate(invalid="ignore"):
                    width = np.nanmean(high - low, axis=2)   # (p, T)
                for i in range(width.shape[0]):
                    name = names[i] if i < len(names) else f"p{i + 1}"
                    ax.plot(range(T), width[i], style, label=f"{name} {kind}")
            ax.set_xlabel("time step")
            ax.set_ylabel("mean CI width over cells")
            ax.set_title(f"{field}: Sobol' confidence interval width")
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small", ncol=2)
        else:
            if stat == "std":
                values = np.sqrt(np.maximum(res.get(field, "variance", t), 0.0))
                label = "standard deviation"
            else:
                values = res.get(field, stat, t)
                label = stat
            if values.ndim == 2:  # threshold / quantile level / parameter
                k = args.index
                if not 0 <= k < values.shape[0]:
                    _err(f"--index {k} out of range for {stat} (0..{values.shape[0] - 1})")
                    return exit_codes.FAILED
                if stat == "threshold_exceedance":
                    label = f"P({field} > {res.thresholds(field)[k]:g})"
                elif stat == "quantiles":
                    label = f"quantile {res.quantile_levels(field)[k]:g}"
                else:
                    label = _map_label(res, field, stat, k, names)
                values = values[k]
            _plot_map(ax, fig, values, f"{field}: {label}, time step {t}", label)
        out = args.output
        fig.savefig(out, dpi=args.dpi)
        plt.close(fig)
    finally:
        res.close()
    print(f"{PROG}: wrote {out}", file=sys.stderr)
    return exit_codes.OK


# ---------------------------------------------------------------------------
# the parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="In-transit sensitivity analysis: run studies, inspect results.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser("run", help="run a study (server under mpiexec + clients)",
                         description="Run the study described by a JSON config: start the "
                                     "server under mpiexec and the clients it asks for, show "
                                     "progress, write OUT/results.h5.")
    run.add_argument("config", help="the study's JSON config file")
    run.add_argument("--resume", action="store_true",
                     help="restart from the checkpoint in OUT/checkpoint "
                          "(same as launcher_config.load_from_checkpoint = true)")
    run.add_argument("--dry-run", action="store_true",
                     help="print the effective config and the first parameter sets; start nothing")
    run.add_argument("-v", "--verbose", action="store_true",
                     help="log every job start / end and every server request")
    run.add_argument("--no-progress", action="store_true",
                     help="no progress bar or progress lines (errors are still printed)")
    run.set_defaults(func=cmd_run)

    info = sub.add_parser("info", help="describe a results file",
                          description="Print what a results file holds: fields, statistics, "
                                      "sample counts, convergence hints.")
    info.add_argument("results", help="OUT/results.h5")
    info.set_defaults(func=cmd_info)

    plot = sub.add_parser(
        "plot", help="plot a statistic as PNG",
        description="Plot one statistic of a results file. Map statistics (mean, variance, "
                    "std, skewness, kurtosis, min, max, threshold_exceedance, quantiles, "
                    "sobol_first, sobol_total, sobol_second) are drawn at one time step as an "
                    "image when the mesh is square (n*n cells), else as a line over the "
                    "cells. 'sobol' draws first- and total-order bars with confidence "
                    "intervals at one cell, 'second' the second-order index of every pair "
                    "likewise; 'convergence' the mean CI width per time step; 'aggregated' "
                    "the whole field's indices over time.")
    plot.add_argument("results", help="OUT/results.h5")
    plot.add_argument("--field", help="field to plot (default: the first)")
    plot.add_argument("--stat", default="mean", choices=PLOT_STATS,
                      help="what to plot (default: mean)")
    plot.add_argument("--time-step", type=int, default=None,
                      help="time step (default: the last; negative counts from the end)")
    plot.add_argument("--cell", type=int, default=None,
                      help="cell for --stat sobol and second (default: the cell of largest "
                           "variance)")
    plot.add_argument("--index", type=int, default=0,
                      help="threshold / quantile level / parameter / pair index for statistics "
                           "that have one (default 0)")
    plot.add_argument("-o", "--output", default="plot.png", help="output PNG (default plot.png)")
    plot.add_argument("--dpi", type=int, default=120)
    plot.set_defaults(func=cmd_plot)

    from melissa_sa.cclient.build import add_client_parser
    add_client_parser(sub)  # melissa-sa client build
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``melissa-sa`` command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return exit_codes.INTERRUPTED
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return exit_codes.OK


if __name__ == "__main__":
    sys.exit(main())
