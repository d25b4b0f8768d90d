/* The run options as one table of knobs (flag, environment variable, kind,
 * range, help), and the parser and --help printer driven by it: adding a knob
 * is one table row plus its field in mb_options. Value parsers live in
 * options_values.c. */
#include "broker/options.h"
#include "broker/options_internal.h"

#include <getopt.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

typedef enum {
    KNOB_STRING,  /* char *, owned */
    KNOB_ENUM,    /* an int-sized enum, value = index in names */
    KNOB_U32,     /* uint32_t within [min, max] */
    KNOB_U64,     /* uint64_t within [min, max] */
    KNOB_BOOL,    /* int 0/1; the flag takes no value, --no-FLAG clears */
    KNOB_BYTES,   /* uint64_t with K/M/G/T suffix */
    KNOB_IDS,     /* input_ids / n_input_ids */
    KNOB_WORKERS, /* workers / n_workers: repeatable flag, ';'-separated env */
} knob_kind;

typedef struct {
    const char *flag; /* long option without "--" */
    const char *neg;  /* KNOB_BOOL: the clearing flag, "no-..." */
    const char *env;  /* environment variable; NULL = none */
    knob_kind kind;
    size_t offset;            /* of the field in mb_options */
    uint64_t min, max;        /* KNOB_U32 / KNOB_U64 range */
    const char *const *names; /* KNOB_ENUM: NULL-terminated, index = value */
    const char *arg;          /* metavariable in --help */
    const char *dflt;         /* default for --help; NULL = print the initial value */
    const char *help;
} knob;

static const char *const ipc_mode_names[] = {"auto", "batched", "stream", NULL};
static const char *const transport_names[] = {"auto", "shm", "zmq", NULL};
static const char *const dtype_names[] = {"f32", "f16", "bf16", NULL};
static const char *const loss_names[] = {"fallback", "abort", NULL};

_Static_assert(MB_DTYPE_F32 == 0 && MB_DTYPE_F16 == 1 && MB_DTYPE_BF16 == 2,
               "dtype_names is indexed by mb_dtype");
_Static_assert(sizeof(mb_ipc_mode) == sizeof(int) && sizeof(mb_transport_kind) == sizeof(int) &&
                   sizeof(mb_dtype) == sizeof(int) && sizeof(mb_on_worker_loss) == sizeof(int),
               "KNOB_ENUM fields are stored as int");
_Static_assert(MB_OPTION_COUNT_ <= 64, "given_mask has one bit per knob");

#define OFF(field) offsetof(mb_options, field)
#define MAX_TOKENS (1u << 24)

