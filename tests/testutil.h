/* Minimal assertion helpers for the test executables: each test file is one
 * executable that returns 0 on success, 1 on failure, 77 to skip. */
#ifndef MB_TESTS_TESTUTIL_H
#define MB_TESTS_TESTUTIL_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

/* The failed checks, one counter for the whole executable: a weak
 * definition in every file that includes this header, which the linker
 * merges, so that a test split over several files counts the checks of
 * each (a static counter per file would lose all but main's). */
__attribute__((weak)) int mb_test_failures_;

/* MB_TEST_TSAN: a ThreadSanitizer build, where every memory access is
 * checked and the CPU kernels run many times slower. The integration suite
 * runs under it for its threads and processes, so tests there drop
 * repetitions that vary only data or printing (dtypes, output flags) and
 * never the threads or transports involved. MB_TEST_SANITIZED: any
 * sanitizer (ASan too), for bounds that measure speed, not behaviour. */
#if defined(__SANITIZE_THREAD__)
#define MB_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MB_TEST_TSAN 1
#endif
#endif
#ifndef MB_TEST_TSAN
#define MB_TEST_TSAN 0
#endif
#if MB_TEST_TSAN || defined(__SANITIZE_ADDRESS__)
#define MB_TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MB_TEST_SANITIZED 1
#endif
#endif
#ifndef MB_TEST_SANITIZED
#define MB_TEST_SANITIZED 0
#endif

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
            mb_test_failures_++;                                                                   \
        }                                                                                          \
    } while (0)

#define CHECK_MSG(cond, ...)                                                                       \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            mb_test_failures_++;                                                                   \
        }                                                                                          \
    } while (0)

/* Compares integers (status codes included) and prints both on failure. */
#define CHECK_EQ(a, b)                                                                             \
    do {                                                                                           \
        long long a_ = (long long)(a), b_ = (long long)(b);                                        \
        if (a_ != b_) {                                                                            \
            fprintf(stderr, "%s:%d: CHECK_EQ failed: %s = %lld, %s = %lld\n", __FILE__, __LINE__,  \
                    #a, a_, #b, b_);                                                               \
            mb_test_failures_++;                                                                   \
        }                                                                                          \
    } while (0)

/* Stops the test at once: for failures that make the rest meaningless. */
#define REQUIRE(cond)                                                                              \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: REQUIRE failed: %s\n", __FILE__, __LINE__, #cond);             \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

#define MB_TEST_SKIP(...)                                                                          \
    do {                                                                                           \
        fprintf(stderr, "SKIP: " __VA_ARGS__);                                                     \
        fputc('\n', stderr);                                                                       \
        exit(77);                                                                                  \
    } while (0)

/* Returns the process exit code: prints a one-line summary. */
static inline int mb_test_finish(const char *name)
{
    if (mb_test_failures_) {
        fprintf(stderr, "%s: %d check(s) failed\n", name, mb_test_failures_);
        return 1;
    }
    printf("%s: ok\n", name);
    return 0;
}

/* Deterministic xorshift64* generator so failures reproduce. */
static inline unsigned long long mb_test_rand_u64(unsigned long long *s)
{
    unsigned long long x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* Uniform in [-1, 1). */
static inline float mb_test_rand_f32(unsigned long long *s)
{
    return (float)((double)(mb_test_rand_u64(s) >> 11) * (1.0 / 9007199254740992.0) * 2.0 - 1.0);
}

#endif
