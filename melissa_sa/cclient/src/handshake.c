/* Encoding and decoding of the handshake and of the data header (little
 * endian whatever the host). Every field of a reply is checked before use. */
#include "handshake.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const unsigned char HANDSHAKE_MAGIC[4] = {'M', 'S', 'A', 'H'};
static const unsigned char DATA_MAGIC[4] = {'M', 'S', 'A', 1};
enum { PREFIX = 8, KIND_HELLO = 1, KIND_WELCOME = 2, KIND_REFUSAL = 3 };

static void put(unsigned char *p, uint64_t v, int n) {
    for (int i = 0; i < n; ++i) p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get(const unsigned char *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; --i) v = (v << 8) | p[i];
    return v;
}

static void prefix(unsigned char *p, int kind) {
    memcpy(p, HANDSHAKE_MAGIC, 4);
    put(p + 4, MSA_PROTOCOL_VERSION, 2);
    p[6] = (unsigned char)kind;
    p[7] = 0;
}

size_t msa_encode_hello(unsigned char *buf, size_t cap, uint32_t sim_id,
                        uint32_t submission, uint64_t n_cells, const char *field) {
    size_t n = strlen(field), size = PREFIX + 4 + 4 + 8 + 2 + n;
    if (size > cap || n > MSA_MAX_NAME) return 0;
    prefix(buf, KIND_HELLO);
    put(buf + 8, sim_id, 4);
    put(buf + 12, submission, 4);
    put(buf + 16, n_cells, 8);
    put(buf + 24, n, 2);
    memcpy(buf + 26, field, n);
    return size;
}

void msa_free_welcome(msa_welcome *w) {
    if (w->endpoints)
        for (int r = 0; r < w->n_ranks; ++r) free(w->endpoints[r]);
    free(w->endpoints);
    free(w->lo);
    free(w->hi);
    memset(w, 0, sizeof *w);
}

#define BAD(...)                                        \
    do {                                                \
        snprintf(error, error_cap, __VA_ARGS__);        \
        msa_free_welcome(w);                            \
        return -1;                                      \
    } while (0)

int msa_decode_reply(const unsigned char *raw, size_t len, uint64_t n_cells,
                     msa_welcome *w, char *error, size_t error_cap) {
    memset(w, 0, sizeof *w);
    if (len < PREFIX) BAD("a reply of %zu bytes, shorter than its prefix", len);
    if (memcmp(raw, HANDSHAKE_MAGIC, 4) != 0) BAD("a reply with a bad magic");
    unsigned version = (unsigned)get(raw + 4, 2);
    if (version != MSA_PROTOCOL_VERSION)
        BAD("the server speaks protocol version %u, this library %d", version,
            MSA_PROTOCOL_VERSION);
    if (raw[6] == KIND_REFUSAL) {
        if (len < PREFIX + 4) BAD("a truncated refusal");
        uint64_t n = get(raw + 8, 4);
        if (n != len - PREFIX - 4) BAD("a refusal whose length does not match");
        snprintf(error, error_cap, "%.*s", (int)(n < 4000 ? n : 4000),
                 (const char *)raw + PREFIX + 4);
        return 1;
    }
    if (raw[6] != KIND_WELCOME) BAD("a reply of kind %u, expected a welcome", raw[6]);
    size_t pos = PREFIX;
    if (len < pos + 16) BAD("a welcome of %zu bytes, too short for its fields", len);
    w->field_id = (unsigned)get(raw + pos, 2);
    w->member = (unsigned)get(raw + pos + 2, 2);
    w->nb_time_steps = (uint32_t)get(raw + pos + 4, 4);
    uint64_t n_ranks = get(raw + pos + 8, 4);
    w->attempt = (uint32_t)get(raw + pos + 12, 4);
    pos += 16;
    if (n_ranks < 1 || n_ranks > MSA_MAX_RANKS)
        BAD("a welcome announcing %llu server ranks", (unsigned long long)n_ranks);
    if (w->nb_time_steps < 1) BAD("a welcome announcing 0 time steps");
    if (len < pos + 16 * n_ranks) BAD("a welcome whose partition is truncated");
    w->n_ranks = (int)n_ranks;
    w->lo = calloc(n_ranks, sizeof *w->lo);
    w->hi = calloc(n_ranks, sizeof *w->hi);
    w->endpoints = calloc(n_ranks, sizeof *w->endpoints);
    if (!w->lo || !w->hi || !w->endpoints) BAD("out of memory");
    uint64_t expected = 0;
    for (uint64_t r = 0; r < n_ranks; ++r, pos += 16) {
        w->lo[r] = get(raw + pos, 8);
        w->hi[r] = get(raw + pos + 8, 8);
        if (w->lo[r] != expected || w->hi[r] < w->lo[r])
            BAD("a welcome whose partition is not contiguous at server rank %llu",
                (unsigned long long)r);
        expected = w->hi[r];
    }
    if (expected != n_cells)
        BAD("a welcome whose partition covers %llu cells, not %llu",
            (unsigned long long)expected, (unsigned long long)n_cells);
    for (uint64_t r = 0; r < n_ranks; ++r) {
        if (len < pos + 2) BAD("a welcome whose endpoint %llu is truncated",
                               (unsigned long long)r);
        size_t n = (size_t)get(raw + pos, 2);
        pos += 2;
        if (n < 1 || n > MSA_MAX_NAME || len < pos + n)
            BAD("a welcome whose endpoint %llu is %zu bytes", (unsigned long long)r, n);
        w->endpoints[r] = malloc(n + 1);
        if (!w->endpoints[r]) BAD("out of memory");
        memcpy(w->endpoints[r], raw + pos, n);
        w->endpoints[r][n] = '\0';
        for (size_t i = 0; i < n; ++i) {
            unsigned char c = (unsigned char)w->endpoints[r][i];
            if (c < 0x21 || c > 0x7e)
                BAD("a welcome whose endpoint %llu holds byte 0x%02x (not printable ASCII)",
                    (unsigned long long)r, c);
        }
        pos += n;
    }
    if (pos != len) BAD("a welcome with %zu trailing bytes", len - pos);
    return 0;
}

void msa_encode_header(unsigned char out[MSA_HEADER_SIZE], int dtype, uint32_t sim_id,
                       unsigned member, unsigned field_id, uint32_t time_step,
                       uint32_t client_rank, uint64_t offset, uint64_t count,
                       uint32_t attempt) {
    memcpy(out, DATA_MAGIC, 4);
    put(out + 4, MSA_PROTOCOL_VERSION, 2);
    out[6] = (unsigned char)dtype;
    out[7] = 0;
    put(out + 8, sim_id, 4);
    put(out + 12, member, 2);
    put(out + 14, field_id, 2);
    put(out + 16, time_step, 4);
    put(out + 20, client_rank, 4);
    put(out + 24, offset, 8);
    put(out + 32, count, 8);
    put(out + 40, attempt, 4);
}
