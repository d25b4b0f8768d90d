/* Truncation at every byte: each prefix of a valid message, in a buffer of
 * exactly the prefix's length (ASan catches any read past it), is rejected
 * with TRUNCATED by every decoder; and a prefix whose header is patched to
 * claim exactly that length is still never OK. */
#include <stdint.h>
#include <string.h>

#include "protocol/message.h"
#include "tests/testutil.h"
#include "tests/unit/message/message_fixtures.h"

static const mb_proto_limits limits = {.max_slots = 64, .max_tokens = 0, .max_d_model = 0};

/* Runs every message decoder (and, if with_header, the header decoder) on p
 * and counts how many returned want. */
static int decoders_returning(const void *p, size_t len, mb_status want, int with_header)
{
    mb_proto_header h;
    mb_proto_expert_req req;
    mb_proto_expert_reply rep;
    mb_proto_hello_reply hr;
    mb_proto_load_expert le;
    uint32_t version;
    int n = 0;
    if (with_header) n += mb_proto_decode_header(p, len, &h) == want;
    n += mb_proto_decode_expert_req(p, len, &limits, &req) == want;
    n += mb_proto_decode_expert_reply(p, len, &rep) == want;
    n += mb_proto_decode_hello(p, len, &version) == want;
    n += mb_proto_decode_hello_reply(p, len, &hr) == want;
    n += mb_proto_decode_load_expert(p, len, &limits, &le) == want;
    n += mb_proto_decode_empty(p, len, &h) == want;
    return n;
}

static void truncate_every_byte(const char *name, const fx_msg *m)
{
    REQUIRE(fx_decode_any(m->p, m->len, &limits) == MB_STATUS_OK);
    int bad_plain = 0, bad_patched = 0;
    for (size_t k = 0; k < m->len; k++) {
        fx_msg cut = fx_msg_copy(m->p, k);
        mb_status st = fx_decode_any(cut.p, k, &limits);
        if (st != MB_STATUS_TRUNCATED ||
            decoders_returning(cut.p, k, MB_STATUS_TRUNCATED, 1) != 7) {
            if (!bad_plain++) fprintf(stderr, "%s cut at %zu: %s\n", name, k, mb_status_name(st));
        }
        /* The same prefix with a header that agrees with it. */
        if (k >= MB_PROTO_HEADER_BYTES && (k - MB_PROTO_HEADER_BYTES) % MB_PROTO_ALIGN == 0) {
            fx_put64(&cut, FX_H_BODY, k - MB_PROTO_HEADER_BYTES);
            st = fx_decode_any(cut.p, k, &limits);
            if (st == MB_STATUS_OK || decoders_returning(cut.p, k, MB_STATUS_OK, 0) != 0) {
                if (!bad_patched++) fprintf(stderr, "%s patched cut at %zu decodes OK\n", name, k);
            }
        }
        fx_msg_free(&cut);
    }
    CHECK_MSG(bad_plain == 0, "%s: %d cuts not rejected as TRUNCATED", name, bad_plain);
    CHECK_MSG(bad_patched == 0, "%s: %d self-consistent cuts accepted", name, bad_patched);
}

int main(void)
{
    fx_expert_req src;
    fx_msg m = fx_build_expert_req(&src, 5, 16, MB_DTYPE_F16, limits.max_slots, 1);
    truncate_every_byte("expert_req f16 5x16", &m);
    fx_msg_free(&m);
    fx_expert_req_free(&src);
    m = fx_build_expert_req(&src, 3, 5, MB_DTYPE_F32, limits.max_slots, 2);
    truncate_every_byte("expert_req f32 3x5", &m);
    fx_msg_free(&m);
    fx_expert_req_free(&src);

    m = fx_build_expert_reply(3, 5, MB_DTYPE_BF16, 3, NULL);
    truncate_every_byte("expert_reply bf16 3x5", &m);
    fx_msg_free(&m);

    m = fx_build_hello(4);
    truncate_every_byte("hello", &m);
    fx_msg_free(&m);

    mb_proto_hello_reply r = fx_hello_reply_value();
    m = fx_build_hello_reply(&r, 5);
    truncate_every_byte("hello_reply", &m);
    fx_msg_free(&m);

    fx_load_expert f;
    m = fx_build_load_expert_inline(&f, 3, 5, MB_DTYPE_F16, 9, 6);
    truncate_every_byte("load_expert inline", &m);
    fx_msg_free(&m);
    fx_load_expert_free(&f);

    mb_proto_load_expert lf;
    m = fx_build_load_expert_file(&lf, "/models/mixtral/model-00003-of-00019.safetensors", 4096,
                                  14336, MB_DTYPE_BF16, 12);
    truncate_every_byte("load_expert file", &m);
    fx_msg_free(&m);

    m = fx_build_empty(MB_OP_PING, 7, MB_STATUS_OK);
    truncate_every_byte("ping", &m);
    fx_msg_free(&m);
    return mb_test_finish("message_truncate");
}
