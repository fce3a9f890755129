/* libmelissa: is the MPI this process runs the one the library was built
 * with? (mpi_check.c) */
#ifndef MSA_MPI_CHECK_H
#define MSA_MPI_CHECK_H

#include <stddef.h>

/* The ABI an MPI library version string stands for: "MPICH" (MPICH and its
 * derivatives: Intel MPI, Cray MPICH, MVAPICH), "Open MPI <major>", or the
 * string's first line. */
void msa_mpi_family(const char *version, char *out, size_t cap);

/* 0 when the running MPI (MPI_Get_library_version) has the ABI of the one
 * recorded at build time; else 1 and a message naming both in msg. Calls
 * only MPI functions whose arguments are plain C types. */
int msa_mpi_mismatch(char *msg, size_t cap);

#endif
