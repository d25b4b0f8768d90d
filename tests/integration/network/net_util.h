/* Helpers for the network tests: a coordinator's probe (HELLO, one expert
 * loaded inline, one request computed, SHUTDOWN) through the real link code,
 * a bare protocol client, a raw TCP connection, and a moe-broker run. */
#ifndef MB_TESTS_INTEGRATION_NET_UTIL_H
#define MB_TESTS_INTEGRATION_NET_UTIL_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#include "broker/link.h"
#include "protocol/message.h"
#include "tests/integration/worker_util.h"
#include "tests/testutil.h"

#define NT_D 4 /* the probe's expert: d_model = d_ff = 4, f32 */

/* Encodes a LOAD_EXPERT of a d x d expert, every weight w, into buf. */
static inline size_t nt_load_msg(void *buf, size_t cap, uint64_t tag, uint32_t layer, uint32_t slot, uint32_t d,
                                 float w)
{
    static float m[3][64 * 64];
    for (uint32_t i = 0; i < d * d; i++)
        m[0][i] = m[1][i] = m[2][i] = w;
    mb_proto_load_expert le;
    memset(&le, 0, sizeof le);
    le.layer = layer;
    le.slot = slot;
    le.d_model = le.d_ff = d;
    le.wdtype[0] = le.wdtype[1] = le.wdtype[2] = MB_DTYPE_F32;
    le.source = MB_WEIGHTS_INLINE;
    for (int i = 0; i < 3; i++) {
        le.bytes[i] = (uint64_t)d * d * sizeof(float);
        le.data[i] = m[i];
    }
    size_t len = 0;
    REQUIRE(mb_proto_encode_load_expert(buf, cap, tag, &le, &len) == MB_STATUS_OK);
    return len;
}

/* Encodes an EXPERT_REQ: one token of ones on slot, layer 0. */
static inline size_t nt_req_msg(void *buf, size_t cap, uint64_t tag, uint32_t slot)
{
    size_t bytes = 0;
    REQUIRE(mb_proto_expert_req_size(1, NT_D, MB_DTYPE_F32, 1, &bytes) == MB_STATUS_OK && bytes <= cap);
    mb_proto_expert_req_writer wr;
    REQUIRE(mb_proto_encode_expert_req(buf, bytes, tag, 0, 0, 1, NT_D, MB_DTYPE_F32, 1, &wr) == MB_STATUS_OK);
    wr.pair_counts[0] = 1;
    wr.pairs[0].slot = slot;
    wr.pairs[0].gate = 1.0f;
    for (int i = 0; i < NT_D; i++)
        ((float *)wr.act)[i] = 1.0f;
    return wr.bytes;
}

/* A coordinator's session through the link code: HELLO, LOAD_EXPERT layer
 * 0 slot 0, one EXPERT_REQ on it, SHUTDOWN. Returns the first failure
 * (err says which step), OK when the worker served it all. */
static inline mb_status nt_probe(const char *endpoint, const char *server_key, const char *secret, char *err,
                                 size_t err_cap)
{
    static unsigned char msg[8192] __attribute__((aligned(64)));
    mb_link_spec spec = {.endpoint = endpoint, .weight = 1, .curve_server_key_file = server_key,
                         .curve_secret_file = secret};
    mb_link l;
    mb_status st = mb_link_connect(&spec, 0, 5000000000LL, &l, err, err_cap);
    if (st != MB_STATUS_OK) return st;
    size_t len = nt_load_msg(msg, sizeof msg, l.next_tag++, 0, 0, NT_D, 0.25f);
    st = mb_link_call(&l, msg, len, 5000000000LL, err, err_cap);
    if (st == MB_STATUS_OK) {
        len = nt_req_msg(msg, sizeof msg, l.next_tag++, 0);
        st = mb_link_call(&l, msg, len, 5000000000LL, err, err_cap);
    }
    mb_link_close(&l);
    return st;
}

/* A bare client: connects (opt may be NULL) and returns the transport. */
static inline void nt_client(const char *endpoint, const mb_zmq_options *opt, mb_transport *t)
{
    REQUIRE(mb_zmq_transport_connect(endpoint, opt, t) == MB_STATUS_OK);
}

/* Sends msg and waits up to timeout_ns for a reply with its tag: returns
 * the reply's header status (and its opcode in *op), or the transport's
 * failure (TIMEOUT when nothing came, PEER_DEAD when the worker hung up). */
static inline mb_status nt_call(mb_transport *t, const void *msg, size_t len, int64_t timeout_ns, int *op)
{
    mb_proto_header req;
    REQUIRE(mb_proto_decode_header(msg, len, &req) == MB_STATUS_OK);
    mb_status st = mb_transport_send_copy(t, msg, len, timeout_ns);
    if (st != MB_STATUS_OK) return st;
    int64_t deadline = (int64_t)mb_now_ns() + timeout_ns;
    for (;;) {
        int64_t left = deadline - (int64_t)mb_now_ns();
        if (left <= 0) return MB_STATUS_TIMEOUT;
        const void *rep = NULL;
        size_t rlen = 0;
        st = mb_transport_recv(t, left, &rep, &rlen);
        if (st != MB_STATUS_OK) return st;
        mb_proto_header h;
        mb_status dst = mb_proto_decode_header(rep, rlen, &h);
        mb_transport_recv_release(t);
        if (dst != MB_STATUS_OK) return dst;
        if (h.tag != req.tag) continue;
        if (op) *op = h.opcode;
        return (mb_status)h.status;
    }
}

static inline size_t nt_empty_msg(void *buf, mb_proto_opcode op, uint64_t tag)
{
    size_t len = 0;
    REQUIRE(mb_proto_encode_empty(buf, MB_PROTO_HEADER_BYTES, op, tag, MB_STATUS_OK, &len) == MB_STATUS_OK);
    return len;
}

static inline size_t nt_hello_msg(void *buf, size_t cap, uint64_t tag)
{
    size_t len = 0;
    REQUIRE(mb_proto_encode_hello(buf, cap, tag, &len) == MB_STATUS_OK);
    return len;
}

/* A bare session: connects to endpoint and says HELLO, retrying while the
 * worker winds down a previous session; stops the test when none opens. */
static inline void nt_open_session(const char *endpoint, mb_transport *t)
{
    unsigned char hello[256] __attribute__((aligned(64)));
    for (int attempt = 0; attempt < 50; attempt++) {
        nt_client(endpoint, NULL, t);
        int op = 0;
        mb_status st = nt_call(t, hello, nt_hello_msg(hello, sizeof hello, 1), 1000000000LL, &op);
        if (st == MB_STATUS_OK && op == MB_OP_HELLO_REPLY) return;
        mb_transport_destroy(t);
        usleep(100000);
    }
    REQUIRE(!"no session opened");
}

/* A raw TCP connection to a tcp://127.0.0.1:PORT endpoint, retried for 3 s
 * (between sessions the worker closes its socket and binds again); -1 on
 * failure. */
static inline int nt_tcp_connect(const char *endpoint)
{
    const char *colon = strrchr(endpoint, ':');
    if (!colon) return -1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    for (int attempt = 0; attempt < 300; attempt++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return -1;
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) return fd;
        close(fd);
        usleep(10000);
    }
    return -1;
}

static inline void nt_write_all(int fd, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    while (len) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n <= 0) return; /* the worker hung up: fine */
        p += n;
        len -= (size_t)n;
    }
}

/* 1 while pid has not exited. */
static inline int nt_alive(pid_t pid)
{
    return waitpid(pid, NULL, WNOHANG) == 0;
}

#endif
