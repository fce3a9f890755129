/* The solver of the peer benchmark (peer_c_server.py): a 2-D heat equation on
 * an NX x NY grid, built unchanged against either Melissa client library (the
 * reference framework's 2021 libmelissa_api or melissa-sa's libmelissa; both
 * ship melissa_api.h with the same three calls).
 *
 *     peer_heat T_initial T_left T_walls        (NX, NY, STEPS from the environment)
 *
 * u = T_initial inside at t = 0, the left wall at T_left, the others at
 * T_walls; each of the STEPS time steps is one Jacobi sweep of the 5-point
 * stencil with a weight of 0.2 (stable), then melissa_send of the NX*NY
 * cells. The solver costs about as much as the send, so the servers are
 * measured on the data they fold, not on a slow client.
 *
 * Under the reference launcher a Sobol' group is one MPMD launch (one app per
 * member, MELISSA_COUPLING=1): each member splits MPI_COMM_WORLD by its
 * MPI_APPNUM, as the reference examples do. Alone (melissa-sa's launcher runs
 * one process per member) the split leaves MPI_COMM_WORLD's one rank. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

#include <melissa_api.h>

static long env_long(const char *name, long fallback) {
    const char *v = getenv(name);
    return v && *v ? atol(v) : fallback;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    if (argc != 4) {
        fprintf(stderr, "usage: peer_heat T_initial T_left T_walls (NX, NY, STEPS from the environment)\n");
        MPI_Abort(MPI_COMM_WORLD, 2);
    }
    double t0 = atof(argv[1]), t_left = atof(argv[2]), t_walls = atof(argv[3]);
    long nx = env_long("NX", 100), ny = env_long("NY", 100), steps = env_long("STEPS", 10);
    int appnum = 0, *attr = NULL, found = 0;
    MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_APPNUM, &attr, &found);
    if (found && attr) appnum = *attr;
    int world_rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    MPI_Comm comm;
    MPI_Comm_split(MPI_COMM_WORLD, appnum, world_rank, &comm);

    long n = nx * ny;
    double *u = malloc(sizeof *u * (size_t)n), *next = malloc(sizeof *next * (size_t)n);
    if (!u || !next) {
        fprintf(stderr, "peer_heat: cannot allocate %ld cells\n", n);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    for (long c = 0; c < n; ++c) u[c] = t0;
    melissa_init("heat", (int)n, comm);
    for (long t = 0; t < steps; ++t) {
        for (long j = 0; j < ny; ++j) {
            for (long i = 0; i < nx; ++i) {
                long c = j * nx + i;
                double west = i > 0 ? u[c - 1] : t_left;
                double east = i < nx - 1 ? u[c + 1] : t_walls;
                double south = j > 0 ? u[c - nx] : t_walls;
                double north = j < ny - 1 ? u[c + nx] : t_walls;
                next[c] = u[c] + 0.2 * (west + east + south + north - 4.0 * u[c]);
            }
        }
        double *swap = u;
        u = next;
        next = swap;
        melissa_send("heat", u);
    }
    melissa_finalize();
    free(u);
    free(next);
    MPI_Comm_free(&comm);
    MPI_Finalize();
    return 0;
}
