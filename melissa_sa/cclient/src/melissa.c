/* libmelissa: Melissa's client API for melissa-sa (C, C++ and Fortran).
 *
 * The same behaviour as the Python client (melissa_sa/client.py) and the same
 * environment (session.c). Rank 0 says hello to the server's rank 0 (binary
 * handshake, handshake.c); the answer is broadcast over the simulation's
 * communicator, then every rank pushes to each server rank the cells it
 * owns: a 44-byte header and the caller's values, sent without copying;
 * melissa_send returns once ZeroMQ has released every slice (with
 * MELISSA_SEND_COPY=1 it sends a copy and returns at once; the next send or
 * melissa_finalize waits for that copy).
 *
 * Never hangs, never fails silently: every wait is bounded (one deadline per
 * melissa_send, on CLOCK_MONOTONIC), and every misuse or failure prints
 * "melissa: <call>("<field>"): <what>" on stderr and ends the simulation
 * with status 1 (errors.c). Outside a study (no MELISSA_SERVER_ADDRESS)
 * every call does nothing.
 *
 * Sources: melissa.c (the API: fields and sends), session.c (environment,
 * secret, sockets, hello), errors.c (the failure path and argument checks),
 * handshake.c (the wire format), mpi_check.c (the MPI the process runs),
 * secret.c (the secret file); internal.h (their shared state). */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "melissa/config.h"
#include "melissa_api.h"

/* .released is initialised once, on CLOCK_MONOTONIC, when the connection opens */
struct msa_state msa = {.state = FRESH, .lock = PTHREAD_MUTEX_INITIALIZER};

static field_t *find_field(const char *field) {
    for (int i = 0; i < msa.n_fields; ++i)
        if (strcmp(msa.fields[i].name, field) == 0) return &msa.fields[i];
    return NULL;
}

/* Every rank of the communicator declares the same field as rank 0 (ranks
 * that call melissa_init in another order would swap the fields). */
static void check_same_name(const char *call, const char *field) {
    char first[MSA_MAX_NAME + 1] = "";
    if (msa.rank == 0) strcpy(first, field);
    mpi_ok(call, field, MPI_Bcast(first, sizeof first, MPI_CHAR, 0, msa.comm), "MPI_Bcast");
    int same = strcmp(first, field) == 0, all_same = 0;
    mpi_ok(call, field, MPI_Allreduce(&same, &all_same, 1, MPI_INT, MPI_LAND, msa.comm),
           "MPI_Allreduce");
    if (!same)
        fail(call, field, "rank %d declares this field while rank 0 declares \"%s\": every "
             "rank must call melissa_init for the same fields in the same order", msa.rank,
             first);
    if (!all_same)
        fail(call, field, "another rank declares a different field at this call (see its "
             "message)");
}

/* Whether a call has work to do: none outside a study (a first call that
 * finds no study disables the library); a call after melissa_finalize fails. */
static int in_use(const char *call, const char *field) {
    if (msa.state == DISABLED) return 0;
    if (msa.state == FINALIZED) fail(call, field, "called after melissa_finalize");
    return msa.state == ACTIVE || in_study(call, field);
}

