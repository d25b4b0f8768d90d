/* libFuzzer target for the worker's request handling: a sequence of
 * messages, queued on the in-process transport and served by mb_worker_serve
 * on a fresh CPU backend, as one session. The input is a list of records,
 * each a message the fuzzer writes byte by byte or one built from a few
 * fuzzer bytes (HELLO, LOAD_EXPERT inline or from a file in, outside or
 * escaping the model root, EXPERT_REQ, PING, SHUTDOWN), optionally with
 * bytes flipped, so whole malformed conversations are explored, not single
 * messages. Every sequence ends with SHUTDOWN. Checked: serving returns OK
 * (nothing a peer sends stops it), every reply is well-formed, and a refused
 * weight path never says more than NOT_FOUND. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backends/backend.h"
#include "backends/worker.h"
#include "protocol/inproc.h"
#include "protocol/message.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Replies wait in a 64-deep queue nobody reads while serving runs: at most
 * this many requests, plus the closing SHUTDOWN. */
#define FZ_MAX_MESSAGES 48
#define FZ_MAX_SLOTS 16
#define FZ_MSG_CAP 8192

/* A model root with a weight file, and paths around it. */
static char fz_root[256];
static const char *fz_paths[6];
static char fz_path_buf[6][320];

static void fz_write(const char *path, size_t bytes)
{
    FILE *f = fopen(path, "wb");
    if (!f) abort();
    for (size_t i = 0; i < bytes; i++)
        fputc((int)(i * 7 % 251), f);
    fclose(f);
}

static void fz_setup(void)
{
    if (fz_root[0]) return;
    char base[] = "/tmp/mb-fuzz-worker-XXXXXX";
    if (!mkdtemp(base)) abort();
    snprintf(fz_root, sizeof fz_root, "%s/root", base);
    if (mkdir(fz_root, 0700) != 0) abort();
    snprintf(fz_path_buf[0], sizeof fz_path_buf[0], "%s/w.bin", fz_root);
    fz_write(fz_path_buf[0], 4096);
    snprintf(fz_path_buf[1], sizeof fz_path_buf[1], "%s/outside.bin", base);
    fz_write(fz_path_buf[1], 4096);
    snprintf(fz_path_buf[2], sizeof fz_path_buf[2], "%s/escape", fz_root);
    if (symlink(fz_path_buf[1], fz_path_buf[2]) != 0) abort();
    snprintf(fz_path_buf[3], sizeof fz_path_buf[3], "%s/missing.bin", fz_root);
    snprintf(fz_path_buf[4], sizeof fz_path_buf[4], "%s/../outside.bin", fz_root);
    snprintf(fz_path_buf[5], sizeof fz_path_buf[5], "%s", fz_root);
    for (int i = 0; i < 6; i++)
        fz_paths[i] = fz_path_buf[i];
}

typedef struct {
    const uint8_t *p;
    size_t left;
} fz_in;

static uint32_t fz_u(fz_in *in, int n)
{
    uint32_t v = 0;
    for (int i = 0; i < n && in->left; i++, in->left--, in->p++)
        v |= (uint32_t)*in->p << (8 * i);
    return v;
}

/* Builds one message from the input into msg; returns its length, 0 when
 * nothing could be built. */