static const knob knobs[MB_OPTION_COUNT_] = {
    [MB_OPTION_MODEL] = {"model", NULL, "MB_MODEL", KNOB_STRING, OFF(model_dir), 0, 0, NULL, "DIR",
                         "the embedded test model", "model directory (config.json, *.safetensors)"},
    [MB_OPTION_WORKER] = {"worker", NULL, "MB_WORKERS", KNOB_WORKERS, 0, 0, 0, NULL, "SPEC",
                          "none (experts run in-process)",
                          "add a worker (repeatable): cpu[:N], cuda[:N] or vulkan[:N] started\n"
                          "here (N: NUMA node or GPU), or a running one at tcp://HOST:PORT or\n"
                          "ipc:///PATH; then optionally ,weight=W ,threads=T. MB_WORKERS takes\n"
                          "specs separated by ';'"},
    [MB_OPTION_IPC_MODE] = {"ipc-mode", NULL, "MB_IPC_MODE", KNOB_ENUM, OFF(ipc_mode), 0, 0,
                            ipc_mode_names, "MODE", NULL,
                            "how expert work travels: one message per worker per layer (batched)\n"
                            "or pipelined slices (stream); auto picks per step"},
    [MB_OPTION_TRANSPORT] = {"transport", NULL, "MB_TRANSPORT", KNOB_ENUM, OFF(transport), 0, 0,
                             transport_names, "KIND", NULL,
                             "how local workers are reached: shared memory or ZeroMQ"},
    [MB_OPTION_BATCH_CAPACITY] = {"batch-capacity", NULL, "MB_BATCH_CAPACITY", KNOB_U32,
                                  OFF(batch_capacity), 1, 4096, NULL, "N", NULL,
                                  "most tokens in one batched message"},
    [MB_OPTION_STREAM_SLICE] = {"stream-slice", NULL, "MB_STREAM_SLICE", KNOB_U32,
                                OFF(stream_slice), 1, 4096, NULL, "N", NULL,
                                "tokens per slice in stream mode"},
    [MB_OPTION_PAYLOAD_DTYPE] = {"payload-dtype", NULL, "MB_PAYLOAD_DTYPE", KNOB_ENUM,
                                 OFF(payload_dtype), 0, 0, dtype_names, "DTYPE", NULL,
                                 "element type of activations sent to workers"},
    [MB_OPTION_THREADS] = {"threads", NULL, "MB_THREADS", KNOB_U32, OFF(threads), 0, 1024, NULL,
                           "N", "0 (auto)", "coordinator threads (attention, local experts)"},
    [MB_OPTION_LOCAL_EXPERTS] = {"local-experts", NULL, "MB_LOCAL_EXPERTS", KNOB_U32,
                                 OFF(local_experts), 0, 65535, NULL, "N", NULL,
                                 "experts per layer run in the coordinator process"},
    [MB_OPTION_LOCAL_BUDGET] = {"local-budget", NULL, "MB_LOCAL_BUDGET", KNOB_BYTES,
                                OFF(local_budget_bytes), 0, 0, NULL, "BYTES", "0 (no limit)",
                                "memory for in-process experts, K/M/G/T suffixes (powers of 1024)"},
    [MB_OPTION_ON_WORKER_LOSS] = {"on-worker-loss", NULL, "MB_ON_WORKER_LOSS", KNOB_ENUM,
                                  OFF(on_worker_loss), 0, 0, loss_names, "POLICY", NULL,
                                  "when a worker dies or stops answering: recompute its share on a\n"
                                  "replica or in-process and go on with the same tokens (fallback),\n"
                                  "or fail the run (abort)"},
    [MB_OPTION_REPLICAS] = {"replicas", NULL, "MB_REPLICAS", KNOB_U32, OFF(replicas), 1, 16, NULL,
                            "N", NULL,
                            "place each worker's experts on N workers where memory allows, so a\n"
                            "lost worker's share moves without reloading"},
    [MB_OPTION_WORKER_TIMEOUT] = {"worker-timeout", NULL, "MB_WORKER_TIMEOUT", KNOB_U32,
                                  OFF(worker_timeout_ms), 50, 3600000, NULL, "MS", NULL,
                                  "a worker whose heartbeat stops this long is lost (a busy one\n"
                                  "keeps beating)"},
    [MB_OPTION_CONNECT_TIMEOUT] = {"connect-timeout", NULL, "MB_CONNECT_TIMEOUT", KNOB_U32,
                                   OFF(connect_timeout_ms), 1, 3600000, NULL, "MS", NULL,
                                   "reaching a tcp:// or ipc:// worker and its handshake (refused\n"
                                   "or unresolvable fails at once)"},
    [MB_OPTION_INPUT_IDS] = {"input-ids", NULL, NULL, KNOB_IDS, 0, 0, 0, NULL, "LIST|FILE", "none",
                             "prompt token ids: '1,2,3', or a file of ids separated by commas\n"
                             "or whitespace"},
    [MB_OPTION_PREFILL] = {"prefill", NULL, NULL, KNOB_U32, OFF(prefill), 0, MAX_TOKENS, NULL, "P",
                           NULL, "prompt tokens to prefill (the main program picks when absent)"},
    [MB_OPTION_PROMPT_LEN] = {"prompt-len", NULL, NULL, KNOB_U32, OFF(prompt_len), 0, MAX_TOKENS,
                              NULL, "N", NULL, "length of a random prompt drawn with --seed"},
    [MB_OPTION_SEED] = {"seed", NULL, NULL, KNOB_U64, OFF(seed), 0, UINT64_MAX, NULL, "S", NULL,
                        "seed of the random prompt"},
    [MB_OPTION_GEN] = {"gen", NULL, NULL, KNOB_U32, OFF(gen), 0, MAX_TOKENS, NULL, "N", NULL,
                       "tokens to generate after the prompt"},
    [MB_OPTION_CHUNK] = {"chunk", NULL, NULL, KNOB_U32, OFF(chunk), 1, 65536, NULL, "N", NULL,
                         "prefill chunk: prompt tokens per forward step"},
    [MB_OPTION_MAX_CTX] = {"max-ctx", NULL, NULL, KNOB_U32, OFF(max_ctx), 0, MAX_TOKENS, NULL, "N",
                           "0 (the model's limit)", "context length limit (KV cache size)"},
    [MB_OPTION_LOGITS_OUT] = {"logits-out", NULL, NULL, KNOB_STRING, OFF(logits_out), 0, 0, NULL,
                              "PATH", "none", "write the final logits to PATH"},
    [MB_OPTION_STATS] = {"stats", "no-stats", "MB_STATS", KNOB_BOOL, OFF(stats), 0, 0, NULL, NULL,
                         NULL, "print the IPC statistics table at exit"},
    [MB_OPTION_STATS_JSON] = {"stats-json", NULL, "MB_STATS_JSON", KNOB_STRING, OFF(stats_json), 0,
                              0, NULL, "PATH", "none", "write IPC statistics as JSON to PATH"},
    [MB_OPTION_STATS_LAYERS] = {"stats-layers", "no-stats-layers", "MB_STATS_LAYERS", KNOB_BOOL,
                                OFF(stats_per_layer), 0, 0, NULL, NULL, NULL,
                                "keep and report IPC statistics per layer"},
    [MB_OPTION_STEP_TIMING] = {"step-timing", NULL, "MB_STEP_TIMING", KNOB_STRING, OFF(step_timing),
                               0, 0, NULL, "PATH", "none",
                               "write one JSON line per forward step to PATH"},
    [MB_OPTION_QUIET] = {"quiet", "no-quiet", NULL, KNOB_BOOL, OFF(quiet), 0, 0, NULL, NULL, NULL,
                         "no progress or generated text on stdout"},
};

