/* libmelissa: the failure path and the checks of what the caller passes.
 *
 * Every misuse or failure prints "melissa: <call>("<field>"): <what>" on
 * stderr and ends the simulation: MPI_Abort on its communicator when MPI is
 * running (and is the MPI the library was built for), else exit, status 1. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "mpi_check.h"

/* A field name fit to print, whatever the caller passed. */
const char *printable(const char *field, char *out, size_t cap) {
    size_t i = 0;
    if (!field) return "(null)";
    for (; field[i] && i + 4 < cap && i < 64; ++i)
        out[i] = (field[i] >= 0x20 && field[i] < 0x7f) ? field[i] : '?';
    if (field[i] && i + 4 < cap) {
        memcpy(out + i, "...", 3);
        i += 3;
    }
    out[i] = '\0';
    return out;
}

void fail(const char *call, const char *field, const char *fmt, ...) {
    char name[80];
    va_list ap;
    if (field)
        fprintf(stderr, "melissa: %s(\"%s\"): ", call, printable(field, name, sizeof name));
    else
        fprintf(stderr, "melissa: %s(): ", call);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
    int initialized = 0, finalized = 0;
    if (!msa.foreign_mpi) {
        MPI_Initialized(&initialized);
        MPI_Finalized(&finalized);
    }
    if (initialized && !finalized) {
        /* MPI_Abort kills every rank at once: give the launcher's I/O
           forwarding (hydra's proxy) a moment to pass the message on, or
           it can be lost with the process */
        struct timespec pause = {0, 300000000};
        nanosleep(&pause, NULL);
        MPI_Abort(msa.have_comm ? msa.user_comm : MPI_COMM_WORLD, 1);
    }
    exit(1);
}

/* An MPI call's return code (the duplicated communicator has
 * MPI_ERRORS_ARE_FATAL; the user's may return errors). */
void mpi_ok(const char *call, const char *field, int rc, const char *what) {
    if (rc == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING + 1] = "";
    int length = 0;
    MPI_Error_string(rc, text, &length);
    fail(call, field, "%s failed: %s", what, text);
}

/* The MPI this process runs must be the one the library was built for:
 * checked before any MPI handle is used. */
void check_mpi_library(const char *call, const char *field) {
    char msg[1024];
    if (msa_mpi_mismatch(msg, sizeof msg)) {
        msa.foreign_mpi = 1;
        fail(call, field, "%s", msg);
    }
}

void check_name(const char *call, const char *field) {
    if (!field) fail(call, field, "field_name is NULL");
    size_t n = 0;
    for (; n <= MSA_MAX_NAME && field[n]; ++n)
        if ((unsigned char)field[n] < 0x20 || field[n] == 0x7f)
            fail(call, field, "the field name holds a control character "
                 "(from Fortran, end it with char(0))");
    if (n > MSA_MAX_NAME)
        fail(call, field, "the field name is longer than %d bytes or not NUL-terminated "
             "(from Fortran, end it with char(0))", MSA_MAX_NAME);
    if (n == 0) fail(call, field, "the field name is empty");
    if (field[n - 1] == ' ')
        fail(call, field, "the field name ends with a blank (from Fortran, pass "
             "trim(name)//char(0))");
}

double env_seconds(const char *call, const char *field, const char *var,
                          double fallback) {
    const char *raw = getenv(var);
    if (!raw || !*raw) return fallback;
    char *end;
    double v = strtod(raw, &end);
    if (*end != '\0' || !(v > 0) || !isfinite(v))
        fail(call, field, "%s=%s is not a positive number of seconds", var, raw);
    if (v > MAX_TIMEOUT_S)
        fail(call, field, "%s=%s is more than %.0f s (about 23 days), the longest wait "
             "ZeroMQ takes", var, raw, MAX_TIMEOUT_S);
    if (v < 0.001) v = 0.001;
    return v;
}
