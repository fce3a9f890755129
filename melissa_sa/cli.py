"""The ``melissa-sa`` command.

::

    melissa-sa run study.json [--resume] [--dry-run] [-v] [--no-progress]
    melissa-sa info OUT/results.h5
    melissa-sa plot OUT/results.h5 [--field F] [--stat mean] [--time-step T]
                    [--cell C] [--index K] -o out.png
    melissa-sa export OUT/results.h5 --mesh MESH [--format xdmf|vtkhdf]

Exit codes (:mod:`melissa_sa.exit_codes`): 0 success, 1 study failed (or
another launcher runs this study), 2 invalid config or usage, 130 interrupted
(Ctrl-C), 143 terminated (SIGTERM). ``docs/running.md`` has the details.
"""

from __future__ import annotations

import argparse
import os
import sys

from melissa_sa import __version__, exit_codes
from melissa_sa.plot import PLOT_STATS

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
        from melissa_sa.launcher.output_space import check_output_dir

        checked = check_output_dir(cfg)
        for text in (checked.error, checked.warning, checked.note):
            if text:
                print(f"{PROG}: {text}", file=out)
        print(f"{PROG}: dry run: nothing started", file=out)
        return exit_codes.OK

    from melissa_sa.launcher import Launcher
    from melissa_sa.launcher.output_space import check_output_dir

    checked = check_output_dir(cfg)
    if checked.error:  # before anything starts: nothing to clean up
        _err(f"{args.config}: {checked.error}")
        return exit_codes.USAGE
    if checked.warning:
        print(f"{PROG}: warning: {checked.warning}", file=sys.stderr)
    if checked.note and args.verbose:
        print(f"{PROG}: {checked.note}", file=sys.stderr)
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


def cmd_plot(args) -> int:
    try:
        import matplotlib  # noqa: F401  (only to say how to install it)
    except ImportError:
        _err("plot needs matplotlib: pip install 'melissa-sa[plot]' (or pip install matplotlib)")
        return exit_codes.FAILED
    from melissa_sa.plot import PlotError, plot_results
    from melissa_sa.results import ResultsFileError, open_results

    try:
        res = open_results(args.results)
    except (FileNotFoundError, ResultsFileError, OSError) as exc:
        _err(str(exc))
        return exit_codes.FAILED
    try:
        plot_results(res, args.output, field=args.field, stat=args.stat,
                     time_step=args.time_step, cell=args.cell, index=args.index, dpi=args.dpi)
    except PlotError as exc:
        _err(str(exc))
        return exit_codes.FAILED
    finally:
        res.close()
    print(f"{PROG}: wrote {args.output}", file=sys.stderr)
    return exit_codes.OK


# ---------------------------------------------------------------------------
# export


def cmd_export(args) -> int:
    from melissa_sa.mesh import MeshError
    from melissa_sa.results import ResultsFileError, open_results
    from melissa_sa.results.export import export_results, mesh_argument
    from melissa_sa.results.xdmf import meshio_xdmf_path

    try:
        with open_results(args.results):  # refuses what is not a complete results file
            pass
        mesh = mesh_argument(args.mesh, args.centering)
        out = export_results(args.results, mesh, args.format, args.output, args.time_step)
    except MeshError as exc:
        _err(str(exc))
        return exit_codes.USAGE
    except (FileNotFoundError, ResultsFileError, OSError) as exc:
        _err(str(exc))
        return exit_codes.FAILED
    what = (f"open it in ParaView (XDMF Reader); {meshio_xdmf_path(args.results)} for meshio "
            "and ParaView's Xdmf3 readers" if args.format == "xdmf" else "open it in ParaView")
    print(f"{PROG}: wrote {out}: {what}", file=sys.stderr)
    return exit_codes.OK


# ---------------------------------------------------------------------------
# the parser


def _results_command(sub, name: str, func, *, help: str,
                     description: str) -> argparse.ArgumentParser:
    """The parser of sub-command ``name`` (run by ``func``) that reads a
    results file, its first argument RESULTS."""
    command = sub.add_parser(name, help=help, description=description)
    command.add_argument("results", help="OUT/results.h5")
    command.set_defaults(func=func)
    return command


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

    _results_command(sub, "info", cmd_info, help="describe a results file",
                     description="Print what a results file holds: fields, statistics, "
                                 "sample counts, convergence hints.")

    plot = _results_command(
        sub, "plot", cmd_plot, help="plot a statistic as PNG",
        description="Plot one statistic of a results file. Map statistics (mean, variance, "
                    "std, skewness, kurtosis, min, max, threshold_exceedance, quantiles, "
                    "sobol_first, sobol_total, sobol_second) are drawn at one time step on the "
                    "study's mesh when the file has one (1D line, 2D image or triangles; "
                    "3D: use ParaView), else as an image when the mesh is square (n*n "
                    "cells), else as a line over the cells. 'sobol' draws first- and "
                    "total-order bars with confidence intervals at one cell, 'second' the "
                    "second-order index of every pair likewise; 'convergence' the mean CI "
                    "width per time step; 'aggregated' the whole field's indices over time.")
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

    export = _results_command(
        sub, "export", cmd_export, help="put a results file on a mesh, for ParaView",
        description="Write the mesh and the /by_step views (one HDF5 virtual dataset per "
                    "statistic row and time step, no values copied) into RESULTS, and next "
                    "to it results.xmf (XDMF 2 for ParaView's XDMF Reader: every statistic "
                    "at every time step, values read from RESULTS) and results.meshio.xmf "
                    "(XDMF 3 for meshio and ParaView's Xdmf3 readers, without the interval "
                    "widths); a study past the server's cut-off of views (docs/results.md) "
                    "gets its views and results.meshio.xmf this way. Or with "
                    "--format vtkhdf one VTKHDF file holding the mesh and every statistic of "
                    "one time step. MESH is a mesh file meshio reads, or a JSON file with a "
                    "mesh object (as study_options.mesh) or a whole study file.")
    export.add_argument("--mesh", required=True, help="mesh file, mesh JSON or study file")
    export.add_argument("--centering", choices=("cells", "points"), default=None,
                        help="values on cells or points (default: the JSON's, else cells)")
    export.add_argument("--format", choices=("xdmf", "vtkhdf"), default="xdmf",
                        help="xdmf (default; results.xmf) or vtkhdf (one file)")
    export.add_argument("--time-step", type=int, default=-1,
                        help="time step of --format vtkhdf (default: the last)")
    export.add_argument("-o", "--output", default=None,
                        help="file of --format vtkhdf (default: RESULTS with .vtk.hdf)")

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
