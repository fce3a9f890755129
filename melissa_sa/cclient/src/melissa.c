/* libmelissa: Melissa's client API for melissa-sa (C, C++ and Fortran).
 *
 * The same behaviour as the Python client (melissa_sa/client.py) and the same
 * environment: MELISSA_SERVER_ADDRESS, MELISSA_SIMULATION_ID,
 * MELISSA_CONNECT_TIMEOUT (default 30 s), MELISSA_SEND_TIMEOUT (default
 * 300 s), MELISSA_REQUIRE_SERVER, and the study secret from
 * MELISSA_SECRET_FILE (a file only its owner can read) or MELISSA_SECRET,
 * presented on every socket as ZeroMQ PLAIN credentials (user "melissa-sa").
 * Rank 0 says hello to the server's rank 0 (binary handshake, handshake.c), the answer is broadcast over the
 * simulation's communicator, then every rank pushes to each server rank the
 * cells it owns: a 44-byte header and the caller's values, sent without
 * copying; melissa_send returns once ZeroMQ has released every slice.
 *
 * Never hangs, never fails silently: every wait is bounded, and every misuse
 * or failure prints "melissa: <call>("<field>"): <what>" on stderr and ends
 * the simulation (MPI_Abort on its communicator, or exit) with status 1.
 * Outside a study (no MELISSA_SERVER_ADDRESS) every call does nothing. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "handshake.h"
#include "melissa/config.h"
#include "melissa_api.h"
#include "mpi_check.h"
#include "secret.h"
/* libzmq's own header where the build finds one (a system or module libzmq,
 * its directory from pkg-config), else the declarations libmelissa uses */
#if defined(__has_include)
#if __has_include(<zmq.h>)
#include <zmq.h>
#define MSA_HAVE_ZMQ_H 1
#endif
#endif
#ifndef MSA_HAVE_ZMQ_H
#include "zmq_min.h"
#endif

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "libmelissa sends the values as they are in memory; the server reads little-endian"
#endif

#define MAX_FIELDS 64
#define MAX_REPLY (1 << 22)
#define MAX_SECRET MSA_MAX_SECRET
#define SECRET_USER "melissa-sa"
/* ZeroMQ takes timeouts in int milliseconds */
#define MAX_TIMEOUT_S 2000000.0

typedef struct {
    char name[MSA_MAX_NAME + 1];
    unsigned field_id;
    uint64_t local, offset;
    uint32_t step;
    int n_routes;
    int *route_rank;
    uint64_t *route_start, *route_count;  /* local indices */
} field_t;

enum state { FRESH, ACTIVE, DISABLED, FINALIZED };

static struct {
    enum state state;
    int use_mpi, have_comm;
    int foreign_mpi;  /* built for another MPI: no MPI call is safe */
    MPI_Comm user_comm, comm;
    int rank;
    const char *address;
    uint32_t sim_id;
    unsigned member;
    uint32_t nb_time_steps;
    double connect_timeout, send_timeout;
    char secret[MAX_SECRET + 1];  /* empty: no authentication */
    void *ctx;
    int n_ranks;
    void **push;
    char **endpoints;
    field_t fields[MAX_FIELDS];
    int n_fields;
    pthread_mutex_t lock;
    pthread_cond_t released;
    long in_flight;
} S = {.state = FRESH, .lock = PTHREAD_MUTEX_INITIALIZER,
       .released = PTHREAD_COND_INITIALIZER};

/* A field name fit to print, whatever the caller passed. */
static const char *printable(const char *field, char *out, size_t cap) {
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

static void fail(const char *call, const char *field, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 3, 4)));

static void fail(const char *call, const char *field, const char *fmt, ...) {
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
    if (!S.foreign_mpi) {
        MPI_Initialized(&initialized);
        MPI_Finalized(&finalized);
    }
    if (initialized && !finalized) {
        /* MPI_Abort kills every rank at once: give the launcher's I/O
           forwarding (hydra's proxy) a moment to pass the message on, or
           it can be lost with the process */
        struct timespec pause = {0, 300000000};
        nanosleep(&pause, NULL);
        MPI_Abort(S.have_comm ? S.user_comm : MPI_COMM_WORLD, 1);
    }
    exit(1);
}

/* An MPI call's return code (the duplicated communicator has
 * MPI_ERRORS_ARE_FATAL; the user's may return errors). */
