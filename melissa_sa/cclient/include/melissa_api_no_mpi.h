/* melissa-sa: Melissa's client API for serial simulations (no MPI).
 *
 * Same calls as Melissa's melissa_api_no_mpi.h. Outside a study (no
 * MELISSA_SERVER_ADDRESS in the environment) every call does nothing. */
#ifndef MELISSA_API_NO_MPI_H
#define MELISSA_API_NO_MPI_H

#ifdef __cplusplus
extern "C" {
#endif

/* Declare a field of vect_size values (the whole field: one process). */
void melissa_init_no_mpi(const char *field_name, int vect_size);
/* Send the next time step of field_name: vect_size doubles. */
void melissa_send_no_mpi(const char *field_name, const double *send_vect);
/* Send the next time step of field_name in single precision. */
void melissa_send_float(const char *field_name, const float *send_vect);
/* Flush what is in flight and close the connections. */
void melissa_finalize(void);
/* The library's version string. */
const char *melissa_version(void);

#ifdef __cplusplus
}
#endif

#endif
