/* Preloaded (LD_PRELOAD) by tests/test_c_client_faults.py: one chosen
 * ZeroMQ call fails, every other goes to libzmq.
 *
 *   MSA_FAULT_CALL   the call that fails (zmq_socket, zmq_setsockopt, ...)
 *   MSA_FAULT_AT     which use of it fails: 1 for the first (default 1)
 *   MSA_FAULT_ERRNO  the errno it fails with (what zmq_errno() then says)
 *
 * Compiled with -I melissa_sa/cclient/src for the declarations. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "zmq_min.h"

static int fails(const char *call, int *uses) {
    const char *chosen = getenv("MSA_FAULT_CALL");
    if (!chosen || strcmp(chosen, call) != 0) return 0;
    const char *at = getenv("MSA_FAULT_AT");
    if (++*uses != (at ? atoi(at) : 1)) return 0;
    const char *code = getenv("MSA_FAULT_ERRNO");
    errno = code ? atoi(code) : EINVAL;
    return 1;
}

#define REAL(name) ((__typeof__(&name))dlsym(RTLD_NEXT, #name))

void *zmq_socket(void *context, int type) {
    static int uses;
    return fails("zmq_socket", &uses) ? NULL : REAL(zmq_socket)(context, type);
}

int zmq_setsockopt(void *socket, int option, const void *value, size_t len) {
    static int uses;
    return fails("zmq_setsockopt", &uses) ? -1
                                          : REAL(zmq_setsockopt)(socket, option, value, len);
}

int zmq_send(void *socket, const void *buf, size_t len, int flags) {
    static int uses;
    return fails("zmq_send", &uses) ? -1 : REAL(zmq_send)(socket, buf, len, flags);
}

int zmq_msg_init_data(zmq_msg_t *msg, void *data, size_t size, zmq_free_fn *ffn,
                      void *hint) {
    static int uses;
    return fails("zmq_msg_init_data", &uses) ? -1
                                             : REAL(zmq_msg_init_data)(msg, data, size, ffn, hint);
}

int zmq_msg_send(zmq_msg_t *msg, void *socket, int flags) {
    static int uses;
    return fails("zmq_msg_send", &uses) ? -1 : REAL(zmq_msg_send)(msg, socket, flags);
}

int zmq_close(void *socket) {
    static int uses;
    return fails("zmq_close", &uses) ? -1 : REAL(zmq_close)(socket);
}

int zmq_ctx_term(void *context) {
    static int uses;
    return fails("zmq_ctx_term", &uses) ? -1 : REAL(zmq_ctx_term)(context);
}
