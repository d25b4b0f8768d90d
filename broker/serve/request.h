/* The body of an OpenAI-style completion request (POST /v1/chat/completions
 * or /v1/completions), parsed and range-checked into one plain struct. Pure:
 * no I/O, no globals, no locks; the server and the fuzz target
 * (tests/fuzz/fuzz_serve_request.c) call the same function. */
#ifndef MB_BROKER_SERVE_REQUEST_H
#define MB_BROKER_SERVE_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#include "broker/chat_template.h"
#include "protocol/status.h"

typedef enum {
    MB_SERVE_KIND_CHAT = 0,       /* /v1/chat/completions: messages */
    MB_SERVE_KIND_COMPLETION = 1, /* /v1/completions: prompt */
} mb_serve_kind;

/* Limits on what one request may ask for. OpenAI's own: at most 4 stop
 * sequences. The rest keep a hostile body from costing more than its bytes. */
#define MB_SERVE_MAX_STOPS 4u
#define MB_SERVE_MAX_STOP_BYTES 256u
#define MB_SERVE_MAX_MESSAGES 4096u
#define MB_SERVE_MAX_TOKENS (1u << 24)

/* Which optional fields the body set (bits of mb_serve_request.given). */
enum {
    MB_SERVE_GIVEN_MAX_TOKENS = 1u << 0,
    MB_SERVE_GIVEN_TEMPERATURE = 1u << 1,
    MB_SERVE_GIVEN_TOP_P = 1u << 2,
    MB_SERVE_GIVEN_TOP_K = 1u << 3,
    MB_SERVE_GIVEN_MIN_P = 1u << 4,
    MB_SERVE_GIVEN_REPEAT_PENALTY = 1u << 5,
    MB_SERVE_GIVEN_SEED = 1u << 6,
};

typedef struct {
    mb_serve_kind kind;
    char *model;               /* "model" as sent; NULL when absent (one model is served) */
    mb_chat_message *messages; /* chat: [n_messages], roles "system"/"user"/"assistant",
                                * every role and content owned by the request */
    size_t n_messages;
    char *prompt; /* completion: the prompt text, owned */
    int stream;        /* server-sent events */
    int include_usage; /* stream_options.include_usage: a last chunk with usage */
    unsigned given;    /* MB_SERVE_GIVEN_* */
    uint32_t max_tokens;   /* max_tokens or max_completion_tokens, 1..MB_SERVE_MAX_TOKENS */
    double temperature;    /* 0..2 */
    double top_p;          /* 0..1 */
    uint32_t top_k;        /* 0..MB_SERVE_MAX_TOKENS (extension, as llama-server) */
    double min_p;          /* 0..1 (extension) */
    double repeat_penalty; /* 0.01..100 (extension) */
    uint64_t seed;         /* any integer; negative ones wrap */
    char *stop[MB_SERVE_MAX_STOPS]; /* owned, each 1..MB_SERVE_MAX_STOP_BYTES bytes */
    size_t n_stop;
} mb_serve_request;

/* Why a body was refused, in the fields of OpenAI's error object. */
typedef struct {
    char message[256];
    char param[48]; /* the offending field, "" when none */
    char code[40];  /* a machine-readable reason, "" when none */
} mb_serve_error;

/* Parses body[0..bytes) (need not be NUL-terminated) for an endpoint of the
 * given kind into *out. Fields this server does not use (frequency_penalty,
 * user, ...) are ignored; ones it cannot honour (n > 1, logprobs, tools) are
 * refused rather than ignored, since the reply would not be what was asked.
 * On success *out owns its strings (mb_serve_request_free). On failure *out
 * is zeroed and err says what is wrong. Errors: MB_STATUS_FORMAT (not a JSON
 * object), MB_STATUS_CONFIG (a field of the wrong type or out of range, a
 * required field missing), MB_STATUS_UNSUPPORTED (asks for what this server
 * does not do), MB_STATUS_NOMEM, MB_STATUS_INVALID_ARG (NULL arguments).
 * Cannot block. */
mb_status mb_serve_request_parse(mb_serve_kind kind, const char *body, size_t bytes,
                                 mb_serve_request *out, mb_serve_error *err);

/* Frees what parse allocated and zeroes *r. Safe on a zeroed request. */
void mb_serve_request_free(mb_serve_request *r);

#endif
