/* A C client that uses Melissa's API right or wrong, by scenario:
 *     misuse SCENARIO
 * normal, send_before_init, unknown_field, after_finalize, too_many_steps,
 * init_twice, negative_size, finalize_twice, no_mpi (serial API). Prints
 * "done" when it reaches its end. */
#include <stdio.h>
#include <string.h>

#include <melissa/api.h>

int main(int argc, char **argv) {
    const char *s = argc > 1 ? argv[1] : "normal";
    double v[4] = {1, 2, 3, 4};
    MPI_Init(&argc, &argv);
    if (!strcmp(s, "no_mpi")) {
        melissa_init_no_mpi("f", 4);
        melissa_send_no_mpi("f", v);
        melissa_send_float("f", (const float[]){1, 2, 3, 4});
        melissa_finalize();
    } else if (!strcmp(s, "send_before_init")) {
        melissa_send("f", v);
    } else {
        melissa_init("f", strcmp(s, "negative_size") ? 4 : -1, MPI_COMM_WORLD);
        if (!strcmp(s, "init_twice")) melissa_init("f", 4, MPI_COMM_WORLD);
        melissa_send(strcmp(s, "unknown_field") ? "f" : "g", v);
        melissa_send("f", v);
        if (!strcmp(s, "too_many_steps")) melissa_send("f", v);
        melissa_finalize();
        if (!strcmp(s, "after_finalize")) melissa_send("f", v);
        if (!strcmp(s, "finalize_twice")) melissa_finalize();
    }
    printf("done %s\n", melissa_version());
    fflush(stdout);
    MPI_Finalize();
    return 0;
}
