/* The binary handshake of protocol version 3 and the data header, written
 * and read exactly as melissa_sa/protocol.py does (see its docstring:
 * the one description of the wire format). */
#ifndef MELISSA_HANDSHAKE_H
#define MELISSA_HANDSHAKE_H

#include <stddef.h>
#include <stdint.h>

#define MSA_PROTOCOL_VERSION 3
#define MSA_HEADER_SIZE 44
#define MSA_MAX_NAME 1024
#define MSA_MAX_RANKS 65536
#define MSA_DTYPE_FLOAT32 0
#define MSA_DTYPE_FLOAT64 1

typedef struct {
    int n_ranks;
    unsigned field_id, member;
    uint32_t nb_time_steps;
    uint32_t attempt;   /* the token every data message of this field carries */
    uint64_t *lo, *hi;  /* n_ranks each: the partition */
    char **endpoints;   /* n_ranks NUL-terminated strings */
} msa_welcome;

/* Write a hello into buf (capacity cap); return its size, or 0 if too small.
 * submission: the run's submission number (MELISSA_RUN_SUBMISSION). */
size_t msa_encode_hello(unsigned char *buf, size_t cap, uint32_t sim_id,
                        uint32_t submission, uint64_t n_cells, const char *field);

/* Decode a server reply. 0: a welcome, *w filled (free with msa_free_welcome).
 * 1: a refusal, its reason in error. -1: malformed, why in error. */
int msa_decode_reply(const unsigned char *raw, size_t len, uint64_t n_cells,
                     msa_welcome *w, char *error, size_t error_cap);
void msa_free_welcome(msa_welcome *w);

/* The 44-byte header of one data message; attempt: the field's welcome's. */
void msa_encode_header(unsigned char out[MSA_HEADER_SIZE], int dtype, uint32_t sim_id,
                       unsigned member, unsigned field_id, uint32_t time_step,
                       uint32_t client_rank, uint64_t offset, uint64_t count,
                       uint32_t attempt);

#endif
