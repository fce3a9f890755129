/* libmelissa: the study secret file (MELISSA_SECRET_FILE), read with the
 * rules and the messages of melissa_sa/auth.py's read_secret. */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "secret.h"

int msa_read_secret(const char *path, char *out, char *error, size_t error_cap) {
    /* O_NONBLOCK: opening a FIFO must not wait for a writer */
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        snprintf(error, error_cap, "cannot read the study secret: %s", strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        snprintf(error, error_cap, "cannot read the study secret: %s", strerror(errno));
        close(fd);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(error, error_cap, "the study secret must be a regular file");
        close(fd);
        return -1;
    }
    if (st.st_uid != getuid()) {
        snprintf(error, error_cap, "the study secret belongs to uid %u, not to you (uid %u); "
                 "refusing to use it", (unsigned)st.st_uid, (unsigned)getuid());
        close(fd);
        return -1;
    }
    if (st.st_mode & 077) {
        snprintf(error, error_cap, "the study secret is accessible to other users (mode "
                 "%04o); refusing to use it (chmod 600)", (unsigned)(st.st_mode & 07777));
        close(fd);
        return -1;
    }
    char buf[4096];
    ssize_t n;
    do {
        n = read(fd, buf, sizeof buf);
    } while (n < 0 && errno == EINTR);
    int saved = errno;
    close(fd);
    if (n < 0) {
        snprintf(error, error_cap, "cannot read the study secret: %s", strerror(saved));
        return -1;
    }
    size_t start = 0, end = (size_t)n;
    while (start < end && isspace((unsigned char)buf[start])) ++start;
    while (end > start && isspace((unsigned char)buf[end - 1])) --end;
    if (end == start || end - start > MSA_MAX_SECRET) {
        snprintf(error, error_cap, "not a study secret (expected 1 to %d characters on one "
                 "line, found %zu)", MSA_MAX_SECRET, end - start);
        return -1;
    }
    memcpy(out, buf + start, end - start);
    out[end - start] = '\0';
    return 0;
}