static const char bool_valid[] = "1, 0, true, false, yes, no, on, off";

void mb_options_init(mb_options *opt)
{
    memset(opt, 0, sizeof *opt);
    opt->ipc_mode = MB_IPC_MODE_AUTO;
    opt->transport = MB_TRANSPORT_AUTO;
    opt->batch_capacity = 1024;
    opt->stream_slice = 4;
    opt->payload_dtype = MB_DTYPE_F32;
    opt->seed = 1;
    opt->chunk = 512;
    opt->on_worker_loss = MB_ON_WORKER_LOSS_FALLBACK;
    opt->replicas = 1;
    opt->worker_timeout_ms = 1500;
    opt->connect_timeout_ms = 5000;
}

void mb_options_free(mb_options *opt)
{
    if (!opt) return;
    for (size_t i = 0; i < MB_OPTION_COUNT_; i++) {
        if (knobs[i].kind == KNOB_STRING) free(*(char **)((char *)opt + knobs[i].offset));
    }
    for (size_t i = 0; i < opt->n_workers; i++)
        free(opt->workers[i]);
    free(opt->workers);
    free(opt->input_ids);
    mb_options_init(opt);
}

int mb_options_given(const mb_options *opt, mb_option_id id)
{
    return opt && (unsigned)id < MB_OPTION_COUNT_ && (opt->given_mask >> id) & 1u;
}

const char *mb_ipc_mode_name(int mode)
{
    return mode >= 0 && mode < 3 ? ipc_mode_names[mode] : "?";
}

const char *mb_on_worker_loss_name(int policy)
{
    return policy >= 0 && policy < 2 ? loss_names[policy] : "?";
}

const char *mb_transport_kind_name(int kind)
{
    return kind >= 0 && kind < 3 ? transport_names[kind] : "?";
}

/* Writes "a, b, c" for a NULL-terminated name list. */
static void join_names(const char *const *names, char *buf, size_t cap)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; names[i] && used < cap; i++) {
        int n = snprintf(buf + used, cap - used, "%s%s", i ? ", " : "", names[i]);
        if (n < 0) break;
        used += (size_t)n;
    }
}

static mb_status add_worker(mb_options *o, const char *spec, const char *what, char *err,
                            size_t err_cap)
{
    mb_worker_spec parsed;
    char why[400];
    mb_status st = mb_worker_spec_parse(spec, &parsed, why, sizeof why);
    if (st == MB_STATUS_NOMEM) return st;
    if (st != MB_STATUS_OK) {
        mb_options_errf(err, err_cap, "moe-broker: invalid %s: %s", what, why);
        return MB_STATUS_CONFIG;
    }
    char *copy = strdup(spec);
    char **grown = copy ? realloc(o->workers, (o->n_workers + 1) * sizeof *grown) : NULL;
    if (!grown) {
        free(copy);
        return MB_STATUS_NOMEM;
    }
    o->workers = grown;
    o->workers[o->n_workers++] = copy;
    return MB_STATUS_OK;
}

