/* Text in, text out: `run --prompt TEXT`, `run --chat TEXT` and `chat`.
 * Prompts go through the checkpoint's tokenizer (and, for chat, its chat
 * template); generated tokens are sampled, decoded by the streaming decoder
 * and written to stdout as each one is produced; timings and statistics go
 * to stderr. A chat keeps its history in the KV cache: each turn feeds only
 * the text the template adds after what the cache already holds. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "broker/run_internal.h"
#include "broker/sampler.h"
#include "broker/session.h"
#include "broker/text.h"

typedef struct {
    const mb_options *opt;
    const mb_model *model;
    mb_session *sess;
    mb_text text;
    mb_tokenizer_stream *stream;
    mb_sampler *sampler;
    float *last;       /* [vocab]: the logits of the last position fed */
    uint32_t max_ctx;  /* KV cache positions */
    int progress;
    uint64_t prefill_ns, decode_ns;
    uint64_t n_prefill, n_decode;
} text_run;

/* ---- setup ---- */

static int text_setup(text_run *t, int want_template)
{
    if (mb_text_open(&t->text, t->opt, t->model, want_template) != 0) return -1;
    mb_sampler_params sp;
    mb_run_sampler_params(t->opt, &sp);
    if (mb_sampler_create(&sp, t->model->cfg.vocab, &t->sampler) != MB_STATUS_OK ||
        mb_tokenizer_stream_create(t->text.tok, 1, &t->stream) != MB_STATUS_OK ||
        !(t->last = malloc((size_t)t->model->cfg.vocab * sizeof *t->last))) {
        fprintf(stderr, "moe-broker: out of memory\n");
        return -1;
    }
    return 0;
}

/* Starts the backends. SIGINT / SIGTERM from here on stop the run between
 * steps (and cancel a step waiting on workers) rather than kill it, so the
 * workers are stopped and their segments and socket files removed. */
static int text_open_session(text_run *t)
{
    char err[512] = "";
    const mb_options *opt = t->opt;
    mb_run_catch_signals();
    mb_status st = mb_session_open(opt, t->model, t->max_ctx,
                                   opt->quiet ? MB_SESSION_QUIET
                                   : t->progress ? MB_SESSION_PROGRESS
                                                 : MB_SESSION_INFO,
                                   &t->sess, err, sizeof err);
    if (st != MB_STATUS_OK) {
        fprintf(stderr, "moe-broker: %s\n", err[0] ? err : mb_status_str(st));
        return -1;
    }
    mb_dispatch_set_cancel(t->sess->dispatch, &mb_run_signal);
    return 0;
}

static void text_teardown(text_run *t)
{
    mb_session_close(t->sess);
    mb_tokenizer_stream_destroy(t->stream);
    mb_text_close(&t->text);
    mb_sampler_destroy(t->sampler);
    free(t->last);
}

/* ---- prefill and generation ---- */

/* Encodes text (no BOS unless add_special) into a malloc'd id array. */
static int text_encode(text_run *t, const char *text, int add_special, int32_t **ids, size_t *n)
{
    char err[256];
    if (mb_text_encode(&t->text, text, strlen(text), add_special, ids, n, err, sizeof err) !=
        MB_STATUS_OK) {
        fprintf(stderr, "moe-broker: the prompt: %s\n", err);
        return -1;
    }
    return 0;
}

/* Feeds ids at the current position, in chunks, with a progress line on a
 * terminal while a prompt longer than one chunk is prefilled. */
