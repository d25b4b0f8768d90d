/* The coordinator's run options: what the user asked for on the command line
 * and in MB_* environment variables, parsed and range-checked into one plain
 * struct. A flag always beats its environment variable; invalid values are
 * rejected with a message naming the flag or variable and the valid values. */
#ifndef MB_BROKER_OPTIONS_H
#define MB_BROKER_OPTIONS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "protocol/dtype.h"
#include "protocol/status.h"

/* How expert work travels to a worker (the dispatcher's choice). */
typedef enum {
    MB_IPC_MODE_AUTO = 0,    /* the dispatcher picks per step */
    MB_IPC_MODE_BATCHED = 1, /* one message per worker per layer */
    MB_IPC_MODE_STREAM = 2,  /* slices of --stream-slice tokens, pipelined */
} mb_ipc_mode;

/* Which transport reaches local workers. */
typedef enum {
    MB_TRANSPORT_AUTO = 0, /* shared memory on this host, ZeroMQ otherwise */
    MB_TRANSPORT_SHM = 1,
    MB_TRANSPORT_ZMQ = 2,
} mb_transport_kind;

/* What a lost worker does to the run. */
typedef enum {
    MB_ON_WORKER_LOSS_FALLBACK = 0, /* its experts move elsewhere; the run goes on */
    MB_ON_WORKER_LOSS_ABORT = 1,    /* the run fails */
} mb_on_worker_loss;

/* Every knob, for mb_options_given(). The order is the order of --help. */
typedef enum {
    MB_OPTION_MODEL = 0,
    MB_OPTION_WORKER,
    MB_OPTION_CURVE_SECRET,
    MB_OPTION_IPC_MODE,
    MB_OPTION_TRANSPORT,
    MB_OPTION_BATCH_CAPACITY,
    MB_OPTION_STREAM_SLICE,
    MB_OPTION_PAYLOAD_DTYPE,
    MB_OPTION_SHM_SPIN,
    MB_OPTION_THREADS,
    MB_OPTION_DEVICE,
    MB_OPTION_LOCAL_EXPERTS,
    MB_OPTION_LOCAL_BUDGET,
    MB_OPTION_ON_WORKER_LOSS,
    MB_OPTION_REPLICAS,
    MB_OPTION_HOTNESS,
    MB_OPTION_WORKER_TIMEOUT,
    MB_OPTION_CONNECT_TIMEOUT,
    MB_OPTION_INPUT_IDS,
    MB_OPTION_PROMPT,
    MB_OPTION_CHAT,
    MB_OPTION_SYSTEM,
    MB_OPTION_TOKENIZER,
    MB_OPTION_PREFILL,
    MB_OPTION_PROMPT_LEN,
    MB_OPTION_SEED,
    MB_OPTION_GEN,
    MB_OPTION_TEMPERATURE,
    MB_OPTION_TOP_K,
    MB_OPTION_TOP_P,
    MB_OPTION_MIN_P,
    MB_OPTION_REPEAT_PENALTY,
    MB_OPTION_REPEAT_LAST_N,
    MB_OPTION_CHUNK,
    MB_OPTION_MAX_CTX,
    MB_OPTION_HOST,
    MB_OPTION_PORT,
    MB_OPTION_API_KEY,
    MB_OPTION_QUEUE_MAX,
    MB_OPTION_MAX_BODY,
    MB_OPTION_LOGITS_OUT,
    MB_OPTION_STATS,
    MB_OPTION_STATS_JSON,
    MB_OPTION_STATS_LAYERS,
    MB_OPTION_STEP_TIMING,
    MB_OPTION_QUIET,
    MB_OPTION_COUNT_
} mb_option_id;

/* The subcommand: `moe-broker [run]`, `moe-broker chat` or `moe-broker
 * serve` (tokenize and keygen have their own parsers). */
typedef enum {
    MB_COMMAND_RUN = 0,   /* one prompt (ids, random, --prompt or --chat), then exit */
    MB_COMMAND_CHAT = 1,  /* an interactive conversation on stdin/stdout */
    MB_COMMAND_SERVE = 2, /* an OpenAI-compatible HTTP server until a signal */
} mb_command;

/* Parsed options. Strings and arrays are owned by the struct (freed by
 * mb_options_free). Counts that the main program defaults from the model
 * (prefill, prompt_len, gen, max_ctx, local_experts, ...) hold the value shown
 * in --help unless mb_options_given() says the user set them. */
