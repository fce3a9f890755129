/* libmelissa: the session with the melissa-sa server. The environment
 * (MELISSA_SERVER_ADDRESS, MELISSA_SIMULATION_ID, MELISSA_RUN_SUBMISSION, the
 * timeouts, the study secret), the library's communicator, the ZeroMQ context, rank 0's hello
 * and the push sockets to the server's ranks. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

/* The study secret: MELISSA_SECRET_FILE (read as melissa_sa.auth reads it,
 * by rank 0 only: one open per simulation, not one per rank, on the parallel
 * file system), else MELISSA_SECRET, else none. Called once the library's
 * communicator exists; rank 0 broadcasts what it read. */
static void read_secret(const char *call, const char *field) {
    msa.secret[0] = '\0';
    const char *path = getenv("MELISSA_SECRET_FILE");
    if (path && *path) {
        if (msa.rank == 0) {
            char error[512];
            if (msa_read_secret(path, msa.secret, error, sizeof error) != 0)
                fail(call, field, "MELISSA_SECRET_FILE=%s: %s", path, error);
        }
        if (msa.use_mpi)
            mpi_ok(call, field, MPI_Bcast(msa.secret, sizeof msa.secret, MPI_CHAR, 0, msa.comm),
                   "MPI_Bcast");
        return;
    }
    const char *raw = getenv("MELISSA_SECRET");
    if (raw && *raw) {
        if (strlen(raw) > MAX_SECRET) fail(call, field, "MELISSA_SECRET is too long");
        strcpy(msa.secret, raw);
    }
}

void set_int_option(const char *call, const char *field, void *sock, int option,
                    const char *name, int value) {
    if (zmq_setsockopt(sock, option, &value, sizeof value) != 0)
        fail(call, field, "cannot set the socket option %s to %d (zmq_setsockopt): %s", name,
             value, zmq_strerror(zmq_errno()));
}

/* Present the study secret on a socket (before it connects). */
static void credentials(const char *call, const char *field, void *sock) {
    if (!msa.secret[0]) return;
    if (zmq_setsockopt(sock, ZMQ_PLAIN_USERNAME, SECRET_USER, strlen(SECRET_USER)) != 0 ||
        zmq_setsockopt(sock, ZMQ_PLAIN_PASSWORD, msa.secret, strlen(msa.secret)) != 0)
        fail(call, field, "cannot set the PLAIN credentials (zmq_setsockopt): %s",
             zmq_strerror(zmq_errno()));
}

/* Whether this process runs in a study; a first call outside one disables
 * the library (every later call does nothing). */
int in_study(const char *call, const char *field) {
    const char *address = getenv("MELISSA_SERVER_ADDRESS");
    if (address && *address) return 1;
    const char *required = getenv("MELISSA_REQUIRE_SERVER");
    if (required && strcmp(required, "1") == 0)
        fail(call, field, "MELISSA_SERVER_ADDRESS is not set: this simulation was not "
             "started by melissa-sa (MELISSA_REQUIRE_SERVER=1)");
    msa.state = DISABLED;
    return 0;
}

