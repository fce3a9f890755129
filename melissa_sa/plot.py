"""``melissa-sa plot``: one statistic of a results file as a PNG.

Map statistics are drawn at one time step on the study's mesh when the file
has one (:mod:`melissa_sa.plot_mesh`: a line over x for a 1D grid, an image of
a 2D grid, triangles of an unstructured 2D mesh, a message for 3D); without a
mesh as an image when the mesh is square (n*n cells), else as a line over the
cells; ``sobol`` and ``second`` as bars
with their confidence intervals at one cell; ``convergence`` as the mean CI
width per time step; ``aggregated`` as the whole field's indices over time.
matplotlib and NumPy are imported when a plot is drawn, so importing this
module (the command's parser does) costs nothing.
"""

from __future__ import annotations

import math

__all__ = ["MAP_STATS", "PLOT_STATS", "PlotError", "plot_results"]


class PlotError(ValueError):
    """The file does not hold what the plot asks for (a field, a statistic), or
    a time step, cell or index is out of range; the message says which."""


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


def _plot_convergence(ax, res, field: str, names) -> None:
    """The mean CI width over cells, per time step and parameter."""
    import numpy as np

    for kind, style in (("first", "-"), ("total", "--")):
        low = res.get(field, f"sobol_{kind}_low")
        high = res.get(field, f"sobol_{kind}_high")
        with np.errstate(invalid="ignore"):
            width = np.nanmean(high - low, axis=2)   # (p, T)
        for i in range(width.shape[0]):
            name = names[i] if i < len(names) else f"p{i + 1}"
            ax.plot(range(width.shape[1]), width[i], style, label=f"{name} {kind}")
    ax.set_xlabel("time step")
    ax.set_ylabel("mean CI width over cells")
    ax.set_title(f"{field}: Sobol' confidence interval width")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)


def _plot_statistic_map(ax, fig, res, field: str, stat: str, t: int, index: int,
                        names, mesh) -> None:
    """A map statistic (or ``std``) at time step ``t``; entry ``index`` of one
    with a leading dimension (threshold, quantile level, parameter, pair); drawn on
    ``mesh`` (:func:`~melissa_sa.plot_mesh.mesh_of`) when the study has one."""
    import numpy as np

    if stat == "std":
        values = np.sqrt(np.maximum(res.get(field, "variance", t), 0.0))
        label = "standard deviation"
    else:
        values = res.get(field, stat, t)
        label = stat
    if values.ndim == 2:  # threshold / quantile level / parameter
        k = index
        if not 0 <= k < values.shape[0]:
            raise PlotError(f"--index {k} out of range for {stat} (0..{values.shape[0] - 1})")
        if stat == "threshold_exceedance":
            label = f"P({field} > {res.thresholds(field)[k]:g})"
        elif stat == "quantiles":
            label = f"quantile {res.quantile_levels(field)[k]:g}"
        else:
            label = _map_label(res, field, stat, k, names)
        values = values[k]
    title = f"{field}: {label}, time step {t}"
    if mesh is not None:
        from melissa_sa.plot_mesh import draw_on_mesh

        draw_on_mesh(ax, fig, mesh, values, title, label)
    else:
        _plot_map(ax, fig, values, title, label)


def _checked(res, field: str | None, stat: str, time_step: int | None,
             cell: int | None) -> tuple[str, int]:
    """The field and the time step to plot (the last when ``time_step`` is None,
    negative ones counted from the end), after checking that the file has them."""
    source = str(res.path)
    field = field or res.fields[0]
    if field not in res.fields:
        raise PlotError(f"{source}: no field {field!r}; fields: {', '.join(res.fields)}")
    present = res.statistics(field)
    need = {"std": "variance", "sobol": "sobol_first", "aggregated": "sobol_first",
            "convergence": "sobol_first_low", "second": "sobol_second"}.get(stat, stat)
    if need not in present:
        raise PlotError(f"{source}: field {field!r} has no {need!r}; "
                        f"it has {', '.join(present) or 'no statistics'}")
    T, N = res.n_time_steps(field), res.n_cells(field)
    t = T - 1 if time_step is None else time_step
    if not -T <= t < T:
        raise PlotError(f"--time-step {t} out of range: {field!r} has {T} time steps "
                        f"(0..{T - 1})")
    if cell is not None and not 0 <= cell < N:
        raise PlotError(f"--cell {cell} out of range: {field!r} has {N} cells (0..{N - 1})")
    if stat == "aggregated" and res.aggregated(field) is None:
        raise PlotError(f"{source}: field {field!r} has no aggregated Sobol' indices "
                        "(a file written before they existed)")
    return field, t % T


def plot_results(res, output, *, field: str | None = None, stat: str = "mean",
                 time_step: int | None = None, cell: int | None = None, index: int = 0,
                 dpi: int = 120) -> None:
    """Draw ``stat`` of ``field`` (default: the first) from the open results
    file ``res`` into the PNG ``output``.

    ``stat`` is one of :data:`PLOT_STATS`; ``time_step`` defaults to the last,
    ``cell`` (for ``sobol`` and ``second``) to the cell of largest variance,
    ``index`` picks the threshold, quantile level, parameter or pair of a
    statistic that has one. Raises :class:`PlotError` before drawing anything
    when the file cannot give the plot, ``ImportError`` without matplotlib.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    field, t = _checked(res, field, stat, time_step, cell)
    names = res.parameter_names()
    fig, ax = plt.subplots(figsize=(7, 5), layout="constrained")
    try:
        if stat == "sobol":
            _plot_sobol(ax, res, field, t, cell, names)
        elif stat == "second":
            _plot_second(ax, res, field, t, cell)
        elif stat == "aggregated":
            _plot_aggregated(ax, res, field, names)
        elif stat == "convergence":
            _plot_convergence(ax, res, field, names)
        else:
            from melissa_sa.mesh.errors import MeshError
            from melissa_sa.plot_mesh import mesh_of

            try:
                mesh = mesh_of(res)
                _plot_statistic_map(ax, fig, res, field, stat, t, index, names, mesh)
            except MeshError as exc:
                raise PlotError(f"{res.path}: {exc}") from None
        fig.savefig(output, dpi=dpi)
    finally:
        plt.close(fig)