static size_t fz_build(fz_in *in, unsigned char *msg, uint64_t tag)
{
    unsigned kind = fz_u(in, 1) % 8;
    size_t len = 0;
    switch (kind) {
    case 0: { /* raw bytes */
        size_t n = fz_u(in, 2) % FZ_MSG_CAP;
        if (n > in->left) n = in->left;
        memcpy(msg, in->p, n);
        in->p += n;
        in->left -= n;
        return n;
    }
    case 1:
        mb_proto_encode_hello(msg, FZ_MSG_CAP, tag, &len);
        return len;
    case 2:
    case 3: { /* LOAD_EXPERT, inline or from a file */
        static float w[3][64];
        mb_proto_load_expert m;
        memset(&m, 0, sizeof m);
        m.layer = fz_u(in, 1) % 4;
        m.expert_id = fz_u(in, 1);
        m.slot = fz_u(in, 1) % (FZ_MAX_SLOTS + 2);
        m.d_model = 1 + fz_u(in, 1) % 8;
        m.d_ff = 1 + fz_u(in, 1) % 8;
        /* One element dtype for all three, or with the top bit another
         * for down (a mix the backend refuses). */
        const uint32_t dt = fz_u(in, 1);
        m.wdtype[0] = m.wdtype[1] = (mb_dtype)(dt % 3);
        m.wdtype[2] = (dt & 0x80) ? (mb_dtype)((dt >> 3) % 3) : m.wdtype[0];
        for (int i = 0; i < 3; i++)
            m.bytes[i] = (uint64_t)m.d_model * m.d_ff * mb_dtype_size(m.wdtype[i]);
        if (kind == 2) {
            m.source = MB_WEIGHTS_INLINE;
            for (int i = 0; i < 3; i++)
                m.data[i] = w[i];
        } else {
            m.source = MB_WEIGHTS_FILE;
            m.path = fz_paths[fz_u(in, 1) % 6];
            m.path_len = (uint32_t)strlen(m.path);
            for (int i = 0; i < 3; i++)
                m.offset[i] = fz_u(in, 2) % 5000;
        }
        if (mb_proto_encode_load_expert(msg, FZ_MSG_CAP, tag, &m, &len) != MB_STATUS_OK) return 0;
        return len;
    }
    case 4: { /* EXPERT_REQ */
        uint32_t n_tok = 1 + fz_u(in, 1) % 4, d_model = 1 + fz_u(in, 1) % 8, n_pairs = fz_u(in, 1) % 6;
        mb_dtype dt = (mb_dtype)(fz_u(in, 1) % 3);
        size_t bytes = 0;
        if (mb_proto_expert_req_size(n_tok, d_model, dt, n_pairs, &bytes) != MB_STATUS_OK || bytes > FZ_MSG_CAP)
            return 0;
        mb_proto_expert_req_writer wr;
        if (mb_proto_encode_expert_req(msg, bytes, tag, 0, fz_u(in, 1) % 4, n_tok, d_model, dt, n_pairs, &wr) !=
            MB_STATUS_OK)
            return 0;
        /* Counts that sum to n_pairs, slots the fuzzer picks. */
        memset(wr.pair_counts, 0, n_tok * sizeof *wr.pair_counts);
        for (uint32_t i = 0; i < n_pairs; i++) {
            wr.pair_counts[i % n_tok]++;
            wr.pairs[i].slot = fz_u(in, 1) % (FZ_MAX_SLOTS + 2);
            wr.pairs[i].gate = 0.5f;
        }
        memset(wr.act, 0, (size_t)n_tok * d_model * mb_dtype_size(dt));
        return wr.bytes;
    }
    case 5:
        mb_proto_encode_empty(msg, FZ_MSG_CAP, MB_OP_PING, tag, MB_STATUS_OK, &len);
        return len;
    case 6:
        mb_proto_encode_empty(msg, FZ_MSG_CAP, MB_OP_SHUTDOWN, tag, MB_STATUS_OK, &len);
        return len;
    default: /* a reply opcode where a request belongs */
        mb_proto_encode_empty(msg, FZ_MSG_CAP, MB_OP_STATUS, tag, MB_STATUS_OK, &len);
        return len;
    }
}

/* Request i's tag: every byte i + 1, so one flipped byte never turns a tag
 * into another request's. */