void open_session(const char *call, const char *field, int use_mpi, MPI_Comm comm) {
    msa.address = getenv("MELISSA_SERVER_ADDRESS");
    const char *raw = getenv("MELISSA_SIMULATION_ID");
    char *end = NULL;
    unsigned long long id = raw ? strtoull(raw, &end, 10) : 0;
    if (!raw || !*raw || *end != '\0' || raw[0] == '-' || id > UINT32_MAX)
        fail(call, field, "MELISSA_SIMULATION_ID=%s is not a simulation id (an integer "
             "from 0 to %u)", raw ? raw : "(unset)", UINT32_MAX);
    msa.sim_id = (uint32_t)id;
    raw = getenv("MELISSA_RUN_SUBMISSION");
    end = NULL;
    id = raw && *raw ? strtoull(raw, &end, 10) : 0;
    if (raw && (!*raw || *end != '\0' || raw[0] == '-' || id > UINT32_MAX))
        fail(call, field, "MELISSA_RUN_SUBMISSION=%s is not a submission number (an "
             "integer from 0 to %u)", raw, UINT32_MAX);
    msa.submission = (uint32_t)id;
    msa.connect_timeout = env_seconds(call, field, "MELISSA_CONNECT_TIMEOUT", 30.0);
    msa.send_timeout = env_seconds(call, field, "MELISSA_SEND_TIMEOUT", 300.0);
    const char *copy = getenv("MELISSA_SEND_COPY");
    if (copy && *copy && strcmp(copy, "0") != 0 && strcmp(copy, "1") != 0)
        fail(call, field, "MELISSA_SEND_COPY=%s is not 0 (send the caller's array, wait "
             "until it is taken) or 1 (copy it, return at once)", copy);
    msa.copy = copy && strcmp(copy, "1") == 0;
    msa.use_mpi = use_mpi;
    msa.rank = 0;
    if (use_mpi) {
        int initialized = 0, finalized = 0;
        MPI_Initialized(&initialized);
        MPI_Finalized(&finalized);
        if (!initialized || finalized)
            fail(call, field, "MPI is not initialized: call MPI_Init first (or "
                 "melissa_init_no_mpi in a serial simulation)");
        if (comm == MPI_COMM_NULL) fail(call, field, "comm is MPI_COMM_NULL");
        msa.user_comm = comm;
        msa.have_comm = 1;
        mpi_ok(call, field, MPI_Comm_dup(comm, &msa.comm), "MPI_Comm_dup of comm");
        mpi_ok(call, field, MPI_Comm_set_errhandler(msa.comm, MPI_ERRORS_ARE_FATAL),
               "MPI_Comm_set_errhandler");
        mpi_ok(call, field, MPI_Comm_rank(msa.comm, &msa.rank), "MPI_Comm_rank");
    }
    read_secret(call, field);
    /* the send timeout must not move with the wall clock */
    pthread_condattr_t attr;
    if (pthread_condattr_init(&attr) != 0 ||
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) != 0 ||
        pthread_cond_init(&msa.released, &attr) != 0)
        fail(call, field, "cannot make a condition variable on CLOCK_MONOTONIC");
    pthread_condattr_destroy(&attr);
    int major = 0, minor = 0, patch = 0;
    zmq_version(&major, &minor, &patch);
    if (major != MSA_ZMQ_MAJOR || minor < MSA_ZMQ_MIN_MINOR)
        fail(call, field, "libzmq %d.%d.%d is loaded; libmelissa needs libzmq %d.%d or a "
             "later %d.x (the ABI of libzmq.so.5): load the libzmq it was built with", major,
             minor, patch, MSA_ZMQ_MAJOR, MSA_ZMQ_MIN_MINOR, MSA_ZMQ_MAJOR);
    msa.ctx = zmq_ctx_new();
    if (!msa.ctx)
        fail(call, field, "cannot create a ZeroMQ context (zmq_ctx_new): %s",
             zmq_strerror(zmq_errno()));
    msa.state = ACTIVE;
}

