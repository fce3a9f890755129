/* melissa-sa: Melissa's client API (the signatures of Melissa 0.7's
 * include/melissa/api.h), for simulations that stream their fields to a
 * melissa-sa study.
 *
 *     melissa_init("temperature", local_cells, MPI_COMM_WORLD);  // per field
 *     for (t = 0; t < nb_time_steps; ++t) {
 *         ...                                                      // advance
 *         melissa_send("temperature", u);                          // per step
 *     }
 *     melissa_finalize();
 *
 * Each rank of comm holds a contiguous part of the field; rank r's part
 * follows rank r - 1's in the global numbering. melissa_init and
 * melissa_finalize are collective over comm. Outside a study (no
 * MELISSA_SERVER_ADDRESS in the environment) every call does nothing.
 * Misuse and failures print a message naming the call and the field on
 * stderr and end the simulation (MPI_Abort on comm, exit status 1). */
#ifndef MELISSA_API_H
#define MELISSA_API_H

#include <mpi.h>

#include "melissa_api_no_mpi.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Declare a field: num_values values on this rank (collective over comm). */
void melissa_init(const char *field_name, int num_values, MPI_Comm comm);
/* The same from Fortran: a Fortran integer communicator. */
void melissa_init_f(const char *field_name, int *local_vect_size, MPI_Fint *comm_fortran);
/* Send this rank's values of field_name for the next time step. The call
 * returns once the values are on their way: send_vect may then be reused. */
void melissa_send(const char *field_name, const double *send_vect);

#ifdef __cplusplus
}
#endif

#endif
