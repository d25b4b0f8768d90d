/* A link is the coordinator's connection to one backend: a worker process it
 * spawned on this host (shared memory or ZeroMQ ipc), a running worker it
 * connects to (ZeroMQ tcp/ipc), or an in-process backend (no IPC). All three
 * speak the same protocol over a transport, so dispatch treats them alike. */
#ifndef MB_BROKER_LINK_H
#define MB_BROKER_LINK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "backends/backend.h"
#include "protocol/message.h"
#include "protocol/transport.h"

typedef enum {
    MB_LINK_SPAWNED_SHM = 0, /* child process, shared-memory ring */
    MB_LINK_SPAWNED_ZMQ = 1, /* child process, ZeroMQ ipc:// */
    MB_LINK_REMOTE = 2,      /* running worker, ZeroMQ tcp:// or ipc:// */
    MB_LINK_INPROC = 3,      /* backend inside the coordinator */
} mb_link_kind;

typedef struct mb_link {
    char name[96];              /* "w0 cpu:0 shm" for messages and statistics */
    mb_link_kind kind;
    mb_transport transport;     /* caller end */
    pid_t pid;                  /* spawned worker, 0 otherwise */
    char ipc_path[256];         /* spawned zmq worker's socket file, "" otherwise */
    mb_proto_hello_reply caps;  /* from the worker's HELLO_REPLY */
    double weight;              /* placement share */
    int same_host;              /* the worker can map the checkpoint's files */
    uint64_t next_tag;
    int lost;                   /* dropped after a failure (mb_link_drop); no transport */
    char endpoint[256];         /* REMOTE: where it was reached, for a reconnect */
    int64_t worker_timeout_ns;  /* liveness bound the transport enforces */
    /* REMOTE over CURVE: this coordinator's secret key and the worker's
     * public key (z85), for every (re)connect; "" = plain. */
    char curve_secret_key[MB_ZMQ_KEY_CHARS + 1];
    char curve_server_key[MB_ZMQ_KEY_CHARS + 1];
    /* Spawned: how the worker was started, kept through mb_link_drop for
     * mb_link_respawn; roots are owned copies (freed by mb_link_close). */
    struct {
        char backend[32];
        int device, index;
        uint32_t threads, max_slots, n_roots;
        int64_t shm_spin_ns;
        char **roots;
    } spawn;
    /* In-process only. */
    mb_backend *backend;
    struct mb_worker *worker;
    mb_transport handler_end;
    void *worker_cfg;
} mb_link;

/* What to start or reach. */
typedef struct {
    const char *backend;   /* "cpu", "cuda", "vulkan" (spawned / in-process) */
    int device;            /* NUMA node or GPU index, -1 any */
    uint32_t threads;      /* 0: the worker decides */
    const char *endpoint;  /* REMOTE: "tcp://h:p" / "ipc:///p" */
    double weight;
    uint32_t max_slots;    /* slots to ask for (spawned / in-process) */
    int64_t worker_timeout_ns;  /* a worker whose heartbeat stops this long is lost; 0: 1.5 s */
    int64_t shm_spin_ns;        /* spawned shm: busy-wait before sleeping; 0: the default, < 0: never */
    int64_t connect_timeout_ns; /* REMOTE: reaching it and its HELLO; 0: the caller's timeout */
    /* Spawned: the folders the worker may read weight files from (its
     * --model-root), realpaths; none: weights travel inline. */
    const char *const *model_roots;
    uint32_t n_model_roots;
    /* REMOTE over CURVE: the worker's public key file (,key=FILE) and this
     * coordinator's secret key file (--curve-secret); NULL: plain. */
    const char *curve_server_key_file;
    const char *curve_secret_file;
} mb_link_spec;

/* Liveness default: a frozen worker is noticed within about this long (plus
 * one heartbeat), a busy one never. */
#define MB_LINK_WORKER_TIMEOUT_NS 1500000000LL

/* Starts a local moe-worker (MB_WORKER_BIN, else beside this executable)
 * over shared memory (MB_LINK_SPAWNED_SHM) or ZeroMQ ipc
 * (MB_LINK_SPAWNED_ZMQ) and completes the HELLO handshake. Blocking (up to
 * timeout_ns). On failure writes a message into err and cleans up. */
mb_status mb_link_spawn(const mb_link_spec *spec, mb_link_kind kind, int index, int64_t timeout_ns, mb_link *out,
                        char *err, size_t err_cap);

/* Connects to a running worker and completes the handshake. Before any
 * ZeroMQ traffic the endpoint is probed (name resolved, a TCP or unix
 * connect), so a host that cannot be resolved, a refused port, a missing
 * socket file or silence past connect_timeout_ns (else timeout_ns) fails at
 * once with a message saying which (NOT_FOUND, PEER_DEAD, TIMEOUT). */
mb_status mb_link_connect(const mb_link_spec *spec, int index, int64_t timeout_ns, mb_link *out, char *err,
                          size_t err_cap);

/* Opens a backend inside this process behind the in-process transport. */
mb_status mb_link_open_inproc(const mb_link_spec *spec, int index, mb_link *out, char *err, size_t err_cap);

/* Sends a message built in msg (len bytes) and waits for its reply with the
 * same tag; control traffic only (not on the hot path). The reply's header
 * status is returned; a PEER_DEAD or TIMEOUT names the worker in err. */
mb_status mb_link_call(mb_link *l, const void *msg, size_t len, int64_t timeout_ns, char *err, size_t err_cap);

/* Drops a link that failed mid-run: kills a spawned worker (SIGKILL also
 * ends a stopped one) and reaps it, closes the transport and removes a
 * socket file; keeps name, caps and endpoint for messages and a reconnect.
 * Writes how the worker ended ("killed by signal 9", "stopped answering")
 * into why. Never blocks for long (a reap of at most 1 s). */
void mb_link_drop(mb_link *l, char *why, size_t why_cap);

/* Reconnects a dropped REMOTE link and redoes the handshake within
 * timeout_ns; on success the link is usable again (and empty: it holds no
 * experts). The caller reloads what it should hold. */
mb_status mb_link_reconnect(mb_link *l, int64_t timeout_ns, char *err, size_t err_cap);

/* Starts a dropped spawned link's worker again as it was first started
 * (same backend, threads, slots, roots, transport) and redoes the
 * handshake within timeout_ns; on success the link is usable again and
 * empty, as after mb_link_reconnect. On failure it stays dropped. */
mb_status mb_link_respawn(mb_link *l, int64_t timeout_ns, char *err, size_t err_cap);

/* Asks the worker to stop, waits briefly, then kills it if needed; frees
 * everything. Safe on a zeroed link. */
void mb_link_close(mb_link *l);

/* Monotonic nanoseconds. */
uint64_t mb_now_ns(void);

#endif
