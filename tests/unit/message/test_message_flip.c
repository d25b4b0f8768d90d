/* Random byte flips on valid messages of every kind never crash a decoder:
 * each mutant, in an exactly sized buffer, decodes to OK or to an error, and
 * passes the fuzz target's properties (header agreement, views in bounds,
 * canonical re-encoding; see tests/fuzz/fuzz_decode.c, linked in). */
#include <stdint.h>
#include <string.h>

#include "protocol/message.h"
#include "tests/testutil.h"
#include "tests/unit/message/message_fixtures.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const mb_proto_limits limits = {.max_slots = 64, .max_tokens = 0, .max_d_model = 0};

enum { ITERS_PER_MESSAGE = 10000 };

/* Flips 1..4 bytes of m into mutant, chosen among bit flips and values that
 * sit on boundaries (0, 0xff, 0x80, 0x7f). */
static void mutate(const fx_msg *m, unsigned char *mutant, uint64_t *seed)
{
    static const unsigned char edge[] = {0x00, 0xff, 0x80, 0x7f, 0x01, 0xfe};
    memcpy(mutant, m->p, m->len);
    int n = 1 + (int)(fx_rand(seed) % 4);
    for (int i = 0; i < n; i++) {
        uint64_t r = fx_rand(seed);
        /* Half the flips land in the first 128 bytes, where the fields are. */
        size_t limit = (r & 1) && m->len > 128 ? 128 : m->len;
        size_t at = (size_t)((r >> 8) % limit);
        if ((r >> 1) & 1)
            mutant[at] ^= (unsigned char)(1u << ((r >> 2) & 7));
        else
            mutant[at] = edge[(r >> 40) % sizeof edge];
    }
}

static void flip(const char *name, const fx_msg *m, uint64_t seed)
{
    unsigned char *mutant = malloc(m->len);
    long ok = 0, rejected = 0, bad_status = 0;
    for (int it = 0; it < ITERS_PER_MESSAGE; it++) {
        mutate(m, mutant, &seed);
        mb_status st = fx_decode_any(mutant, m->len, &limits);
        if (st == MB_STATUS_OK) {
            ok++;
        } else {
            rejected++;
            /* Reply decoders pass a peer's status through; anything else
             * must be a code this build defines. */
            uint16_t opcode;
            memcpy(&opcode, mutant + 6, sizeof opcode);
            if (!mb_proto_opcode_is_reply(opcode) && (int)st >= MB_STATUS_COUNT_) bad_status++;
        }
        LLVMFuzzerTestOneInput(mutant, m->len);
    }
    free(mutant);
    CHECK_MSG(bad_status == 0, "%s: %ld unknown statuses", name, bad_status);
    CHECK_MSG(rejected > 0, "%s: no mutant rejected", name);
    printf("%-22s %6ld ok, %6ld rejected of %d\n", name, ok, rejected, ITERS_PER_MESSAGE);
}

int main(void)
{
    fx_expert_req src;
    fx_msg m = fx_build_expert_req(&src, 5, 16, MB_DTYPE_F16, limits.max_slots, 1);
    flip("expert_req f16", &m, 11);
    fx_msg_free(&m);
    fx_expert_req_free(&src);
    m = fx_build_expert_req(&src, 3, 3, MB_DTYPE_F32, limits.max_slots, 2);
    flip("expert_req f32", &m, 12);
    fx_msg_free(&m);
    fx_expert_req_free(&src);

    m = fx_build_expert_reply(3, 5, MB_DTYPE_BF16, 3, NULL);
    flip("expert_reply", &m, 13);
    fx_msg_free(&m);
    m = fx_build_empty(MB_OP_EXPERT_REPLY, 3, MB_STATUS_BACKEND);
    flip("expert_reply error", &m, 14);
    fx_msg_free(&m);

    m = fx_build_hello(4);
    flip("hello", &m, 15);
    fx_msg_free(&m);
    mb_proto_hello_reply r = fx_hello_reply_value();
    m = fx_build_hello_reply(&r, 5);
    flip("hello_reply", &m, 16);
    fx_msg_free(&m);

    fx_load_expert f;
    m = fx_build_load_expert_inline(&f, 3, 5, MB_DTYPE_F16, 9, 6);
    flip("load_expert inline", &m, 17);
    fx_msg_free(&m);
    fx_load_expert_free(&f);
    mb_proto_load_expert lf;
    m = fx_build_load_expert_file(&lf, "/models/w.safetensors", 64, 128, MB_DTYPE_BF16, 12);
    flip("load_expert file", &m, 18);
    fx_msg_free(&m);

    static const mb_proto_opcode empties[] = {MB_OP_PING, MB_OP_PONG, MB_OP_SHUTDOWN, MB_OP_STATUS};
    for (size_t i = 0; i < sizeof empties / sizeof empties[0]; i++) {
        m = fx_build_empty(empties[i], 8, MB_STATUS_OK);
        flip("empty", &m, 19 + i);
        fx_msg_free(&m);
    }
    return mb_test_finish("message_flip");
}