/* The environment form of --worker: specs separated by ';', empty pieces
 * skipped. */
static mb_status add_workers_env(mb_options *o, const char *list, const char *what, char *err,
                                 size_t err_cap)
{
    char *copy = strdup(list);
    if (!copy) return MB_STATUS_NOMEM;
    mb_status st = MB_STATUS_OK;
    char *save = NULL;
    for (char *s = strtok_r(copy, ";", &save); s && st == MB_STATUS_OK;
         s = strtok_r(NULL, ";", &save))
        st = add_worker(o, s, what, err, err_cap);
    free(copy);
    return st;
}

/* Parses text into knob k of o. what is "--flag" or the variable name. */
static mb_status knob_set(const knob *k, mb_options *o, const char *text, const char *what,
                          char *err, size_t err_cap)
{
    void *field = (char *)o + k->offset;
    char valid[160];
    uint64_t v;
    int b;

    if (text[0] == '\0' && k->kind != KNOB_BOOL) {
        mb_options_errf(err, err_cap, "moe-broker: %s needs a non-empty value", what);
        return MB_STATUS_CONFIG;
    }
    switch (k->kind) {
    case KNOB_STRING: {
        char *copy = strdup(text);
        if (!copy) return MB_STATUS_NOMEM;
        free(*(char **)field);
        *(char **)field = copy;
        return MB_STATUS_OK;
    }
    case KNOB_ENUM:
        for (int i = 0; k->names[i]; i++) {
            if (strcmp(text, k->names[i]) == 0) {
                *(int *)field = i;
                return MB_STATUS_OK;
            }
        }
        join_names(k->names, valid, sizeof valid);
        break;
    case KNOB_U32:
    case KNOB_U64:
        if (mb_options_text_to_u64(text, k->min, k->max, &v) == 0) {
            if (k->kind == KNOB_U32)
                *(uint32_t *)field = (uint32_t)v;
            else
                *(uint64_t *)field = v;
            return MB_STATUS_OK;
        }
        snprintf(valid, sizeof valid, "%llu..%llu", (unsigned long long)k->min,
                 (unsigned long long)k->max);
        break;
    case KNOB_BOOL:
        if (mb_options_text_to_bool(text, &b) == 0) {
            *(int *)field = b;
            return MB_STATUS_OK;
        }
        snprintf(valid, sizeof valid, "%s", bool_valid);
        break;
    case KNOB_BYTES:
        if (mb_options_text_to_bytes(text, &v) == 0) {
            *(uint64_t *)field = v;
            return MB_STATUS_OK;
        }
        snprintf(valid, sizeof valid, "bytes with an optional K, M, G or T suffix, e.g. 512M");
        break;
    case KNOB_IDS: {
        int32_t *ids = NULL;
        size_t n = 0;
        mb_status st = mb_options_ids_parse(text, what, &ids, &n, err, err_cap);
        if (st != MB_STATUS_OK) return st;
        free(o->input_ids);
        o->input_ids = ids;
        o->n_input_ids = n;
        return MB_STATUS_OK;
    }
    case KNOB_WORKERS:
        return add_worker(o, text, what, err, err_cap);
    }
    mb_options_errf(err, err_cap, "moe-broker: invalid %s '%s' (valid: %s)", what, text, valid);
    return MB_STATUS_CONFIG;
}

/* Reads MB_* variables for the knobs no flag set. */
static mb_status apply_env(mb_options *o, uint64_t flag_mask, char *err, size_t err_cap)
{
    for (size_t i = 0; i < MB_OPTION_COUNT_; i++) {
        const knob *k = &knobs[i];
        if (!k->env || (flag_mask >> i) & 1u) continue;
        const char *v = getenv(k->env);
        if (!v || v[0] == '\0') continue;
        mb_status st = k->kind == KNOB_WORKERS ? add_workers_env(o, v, k->env, err, err_cap)
                                               : knob_set(k, o, v, k->env, err, err_cap);
        if (st != MB_STATUS_OK) return st;
        o->given_mask |= 1ull << i;
        o->from_env_mask |= 1ull << i;
    }
    return MB_STATUS_OK;
}

/* getopt_long "val" codes: a knob's flag, its --no- form, and -h. */
#define VAL_SET 256
#define VAL_NEG (VAL_SET + MB_OPTION_COUNT_)

