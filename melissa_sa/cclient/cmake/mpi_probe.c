/* Prints the library version string of the MPI this compiler builds with
 * (melissa-sa client build records it; MelissaConfig.cmake compares the
 * consumer's with it). MPI_Get_library_version may be called before MPI_Init
 * (MPI 3.0). */
#include <mpi.h>
#include <stdio.h>

int main(void) {
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    int length = 0;
    MPI_Get_library_version(version, &length);
    fputs(version, stdout);
    return 0;
}