static uint64_t fz_tag(unsigned i)
{
    return (uint64_t)(i + 1) * 0x0101010101010101ull;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fz_setup();
    static unsigned char msg[FZ_MSG_CAP] __attribute__((aligned(64)));
    mb_backend_cpu_options copt = {.n_threads = 1, .numa = MB_NUMA_DEFAULT};
    mb_backend_config bcfg = {.device = -1, .max_slots = FZ_MAX_SLOTS, .options = &copt};
    mb_backend *b = NULL;
    if (mb_backend_open(mb_backend_find("cpu"), &bcfg, &b) != MB_STATUS_OK) abort();
    mb_transport caller, handler;
    if (mb_inproc_transport_create(&caller, &handler) != MB_STATUS_OK) abort();

    /* What each tag asked, to check the replies against. */
    int path_index[FZ_MAX_MESSAGES]; /* LOAD_EXPERT from fz_paths[i], else -1 */
    uint64_t sent_tag[FZ_MAX_MESSAGES]; /* after any corruption */
    fz_in in = {data, size};
    unsigned n = 0;
    while (in.left && n < FZ_MAX_MESSAGES) {
        const uint8_t *start = in.p;
        memset(msg, 0, sizeof msg);
        size_t len = fz_build(&in, msg, fz_tag(n));
        if (in.p == start) break;
        /* Optionally corrupt one byte of what was built. */
        if (len && in.left >= 3 && (*in.p & 0x80)) {
            in.p++, in.left--;
            size_t at = fz_u(&in, 2) % len;
            msg[at] ^= (unsigned char)(1 + fz_u(&in, 1) % 255);
        } else if (in.left) {
            in.p++, in.left--;
        }
        if (len < MB_PROTO_HEADER_BYTES) len = MB_PROTO_HEADER_BYTES; /* zeros: a bad magic */
        if (mb_transport_send_copy(&caller, msg, len, 0) != MB_STATUS_OK) break;
        mb_proto_load_expert le;
        mb_proto_limits lim = {.max_slots = FZ_MAX_SLOTS};
        path_index[n] = -1;
        memcpy(&sent_tag[n], msg + 8, sizeof sent_tag[n]);
        if (mb_proto_decode_load_expert(msg, len, &lim, &le) == MB_STATUS_OK && le.source == MB_WEIGHTS_FILE) {
            for (int i = 0; i < 6; i++)
                if (le.path_len == strlen(fz_paths[i]) && !memcmp(le.path, fz_paths[i], le.path_len)) path_index[n] = i;
        }
        n++;
    }
    size_t len = 0;
    mb_proto_encode_empty(msg, sizeof msg, MB_OP_SHUTDOWN, 1000, MB_STATUS_OK, &len);
    if (mb_transport_send_copy(&caller, msg, len, 0) != MB_STATUS_OK) abort();

    const char *roots[1] = {fz_root};
    mb_worker_config wc = {.backend = b, .transport = &handler, .model_roots = roots, .n_model_roots = 1,
                           .max_memory_bytes = 2048, .name = "fuzz"};
    if (mb_worker_serve(&wc) != MB_STATUS_OK) abort();

    /* Every reply is well-formed. */
    unsigned n_replies = 0;
    for (;;) {
        const void *rep = NULL;
        size_t rlen = 0;
        mb_status st = mb_transport_recv(&caller, 0, &rep, &rlen);
        if (st == MB_STATUS_TIMEOUT) break;
        if (st != MB_STATUS_OK) abort();
        mb_proto_header h;
        if (mb_proto_decode_header(rep, rlen, &h) != MB_STATUS_OK || !mb_proto_opcode_is_reply(h.opcode)) abort();
        if (h.opcode == MB_OP_EXPERT_REPLY) {
            mb_proto_expert_reply r;
            if (mb_proto_decode_expert_reply(rep, rlen, &r) != MB_STATUS_OK) abort();
        } else if (h.opcode == MB_OP_HELLO_REPLY && h.status == MB_STATUS_OK) {
            mb_proto_hello_reply r;
            if (mb_proto_decode_hello_reply(rep, rlen, &r) != MB_STATUS_OK) abort();
        }
        /* The CPU backend answers in order, one reply per request. A file
         * the worker may not read (outside the root, escaping it, missing,
         * not a file) is NOT_FOUND whatever the reason; only the memory cap,
         * checked first, may answer otherwise. */
        if (n_replies < n && path_index[n_replies] > 0) {
            if (h.tag != sent_tag[n_replies]) abort();
            if (h.status != MB_STATUS_NOT_FOUND && h.status != MB_STATUS_NOMEM) abort();
        }
        n_replies++;
        mb_transport_recv_release(&caller);
    }
    mb_transport_destroy(&caller);
    mb_backend_close(b);
    return 0;
}
