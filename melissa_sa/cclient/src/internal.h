/* libmelissa's internals shared by its sources: the library's state, the
 * failure path (errors.c) and the session with the server (session.c).
 * Nothing here is exported (libmelissa.map). */
#ifndef MSA_INTERNAL_H
#define MSA_INTERNAL_H

#include <mpi.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "handshake.h"
#include "secret.h"
/* The header of the libzmq the library links: libzmq's own zmq.h for a
 * system or module libzmq (its directory from pkg-config), the declarations
 * libmelissa uses for pyzmq's libzmq, which ships none (the build defines
 * MSA_ZMQ_STAND_IN, cclient/build.py). */
#ifdef MSA_ZMQ_STAND_IN
#include "zmq_min.h"
#else
#include <zmq.h>
#if ZMQ_VERSION_MAJOR != 4
#error "libmelissa needs libzmq 4: this zmq.h is of another major version"
#endif
#endif
/* the oldest libzmq with what libmelissa uses (PLAIN security): checked
 * against zmq_version at melissa_init; libzmq.so.5 is libzmq 4 */
#define MSA_ZMQ_MAJOR 4
#define MSA_ZMQ_MIN_MINOR 0

/* The values go on the wire as they are in memory and the server reads them
 * little-endian: a big-endian build would send wrong numbers silently. */
#if !defined(__BYTE_ORDER__) || !defined(__ORDER_LITTLE_ENDIAN__)
#error "libmelissa needs a compiler that defines __BYTE_ORDER__ (gcc, clang, icx)"
#elif __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "libmelissa needs a little-endian machine (the server reads the values little-endian)"
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
    uint32_t attempt;  /* this run's token for the field, from its welcome */
    uint64_t local, offset;
    uint32_t step;
    int n_routes;
    int *route_rank;
    uint64_t *route_start, *route_count;  /* local indices */
} field_t;

enum state { FRESH, ACTIVE, DISABLED, FINALIZED };

struct msa_state {
    enum state state;
    int use_mpi, have_comm;
    int foreign_mpi;  /* built for another MPI: no MPI call is safe */
    MPI_Comm user_comm, comm;
    int rank;
    const char *address;
    uint32_t sim_id;
    uint32_t submission;  /* MELISSA_RUN_SUBMISSION, sent in each hello (unset: 0) */
    unsigned member;
    uint32_t nb_time_steps;
    double connect_timeout, send_timeout;
    int copy;  /* MELISSA_SEND_COPY=1: melissa_send copies and returns at once */
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
};

/* the library's one state (melissa.c) */
extern struct msa_state msa;

/* errors.c: "melissa: <call>("<field>"): <what>" on stderr, then MPI_Abort on
 * the simulation's communicator (or exit) with status 1 */
void fail(const char *call, const char *field, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 3, 4)));
const char *printable(const char *field, char *out, size_t cap);
void mpi_ok(const char *call, const char *field, int rc, const char *what);
void check_mpi_library(const char *call, const char *field);
void check_name(const char *call, const char *field);
double env_seconds(const char *call, const char *field, const char *var, double fallback);

/* session.c: the environment, the secret, the sockets, the hello */
void set_int_option(const char *call, const char *field, void *sock, int option,
                    const char *name, int value);
int in_study(const char *call, const char *field);
void open_session(const char *call, const char *field, int use_mpi, MPI_Comm comm);
size_t hello(const char *call, const char *field, uint64_t n_total, unsigned char **out);
void *push_socket(const char *call, const char *field, int server_rank);
void adopt(const char *call, const char *field, msa_welcome *w);

#endif