static int wants_help(int argc, char **argv)
{
    for (int i = 1; i < argc && argv[i]; i++) {
        if (strcmp(argv[i], "--") == 0) return 0;
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) return 1;
    }
    return 0;
}

/* Names the option behind a getopt error for the message. */
static const char *val_flag(int val)
{
    if (val >= VAL_SET && val < VAL_NEG) return knobs[val - VAL_SET].flag;
    if (val >= VAL_NEG && val < VAL_NEG + MB_OPTION_COUNT_) return knobs[val - VAL_NEG].neg;
    return NULL;
}

static mb_status parse_flags(int argc, char **args, mb_options *o, uint64_t *flag_mask, char *err,
                             size_t err_cap)
{
    struct option longs[2 * MB_OPTION_COUNT_ + 2];
    size_t n = 0;
    for (size_t i = 0; i < MB_OPTION_COUNT_; i++) {
        int has_arg = knobs[i].kind == KNOB_BOOL ? no_argument : required_argument;
        longs[n++] = (struct option){knobs[i].flag, has_arg, NULL, VAL_SET + (int)i};
        if (knobs[i].neg)
            longs[n++] = (struct option){knobs[i].neg, no_argument, NULL, VAL_NEG + (int)i};
    }
    longs[n++] = (struct option){"help", no_argument, NULL, 'h'};
    longs[n] = (struct option){NULL, 0, NULL, 0};

    optind = 0; /* GNU: 0 re-initialises getopt's state for a fresh argv */
    opterr = 0;
    for (;;) {
        int c = getopt_long(argc, args, ":h", longs, NULL);
        if (c == -1) break;
        if (c == 'h') { /* wants_help catches exact spellings; abbreviations land here */
            o->help = 1;
            return MB_STATUS_OK;
        }
        if (c == ':') {
            mb_options_errf(err, err_cap, "moe-broker: --%s needs a value (see --help)",
                            val_flag(optopt) ? val_flag(optopt) : "?");
            return MB_STATUS_CONFIG;
        }
        if (c == '?') {
            if (val_flag(optopt))
                mb_options_errf(err, err_cap, "moe-broker: --%s takes no value", val_flag(optopt));
            else if (optopt > 0 && optopt < 128)
                mb_options_errf(err, err_cap, "moe-broker: unknown option '-%c' (see --help)",
                                optopt);
            else /* an unknown long option: getopt has stepped past it */
                mb_options_errf(err, err_cap,
                                "moe-broker: unknown or ambiguous option '%s' (see --help)",
                                args[optind > 1 ? optind - 1 : 1]);
            return MB_STATUS_CONFIG;
        }
        int neg = c >= VAL_NEG;
        size_t i = (size_t)(c - (neg ? VAL_NEG : VAL_SET));
        char what[48];
        snprintf(what, sizeof what, "--%s", knobs[i].flag);
        mb_status st = knobs[i].kind == KNOB_BOOL
                           ? knob_set(&knobs[i], o, neg ? "0" : "1", what, err, err_cap)
                           : knob_set(&knobs[i], o, optarg, what, err, err_cap);
        if (st != MB_STATUS_OK) return st;
        *flag_mask |= 1ull << i;
        o->given_mask |= 1ull << i;
    }
    if (optind < argc) {
        mb_options_errf(err, err_cap, "moe-broker: unexpected argument '%s' (see --help)",
                        args[optind]);
        return MB_STATUS_CONFIG;
    }
    return MB_STATUS_OK;
}