static void mpi_ok(const char *call, const char *field, int rc, const char *what) {
    if (rc == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING + 1] = "";
    int length = 0;
    MPI_Error_string(rc, text, &length);
    fail(call, field, "%s failed: %s", what, text);
}

/* The MPI this process runs must be the one the library was built for:
 * checked before any MPI handle is used. */
static void check_mpi_library(const char *call, const char *field) {
    char msg[1024];
    if (msa_mpi_mismatch(msg, sizeof msg)) {
        S.foreign_mpi = 1;
        fail(call, field, "%s", msg);
    }
}

static void check_name(const char *call, const char *field) {
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

static double env_seconds(const char *call, const char *field, const char *var,
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

/* The study secret: MELISSA_SECRET_FILE (read as melissa_sa.auth reads it,
 * by rank 0 only: one open per simulation, not one per rank, on the parallel
 * file system), else MELISSA_SECRET, else none. Called once the library's
 * communicator exists; rank 0 broadcasts what it read. */
static void read_secret(const char *call, const char *field) {
    S.secret[0] = '\0';
    const char *path = getenv("MELISSA_SECRET_FILE");
    if (path && *path) {
        if (S.rank == 0) {
            char error[512];
            if (msa_read_secret(path, S.secret, error, sizeof error) != 0)
                fail(call, field, "MELISSA_SECRET_FILE=%s: %s", path, error);
        }
        if (S.use_mpi)
            mpi_ok(call, field, MPI_Bcast(S.secret, sizeof S.secret, MPI_CHAR, 0, S.comm),
                   "MPI_Bcast");
        return;
    }
    const char *raw = getenv("MELISSA_SECRET");
    if (raw && *raw) {
        if (strlen(raw) > MAX_SECRET) fail(call, field, "MELISSA_SECRET is too long");
        strcpy(S.secret, raw);
    }
}

static void set_int_option(const char *call, const char *field, void *sock, int option,
                           int value) {
    if (zmq_setsockopt(sock, option, &value, sizeof value) != 0)
        fail(call, field, "cannot set ZeroMQ socket option %d to %d: %s", option, value,
             zmq_strerror(zmq_errno()));
}

/* Present the study secret on a socket (before it connects). */
static void credentials(const char *call, const char *field, void *sock) {
    if (!S.secret[0]) return;
    if (zmq_setsockopt(sock, ZMQ_PLAIN_USERNAME, SECRET_USER, strlen(SECRET_USER)) != 0 ||
        zmq_setsockopt(sock, ZMQ_PLAIN_PASSWORD, S.secret, strlen(S.secret)) != 0)
        fail(call, field, "cannot set the ZeroMQ PLAIN credentials: %s",
             zmq_strerror(zmq_errno()));
}

/* Whether this process runs in a study; a first call outside one disables
 * the library (every later call does nothing). */
static int in_study(const char *call, const char *field) {
    const char *address = getenv("MELISSA_SERVER_ADDRESS");
    if (address && *address) return 1;
    const char *required = getenv("MELISSA_REQUIRE_SERVER");
    if (required && strcmp(required, "1") == 0)
        fail(call, field, "MELISSA_SERVER_ADDRESS is not set: this simulation was not "
             "started by melissa-sa (MELISSA_REQUIRE_SERVER=1)");
    S.state = DISABLED;
    return 0;
}

static void open_session(const char *call, const char *field, int use_mpi, MPI_Comm comm) {
    S.address = getenv("MELISSA_SERVER_ADDRESS");
    const char *raw = getenv("MELISSA_SIMULATION_ID");
    char *end = NULL;
    unsigned long long id = raw ? strtoull(raw, &end, 10) : 0;
    if (!raw || !*raw || *end != '\0' || raw[0] == '-' || id > UINT32_MAX)
        fail(call, field, "MELISSA_SIMULATION_ID=%s is not a simulation id (an integer "
             "from 0 to %u)", raw ? raw : "(unset)", UINT32_MAX);
    S.sim_id = (uint32_t)id;
    S.connect_timeout = env_seconds(call, field, "MELISSA_CONNECT_TIMEOUT", 30.0);
    S.send_timeout = env_seconds(call, field, "MELISSA_SEND_TIMEOUT", 300.0);
    S.use_mpi = use_mpi;
    S.rank = 0;
    if (use_mpi) {
        int initialized = 0, finalized = 0;
        MPI_Initialized(&initialized);
        MPI_Finalized(&finalized);
        if (!initialized || finalized)
            fail(call, field, "MPI is not initialized: call MPI_Init first (or "
                 "melissa_init_no_mpi in a serial simulation)");
        if (comm == MPI_COMM_NULL) fail(call, field, "comm is MPI_COMM_NULL");
        S.user_comm = comm;
        S.have_comm = 1;
        mpi_ok(call, field, MPI_Comm_dup(comm, &S.comm), "MPI_Comm_dup of comm");
        mpi_ok(call, field, MPI_Comm_set_errhandler(S.comm, MPI_ERRORS_ARE_FATAL),
               "MPI_Comm_set_errhandler");
        mpi_ok(call, field, MPI_Comm_rank(S.comm, &S.rank), "MPI_Comm_rank");
    }
    read_secret(call, field);
    /* the send timeout must not move with the wall clock */
    pthread_condattr_t attr;
    if (pthread_condattr_init(&attr) != 0 ||
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) != 0 ||
        pthread_cond_init(&S.released, &attr) != 0)
        fail(call, field, "cannot make a condition variable on CLOCK_MONOTONIC");
    pthread_condattr_destroy(&attr);
    int major = 0, minor = 0, patch = 0;
    zmq_version(&major, &minor, &patch);
    if (major != 4)
        fail(call, field, "libzmq %d.%d.%d is loaded; libmelissa needs libzmq 4 (the ABI "
             "of libzmq.so.5): load the libzmq it was built with", major, minor, patch);
    S.ctx = zmq_ctx_new();
    if (!S.ctx) fail(call, field, "cannot create a ZeroMQ context: %s",
                     zmq_strerror(zmq_errno()));
    S.state = ACTIVE;
}

/* Rank 0: send the hello, wait for the reply (bounded); copy it to *out. */
static size_t hello(const char *call, const char *field, uint64_t n_total,
                    unsigned char **out) {
    unsigned char buf[64 + MSA_MAX_NAME];
    size_t n = msa_encode_hello(buf, sizeof buf, S.sim_id, n_total, field);
    void *req = zmq_socket(S.ctx, ZMQ_REQ);
    if (!req) fail(call, field, "cannot create a ZeroMQ socket: %s", zmq_strerror(zmq_errno()));
    int timeout_ms = (int)(S.connect_timeout * 1000);
    set_int_option(call, field, req, ZMQ_LINGER, 0);
    set_int_option(call, field, req, ZMQ_SNDTIMEO, timeout_ms);
    credentials(call, field, req);
    if (zmq_connect(req, S.address) != 0)
        fail(call, field, "cannot connect to MELISSA_SERVER_ADDRESS=%s: %s", S.address,
             zmq_strerror(zmq_errno()));
    if (zmq_send(req, buf, n, 0) < 0) {
        if (zmq_errno() != EAGAIN)
            fail(call, field, "sending the hello to %s: %s", S.address,
                 zmq_strerror(zmq_errno()));
        fail(call, field, "no answer from the melissa-sa server at %s within %g s "
             "(MELISSA_CONNECT_TIMEOUT)", S.address, S.connect_timeout);
    }
    zmq_pollitem_t item = {req, 0, ZMQ_POLLIN, 0};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &t1);
        long left = timeout_ms - (long)((t1.tv_sec - t0.tv_sec) * 1000 +
                                        (t1.tv_nsec - t0.tv_nsec) / 1000000);
        int rc = left > 0 ? zmq_poll(&item, 1, left) : 0;
        if (rc > 0) break;
        if (rc < 0 && zmq_errno() == EINTR) continue;
        if (rc < 0) fail(call, field, "waiting for the server's answer: %s",
                         zmq_strerror(zmq_errno()));
        fail(call, field, "no answer from the melissa-sa server at %s within %g s "
             "(MELISSA_CONNECT_TIMEOUT)", S.address, S.connect_timeout);
    }
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    if (zmq_msg_recv(&msg, req, 0) < 0)
        fail(call, field, "receiving the server's answer: %s", zmq_strerror(zmq_errno()));
    size_t size = zmq_msg_size(&msg);
    if (size > MAX_REPLY) fail(call, field, "the server's answer is %zu bytes", size);
    *out = malloc(size ? size : 1);
    if (!*out) fail(call, field, "out of memory");
    memcpy(*out, zmq_msg_data(&msg), size);
    zmq_msg_close(&msg);
    if (zmq_close(req) != 0)
        fail(call, field, "closing the hello socket: %s", zmq_strerror(zmq_errno()));
    return size;
}