typedef struct {
    int help;        /* -h/--help seen: print usage, run nothing */
    int version;     /* --version seen: print the version, run nothing */
    mb_command command;
    char *model_dir; /* --model DIR; NULL = the embedded default */
    char **workers;  /* --worker SPEC, in order; see mb_worker_spec_parse */
    size_t n_workers;
    char *curve_secret; /* --curve-secret FILE: for workers given ,key=FILE; NULL = none */
    mb_ipc_mode ipc_mode;        /* default auto */
    mb_transport_kind transport; /* default auto */
    uint32_t batch_capacity;     /* tokens per batched message, 1..4096, default 1024 */
    uint32_t stream_slice;       /* tokens per stream slice, 1..4096, default 4 */
    mb_dtype payload_dtype;      /* activations on the wire, default f32 */
    uint32_t shm_spin_us;        /* shm: busy-wait before sleeping, 0..20000 us, default 30 */
    uint32_t threads;            /* coordinator threads, 0 = auto */
    char *device;                /* --device cpu|cuda[:N]; NULL = cpu */
    int cuda_device;             /* from device: the GPU the dense part runs on, -1 = CPU */
    uint32_t local_experts;      /* experts per layer run in-process, default 0 */
    uint64_t local_budget_bytes; /* memory for in-process experts, 0 = no limit */
    mb_on_worker_loss on_worker_loss; /* default fallback */
    uint32_t replicas;           /* homes per expert, 1..16, default 1 */
    char *hotness;               /* --hotness FILE: an earlier run's routing counts; NULL = none */
    uint32_t worker_timeout_ms;  /* heartbeat silence that loses a worker, default 1500 */
    uint32_t connect_timeout_ms; /* reaching a tcp/ipc worker at start, default 5000 */
    int32_t *input_ids;          /* --input-ids LIST|FILE; NULL when not given */
    size_t n_input_ids;
    char *prompt;           /* --prompt TEXT: raw text, no template; NULL = none */
    char *chat;             /* --chat TEXT: one user message through the chat template */
    char *system;           /* --system TEXT for --chat and chat; NULL = none */
    char *tokenizer;        /* --tokenizer PATH; NULL = the model folder */
    uint32_t prefill;       /* prompt tokens to prefill, default 0 (= all) */
    uint32_t prompt_len;    /* random prompt length; 0 = the main program's default */
    uint64_t seed;          /* random prompt and sampler seed, default 1 */
    uint32_t gen;           /* tokens to generate; see mb_options_given */
    double temperature;     /* 0 = greedy, default 0.8 */
    uint32_t top_k;         /* 0 = off, default 40 */
    double top_p;           /* 1 = off, default 0.95 */
    double min_p;           /* 0 = off, default 0.05 */
    double repeat_penalty;  /* 1 = off, default 1 */
    uint32_t repeat_last_n; /* tokens the penalty looks back over, default 64 */
    uint32_t chunk;         /* prefill chunk in tokens, 1..65536, default 512 */
    uint32_t max_ctx;       /* context limit, 0 = the model's */
    char *host;             /* serve: address to bind; NULL = 127.0.0.1 */
    uint32_t port;          /* serve: TCP port, 0 = any free one, default 8080 */
    char *api_key;          /* serve: the Bearer key every request but /health needs; NULL = none */
    uint32_t queue_max;     /* serve: requests that may wait, default 16 */
    uint64_t max_body_bytes; /* serve: largest request body, default 4 MiB */
    char *logits_out;       /* --logits-out PATH; NULL = none */
    int stats;              /* print the IPC statistics table at exit */
    char *stats_json;       /* --stats-json PATH; NULL = none */
    int stats_per_layer;    /* keep and report statistics per layer */
    char *step_timing;      /* --step-timing PATH: one JSON line per step */
    int quiet;              /* no progress or generated text on stdout */
    uint64_t given_mask;    /* bit (1 << mb_option_id): set by flag or env */
    uint64_t from_env_mask; /* bit (1 << mb_option_id): the value came from env */
} mb_options;

/* Fills *opt with the defaults documented above. Caller owns *opt; nothing is
 * allocated, so mb_options_free is optional afterwards. Cannot fail. */
void mb_options_init(mb_options *opt);

