/* Helpers shared by the ZeroMQ transport tests: message patterns that make
 * every byte checkable, an echo server to run in a thread or a child, a
 * scratch directory, a clock and a descriptor count. */
#ifndef MB_TESTS_ZMQ_TESTUTIL_H
#define MB_TESTS_ZMQ_TESTUTIL_H

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "protocol/message.h"
#include "protocol/transport.h"

/* A test message's first 8 bytes are its sequence number; this one asks the
 * echo server to reply and stop. */
#define ZT_SEQ_STOP UINT64_MAX
/* This one asks the echo server to stop replying (to be killed meanwhile). */
#define ZT_SEQ_HANG (UINT64_MAX - 1)

static inline int64_t zt_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static inline uint64_t zt_word(uint64_t seq, size_t i)
{
    return (seq + 1) * 0x9E3779B97F4A7C15ull ^ (uint64_t)i * 0xD1B54A32D192ED03ull;
}

/* msg[bytes]: bytes 0-7 seq, 8-15 bytes, the rest a pattern of (seq, offset). */
static inline void zt_fill(void *msg, size_t bytes, uint64_t seq)
{
    unsigned char *p = msg;
    uint64_t len = bytes;
    memcpy(p, &seq, 8);
    memcpy(p + 8, &len, 8);
    size_t i = 16;
    if (((uintptr_t)p & 7) == 0) {
        uint64_t *w = (uint64_t *)(void *)p;
        for (; i + 8 <= bytes; i += 8)
            w[i / 8] = zt_word(seq, i);
    }
    for (; i + 8 <= bytes; i += 8) {
        uint64_t w = zt_word(seq, i);
        memcpy(p + i, &w, 8);
    }
    for (; i < bytes; i++)
        p[i] = (unsigned char)zt_word(seq, i);
}

/* 1 when msg[bytes] is exactly what zt_fill(bytes, seq) wrote. */
static inline int zt_check(const void *msg, size_t bytes, uint64_t seq)
{
    const unsigned char *p = msg;
    uint64_t s, len;
    if (bytes < 16) return 0;
    memcpy(&s, p, 8);
    memcpy(&len, p + 8, 8);
    if (s != seq || len != bytes) return 0;
    size_t i = 16;
    if (((uintptr_t)p & 7) == 0) {
        const uint64_t *w = (const uint64_t *)(const void *)p;
        for (; i + 8 <= bytes; i += 8)
            if (w[i / 8] != zt_word(seq, i)) return 0;
    }
    for (; i + 8 <= bytes; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        if (w != zt_word(seq, i)) return 0;
    }
    for (; i < bytes; i++)
        if (p[i] != (unsigned char)zt_word(seq, i)) return 0;
    return 1;
}

static inline uint64_t zt_seq(const void *msg)
{
    uint64_t s;
    memcpy(&s, msg, 8);
    return s;
}

/* Sends a zt_fill message through reserve + commit. */
static inline mb_status zt_send(mb_transport *t, size_t bytes, uint64_t seq, int64_t timeout_ns)
{
    void *buf = NULL;
    mb_status st = mb_transport_send_reserve(t, bytes, timeout_ns, &buf);
    if (st != MB_STATUS_OK) return st;
    zt_fill(buf, bytes, seq);
    return mb_transport_send_commit(t, bytes);
}

typedef struct {
    mb_transport *t;
    int64_t idle_timeout_ns; /* stop when nothing came for this long */
    unsigned long n_echoed;
    mb_status last; /* why it stopped: OK after STOP */
} zt_echo;

/* Echoes every message back (copying it into a fresh reservation) until a
 * STOP message, a recv error other than PROTOCOL/TRUNCATED, or an idle
 * timeout. A HANG message makes it sleep without replying. */
static inline void *zt_echo_run(void *arg)
{
    zt_echo *e = arg;
    for (;;) {
        const void *msg = NULL;
        size_t bytes = 0;
        mb_status st = mb_transport_recv(e->t, e->idle_timeout_ns, &msg, &bytes);
        if (st == MB_STATUS_PROTOCOL || st == MB_STATUS_TRUNCATED) continue;
        if (st != MB_STATUS_OK) {
            e->last = st;
            return NULL;
        }
        uint64_t seq = bytes >= 8 ? zt_seq(msg) : 0;
        if (seq == ZT_SEQ_HANG) {
            for (;;)
                pause();
        }
        void *out = NULL;
        st = mb_transport_send_reserve(e->t, bytes, 5000000000ll, &out);
        if (st == MB_STATUS_OK) {
            memcpy(out, msg, bytes);
            st = mb_transport_send_commit(e->t, bytes);
        }
        mb_transport_recv_release(e->t);
        if (st != MB_STATUS_OK) {
            e->last = st;
            return NULL;
        }
        e->n_echoed++;
        if (seq == ZT_SEQ_STOP) {
            e->last = MB_STATUS_OK;
            return NULL;
        }
    }
}

/* Open descriptors of this process. */
static inline int zt_count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (de->d_name[0] != '.') n++;
    closedir(d);
    return n - 1; /* the directory's own descriptor */
}

/* A fresh directory under TMPDIR (or /tmp) for socket files. */
static inline void zt_mkdtemp(char *out, size_t cap)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(out, cap, "%s/mb-zmq-test-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (!mkdtemp(out)) {
        perror("mkdtemp");
        exit(1);
    }
}

#endif
