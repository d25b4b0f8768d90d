/* libFuzzer target for the server's request parser (broker/serve/request.h):
 * any bytes as a request body, for both endpoints, must be accepted or
 * refused with a status and an error message, never read out of bounds.
 * When accepted, every field lies within the ranges the header promises.
 * The input is not NUL-terminated: the copy libFuzzer hands over is exactly
 * size bytes, so a read past it is caught. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "broker/serve/request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_accepted(const mb_serve_request *r)
{
    if (r->kind == MB_SERVE_KIND_CHAT) {
        if (r->n_messages == 0 || r->n_messages > MB_SERVE_MAX_MESSAGES || !r->messages) abort();
        for (size_t i = 0; i < r->n_messages; i++) {
            const char *role = r->messages[i].role;
            if (!r->messages[i].content || (strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant")))
                abort();
        }
    } else if (!r->prompt) {
        abort();
    }
    if (r->n_stop > MB_SERVE_MAX_STOPS) abort();
    for (size_t i = 0; i < r->n_stop; i++) {
        size_t n = strlen(r->stop[i]);
        if (n == 0 || n > MB_SERVE_MAX_STOP_BYTES) abort();
    }
    if ((r->given & MB_SERVE_GIVEN_MAX_TOKENS) && (r->max_tokens < 1 || r->max_tokens > MB_SERVE_MAX_TOKENS)) abort();
    if ((r->given & MB_SERVE_GIVEN_TEMPERATURE) && !(r->temperature >= 0 && r->temperature <= 2)) abort();
    if ((r->given & MB_SERVE_GIVEN_TOP_P) && !(r->top_p >= 0 && r->top_p <= 1)) abort();
    if ((r->given & MB_SERVE_GIVEN_MIN_P) && !(r->min_p >= 0 && r->min_p <= 1)) abort();
    if ((r->given & MB_SERVE_GIVEN_REPEAT_PENALTY) && !(r->repeat_penalty >= 0.01 && r->repeat_penalty <= 100))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    for (int kind = MB_SERVE_KIND_CHAT; kind <= MB_SERVE_KIND_COMPLETION; kind++) {
        mb_serve_request r;
        mb_serve_error err;
        mb_status st = mb_serve_request_parse((mb_serve_kind)kind, (const char *)data, size, &r, &err);
        if (st == MB_STATUS_OK) {
            check_accepted(&r);
            mb_serve_request_free(&r);
        } else if (err.message[0] == '\0' || r.messages || r.prompt || r.n_stop) {
            abort(); /* a refusal says why and leaves nothing allocated */
        }
    }
    return 0;
}