static void *push_socket(const char *call, const char *field, int server_rank) {
    if (S.push[server_rank]) return S.push[server_rank];
    void *push = zmq_socket(S.ctx, ZMQ_PUSH);
    if (!push) fail(call, field, "cannot create a ZeroMQ socket: %s", zmq_strerror(zmq_errno()));
    int ms = (int)(S.send_timeout * 1000);
    set_int_option(call, field, push, ZMQ_LINGER, ms);
    set_int_option(call, field, push, ZMQ_SNDTIMEO, ms);
    credentials(call, field, push);
    if (zmq_connect(push, S.endpoints[server_rank]) != 0)
        fail(call, field, "cannot connect to server rank %d at %s: %s", server_rank,
             S.endpoints[server_rank], zmq_strerror(zmq_errno()));
    return S.push[server_rank] = push;
}

/* Keep the server's ranks and endpoints (the same for every field). */
static void adopt(const char *call, const char *field, msa_welcome *w) {
    if (!S.push) {
        S.n_ranks = w->n_ranks;
        S.push = calloc((size_t)w->n_ranks, sizeof *S.push);
        S.endpoints = w->endpoints;
        w->endpoints = NULL;
        if (!S.push) fail(call, field, "out of memory");
    } else {
        if (w->n_ranks != S.n_ranks)
            fail(call, field, "the server announces %d ranks, %d before", w->n_ranks,
                 S.n_ranks);
        for (int r = 0; r < S.n_ranks; ++r)
            if (strcmp(w->endpoints[r], S.endpoints[r]) != 0)
                fail(call, field, "server rank %d moved from %s to %s", r,
                     S.endpoints[r], w->endpoints[r]);
    }
    S.member = w->member;
    S.nb_time_steps = w->nb_time_steps;
}