static void init_field(const char *call, const char *field, long long local, int use_mpi,
                       MPI_Comm comm) {
    if (!in_use(call, field)) return;
    if (msa.state == FRESH) {
        check_mpi_library(call, field);
        check_name(call, field);
        open_session(call, field, use_mpi, comm);
    } else {
        check_name(call, field);
        if (use_mpi != msa.use_mpi)
            fail(call, field, "mixes melissa_init and melissa_init_no_mpi in one simulation");
        int finalized = 0;
        if (use_mpi) MPI_Finalized(&finalized);
        if (finalized) fail(call, field, "called after MPI_Finalize");
        if (use_mpi && comm == MPI_COMM_NULL) fail(call, field, "comm is MPI_COMM_NULL");
        int same = MPI_UNEQUAL;
        if (use_mpi) mpi_ok(call, field, MPI_Comm_compare(comm, msa.user_comm, &same),
                            "MPI_Comm_compare of comm");
        if (use_mpi && same != MPI_IDENT && same != MPI_CONGRUENT)
            fail(call, field, "comm differs from the first melissa_init's");
    }
    if (find_field(field)) fail(call, field, "this field is already initialised");
    if (msa.n_fields == MAX_FIELDS) fail(call, field, "more than %d fields", MAX_FIELDS);
    if (local < 0) fail(call, field, "num_values must be >= 0, got %lld", local);
    long long offset = 0, total = local;
    if (use_mpi) {
        check_same_name(call, field);
        mpi_ok(call, field, MPI_Exscan(&local, &offset, 1, MPI_LONG_LONG, MPI_SUM, msa.comm),
               "MPI_Exscan");
        if (msa.rank == 0) offset = 0;
        mpi_ok(call, field, MPI_Allreduce(&local, &total, 1, MPI_LONG_LONG, MPI_SUM, msa.comm),
               "MPI_Allreduce");
    }
    unsigned char *reply = NULL;
    long long size = 0;
    msa_welcome w;
    char error[4096];
    if (msa.rank == 0) {
        size = (long long)hello(call, field, (uint64_t)total, &reply);
        int rc = msa_decode_reply(reply, (size_t)size, (uint64_t)total, &w, error,
                                  sizeof error);
        if (rc == 1)
            fail(call, field, "the melissa-sa server at %s refused: %s", msa.address, error);
        if (rc < 0) fail(call, field, "the melissa-sa server at %s sent %s", msa.address, error);
    }
    if (use_mpi) {
        mpi_ok(call, field, MPI_Bcast(&size, 1, MPI_LONG_LONG, 0, msa.comm), "MPI_Bcast");
        if (msa.rank != 0) {
            reply = malloc(size ? (size_t)size : 1);
            if (!reply) fail(call, field, "out of memory");
        }
        mpi_ok(call, field, MPI_Bcast(reply, (int)size, MPI_UNSIGNED_CHAR, 0, msa.comm),
               "MPI_Bcast");
        if (msa.rank != 0 && msa_decode_reply(reply, (size_t)size, (uint64_t)total, &w,
                                            error, sizeof error) != 0)
            fail(call, field, "the server's answer reached this rank damaged: %s", error);
    }
    free(reply);
    adopt(call, field, &w);
    field_t *f = &msa.fields[msa.n_fields];
    memset(f, 0, sizeof *f);
    strcpy(f->name, field);
    f->field_id = w.field_id;
    f->attempt = w.attempt;
    f->local = (uint64_t)local;
    f->offset = (uint64_t)offset;
    f->route_rank = calloc((size_t)msa.n_ranks, sizeof *f->route_rank);
    f->route_start = calloc((size_t)msa.n_ranks, sizeof *f->route_start);
    f->route_count = calloc((size_t)msa.n_ranks, sizeof *f->route_count);
    if (!f->route_rank || !f->route_start || !f->route_count)
        fail(call, field, "out of memory");
    for (int r = 0; r < msa.n_ranks; ++r) {
        uint64_t lo = w.lo[r] > f->offset ? w.lo[r] : f->offset;
        uint64_t hi = w.hi[r] < f->offset + f->local ? w.hi[r] : f->offset + f->local;
        if (lo < hi) {
            f->route_rank[f->n_routes] = r;
            f->route_start[f->n_routes] = lo - f->offset;
            f->route_count[f->n_routes] = hi - lo;
            f->n_routes++;
            push_socket(call, field, r);
        }
    }
    msa_free_welcome(&w);
    msa.n_fields++;
}

/* ZeroMQ's I/O thread calls this when it no longer needs a slice: the
 * caller's array (hint NULL) or the library's copy of it (hint: the copy). */
static void release(void *data, void *hint) {
    (void)data;
    free(hint);
    pthread_mutex_lock(&msa.lock);
    if (--msa.in_flight == 0) pthread_cond_broadcast(&msa.released);
    pthread_mutex_unlock(&msa.lock);
}

/* Wait until ZeroMQ has released every slice and copy (bounded). */
static void wait_released(const char *call, const char *field,
                          const struct timespec *deadline) {
    pthread_mutex_lock(&msa.lock);
    while (msa.in_flight > 0) {
        if (pthread_cond_timedwait(&msa.released, &msa.lock, deadline) == ETIMEDOUT &&
            msa.in_flight > 0) {
            pthread_mutex_unlock(&msa.lock);
            fail(call, field, "the server took no data for %g s (MELISSA_SEND_TIMEOUT)",
                 msa.send_timeout);
        }
    }
    pthread_mutex_unlock(&msa.lock);
}