static int text_prefill(text_run *t, const int32_t *ids, size_t n)
{
    char err[512] = "";
    uint32_t pos = mb_forward_pos(t->sess->fwd);
    if (n == 0) return 0;
    if ((uint64_t)pos + n > t->max_ctx) {
        fprintf(stderr, "moe-broker: the context is full: %u positions used, %zu more needed, "
                        "limit %u (--max-ctx)\n",
                pos, n, t->max_ctx);
        return -1;
    }
    uint32_t chunk = t->opt->chunk ? t->opt->chunk : 512;
    int show = t->progress && n > chunk;
    uint64_t t0 = mb_now_ns();
    for (size_t done = 0; done < n;) {
        uint32_t step = n - done < chunk ? (uint32_t)(n - done) : chunk;
        mb_status st = mb_run_signal ? MB_STATUS_IO
                                     : mb_session_step(t->sess, ids + done, step, NULL, t->last, err,
                                                       sizeof err);
        if (st != MB_STATUS_OK) {
            if (show) fprintf(stderr, "\n");
            if (!mb_run_signal) fprintf(stderr, "moe-broker: %s\n", err[0] ? err : mb_status_str(st));
            return -1;
        }
        done += step;
        if (show) {
            fprintf(stderr, "\rprefill: %zu/%zu tokens", done, n);
            fflush(stderr);
        }
    }
    if (show) fprintf(stderr, "\r\033[K");
    for (size_t i = 0; i < n; i++)
        mb_sampler_accept(t->sampler, ids[i]);
    t->prefill_ns += mb_now_ns() - t0;
    t->n_prefill += n;
    return 0;
}

typedef enum { STOP_EOS, STOP_LENGTH, STOP_CONTEXT, STOP_ERROR, STOP_SIGNAL } stop_reason;

static void emit(const char *s, size_t n)
{
    if (n == 0) return;
    fwrite(s, 1, n, stdout);
    fflush(stdout);
}

/* Samples up to max_gen tokens, streaming their text to stdout, and feeds
 * each one but an EOS (which ends the reply) and one that finds the cache
 * full. *reply gets the reply's text (malloc'd, without the EOS). Returns
 * why it stopped. */
static stop_reason text_generate(text_run *t, uint64_t max_gen, char **reply, size_t *reply_len)
{
    char err[512] = "";
    size_t cap = 256, len = 0;
    char *out = malloc(cap);
    if (!out) return STOP_ERROR;
    out[0] = '\0';
    stop_reason why = STOP_LENGTH;
    uint64_t t0 = mb_now_ns();
    for (uint64_t g = 0; g < max_gen; g++) {
        if (mb_run_signal) {
            why = STOP_SIGNAL;
            break;
        }
        int32_t id = mb_sampler_sample(t->sampler, t->last);
        if (mb_text_is_eos(&t->text, id)) {
            why = STOP_EOS;
            break;
        }
        const char *piece;
        size_t n;
        if (mb_tokenizer_stream_push(t->stream, id, &piece, &n) == MB_STATUS_OK && n) {
            emit(piece, n);
            if (len + n + 1 > cap) {
                while (len + n + 1 > cap)
                    cap *= 2;
                char *p = realloc(out, cap);
                if (!p) {
                    why = STOP_ERROR;
                    break;
                }
                out = p;
            }
            memcpy(out + len, piece, n);
            len += n;
            out[len] = '\0';
        }
        if (mb_forward_pos(t->sess->fwd) >= t->max_ctx) {
            why = STOP_CONTEXT;
            break;
        }
        mb_status st = mb_session_step(t->sess, &id, 1, NULL, t->last, err, sizeof err);
        t->n_decode++;
        if (st != MB_STATUS_OK) {
            why = mb_run_signal ? STOP_SIGNAL : STOP_ERROR;
            if (why == STOP_ERROR) fprintf(stderr, "\nmoe-broker: %s\n", err[0] ? err : mb_status_str(st));
            break;
        }
    }
    const char *tail;
    size_t n;
    if (mb_tokenizer_stream_finish(t->stream, &tail, &n) == MB_STATUS_OK && n) {
        emit(tail, n);
        char *p = len + n + 1 > cap ? realloc(out, len + n + 1) : out;
        if (p) {
            out = p;
            memcpy(out + len, tail, n);
            len += n;
            out[len] = '\0';
        }
    }
    t->decode_ns += mb_now_ns() - t0;
    *reply = out;
    *reply_len = len;
    return why;
}

static const char *stop_name(stop_reason r)
{
    return r == STOP_EOS       ? "end of sequence"
           : r == STOP_LENGTH  ? "--gen reached"
           : r == STOP_CONTEXT ? "context full"
           : r == STOP_SIGNAL  ? "interrupted"
                               : "error";
}