static field_t *find_field(const char *field) {
    for (int i = 0; i < S.n_fields; ++i)
        if (strcmp(S.fields[i].name, field) == 0) return &S.fields[i];
    return NULL;
}

/* Every rank of the communicator declares the same field as rank 0 (ranks
 * that call melissa_init in another order would swap the fields). */
static void check_same_name(const char *call, const char *field) {
    char first[MSA_MAX_NAME + 1] = "";
    if (S.rank == 0) strcpy(first, field);
    mpi_ok(call, field, MPI_Bcast(first, sizeof first, MPI_CHAR, 0, S.comm), "MPI_Bcast");
    int same = strcmp(first, field) == 0, all_same = 0;
    mpi_ok(call, field, MPI_Allreduce(&same, &all_same, 1, MPI_INT, MPI_LAND, S.comm),
           "MPI_Allreduce");
    if (!same)
        fail(call, field, "rank %d declares this field while rank 0 declares \"%s\": every "
             "rank must call melissa_init for the same fields in the same order", S.rank,
             first);
    if (!all_same)
        fail(call, field, "another rank declares a different field at this call (see its "
             "message)");
}

static void init_field(const char *call, const char *field, long long local, int use_mpi,
                       MPI_Comm comm) {
    if (S.state == DISABLED) return;
    if (S.state == FINALIZED) fail(call, field, "called after melissa_finalize");
    if (S.state == FRESH) {
        if (!in_study(call, field)) return;
        check_mpi_library(call, field);
        check_name(call, field);
        open_session(call, field, use_mpi, comm);
    } else {
        check_name(call, field);
        if (use_mpi != S.use_mpi)
            fail(call, field, "mixes melissa_init and melissa_init_no_mpi in one simulation");
        int finalized = 0;
        if (use_mpi) MPI_Finalized(&finalized);
        if (finalized) fail(call, field, "called after MPI_Finalize");
        if (use_mpi && comm == MPI_COMM_NULL) fail(call, field, "comm is MPI_COMM_NULL");
        int same = MPI_UNEQUAL;
        if (use_mpi) mpi_ok(call, field, MPI_Comm_compare(comm, S.user_comm, &same),
                            "MPI_Comm_compare of comm");
        if (use_mpi && same != MPI_IDENT && same != MPI_CONGRUENT)
            fail(call, field, "comm differs from the first melissa_init's");
    }
    if (find_field(field)) fail(call, field, "this field is already initialised");
    if (S.n_fields == MAX_FIELDS) fail(call, field, "more than %d fields", MAX_FIELDS);
    if (local < 0) fail(call, field, "num_values must be >= 0, got %lld", local);
    long long offset = 0, total = local;
    if (use_mpi) {
        check_same_name(call, field);
        mpi_ok(call, field, MPI_Exscan(&local, &offset, 1, MPI_LONG_LONG, MPI_SUM, S.comm),
               "MPI_Exscan");
        if (S.rank == 0) offset = 0;
        mpi_ok(call, field, MPI_Allreduce(&local, &total, 1, MPI_LONG_LONG, MPI_SUM, S.comm),
               "MPI_Allreduce");
    }
    unsigned char *reply = NULL;
    long long size = 0;
    msa_welcome w;
    char error[4096];
    if (S.rank == 0) {
        size = (long long)hello(call, field, (uint64_t)total, &reply);
        int rc = msa_decode_reply(reply, (size_t)size, (uint64_t)total, &w, error,
                                  sizeof error);
        if (rc == 1)
            fail(call, field, "the melissa-sa server at %s refused: %s", S.address, error);
        if (rc < 0) fail(call, field, "the melissa-sa server at %s sent %s", S.address, error);
    }
    if (use_mpi) {
        mpi_ok(call, field, MPI_Bcast(&size, 1, MPI_LONG_LONG, 0, S.comm), "MPI_Bcast");
        if (S.rank != 0) {
            reply = malloc(size ? (size_t)size : 1);
            if (!reply) fail(call, field, "out of memory");
        }
        mpi_ok(call, field, MPI_Bcast(reply, (int)size, MPI_UNSIGNED_CHAR, 0, S.comm),
               "MPI_Bcast");
        if (S.rank != 0 && msa_decode_reply(reply, (size_t)size, (uint64_t)total, &w,
                                            error, sizeof error) != 0)
            fail(call, field, "the server's answer reached this rank damaged: %s", error);
    }
    free(reply);
    adopt(call, field, &w);
    field_t *f = &S.fields[S.n_fields];
    memset(f, 0, sizeof *f);
    strcpy(f->name, field);
    f->field_id = w.field_id;
    f->local = (uint64_t)local;
    f->offset = (uint64_t)offset;
    f->route_rank = calloc((size_t)S.n_ranks, sizeof *f->route_rank);
    f->route_start = calloc((size_t)S.n_ranks, sizeof *f->route_start);
    f->route_count = calloc((size_t)S.n_ranks, sizeof *f->route_count);
    if (!f->route_rank || !f->route_start || !f->route_count)
        fail(call, field, "out of memory");
    for (int r = 0; r < S.n_ranks; ++r) {
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
    S.n_fields++;
}

/* ZeroMQ's I/O thread calls this when it no longer needs a slice. */
static void release(void *data, void *hint) {
    (void)data;
    (void)hint;
    pthread_mutex_lock(&S.lock);
    if (--S.in_flight == 0) pthread_cond_broadcast(&S.released);
    pthread_mutex_unlock(&S.lock);
}

static void send_failed(const char *call, const char *field, int server_rank) {
    if (zmq_errno() == EAGAIN)
        fail(call, field, "the server took no data for %g s (MELISSA_SEND_TIMEOUT)",
             S.send_timeout);
    fail(call, field, "sending to server rank %d at %s: %s", server_rank,
         S.endpoints[server_rank], zmq_strerror(zmq_errno()));
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
             S.send_timeout);
    return (int)left;
}

