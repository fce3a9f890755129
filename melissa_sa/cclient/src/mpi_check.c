/* libmelissa: the MPI this process runs against the one the library was
 * built with (recorded by `melissa-sa client build` in mpi_recorded.h).
 *
 * A solver built with Open MPI that loads a libmelissa built with MPICH has
 * two MPI libraries in one process; every call through a communicator then
 * crashes (MPICH's MPI_Comm is an int, Open MPI's a pointer). The version
 * string of the MPI the process resolves is compared before any handle is
 * touched. The family rule is also in mpi_toolchain.py and
 * MelissaConfig.cmake.in. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mpi_check.h"
#include "mpi_recorded.h"

static void first_line(const char *text, char *out, size_t cap) {
    size_t n = 0;
    while (text[n] && text[n] != '\n' && n + 1 < cap && n < 120) {
        out[n] = text[n] == '\t' ? ' ' : text[n];
        ++n;
    }
    out[n] = '\0';
}

void msa_mpi_family(const char *version, char *out, size_t cap) {
    const char *open_mpi = strstr(version, "Open MPI v");
    if (open_mpi) {
        snprintf(out, cap, "Open MPI %ld", strtol(open_mpi + 10, NULL, 10));
    } else if (strstr(version, "MPICH") || strstr(version, "Intel(R) MPI") ||
               strstr(version, "MVAPICH")) {
        snprintf(out, cap, "MPICH");
    } else {
        first_line(version, out, cap);
    }
}

int msa_mpi_mismatch(char *msg, size_t cap) {
    /* large enough for any MPI's MPI_MAX_LIBRARY_VERSION_STRING (MPICH: 8192) */
    static char running[16384];
    int length = 0;
    char want[128], got[128], want_line[128], got_line[128];
    memset(running, 0, sizeof running);
    MPI_Get_library_version(running, &length);
    running[sizeof running - 1] = '\0';
    msa_mpi_family(MSA_RECORDED_MPI, want, sizeof want);
    msa_mpi_family(running, got, sizeof got);
    if (strcmp(want, got) == 0) return 0;
    first_line(MSA_RECORDED_MPI, want_line, sizeof want_line);
    first_line(running, got_line, sizeof got_line);
    snprintf(msg, cap,
             "this libmelissa was built for %s (\"%s\", with %s) but the simulation runs "
             "%s (\"%s\"): two MPI libraries in one process cannot work; rebuild it with "
             "the solver's MPI: melissa-sa client build --mpicc <the solver's mpicc>",
             want, want_line, MSA_RECORDED_MPICC, got, got_line);
    return 1;
}
