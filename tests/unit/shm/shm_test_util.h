/* Helpers shared by the shm tests: clocks, message patterns that identify
 * their sequence number and length, and fd counting. */
#ifndef MB_TESTS_SHM_TEST_UTIL_H
#define MB_TESTS_SHM_TEST_UTIL_H

#include <dirent.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "tests/testutil.h"

static inline int64_t shm_test_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

/* Fills msg[len] (len >= 16): u64 seq, u64 len, then bytes derived from seq. */
static inline void shm_test_fill(void *msg, size_t len, uint64_t seq)
{
    uint8_t *p = msg;
    uint64_t l = len;
    memcpy(p, &seq, 8);
    memcpy(p + 8, &l, 8);
    unsigned long long s = seq * 0x9E3779B97F4A7C15ull + 1;
    size_t i = 16;
    for (; i + 8 <= len; i += 8) {
        uint64_t v = mb_test_rand_u64(&s);
        memcpy(p + i, &v, 8);
    }
    for (; i < len; i++)
        p[i] = (uint8_t)(seq + i);
}

/* 1 if msg[len] is exactly what shm_test_fill(msg, len, seq) wrote. */
static inline int shm_test_check(const void *msg, size_t len, uint64_t seq)
{
    const uint8_t *p = msg;
    uint64_t s0, l;
    memcpy(&s0, p, 8);
    memcpy(&l, p + 8, 8);
    if (s0 != seq || l != len) return 0;
    unsigned long long s = seq * 0x9E3779B97F4A7C15ull + 1;
    size_t i = 16;
    for (; i + 8 <= len; i += 8) {
        uint64_t v = mb_test_rand_u64(&s), w;
        memcpy(&w, p + i, 8);
        if (v != w) return 0;
    }
    for (; i < len; i++)
        if (p[i] != (uint8_t)(seq + i)) return 0;
    return 1;
}

/* Open fds of this process (the directory stream's own fd excluded). */
static inline int shm_test_count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n - 1;
}

#endif
