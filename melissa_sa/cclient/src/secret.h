/* libmelissa: the study secret file, read as melissa_sa/auth.py reads it
 * (secret.c). */
#ifndef MSA_SECRET_H
#define MSA_SECRET_H

#include <stddef.h>

#define MSA_MAX_SECRET 255

/* Read the secret in path into out (capacity MSA_MAX_SECRET + 1): 0, or -1
 * and the reason in error. Refuses a symbolic link, anything but a regular
 * file (a FIFO does not block), a file of another user or one that others
 * can read or write; strips surrounding white space; 1 to 255 characters. */
int msa_read_secret(const char *path, char *out, char *error, size_t error_cap);

#endif