/* Parses argv (argv[0] the program, argv[1] optionally the subcommand "run",
 * the default, "chat" or "serve") and the MB_* environment into *out. Environment values are
 * read only for knobs no flag set, so an invalid variable shadowed by a flag
 * is not an error; an empty variable counts as unset. When -h/--help appears
 * anywhere before "--", returns MB_STATUS_OK with out->help set, defaults
 * elsewhere, and nothing else checked; --version likewise sets out->version.
 * Flags that exclude each other (--input-ids, --prompt, --chat, --prompt-len;
 * chat or serve with any of them) are refused here.
 * On success *out owns its strings (release with mb_options_free). On failure
 * *out is untouched and err (when err_cap > 0) holds one line such as
 * "moe-broker: invalid --ipc-mode 'fast' (valid: auto, batched, stream)".
 * Errors: MB_STATUS_CONFIG for any invalid flag, value or variable,
 * MB_STATUS_IO when an --input-ids file cannot be read, MB_STATUS_NOMEM,
 * MB_STATUS_INVALID_ARG for NULL argv/out. Uses getopt_long and getenv: not
 * thread-safe, call from the main thread before starting others. */
mb_status mb_options_parse(int argc, char **argv, mb_options *out, char *err, size_t err_cap);

/* Releases what mb_options_parse allocated and resets *opt to defaults.
 * Safe on an initialised or zeroed struct and to call twice. */
void mb_options_free(mb_options *opt);

/* 1 if the knob was set by a flag or an environment variable. */
int mb_options_given(const mb_options *opt, mb_option_id id);

/* Prints --help: every flag with its argument, environment variable, valid
 * values or range and default. */
void mb_options_usage(FILE *f);

/* Prints the same knobs as a Markdown table (flag, variable, values and
 * default): the README's "Knobs" table is this output, and a test keeps the
 * two equal. */
void mb_options_markdown(FILE *f);

/* "auto", "batched", "stream"; "?" for other values. */
const char *mb_ipc_mode_name(int mode);
/* "fallback", "abort"; "?" for other values. */
const char *mb_on_worker_loss_name(int policy);
/* "auto", "shm", "zmq"; "?" for other values. */
const char *mb_transport_kind_name(int kind);

/* One --worker SPEC, parsed. Grammar:
 *   BACKEND[:DEVICE][,KEY=VALUE]...   a worker process this host starts
 *   tcp://HOST:PORT[,KEY=VALUE]...    a running worker reached over ZeroMQ
 *   ipc:///PATH[,KEY=VALUE]...
 * BACKEND is cpu, cuda or vulkan; DEVICE is the NUMA node (cpu) or the GPU
 * index, 0..1023. KEYs: weight (share of the expert placement, > 0, default
 * 1), threads (worker threads, 0..1024, 0 = the worker decides; a remote
 * worker receives it as a request) and, for a running worker, key (the file
 * holding its CURVE public key: the connection is authenticated and
 * encrypted, with the coordinator's own --curve-secret). */
typedef enum {
    MB_WORKER_KIND_LOCAL = 0,  /* started by the coordinator on this host */
    MB_WORKER_KIND_REMOTE = 1, /* already running at endpoint */
} mb_worker_kind;

#define MB_WORKER_BACKEND_BYTES 16
#define MB_WORKER_ENDPOINT_BYTES 256

typedef struct {
    mb_worker_kind kind;
    char backend[MB_WORKER_BACKEND_BYTES];   /* "cpu", "cuda", "vulkan"; "" for remote */
    char endpoint[MB_WORKER_ENDPOINT_BYTES]; /* "tcp://h:p" / "ipc:///p"; "" for local */
    int device;                              /* -1 = not given (any node / device 0) */
    double weight;                           /* > 0, default 1 */
    uint32_t threads;                        /* 0 = the worker decides */
    char key_file[MB_WORKER_ENDPOINT_BYTES]; /* remote: CURVE public key file; "" = plain */
} mb_worker_spec;

/* Parses one SPEC into *out (written only on success). Errors:
 * MB_STATUS_CONFIG with a one-line reason in err (naming the spec and the
 * valid values), MB_STATUS_INVALID_ARG for NULL text/out. Cannot block. */
mb_status mb_worker_spec_parse(const char *text, mb_worker_spec *out, char *err, size_t err_cap);

#endif