static void text_report(const text_run *t, stop_reason why)
{
    if (t->opt->quiet) return;
    double pre_s = (double)t->prefill_ns / 1e9, dec_s = (double)t->decode_ns / 1e9;
    fprintf(stderr,
            "prompt: %llu tokens in %.3f s (%.1f tok/s); generated: %llu tokens in %.3f s "
            "(%.2f tok/s); stopped: %s\n",
            (unsigned long long)t->n_prefill, pre_s, pre_s > 0 ? t->n_prefill / pre_s : 0.0,
            (unsigned long long)t->n_decode, dec_s, dec_s > 0 ? t->n_decode / dec_s : 0.0,
            stop_name(why));
}

static int text_finish_stats(text_run *t)
{
    if (mb_run_stats_wanted(t->opt)) mb_stats_print_table(t->sess->stats, stderr);
    if (t->opt->stats_json && mb_stats_write_json(t->sess->stats, t->opt->stats_json) != MB_STATUS_OK) {
        fprintf(stderr, "moe-broker: cannot write %s\n", t->opt->stats_json);
        return -1;
    }
    mb_stats_close_step_timing(t->sess->stats);
    return 0;
}

/* Sizes the KV cache. With --gen (run only): prompt + --gen positions,
 * within the context limit. Otherwise --max-ctx, or the model's
 * max_position_embeddings capped (mb_run_text_context); n_prompt must fit. */
static int text_size_context(text_run *t, size_t n_prompt, const char *what)
{
    const mb_options *opt = t->opt;
    const mb_model_config *c = &t->model->cfg;
    if (opt->command == MB_COMMAND_RUN && mb_options_given(opt, MB_OPTION_GEN)) {
        uint64_t need = (uint64_t)n_prompt + opt->gen;
        if (mb_run_context_limit(opt, c, need, what) != 0) return -1;
        t->max_ctx = (uint32_t)need;
        return 0;
    }
    if (mb_run_context_limit(opt, c, n_prompt, what) != 0) return -1;
    t->max_ctx = mb_run_text_context(opt, c);
    if (n_prompt > t->max_ctx) {
        fprintf(stderr, "moe-broker: %s needs %zu positions, more than the %u of the KV cache "
                        "(--max-ctx N raises it)\n",
                what, n_prompt, t->max_ctx);
        return -1;
    }
    return 0;
}

/* ---- run --prompt / --chat ---- */

static int run_once(text_run *t)
{
    const mb_options *opt = t->opt;
    int32_t *ids = NULL;
    size_t n = 0;
    if (opt->chat) {
        mb_chat_message m[2];
        size_t nm = 0;
        if (opt->system) m[nm++] = (mb_chat_message){"system", opt->system};
        m[nm++] = (mb_chat_message){"user", opt->chat};
        char *text = NULL, err[256] = "";
        if (mb_chat_render(&t->text.tmpl, m, nm, 1, &text, NULL, err, sizeof err) != MB_STATUS_OK) {
            fprintf(stderr, "moe-broker: chat template: %s\n", err);
            return 1;
        }
        int rc = text_encode(t, text, 0, &ids, &n);
        free(text);
        if (rc != 0) return 1;
    } else if (text_encode(t, opt->prompt, 1, &ids, &n) != 0) {
        return 1;
    }
    if (n == 0) {
        fprintf(stderr, "moe-broker: the prompt is empty\n");
        return 1;
    }
    int rc = 1;
    if (text_size_context(t, n, "the prompt") != 0 || text_open_session(t) != 0 ||
        text_prefill(t, ids, n) != 0)
        goto done;
    uint64_t room = t->max_ctx - mb_forward_pos(t->sess->fwd) + 1; /* one that fills the cache is not fed */
    uint64_t max_gen = mb_options_given(opt, MB_OPTION_GEN) ? opt->gen : room;
    char *reply = NULL;
    size_t reply_len = 0;
    stop_reason why = max_gen ? text_generate(t, max_gen, &reply, &reply_len) : STOP_LENGTH;
    if (reply_len == 0 || reply[reply_len - 1] != '\n') emit("\n", 1);
    free(reply);
    text_report(t, why);
    if (why != STOP_ERROR && why != STOP_SIGNAL && text_finish_stats(t) == 0) rc = 0;
done:
    free(ids);
    return rc;
}

