/* A C client that uses Melissa's API right or wrong, by scenario:
 *     misuse SCENARIO
 * normal, send_before_init, unknown_field, after_finalize, too_many_steps,
 * init_twice, negative_size, finalize_twice, no_mpi (serial API),
 * swapped_fields (ranks declare two fields in different orders),
 * trailing_blank (a blank-padded name, as Fortran passes it), null_comm_second
 * (a second melissa_init with MPI_COMM_NULL), mpi_finalize_first
 * (MPI_Finalize before melissa_finalize), two_fields (f and g, two steps
 * each), too_many_fields (65), mixed_no_mpi, other_comm (g on MPI_COMM_SELF),
 * null_name, control_name, long_name, empty_name, null_values,
 * null_fortran_size, one_step. Prints "done" when it reaches its end. */
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
    } else if (!strcmp(s, "two_fields") || !strcmp(s, "too_many_fields")) {
        int n = strcmp(s, "two_fields") ? 65 : 2;
        char name[16];
        for (int i = 0; i < n; ++i) {
            snprintf(name, sizeof name, i ? "g%d" : "f", i);
            melissa_init(name, 4, MPI_COMM_WORLD);
        }
        for (int t = 0; t < 2; ++t) {
            melissa_send("f", v);
            melissa_send("g1", v);
        }
        melissa_finalize();
    } else if (!strcmp(s, "one_step")) {
        melissa_init("f", 4, MPI_COMM_WORLD);
        melissa_send("f", v);
        melissa_finalize();
    } else if (!strcmp(s, "mixed_no_mpi")) {
        melissa_init("f", 4, MPI_COMM_WORLD);
        melissa_init_no_mpi("g", 4);
    } else if (!strcmp(s, "other_comm")) {
        melissa_init("f", 4, MPI_COMM_WORLD);
        melissa_init("g", 4, MPI_COMM_SELF);
    } else if (!strcmp(s, "null_name")) {
        melissa_init(NULL, 4, MPI_COMM_WORLD);
    } else if (!strcmp(s, "control_name")) {
        melissa_init("f\tg", 4, MPI_COMM_WORLD);
    } else if (!strcmp(s, "long_name")) {
        static char name[1100];
        memset(name, 'x', sizeof name - 1);
        melissa_init(name, 4, MPI_COMM_WORLD);
    } else if (!strcmp(s, "empty_name")) {
        melissa_init("", 4, MPI_COMM_WORLD);
    } else if (!strcmp(s, "null_values")) {
        melissa_init("f", 4, MPI_COMM_WORLD);
        melissa_send("f", NULL);
    } else if (!strcmp(s, "null_fortran_size")) {
        MPI_Fint world = MPI_Comm_c2f(MPI_COMM_WORLD);
        melissa_init_f("f", NULL, &world);
    } else if (!strcmp(s, "swapped_fields")) {
        int rank = 0;
        MPI_Comm_rank(MPI_COMM_WORLD, &rank);
        melissa_init(rank ? "g" : "f", 4, MPI_COMM_WORLD);
        melissa_init(rank ? "f" : "g", 4, MPI_COMM_WORLD);
        melissa_finalize();
    } else if (!strcmp(s, "trailing_blank")) {
        melissa_init("f   ", 4, MPI_COMM_WORLD);
        melissa_finalize();
    } else if (!strcmp(s, "null_comm_second")) {
        melissa_init("f", 4, MPI_COMM_WORLD);
        melissa_init("g", 4, MPI_COMM_NULL);
    } else if (!strcmp(s, "mpi_finalize_first")) {
        melissa_init("f", 4, MPI_COMM_WORLD);
        melissa_send("f", v);
        MPI_Finalize();
        melissa_finalize();
        printf("done %s\n", melissa_version());
        return 0;
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
