/* melissa_init on MPI_COMM_WORLD whose error handler is MPI_ERRORS_RETURN,
 * then prints, after "rank <r>: ", the error handler of the communicator
 * libmelissa duplicated from it: "fatal" (MPI_ERRORS_ARE_FATAL), "return"
 * (MPI_ERRORS_RETURN, inherited) or "other". The duplicate is caught through MPI's profiling
 * interface: this program's MPI_Comm_dup stands before the MPI library's. */
#include <stdio.h>

#include <melissa/api.h>

static MPI_Comm duplicate = MPI_COMM_NULL;

int MPI_Comm_dup(MPI_Comm comm, MPI_Comm *newcomm) {
    int rc = PMPI_Comm_dup(comm, newcomm);
    duplicate = *newcomm;
    return rc;
}

int main(int argc, char **argv) {
    double v[4] = {1, 2, 3, 4};
    MPI_Init(&argc, &argv);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    melissa_init("f", 4, MPI_COMM_WORLD);
    if (duplicate == MPI_COMM_NULL) {
        printf("no MPI_Comm_dup seen\n");
        return 2;
    }
    MPI_Errhandler handler;
    MPI_Comm_get_errhandler(duplicate, &handler);
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    printf("rank %d: %s\n", rank, handler == MPI_ERRORS_ARE_FATAL ? "fatal"
                                   : handler == MPI_ERRORS_RETURN  ? "return"
                                                                   : "other");
    fflush(stdout);
    MPI_Errhandler_free(&handler);
    melissa_send("f", v);
    melissa_send("f", v);
    melissa_finalize();
    MPI_Finalize();
    return 0;
}