/* ---- chat ---- */

typedef struct {
    mb_chat_message *m;
    size_t n, cap;
} history;

static int history_add(history *h, const char *role, const char *content, size_t len)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 8;
        mb_chat_message *m = realloc(h->m, cap * sizeof *m);
        if (!m) return -1;
        h->m = m;
        h->cap = cap;
    }
    char *copy = malloc(len + 1);
    if (!copy) return -1;
    memcpy(copy, content, len);
    copy[len] = '\0';
    h->m[h->n++] = (mb_chat_message){role, copy};
    return 0;
}

static void history_free(history *h)
{
    for (size_t i = 0; i < h->n; i++)
        free((char *)h->m[i].content);
    free(h->m);
}

/* Appends s to the text the KV cache holds. */
static int cached_append(char **cached, size_t *len, const char *s, size_t n)
{
    char *p = realloc(*cached, *len + n + 1);
    if (!p) return -1;
    memcpy(p + *len, s, n);
    *len += n;
    p[*len] = '\0';
    *cached = p;
    return 0;
}

/* One turn: renders the whole conversation, feeds what the cache lacks (all
 * of it again, from position 0, when the template rewrote earlier turns),
 * and streams the reply. */
static int chat_turn(text_run *t, history *h, char **cached, size_t *cached_len, stop_reason *why)
{
    char *full = NULL, err[256] = "";
    size_t full_len = 0;
    if (mb_chat_render(&t->text.tmpl, h->m, h->n, 1, &full, &full_len, err, sizeof err) != MB_STATUS_OK) {
        fprintf(stderr, "moe-broker: chat template: %s\n", err);
        return -1;
    }
    const char *delta = full;
    if (*cached_len <= full_len && (*cached_len == 0 || memcmp(full, *cached, *cached_len) == 0)) {
        delta = full + *cached_len;
    } else {
        mb_forward_reset(t->sess->fwd);
        *cached_len = 0;
    }
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = text_encode(t, delta, 0, &ids, &n);
    if (rc == 0) rc = text_prefill(t, ids, n);
    free(ids);
    if (rc == 0) rc = cached_append(cached, cached_len, delta, strlen(delta));
    free(full);
    if (rc != 0) return -1;

    uint32_t pos = mb_forward_pos(t->sess->fwd);
    uint64_t room = t->max_ctx - pos + 1; /* each token but one that fills the cache is fed */
    uint64_t max_gen = mb_options_given(t->opt, MB_OPTION_GEN) && t->opt->gen < room ? t->opt->gen : room;
    char *reply = NULL;
    size_t reply_len = 0;
    *why = text_generate(t, max_gen, &reply, &reply_len);
    if (*why == STOP_ERROR || *why == STOP_SIGNAL) {
        free(reply);
        return -1;
    }
    emit("\n", 1);
    /* Every reply token went into the cache (the EOS did not: the next
     * delta starts with it), except when the context filled up: then the
     * next turn starts over from position 0, and fails if it cannot fit. */
    if (*why == STOP_CONTEXT) {
        mb_forward_reset(t->sess->fwd);
        *cached_len = 0;
    } else {
        rc = cached_append(cached, cached_len, reply, reply_len);
    }
    if (rc == 0) rc = history_add(h, "assistant", reply, reply_len);
    free(reply);
    return rc;
}

/* stdin read without stdio, so that waiting for a line can watch the
 * signal flag: a signal may land on any of the session's threads and then
 * interrupts no read of this one, so the wait is cut into poll() slices. */
typedef struct {
    char buf[4096];
    size_t start, end; /* unread bytes: buf[start..end) */
    int eof;
} line_reader;

