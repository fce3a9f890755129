/* The end-to-end benchmark's C client (the counterpart of e2e_roles.py's
 * _melissa_client): a serial simulation linked with libmelissa that sends a
 * precomputed float64 array T times.
 *
 *     e2e_cclient CELLS STEPS
 *
 * Says hello (melissa_init_no_mpi), prints "ready", waits for a line on
 * stdin, sends, finalizes, then prints one JSON line: first_send, last_send,
 * finalized (wall clock, s) and cpu_s (this process, from the first send). */
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

#include <melissa_api_no_mpi.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static double cpu(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return r.ru_utime.tv_sec + 1e-6 * r.ru_utime.tv_usec + r.ru_stime.tv_sec +
           1e-6 * r.ru_stime.tv_usec;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: e2e_cclient CELLS STEPS\n");
        return 2;
    }
    long cells = atol(argv[1]), steps = atol(argv[2]);
    const char *id = getenv("MELISSA_SIMULATION_ID");
    unsigned long long state = 0x9E3779B97F4A7C15ull * (unsigned long long)(id ? atoll(id) + 1 : 1);
    double *values = malloc(sizeof *values * (size_t)cells);
    for (long i = 0; i < cells; ++i) {
        state = state * 6364136223846793005ull + 1442695040888963407ull;
        values[i] = (double)(state >> 11) / 9007199254740992.0 + (id ? atof(id) : 0);
    }
    melissa_init_no_mpi("f", (int)cells);
    printf("ready\n");
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin)) return 1;
    double c0 = cpu(), t0 = now();
    for (long t = 0; t < steps; ++t) melissa_send_no_mpi("f", values);
    double t1 = now();
    melissa_finalize();
    double t2 = now();
    printf("{\"first_send\": %.6f, \"last_send\": %.6f, \"finalized\": %.6f, \"cpu_s\": %.6f}\n",
           t0, t1, t2, cpu() - c0);
    fflush(stdout);
    free(values);
    return 0;
}
