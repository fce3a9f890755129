/* The 2-D heat equation in C, MPI-parallel by rows: the melissa-sa example of
 * a compiled simulation instrumented with Melissa's three calls.
 *
 *     heat [options] T0 T1 [T2 [T3 [T4]]]
 *
 * u_t = alpha (u_xx + u_yy) on the unit square, u = T0 inside at t = 0, walls
 * at T1..T4 (left, right, bottom, top; missing walls reuse the last value
 * given), as examples/heat_pde/heat.py. The scheme is heat.py's "explicit":
 * forward Euler with the 5-point stencil on the nx x ny interior nodes,
 * sub-stepped so that 2 alpha dt_sub (1/hx^2 + 1/hy^2) <= 1, with the same
 * operations in the same order, so the fields equal heat.py --scheme explicit
 * bit for bit (build without FMA contraction: -ffp-contract=off). Cell
 * c = j * nx + i; time step t is the field after t + 1 advances of dt.
 *
 * Rank r holds a contiguous block of rows (the first ny % size ranks one more,
 * or --split 2,5 gives each rank's count) and exchanges one halo row with each
 * neighbour per sub-step; every cell goes through the same operations
 * whatever the decomposition.
 *
 * Options: --nx N (12) --ny N (7) --steps T (5) --dt DT (1e-3) --alpha A (1)
 * --split N0,N1,... --field NAME (temperature) --float (send single precision)
 * --output FILE (rank 0 writes the history: steps x nx*ny raw little-endian
 * float64, or float32 with --float) --kill-at K (tests: the last rank sends K
 * steps, then kills itself with SIGKILL) --timing (rank 0 prints on stderr the
 * time per step, and the part of it spent in melissa_send). */
#include <math.h>
#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <melissa/api.h>

static int rank = 0, size = 1;

static void usage(const char *why) {
    if (rank == 0)
        fprintf(stderr, "heat: %s\nusage: heat [--nx N] [--ny N] [--steps T] [--dt DT] "
                "[--alpha A] [--split N0,N1,...] [--field NAME] [--float] [--output FILE] "
                "[--kill-at K] [--timing] T0 T1 [T2 [T3 [T4]]]\n", why);
    MPI_Finalize();
    exit(2);
}

static double number(const char *text) {
    char *end;
    double v = strtod(text, &end);
    if (*text == '\0' || *end != '\0' || !isfinite(v)) usage("expected a number");
    return v;
}