/* now + MELISSA_SEND_TIMEOUT on CLOCK_MONOTONIC */
static struct timespec send_deadline(void) {
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    double whole = floor(msa.send_timeout);
    deadline.tv_sec += (time_t)whole;
    deadline.tv_nsec += (long)((msa.send_timeout - whole) * 1e9);
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec += 1;
        deadline.tv_nsec -= 1000000000L;
    }
    return deadline;
}

/* A failed zmq_send or zmq_msg_send: the send timeout (EAGAIN), or ZeroMQ's
 * reason. */
static void send_failed(const char *call, const char *field, int server_rank,
                        const char *zmq_call) {
    int error = zmq_errno();
    if (error == EAGAIN)
        fail(call, field, "the server took no data for %g s (MELISSA_SEND_TIMEOUT)",
             msa.send_timeout);
    fail(call, field, "sending to server rank %d at %s (%s): %s", server_rank,
         msa.endpoints[server_rank], zmq_call, zmq_strerror(error));
}

/* Milliseconds left until deadline (CLOCK_MONOTONIC); none left: the
 * send timeout's failure. */
static int ms_until(const char *call, const char *field, const struct timespec *deadline) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    double left = (double)(deadline->tv_sec - now.tv_sec) * 1e3 +
                  (double)(deadline->tv_nsec - now.tv_nsec) / 1e6;
    if (left < 1.0)
        fail(call, field, "the server took no data for %g s (MELISSA_SEND_TIMEOUT)",
             msa.send_timeout);
    return (int)left;
}

static void send_field(const char *call, const char *field, const void *values, int dtype,
                       size_t itemsize) {
    if (!in_use(call, field)) return;
    check_name(call, field);
    if (msa.state == FRESH) fail(call, field, "call melissa_init for this field first");
    field_t *f = find_field(field);
    if (!f) {
        char known[512] = "";
        for (int i = 0; i < msa.n_fields && strlen(known) < 400; ++i)
            snprintf(known + strlen(known), sizeof known - strlen(known), "%s\"%s\"",
                     i ? ", " : "", msa.fields[i].name);
        fail(call, field, "unknown field: melissa_init declared %s", known);
    }
    if (f->step >= msa.nb_time_steps)
        fail(call, field, "the study has %u time steps; this is send number %u",
             (unsigned)msa.nb_time_steps, (unsigned)f->step + 1);
    if (f->local > 0 && !values) fail(call, field, "send_vect is NULL");
    /* one deadline for the whole call: every send and every wait for ZeroMQ
       to release the data share MELISSA_SEND_TIMEOUT. A copying send first
       waits for the previous step's copies (one step in flight: the solver
       computes the next step while this one travels); a send without copy
       waits at its end until ZeroMQ has released the caller's array. */
    struct timespec deadline = send_deadline();
    int copy = msa.copy;
    wait_released(call, field, &deadline);
    pthread_mutex_lock(&msa.lock);
    msa.in_flight += f->n_routes;
    pthread_mutex_unlock(&msa.lock);
    for (int i = 0; i < f->n_routes; ++i) {
        unsigned char header[MSA_HEADER_SIZE];
        msa_encode_header(header, dtype, msa.sim_id, msa.member, f->field_id, f->step,
                          (uint32_t)msa.rank, f->offset + f->route_start[i], f->route_count[i],
                          f->attempt);
        void *push = msa.push[f->route_rank[i]];
        zmq_msg_t msg;
        char *slice = (char *)values + f->route_start[i] * itemsize;
        set_int_option(call, field, push, ZMQ_SNDTIMEO, "ZMQ_SNDTIMEO",
                       ms_until(call, field, &deadline));
        if (zmq_send(push, header, sizeof header, ZMQ_SNDMORE) < 0)
            send_failed(call, field, f->route_rank[i], "zmq_send");
        size_t bytes = f->route_count[i] * itemsize;
        char *data = slice, *owned = NULL;
        if (copy) {
            if (!(owned = malloc(bytes ? bytes : 1)))
                fail(call, field, "out of memory copying %zu bytes (MELISSA_SEND_COPY=0 "
                     "sends without a copy)", bytes);
            memcpy(owned, slice, bytes);
            data = owned;
        }
        if (zmq_msg_init_data(&msg, data, bytes, release, owned) != 0)
            fail(call, field, "zmq_msg_init_data: %s", zmq_strerror(zmq_errno()));
        set_int_option(call, field, push, ZMQ_SNDTIMEO, "ZMQ_SNDTIMEO",
                       ms_until(call, field, &deadline));
        if (zmq_msg_send(&msg, push, 0) < 0)
            send_failed(call, field, f->route_rank[i], "zmq_msg_send");
    }
    if (!copy) wait_released(call, field, &deadline);
    f->step++;
}