/* Appends one byte to *line (growing it); -1 when out of memory. */
static int line_put(char **line, size_t *cap, size_t len, char c)
{
    if (len + 2 > *cap) {
        size_t grown = *cap ? *cap * 2 : 256;
        char *p = realloc(*line, grown);
        if (!p) return -1;
        *line = p;
        *cap = grown;
    }
    (*line)[len] = c;
    (*line)[len + 1] = '\0';
    return 0;
}

/* The next line without its '\n' (a last line without one counts); -1 at
 * the end of input, on a read error, out of memory, or once a signal came. */
static ssize_t read_line(line_reader *r, char **line, size_t *cap)
{
    size_t len = 0;
    for (;;) {
        while (r->start < r->end) {
            char c = r->buf[r->start++];
            if (c == '\n') return (ssize_t)len;
            if (line_put(line, cap, len++, c) != 0) return -1;
        }
        if (r->eof) return len ? (ssize_t)len : -1;
        struct pollfd pfd = {.fd = STDIN_FILENO, .events = POLLIN};
        if (mb_run_signal) return -1;
        if (poll(&pfd, 1, 100) <= 0) continue; /* a timeout or EINTR: look at the flag again */
        ssize_t got = read(STDIN_FILENO, r->buf, sizeof r->buf);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) {
            r->eof = 1;
            if (got < 0) return -1;
        }
        r->start = 0;
        r->end = got > 0 ? (size_t)got : 0;
    }
}

static int chat_loop(text_run *t)
{
    const mb_options *opt = t->opt;
    history h = {0};
    char *cached = NULL, *line = NULL;
    size_t cached_len = 0, line_cap = 0;
    line_reader reader = {.start = 0};
    int rc = 0, tty = isatty(STDIN_FILENO);
    stop_reason why = STOP_LENGTH;
    if (opt->system && history_add(&h, "system", opt->system, strlen(opt->system)) != 0) rc = 1;
    if (text_size_context(t, 1, "the chat") != 0 || text_open_session(t) != 0) rc = 1;
    if (rc == 0 && tty && !opt->quiet)
        fprintf(stderr, "chat: type a message and press Enter; Ctrl-D or /exit ends the chat\n");
    while (rc == 0) {
        if (tty) {
            fputs("> ", stdout);
            fflush(stdout);
        }
        ssize_t got = read_line(&reader, &line, &line_cap);
        if (got < 0 || mb_run_signal) break;
        while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r'))
            line[--got] = '\0';
        if (got == 0) continue;
        if (strcmp(line, "/exit") == 0 || strcmp(line, "/quit") == 0 || strcmp(line, "/bye") == 0) break;
        text_run before = *t;
        if (history_add(&h, "user", line, (size_t)got) != 0 ||
            chat_turn(t, &h, &cached, &cached_len, &why) != 0) {
            rc = 1;
            break;
        }
        if (tty) { /* this turn's numbers */
            text_run turn = *t;
            turn.n_prefill -= before.n_prefill;
            turn.n_decode -= before.n_decode;
            turn.prefill_ns -= before.prefill_ns;
            turn.decode_ns -= before.decode_ns;
            text_report(&turn, why);
        }
    }
    if (tty) fputc('\n', stdout);
    if (!tty) text_report(t, why);
    if (t->sess && !mb_run_signal && text_finish_stats(t) != 0) rc = 1;
    free(line);
    free(cached);
    history_free(&h);
    return rc;
}

int mb_run_text(const mb_options *opt, const mb_model *model, int progress)
{
    text_run t;
    memset(&t, 0, sizeof t);
    t.opt = opt;
    t.model = model;
    t.progress = progress;
    int chat = opt->command == MB_COMMAND_CHAT || opt->chat;
    int rc = 1;
    if (text_setup(&t, chat) == 0) rc = opt->command == MB_COMMAND_CHAT ? chat_loop(&t) : run_once(&t);
    if (mb_run_signal) { /* as the id run does: stop the workers, keep the statistics asked for */
        mb_run_say_interrupted();
        if (t.sess) text_finish_stats(&t);
        rc = 128 + mb_run_signal;
    }
    text_teardown(&t);
    return rc;
}
