/* Prints the library version string of the MPI this compiler builds with
 * (MelissaConfig.cmake compares it with the one libmelissa was built for). */
#include <mpi.h>
#include <stdio.h>

int main(void) {
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    int length = 0;
    MPI_Get_library_version(version, &length);
    fputs(version, stdout);
    return 0;
}
