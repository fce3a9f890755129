/* Feeds server replies to libmelissa's handshake decoder (src/handshake.c),
 * built with the sanitizers by tests/test_c_handshake.py:
 *     decode_harness CASES
 * CASES holds records: n_cells (8 bytes, little-endian), length (8 bytes),
 * then the reply. One line per record on stdout:
 *     <rc> <field_id> <member> <nb_time_steps> <attempt> <n_ranks> <endpoint,...> | <error>
 * (rc: 0 welcome, 1 refusal, -1 malformed). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "handshake.h"

static int read_u64(FILE *in, uint64_t *out) {
    unsigned char b[8];
    if (fread(b, 1, 8, in) != 8) return 0;
    *out = 0;
    for (int i = 7; i >= 0; --i) *out = (*out << 8) | b[i];
    return 1;
}

int main(int argc, char **argv) {
    FILE *in = argc > 1 ? fopen(argv[1], "rb") : NULL;
    if (!in) return 2;
    uint64_t n_cells, len;
    while (read_u64(in, &n_cells) && read_u64(in, &len)) {
        /* an exact-size buffer: a read past its end is the sanitizer's error */
        unsigned char *raw = malloc(len ? len : 1);
        if (!raw || fread(raw, 1, len, in) != len) return 2;
        msa_welcome w;
        char error[4096] = "";
        int rc = msa_decode_reply(raw, len, n_cells, &w, error, sizeof error);
        if (rc == 0) {
            printf("0 %u %u %u %u %d ", w.field_id, w.member, (unsigned)w.nb_time_steps,
                   (unsigned)w.attempt, w.n_ranks);
            for (int r = 0; r < w.n_ranks; ++r)
                printf("%s%s", r ? "," : "", w.endpoints[r]);
            printf(" |\n");
            msa_free_welcome(&w);
        } else {
            printf("%d | %s\n", rc, error);
        }
        free(raw);
    }
    fclose(in);
    return 0;
}
