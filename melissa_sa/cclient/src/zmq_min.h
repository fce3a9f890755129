/* The few libzmq functions and constants that libmelissa uses.
 *
 * libzmq's C ABI has been stable since 4.0; declaring these here lets the
 * library build against the libzmq that pyzmq's wheel ships (which has no
 * zmq.h) as well as against a system one. Values are those of zmq.h 4.3. */
#ifndef MELISSA_ZMQ_MIN_H
#define MELISSA_ZMQ_MIN_H

#include <stddef.h>

#define ZMQ_REQ 3
#define ZMQ_PUSH 8
#define ZMQ_SNDHWM 23
#define ZMQ_LINGER 17
#define ZMQ_SNDTIMEO 28
#define ZMQ_PLAIN_USERNAME 45
#define ZMQ_PLAIN_PASSWORD 46
#define ZMQ_DONTWAIT 1
#define ZMQ_SNDMORE 2
#define ZMQ_POLLIN 1

typedef struct zmq_msg_t {
    unsigned char _[64];
} __attribute__((aligned(sizeof(void *)))) zmq_msg_t;

typedef struct zmq_pollitem_t {
    void *socket;
    int fd;
    short events;
    short revents;
} zmq_pollitem_t;

typedef void(zmq_free_fn)(void *data, void *hint);

void *zmq_ctx_new(void);
int zmq_ctx_term(void *context);
void *zmq_socket(void *context, int type);
int zmq_close(void *socket);
int zmq_connect(void *socket, const char *endpoint);
int zmq_setsockopt(void *socket, int option, const void *value, size_t len);
int zmq_send(void *socket, const void *buf, size_t len, int flags);
int zmq_msg_init(zmq_msg_t *msg);
int zmq_msg_init_data(zmq_msg_t *msg, void *data, size_t size, zmq_free_fn *ffn, void *hint);
int zmq_msg_send(zmq_msg_t *msg, void *socket, int flags);
int zmq_msg_recv(zmq_msg_t *msg, void *socket, int flags);
void *zmq_msg_data(zmq_msg_t *msg);
size_t zmq_msg_size(const zmq_msg_t *msg);
int zmq_msg_close(zmq_msg_t *msg);
int zmq_poll(zmq_pollitem_t *items, int nitems, long timeout);
int zmq_errno(void);
const char *zmq_strerror(int errnum);
void zmq_version(int *major, int *minor, int *patch);

#endif