/* Rank 0: send the hello, wait for the reply (bounded); copy it to *out. */
size_t hello(const char *call, const char *field, uint64_t n_total,
                    unsigned char **out) {
    unsigned char buf[64 + MSA_MAX_NAME];
    size_t n = msa_encode_hello(buf, sizeof buf, msa.sim_id, msa.submission, n_total,
                                field);
    void *req = zmq_socket(msa.ctx, ZMQ_REQ);
    if (!req) fail(call, field, "cannot create a ZeroMQ socket (zmq_socket): %s",
                    zmq_strerror(zmq_errno()));
    int timeout_ms = (int)(msa.connect_timeout * 1000);
    set_int_option(call, field, req, ZMQ_LINGER, "ZMQ_LINGER", 0);
    set_int_option(call, field, req, ZMQ_SNDTIMEO, "ZMQ_SNDTIMEO", timeout_ms);
    credentials(call, field, req);
    if (zmq_connect(req, msa.address) != 0)
        fail(call, field, "cannot connect to MELISSA_SERVER_ADDRESS=%s (zmq_connect): %s",
             msa.address, zmq_strerror(zmq_errno()));
    if (zmq_send(req, buf, n, 0) < 0) {
        if (zmq_errno() != EAGAIN)
            fail(call, field, "sending the hello to %s (zmq_send): %s", msa.address,
                 zmq_strerror(zmq_errno()));
        fail(call, field, "no answer from the melissa-sa server at %s within %g s "
             "(MELISSA_CONNECT_TIMEOUT)", msa.address, msa.connect_timeout);
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
        if (rc < 0) fail(call, field, "waiting for the server's answer (zmq_poll): %s",
                         zmq_strerror(zmq_errno()));
        fail(call, field, "no answer from the melissa-sa server at %s within %g s "
             "(MELISSA_CONNECT_TIMEOUT)", msa.address, msa.connect_timeout);
    }
    zmq_msg_t msg;
    if (zmq_msg_init(&msg) != 0)
        fail(call, field, "zmq_msg_init: %s", zmq_strerror(zmq_errno()));
    if (zmq_msg_recv(&msg, req, 0) < 0)
        fail(call, field, "receiving the server's answer (zmq_msg_recv): %s",
             zmq_strerror(zmq_errno()));
    size_t size = zmq_msg_size(&msg);
    if (size > MAX_REPLY) fail(call, field, "the server's answer is %zu bytes", size);
    *out = malloc(size ? size : 1);
    if (!*out) fail(call, field, "out of memory");
    memcpy(*out, zmq_msg_data(&msg), size);
    if (zmq_msg_close(&msg) != 0)
        fail(call, field, "zmq_msg_close: %s", zmq_strerror(zmq_errno()));
    if (zmq_close(req) != 0)
        fail(call, field, "closing the hello socket (zmq_close): %s",
             zmq_strerror(zmq_errno()));
    return size;
}

void *push_socket(const char *call, const char *field, int server_rank) {
    if (msa.push[server_rank]) return msa.push[server_rank];
    void *push = zmq_socket(msa.ctx, ZMQ_PUSH);
    if (!push) fail(call, field, "cannot create a ZeroMQ socket (zmq_socket): %s",
                    zmq_strerror(zmq_errno()));
    int ms = (int)(msa.send_timeout * 1000);
    set_int_option(call, field, push, ZMQ_LINGER, "ZMQ_LINGER", ms);
    set_int_option(call, field, push, ZMQ_SNDTIMEO, "ZMQ_SNDTIMEO", ms);
    credentials(call, field, push);
    if (zmq_connect(push, msa.endpoints[server_rank]) != 0)
        fail(call, field, "cannot connect to server rank %d at %s (zmq_connect): %s",
             server_rank, msa.endpoints[server_rank], zmq_strerror(zmq_errno()));
    return msa.push[server_rank] = push;
}

/* Keep the server's ranks and endpoints (the same for every field). */
void adopt(const char *call, const char *field, msa_welcome *w) {
    if (!msa.push) {
        msa.n_ranks = w->n_ranks;
        msa.push = calloc((size_t)w->n_ranks, sizeof *msa.push);
        msa.endpoints = w->endpoints;
        w->endpoints = NULL;
        if (!msa.push) fail(call, field, "out of memory");
    } else {
        if (w->n_ranks != msa.n_ranks)
            fail(call, field, "the server announces %d ranks, %d before", w->n_ranks,
                 msa.n_ranks);
        for (int r = 0; r < msa.n_ranks; ++r)
            if (strcmp(w->endpoints[r], msa.endpoints[r]) != 0)
                fail(call, field, "server rank %d moved from %s to %s", r,
                     msa.endpoints[r], w->endpoints[r]);
    }
    msa.member = w->member;
    msa.nb_time_steps = w->nb_time_steps;
}