static void send_field(const char *call, const char *field, const void *values, int dtype,
                       size_t itemsize) {
    if (S.state == DISABLED) return;
    if (S.state == FINALIZED) fail(call, field, "called after melissa_finalize");
    if (S.state == FRESH) {
        if (!in_study(call, field)) return;
        check_name(call, field);
        fail(call, field, "call melissa_init for this field first");
    }
    check_name(call, field);
    field_t *f = find_field(field);
    if (!f) {
        char known[512] = "";
        for (int i = 0; i < S.n_fields && strlen(known) < 400; ++i)
            snprintf(known + strlen(known), sizeof known - strlen(known), "%s\"%s\"",
                     i ? ", " : "", S.fields[i].name);
        fail(call, field, "unknown field: melissa_init declared %s", known);
    }
    if (f->step >= S.nb_time_steps)
        fail(call, field, "the study has %u time steps; this is send number %u",
             (unsigned)S.nb_time_steps, (unsigned)f->step + 1);
    if (f->local > 0 && !values) fail(call, field, "send_vect is NULL");
    /* one deadline for the whole call: every send and the wait for the
       release share MELISSA_SEND_TIMEOUT */
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    double whole = floor(S.send_timeout);
    deadline.tv_sec += (time_t)whole;
    deadline.tv_nsec += (long)((S.send_timeout - whole) * 1e9);
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec += 1;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&S.lock);
    S.in_flight += f->n_routes;
    pthread_mutex_unlock(&S.lock);
    for (int i = 0; i < f->n_routes; ++i) {
        unsigned char header[MSA_HEADER_SIZE];
        msa_encode_header(header, dtype, S.sim_id, S.member, f->field_id, f->step,
                          (uint32_t)S.rank, f->offset + f->route_start[i], f->route_count[i]);
        void *push = S.push[f->route_rank[i]];
        zmq_msg_t msg;
        char *slice = (char *)values + f->route_start[i] * itemsize;
        set_int_option(call, field, push, ZMQ_SNDTIMEO, ms_until(call, field, &deadline));
        if (zmq_send(push, header, sizeof header, ZMQ_SNDMORE) < 0)
            send_failed(call, field, f->route_rank[i]);
        if (zmq_msg_init_data(&msg, slice, f->route_count[i] * itemsize, release, NULL) != 0)
            fail(call, field, "zmq_msg_init_data: %s", zmq_strerror(zmq_errno()));
        set_int_option(call, field, push, ZMQ_SNDTIMEO, ms_until(call, field, &deadline));
        if (zmq_msg_send(&msg, push, 0) < 0)
            send_failed(call, field, f->route_rank[i]);
    }
    pthread_mutex_lock(&S.lock);
    while (S.in_flight > 0) {
        if (pthread_cond_timedwait(&S.released, &S.lock, &deadline) == ETIMEDOUT &&
            S.in_flight > 0) {
            pthread_mutex_unlock(&S.lock);
            fail(call, field, "the server took no data for %g s (MELISSA_SEND_TIMEOUT)",
                 S.send_timeout);
        }
    }
    pthread_mutex_unlock(&S.lock);
    f->step++;
}