void melissa_init(const char *field_name, int num_values, MPI_Comm comm) {
    init_field("melissa_init", field_name, num_values, 1, comm);
}

void melissa_init_f(const char *field_name, int *local_vect_size, MPI_Fint *comm_fortran) {
    if (!in_use("melissa_init", field_name)) return;
    if (msa.state == FRESH) check_mpi_library("melissa_init", field_name);
    if (!local_vect_size || !comm_fortran)
        fail("melissa_init", field_name, "local_vect_size or comm is a null pointer");
    init_field("melissa_init", field_name, *local_vect_size, 1, MPI_Comm_f2c(*comm_fortran));
}

void melissa_init_no_mpi(const char *field_name, int vect_size) {
    init_field("melissa_init_no_mpi", field_name, vect_size, 0, MPI_COMM_NULL);
}

void melissa_send(const char *field_name, const double *send_vect) {
    send_field("melissa_send", field_name, send_vect, MSA_DTYPE_FLOAT64, sizeof(double));
}

void melissa_send_no_mpi(const char *field_name, const double *send_vect) {
    send_field("melissa_send_no_mpi", field_name, send_vect, MSA_DTYPE_FLOAT64,
               sizeof(double));
}

void melissa_send_float(const char *field_name, const float *send_vect) {
    send_field("melissa_send_float", field_name, send_vect, MSA_DTYPE_FLOAT32,
               sizeof(float));
}

void melissa_finalize(void) {
    if (msa.state == DISABLED) return;
    if (msa.state == FINALIZED) fail("melissa_finalize", NULL, "called twice");
    if (msa.state == FRESH) {
        if (!in_study("melissa_finalize", NULL)) return;
        fail("melissa_finalize", NULL, "called before melissa_init");
    }
    int finalized = 0;
    if (msa.use_mpi) MPI_Finalized(&finalized);
    if (finalized)
        fail("melissa_finalize", NULL, "MPI_Finalize was called first: call melissa_finalize "
             "before MPI_Finalize");
    /* the last copies must have been taken: nothing is dropped silently */
    struct timespec deadline = send_deadline();
    wait_released("melissa_finalize", NULL, &deadline);
    for (int r = 0; r < msa.n_ranks; ++r)  /* LINGER bounds the wait */
        if (msa.push[r] && zmq_close(msa.push[r]) != 0)
            fail("melissa_finalize", NULL, "closing the socket to server rank %d (zmq_close): "
                 "%s", r, zmq_strerror(zmq_errno()));
    while (zmq_ctx_term(msa.ctx) != 0)
        if (zmq_errno() != EINTR)
            fail("melissa_finalize", NULL, "ending the ZeroMQ context (zmq_ctx_term): %s",
                 zmq_strerror(zmq_errno()));
    for (int i = 0; i < msa.n_fields; ++i) {
        free(msa.fields[i].route_rank);
        free(msa.fields[i].route_start);
        free(msa.fields[i].route_count);
    }
    for (int r = 0; r < msa.n_ranks; ++r) free(msa.endpoints ? msa.endpoints[r] : NULL);
    free(msa.endpoints);
    free(msa.push);
    if (msa.use_mpi) {
        mpi_ok("melissa_finalize", NULL, MPI_Barrier(msa.comm), "MPI_Barrier");
        mpi_ok("melissa_finalize", NULL, MPI_Comm_free(&msa.comm), "MPI_Comm_free");
    }
    msa.state = FINALIZED;
}

const char *melissa_version(void) {
    return "melissa-sa " MELISSA_SA_VERSION " (Melissa API " MELISSA_VERSION ")";
}