mb_status mb_options_parse(int argc, char **argv, mb_options *out, char *err, size_t err_cap)
{
    if (!out || argc < 0 || (argc > 0 && !argv)) return MB_STATUS_INVALID_ARG;
    mb_options o;
    mb_options_init(&o);
    if (err && err_cap) err[0] = '\0';
    if (wants_help(argc, argv)) {
        o.help = 1;
        *out = o;
        return MB_STATUS_OK;
    }

    int first = 1;
    if (argc > 1 && argv[1][0] != '-') {
        if (strcmp(argv[1], "run") != 0) {
            mb_options_errf(err, err_cap, "moe-broker: unknown command '%s' (valid: run, tokenize)", argv[1]);
            return MB_STATUS_CONFIG;
        }
        first = 2;
    }
    /* getopt permutes its array: hand it a copy so the caller's argv keeps
     * its order. */
    static char program[] = "moe-broker";
    int n_args = argc > first ? argc - first + 1 : 1;
    char **args = calloc((size_t)n_args + 1, sizeof *args);
    if (!args) return MB_STATUS_NOMEM;
    args[0] = argc > 0 && argv[0] ? argv[0] : program;
    for (int i = first; i < argc; i++)
        args[i - first + 1] = argv[i];

    uint64_t flag_mask = 0;
    mb_status st = parse_flags(n_args, args, &o, &flag_mask, err, err_cap);
    if (st == MB_STATUS_OK && !o.help) st = apply_env(&o, flag_mask, err, err_cap);
    free(args);
    if (st != MB_STATUS_OK || o.help) {
        mb_options_free(&o); /* help: back to pure defaults, as documented */
        if (st != MB_STATUS_OK) return st;
        o.help = 1;
    }
    *out = o;
    return MB_STATUS_OK;
}

/* Prints text, continuing each of its '\n'-separated lines at column indent. */
static void print_wrapped(FILE *f, const char *text, int indent)
{
    for (const char *nl; (nl = strchr(text, '\n')); text = nl + 1)
        fprintf(f, "%.*s\n%*s", (int)(nl - text), text, indent, "");
    fprintf(f, "%s\n", text);
}

/* The "valid: ...; default: ...; env: ..." line of one knob. */
static void knob_details(const knob *k, const mb_options *d, char *buf, size_t cap)
{
    const void *field = (const char *)d + k->offset;
    char valid[120] = "", dflt[80];
    switch (k->kind) {
    case KNOB_ENUM:
        join_names(k->names, valid, sizeof valid);
        snprintf(dflt, sizeof dflt, "%s", k->names[*(const int *)field]);
        break;
    case KNOB_U32:
    case KNOB_U64: {
        unsigned long long v = k->kind == KNOB_U32 ? *(const uint32_t *)field
                                                   : (unsigned long long)*(const uint64_t *)field;
        if (k->max == UINT64_MAX)
            snprintf(valid, sizeof valid, "%llu..2^64-1", (unsigned long long)k->min);
        else
            snprintf(valid, sizeof valid, "%llu..%llu", (unsigned long long)k->min,
                     (unsigned long long)k->max);
        snprintf(dflt, sizeof dflt, "%llu", v);
        break;
    }
    case KNOB_BOOL:
        snprintf(dflt, sizeof dflt, "%s", *(const int *)field ? "on" : "off");
        break;
    default:
        dflt[0] = '\0';
        break;
    }
    if (k->dflt) snprintf(dflt, sizeof dflt, "%s", k->dflt);
    int n = snprintf(buf, cap, "%s%s%sdefault: %s", valid[0] ? "valid: " : "", valid,
                     valid[0] ? "; " : "", dflt);
    if (k->env && n >= 0 && (size_t)n < cap)
        snprintf(buf + n, cap - (size_t)n, "; env: %s%s", k->env,
                 k->kind == KNOB_BOOL ? " (1/0, true/false, yes/no, on/off)" : "");
}

void mb_options_usage(FILE *f)
{
    enum { COL = 30 };
    mb_options d;
    mb_options_init(&d);
    fprintf(f, "usage: moe-broker [run] [OPTION]...\n"
               "       moe-broker tokenize --model DIR --text TEXT [--decode] (see tokenize --help)\n\n"
               "Runs a Mixture-of-Experts model, sending each layer's expert work to backend\n"
               "workers over shared memory or ZeroMQ, or running it in-process. Options with\n"
               "an env: variable can also be set there; the flag wins. An empty variable\n"
               "counts as unset.\n\n");
    for (size_t i = 0; i < MB_OPTION_COUNT_; i++) {
        const knob *k = &knobs[i];
        char left[64], details[320];
        if (k->kind == KNOB_BOOL)
            snprintf(left, sizeof left, "--%s, --%s", k->flag, k->neg);
        else
            snprintf(left, sizeof left, "--%s %s", k->flag, k->arg);
        fprintf(f, "  %-*s", COL - 2, left);
        if (strlen(left) > COL - 3) fprintf(f, "\n%*s", COL, "");
        print_wrapped(f, k->help, COL);
        knob_details(k, &d, details, sizeof details);
        fprintf(f, "%*s%s\n", COL, "", details);
    }
    fprintf(f, "  %-*s%s\n", COL - 2, "-h, --help", "print this help and exit");
}