static int positive(const char *text) {
    double v = number(text);
    if (v < 1 || v != floor(v) || v > 1e9) usage("expected a positive integer");
    return (int)v;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int nx = 12, ny = 7, steps = 5, use_float = 0, kill_at = -1, n_temps = 0, timing = 0;
    double dt = 1e-3, alpha = 1.0, temps[5];
    const char *field = "temperature", *output = NULL, *split = NULL;
    for (int i = 1; i < argc; ++i) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if (!strcmp(a, "--nx") && more) nx = positive(argv[++i]);
        else if (!strcmp(a, "--ny") && more) ny = positive(argv[++i]);
        else if (!strcmp(a, "--steps") && more) steps = positive(argv[++i]);
        else if (!strcmp(a, "--dt") && more) dt = number(argv[++i]);
        else if (!strcmp(a, "--alpha") && more) alpha = number(argv[++i]);
        else if (!strcmp(a, "--split") && more) split = argv[++i];
        else if (!strcmp(a, "--field") && more) field = argv[++i];
        else if (!strcmp(a, "--output") && more) output = argv[++i];
        else if (!strcmp(a, "--kill-at") && more) kill_at = positive(argv[++i]) - 1;
        else if (!strcmp(a, "--float")) use_float = 1;
        else if (!strcmp(a, "--timing")) timing = 1;
        else if (n_temps < 5) temps[n_temps++] = number(a);
        else usage("too many temperatures");
    }
    if (n_temps < 2) usage("expected T0 and 1 to 4 wall temperatures");
    if (!(dt > 0) || !(alpha > 0)) usage("--dt and --alpha must be positive");
    for (int k = n_temps; k < 5; ++k) temps[k] = temps[n_temps - 1];
    double t0 = temps[0], left = temps[1], right = temps[2], bottom = temps[3], top = temps[4];

    /* rows of every rank */
    int *rows = calloc(size, sizeof *rows), *row0 = calloc(size, sizeof *row0);
    if (split) {
        char *copy = strdup(split), *tok = strtok(copy, ",");
        int r = 0, sum = 0;
        for (; tok && r < size; tok = strtok(NULL, ","), ++r) sum += rows[r] = positive(tok);
        if (r != size || tok || sum != ny) usage("--split needs one row count per rank, summing to ny");
        free(copy);
    } else {
        if (size > ny) usage("more ranks than rows");
        for (int r = 0; r < size; ++r) rows[r] = ny / size + (r < ny % size);
    }
    for (int r = 1; r < size; ++r) row0[r] = row0[r - 1] + rows[r - 1];
    int nrows = rows[rank], w = nx + 2;

    /* the scheme of heat.py --scheme explicit */
    double hx = 1.0 / (nx + 1), hy = 1.0 / (ny + 1);
    double inv_h2 = 1.0 / (hx * hx) + 1.0 / (hy * hy);
    int substeps = (int)ceil(2.0 * alpha * dt * inv_h2 * (1 + 1e-12));
    if (substeps < 1) substeps = 1;
    double dts = dt / substeps, rx = alpha * dts / (hx * hx), ry = alpha * dts / (hy * hy);
    double c0 = 1.0 - 2.0 * rx - 2.0 * ry;

    /* (nrows + 2) x (nx + 2): one halo (or wall) row below and above, wall columns */
    double *u = malloc(sizeof *u * (nrows + 2) * w), *un = malloc(sizeof *un * (nrows + 2) * w);
    for (int k = 0; k < (nrows + 2) * w; ++k) u[k] = t0;
    for (int j = 0; j < nrows + 2; ++j) {
        u[j * w] = left;
        u[j * w + nx + 1] = right;
    }
    if (rank == 0)
        for (int i = 1; i <= nx; ++i) u[i] = bottom;
    if (rank == size - 1)
        for (int i = 1; i <= nx; ++i) u[(nrows + 1) * w + i] = top;
    memcpy(un, u, sizeof *u * (nrows + 2) * w);
    int below = rank > 0 ? rank - 1 : MPI_PROC_NULL;
    int above = rank < size - 1 ? rank + 1 : MPI_PROC_NULL;

    size_t local = (size_t)nrows * nx;
    double *send = malloc(sizeof *send * local);
    float *send_f = malloc(sizeof *send_f * local);
    double *history = NULL;
    int *counts = NULL, *displs = NULL;
    if (output && rank == 0) {
        history = malloc(sizeof *history * (size_t)nx * ny);
        counts = malloc(sizeof *counts * size);
        displs = malloc(sizeof *displs * size);
        for (int r = 0; r < size; ++r) {
            counts[r] = rows[r] * nx;
            displs[r] = row0[r] * nx;
        }
    }
    FILE *out = NULL;
    if (output && rank == 0 && !(out = fopen(output, "wb"))) {
        perror(output);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }

    melissa_init(field, (int)local, MPI_COMM_WORLD);
    double loop_start = MPI_Wtime(), in_send = 0.0;
    for (int t = 0; t < steps; ++t) {
        for (int s = 0; s < substeps; ++s) {
            MPI_Sendrecv(u + w, w, MPI_DOUBLE, below, 1, u + (nrows + 1) * w, w, MPI_DOUBLE,
                         above, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            MPI_Sendrecv(u + nrows * w, w, MPI_DOUBLE, above, 2, u, w, MPI_DOUBLE, below, 2,
                         MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            for (int j = 1; j <= nrows; ++j)
                for (int i = 1; i <= nx; ++i) {
                    const double *c = u + j * w + i;
                    /* heat.py: (W + E) rx + (S + N) ry + c0 u, in this order */
                    double a = (c[-1] + c[1]) * rx;
                    double b = (c[-w] + c[w]) * ry;
                    un[j * w + i] = (a + b) + c[0] * c0;
                }
            double *tmp = u;
            u = un;
            un = tmp;
        }
        for (int j = 0; j < nrows; ++j)
            for (int i = 0; i < nx; ++i) {
                send[j * nx + i] = u[(j + 1) * w + i + 1];
                send_f[j * nx + i] = (float)send[j * nx + i];
            }
        if (t == kill_at && rank == size - 1) raise(SIGKILL);
        double send_start = MPI_Wtime();
        if (use_float) melissa_send_float(field, send_f);
        else melissa_send(field, send);
        in_send += MPI_Wtime() - send_start;
        if (output) {
            MPI_Gatherv(send, (int)local, MPI_DOUBLE, history, counts, displs, MPI_DOUBLE, 0,
                        MPI_COMM_WORLD);
            if (rank == 0) {
                for (size_t k = 0; k < (size_t)nx * ny; ++k) {
                    float f = (float)history[k];
                    if (use_float) fwrite(&f, sizeof f, 1, out);
                    else fwrite(&history[k], sizeof history[k], 1, out);
                }
            }
        }
    }
    if (timing && rank == 0)
        fprintf(stderr, "heat: %d steps of %d x %d cells: %.3f ms per step, %.3f ms of it "
                "in melissa_send\n", steps, nx, ny, 1e3 * (MPI_Wtime() - loop_start) / steps,
                1e3 * in_send / steps);
    melissa_finalize();
    /* durable output, as a study's files must be */
    if (out && (fflush(out) != 0 || fsync(fileno(out)) != 0 || fclose(out) != 0)) {
        perror(output);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    free(u); free(un); free(send); free(send_f); free(history); free(counts); free(displs);
    free(rows); free(row0);
    MPI_Finalize();
    return 0;
}
