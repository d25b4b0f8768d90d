/* Status codes shared by every module and carried on the wire: one X-macro
 * gives the enum and its strings, so a worker's error reaches the coordinator
 * intact. Values are small and stable; new codes are appended. */
#ifndef MB_PROTOCOL_STATUS_H
#define MB_PROTOCOL_STATUS_H

#define MB_STATUS_LIST(X)                                                      \
    X(OK, 0, "ok")                                                             \
    X(INVALID_ARG, 1, "invalid argument")                                      \
    X(NOMEM, 2, "out of memory")                                               \
    X(TRUNCATED, 3, "message truncated")                                       \
    X(BAD_MAGIC, 4, "bad magic")                                               \
    X(BAD_VERSION, 5, "unsupported protocol or ABI version")                   \
    X(BAD_OPCODE, 6, "unknown opcode")                                         \
    X(BAD_LENGTH, 7, "length does not match the payload")                      \
    X(OVERFLOW, 8, "size arithmetic overflows")                                \
    X(BAD_DTYPE, 9, "unsupported dtype")                                       \
    X(BAD_SHAPE, 10, "shape mismatch")                                         \
    X(SLOT_RANGE, 11, "expert slot out of range")                              \
    X(PAIR_COUNT, 12, "expert pair counts inconsistent")                       \
    X(MISALIGNED, 13, "buffer misaligned")                                     \
    X(IO, 14, "I/O error")                                                     \
    X(TIMEOUT, 15, "timed out")                                                \
    X(PEER_DEAD, 16, "peer process died or hung up")                           \
    X(UNSUPPORTED, 17, "not supported")                                        \
    X(BACKEND, 18, "backend failure")                                          \
    X(DEVICE, 19, "device unavailable")                                        \
    X(NOT_LOADED, 20, "expert weights not loaded")                             \
    X(CORRUPT, 21, "shared memory corrupted")                                  \
    X(FULL, 22, "no space left in ring or buffer")                             \
    X(AGAIN, 23, "try again")                                                  \
    X(FORMAT, 24, "malformed file")                                            \
    X(CONFIG, 25, "invalid configuration")                                     \
    X(CLOSED, 26, "transport closed")                                          \
    X(BAD_FLAGS, 27, "unknown flags set")                                      \
    X(NOT_FOUND, 28, "not found")                                              \
    X(PROTOCOL, 29, "unexpected message")                                      \
    X(BUSY, 30, "worker busy serving another coordinator")

typedef enum {
#define MB_STATUS_ENUM_(name, value, text) MB_STATUS_##name = value,
    MB_STATUS_LIST(MB_STATUS_ENUM_)
#undef MB_STATUS_ENUM_
    MB_STATUS_COUNT_
} mb_status;

/* Returns a static human-readable string for any value, including values a
 * peer sent that this build does not know ("unknown status"). Cannot fail. */
const char *mb_status_str(int status);

/* Returns the enum name ("MB_STATUS_TRUNCATED") for logs and tests. */
const char *mb_status_name(int status);

/* Returns expr's status from the calling function unless it is OK. */
#define MB_TRY(expr)                                                                                                   \
    do {                                                                                                               \
        mb_status mb_try_ = (expr);                                                                                    \
        if (mb_try_ != MB_STATUS_OK) return mb_try_;                                                                   \
    } while (0)

#endif