void melissa_init(const char *field_name, int num_values, MPI_Comm comm) {
    init_field("melissa_init", field_name, num_values, 1, comm);
}

void melissa_init_f(const char *field_name, int *local_vect_size, MPI_Fint *comm_fortran) {
    if (S.state == DISABLED || (S.state == FRESH && !in_study("melissa_init", field_name)))
        return;
    if (S.state == FRESH) check_mpi_library("melissa_init", field_name);
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
    if (S.state == DISABLED) return;
    if (S.state == FINALIZED) fail("melissa_finalize", NULL, "called twice");
    if (S.state == FRESH) {
        if (!in_study("melissa_finalize", NULL)) return;
        fail("melissa_finalize", NULL, "called before melissa_init");
    }
    int finalized = 0;
    if (S.use_mpi) MPI_Finalized(&finalized);
    if (finalized)
        fail("melissa_finalize", NULL, "MPI_Finalize was called first: call melissa_finalize "
             "before MPI_Finalize");
    for (int r = 0; r < S.n_ranks; ++r)  /* LINGER bounds the wait */
        if (S.push[r] && zmq_close(S.push[r]) != 0)
            fail("melissa_finalize", NULL, "closing the socket to server rank %d: %s", r,
                 zmq_strerror(zmq_errno()));
    while (zmq_ctx_term(S.ctx) != 0)
        if (zmq_errno() != EINTR)
            fail("melissa_finalize", NULL, "ending the ZeroMQ context: %s",
                 zmq_strerror(zmq_errno()));
    for (int i = 0; i < S.n_fields; ++i) {
        free(S.fields[i].route_rank);
        free(S.fields[i].route_start);
        free(S.fields[i].route_count);
    }
    for (int r = 0; r < S.n_ranks; ++r) free(S.endpoints ? S.endpoints[r] : NULL);
    free(S.endpoints);
    free(S.push);
    if (S.use_mpi) {
        mpi_ok("melissa_finalize", NULL, MPI_Barrier(S.comm), "MPI_Barrier");
        mpi_ok("melissa_finalize", NULL, MPI_Comm_free(&S.comm), "MPI_Comm_free");
    }
    S.state = FINALIZED;
}

const char *melissa_version(void) {
    return "melissa-sa " MELISSA_SA_VERSION " (Melissa API " MELISSA_VERSION ")";
}
