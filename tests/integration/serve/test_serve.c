/* moe-broker serve as clients use it, on the text fixture (qwen3moe-a with
 * a byte-level tokenizer): with temperature 0 the served chat reply and
 * completion equal what `moe-broker run --chat` / `--prompt` print, with
 * the same token counts; streamed pieces joined equal the whole reply, with
 * [DONE] last; several clients at once each get their answer; a client that
 * leaves cancels its generation and frees the slot; a full queue answers
 * 503; bad requests get OpenAI-style errors (400, 401, 404, 405, 413, the
 * context limit); /metrics shows the queue and the IPC statistics; the
 * official OpenAI client (npm) agrees streamed and whole; SIGTERM stops the
 * server and its workers. Needs curl or node; skips (77) with neither. */
#include <cjson/cJSON.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/integration/text_fixture.h"
#include "tests/testutil.h"

#define KEY "test-key"
#define MAX_TOKENS 12

static char tmpdir[256], model[300];
static const char *broker;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return strdup("");
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    REQUIRE(s);
    size_t got = fread(s, 1, (size_t)n, f);
    s[got] = '\0';
    fclose(f);
    return s;
}

static int have(const char *program)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "command -v %s >/dev/null 2>&1", program);
    return system(cmd) == 0;
}

/* ---- the server ---- */

typedef struct {
    pid_t pid;
    unsigned port;
    char err[400]; /* its stderr */
} server;

/* Starts serve with extra flags; returns once it listens (it prints the
 * port it got for --port 0). */
static void server_start(server *s, const char *name, const char *flags)
{
    snprintf(s->err, sizeof s->err, "%s/%s.err", tmpdir, name);
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "exec '%s' serve --model '%s' --worker cpu,threads=1 --threads 1 --port 0 %s 2>'%s' >/dev/null",
             broker, model, flags, s->err);
    s->pid = fork();
    REQUIRE(s->pid >= 0);
    if (s->pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    s->port = 0;
    for (double t0 = now_s(); !s->port && now_s() - t0 < 60; usleep(20000)) {
        char *e = slurp(s->err);
        const char *at = strstr(e, "http://127.0.0.1:");
        if (at) s->port = (unsigned)atoi(at + strlen("http://127.0.0.1:"));
        free(e);
        REQUIRE(waitpid(s->pid, NULL, WNOHANG) == 0);
    }
    REQUIRE(s->port);
}

/* SIGTERM: the server stops within seconds and exits 0. */
static void server_stop(server *s)
{
    double t0 = now_s();
    kill(s->pid, SIGTERM);
    int status = 0;
    pid_t r;
    while ((r = waitpid(s->pid, &status, WNOHANG)) == 0 && now_s() - t0 < 30)
        usleep(10000);
    if (r == 0) {
        kill(s->pid, SIGKILL);
        waitpid(s->pid, &status, 0);
    }
    printf("serve: SIGTERM, exit %d after %.3f s\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1, now_s() - t0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* ---- curl ---- */

/* Runs curl with args against the server; returns the HTTP status, the
 * body in *body (malloc'd) when body is not NULL. */
static int curl(const server *s, const char *path, const char *args, char **body)
{
    char out[400], cmd[8192];
    snprintf(out, sizeof out, "%s/curl.out", tmpdir);
    snprintf(cmd, sizeof cmd, "curl -s -o '%s' -w '%%{http_code}' %s 'http://127.0.0.1:%u%s'", out, args, s->port,
             path);
    FILE *p = popen(cmd, "r");
    REQUIRE(p);
    int code = 0;
    if (fscanf(p, "%d", &code) != 1) code = -1;
    pclose(p);
    if (body) *body = slurp(out);
    return code;
}

static const char *auth = "-H 'Authorization: Bearer " KEY "'";

/* A chat body for one user message. */
static void chat_body(char *buf, size_t cap, const char *message, int max_tokens, int stream)
{
    snprintf(buf, cap,
             "-H 'Content-Type: application/json' %s -d '{\"model\":\"m\",\"messages\":[{\"role\":\"user\","
             "\"content\":\"%s\"}],\"max_tokens\":%d,\"temperature\":0%s}'",
             auth, message, max_tokens, stream ? ",\"stream\":true,\"stream_options\":{\"include_usage\":true}" : "");
}

static const cJSON *path2(const cJSON *root, const char *a, const char *b)
{
    return cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, a), b);
}

/* usage.prompt_tokens and completion_tokens of a reply object. */
static void usage_of(const cJSON *root, int *prompt, int *completion)
{
    const cJSON *p = path2(root, "usage", "prompt_tokens"), *c = path2(root, "usage", "completion_tokens");
    *prompt = cJSON_IsNumber(p) ? p->valueint : -1;
    *completion = cJSON_IsNumber(c) ? c->valueint : -1;
}

/* The error object's four fields are there, and code is want_code. */
static void check_error_body(const char *body, const char *want_code)
{
    cJSON *root = cJSON_Parse(body);
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(root, "error");
    CHECK_MSG(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(e, "message")) &&
                  cJSON_IsString(cJSON_GetObjectItemCaseSensitive(e, "type")) &&
                  cJSON_GetObjectItemCaseSensitive(e, "param") && cJSON_GetObjectItemCaseSensitive(e, "code"),
              "not an OpenAI error object: %s", body);
    if (want_code) {
        const cJSON *code = cJSON_GetObjectItemCaseSensitive(e, "code");
        CHECK_MSG(cJSON_IsString(code) && strcmp(code->valuestring, want_code) == 0, "code is not %s: %s",
                  want_code, body);
    }
    cJSON_Delete(root);
}

/* ---- what `moe-broker run` prints for the same input ---- */

typedef struct {
    char *text; /* stdout: the reply, and a newline when it does not end with one */
    int prompt_tokens, generated;
} run_result;

/* 1 when served is the reply run printed as out. */
static int same_as_run(const char *served, const char *out)
{
    size_t n = strlen(served);
    if (n && served[n - 1] == '\n') return strcmp(served, out) == 0;
    return strncmp(served, out, n) == 0 && strcmp(out + n, "\n") == 0;
}

static run_result run_reference(const char *flag, const char *message)
{
    char cmd[4096], out[400], err[400];
    snprintf(out, sizeof out, "%s/run.out", tmpdir);
    snprintf(err, sizeof err, "%s/run.err", tmpdir);
    snprintf(cmd, sizeof cmd,
             "'%s' run --model '%s' --worker cpu,threads=1 --threads 1 %s '%s' --gen %d --temperature 0 >'%s' 2>'%s'",
             broker, model, flag, message, MAX_TOKENS, out, err);
    REQUIRE(system(cmd) == 0);
    run_result r = {slurp(out), -1, -1};
    char *e = slurp(err);
    const char *p = strstr(e, "prompt: "), *g = strstr(e, "generated: ");
    if (p) r.prompt_tokens = atoi(p + 8);
    if (g) r.generated = atoi(g + 11);
    free(e);
    return r;
}

/* ---- server-sent events ---- */

/* Joins the content of every chunk of an SSE body; *done is set when the
 * last event is [DONE]; *usage_* from the usage chunk. */
static char *join_events(const char *body, int *done, int *prompt, int *completion, int *events)
{
    size_t cap = strlen(body) + 1, len = 0;
    char *text = calloc(cap, 1);
    REQUIRE(text);
    *done = 0;
    *events = 0;
    for (const char *line = body; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        if (strncmp(line, "data: ", 6) != 0) continue;
        (*events)++;
        *done = strncmp(line + 6, "[DONE]", 6) == 0;
        if (*done) continue;
        const char *end = strchr(line, '\n');
        cJSON *ev = cJSON_ParseWithLength(line + 6, end ? (size_t)(end - line - 6) : strlen(line + 6));
        CHECK_MSG(ev, "an event is not JSON: %.200s", line);
        const cJSON *choice = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(ev, "choices"), 0);
        const cJSON *content = path2(choice, "delta", "content");
        if (!content) content = cJSON_GetObjectItemCaseSensitive(choice, "text");
        if (cJSON_IsString(content)) {
            size_t n = strlen(content->valuestring);
            REQUIRE(len + n < cap);
            memcpy(text + len, content->valuestring, n);
            len += n;
        }
        if (cJSON_GetObjectItemCaseSensitive(ev, "usage")) usage_of(ev, prompt, completion);
        cJSON_Delete(ev);
    }
    return text;
}

/* ---- the parts ---- */

/* Whole and streamed chat replies and completions against run's. */
static void test_cross_check(const server *s)
{
    run_result chat = run_reference("--chat", "Hi");
    const char *turn = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                       "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";
    CHECK_EQ(chat.prompt_tokens, mb_test_count_tokens(turn));
    char args[2048], *body = NULL;
    chat_body(args, sizeof args, "Hi", MAX_TOKENS, 0);
    CHECK_EQ(curl(s, "/v1/chat/completions", args, &body), 200);
    cJSON *root = cJSON_Parse(body);
    const cJSON *content = path2(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(root, "choices"), 0), "message",
                                 "content");
    REQUIRE(cJSON_IsString(content));
    CHECK_MSG(same_as_run(content->valuestring, chat.text), "served \"%s\", run printed \"%s\"", content->valuestring,
              chat.text);
    int prompt, completion;
    usage_of(root, &prompt, &completion);
    CHECK_EQ(prompt, chat.prompt_tokens);
    CHECK_EQ(completion, chat.generated);
    printf("chat: %zu bytes (%d prompt tokens, %d generated), as run --chat prints\n", strlen(content->valuestring),
           prompt, completion);

    /* Streamed: the pieces joined are the whole reply. */
    char *sse = NULL;
    chat_body(args, sizeof args, "Hi", MAX_TOKENS, 1);
    CHECK_EQ(curl(s, "/v1/chat/completions", args, &sse), 200);
    int done, sp = -1, sc = -1, events;
    char *joined = join_events(sse, &done, &sp, &sc, &events);
    CHECK_MSG(strcmp(joined, content->valuestring) == 0, "streamed \"%s\" != \"%s\"", joined, chat.text);
    CHECK(done);
    CHECK_EQ(sp, prompt);
    CHECK_EQ(sc, completion);
    printf("chat streamed: %d events, [DONE] last\n", events);
    free(joined);
    free(sse);
    cJSON_Delete(root);
    free(body);

    /* /v1/completions: the prompt as run --prompt tokenizes it. */
    run_result raw = run_reference("--prompt", "Hello");
    snprintf(args, sizeof args, "%s -d '{\"prompt\":\"Hello\",\"max_tokens\":%d,\"temperature\":0}'", auth, MAX_TOKENS);
    CHECK_EQ(curl(s, "/v1/completions", args, &body), 200);
    root = cJSON_Parse(body);
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(root, "choices"), 0), "text");
    CHECK_MSG(cJSON_IsString(text) && same_as_run(text->valuestring, raw.text), "completion differs from run --prompt: %s",
              body);
    usage_of(root, &prompt, &completion);
    CHECK_EQ(prompt, raw.prompt_tokens);
    CHECK_EQ(completion, raw.generated);
    cJSON_Delete(root);
    free(body);
    free(chat.text);
    free(raw.text);
}

/* A second turn after the first: the first turn and its reply come from
 * the KV cache; a stop sequence cuts the reply before it. */
static void test_prefix_and_stop(const server *s)
{
    char args[4096], *body = NULL;
    chat_body(args, sizeof args, "Hi", 4, 0);
    CHECK_EQ(curl(s, "/v1/chat/completions", args, &body), 200);
    cJSON *root = cJSON_Parse(body);
    const cJSON *reply = path2(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(root, "choices"), 0), "message",
                               "content");
    REQUIRE(cJSON_IsString(reply));
    cJSON *turns = cJSON_CreateObject(), *msgs = cJSON_AddArrayToObject(turns, "messages"), *m;
    const char *const roles[] = {"user", "assistant", "user"}, *contents[] = {"Hi", reply->valuestring, "Again"};
    for (int i = 0; i < 3; i++) {
        cJSON_AddItemToArray(msgs, m = cJSON_CreateObject());
        cJSON_AddStringToObject(m, "role", roles[i]);
        cJSON_AddStringToObject(m, "content", contents[i]);
    }
    cJSON_AddNumberToObject(turns, "max_tokens", 4);
    char *json = cJSON_PrintUnformatted(turns), path[400];
    snprintf(path, sizeof path, "%s/turn2.json", tmpdir);
    FILE *f = fopen(path, "w");
    REQUIRE(f && json);
    fputs(json, f);
    fclose(f);
    free(json);
    cJSON_Delete(turns);
    cJSON_Delete(root);
    free(body);
    snprintf(args, sizeof args, "%s --data-binary '@%s'", auth, path);
    CHECK_EQ(curl(s, "/v1/chat/completions", args, &body), 200);
    root = cJSON_Parse(body);
    const cJSON *cached = path2(cJSON_GetObjectItemCaseSensitive(root, "usage"), "prompt_tokens_details", "cached_tokens");
    const char *turn = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                       "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";
    CHECK_MSG(cJSON_IsNumber(cached) && cached->valueint >= mb_test_count_tokens(turn), "no prompt prefix reused: %s",
              body);
    printf("second turn: %d prompt tokens from the KV cache\n", cJSON_IsNumber(cached) ? cached->valueint : -1);
    cJSON_Delete(root);
    free(body);

    /* Greedy "Hello" continues with a '"' run (see run): stop there. */
    run_result raw = run_reference("--prompt", "Hello");
    const char *quote = strchr(raw.text, '"');
    if (quote) {
        snprintf(args, sizeof args,
                 "%s -d '{\"prompt\":\"Hello\",\"max_tokens\":%d,\"temperature\":0,\"stop\":[\"\\\"\"]}'", auth,
                 MAX_TOKENS);
        CHECK_EQ(curl(s, "/v1/completions", args, &body), 200);
        root = cJSON_Parse(body);
        const cJSON *c = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(root, "choices"), 0);
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(c, "text");
        const cJSON *finish = cJSON_GetObjectItemCaseSensitive(c, "finish_reason");
        CHECK_MSG(cJSON_IsString(text) && strlen(text->valuestring) == (size_t)(quote - raw.text) &&
                      strncmp(text->valuestring, raw.text, (size_t)(quote - raw.text)) == 0,
                  "stop did not cut at the quote: %s", body);
        CHECK(cJSON_IsString(finish) && strcmp(finish->valuestring, "stop") == 0);
        cJSON_Delete(root);
        free(body);
    }
    free(raw.text);
}

static void test_errors(const server *s)
{
    char *body = NULL, args[2048];
    CHECK_EQ(curl(s, "/v1/models", "", &body), 401);
    check_error_body(body, "invalid_api_key");
    free(body);
    CHECK_EQ(curl(s, "/v1/models", "-H 'Authorization: Bearer wrong'", NULL), 401);
    CHECK_EQ(curl(s, "/health", "", NULL), 200);
    CHECK_EQ(curl(s, "/v1/nothing", auth, &body), 404);
    check_error_body(body, NULL);
    free(body);
    CHECK_EQ(curl(s, "/v1/chat/completions", auth, NULL), 405); /* GET */
    snprintf(args, sizeof args, "%s -d '{\"messages\":[{\"role\":\"user\"'", auth);
    CHECK_EQ(curl(s, "/v1/chat/completions", args, &body), 400);
    check_error_body(body, "invalid_json");
    free(body);
    snprintf(args, sizeof args, "%s -d '{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":\"hot\"}'",
             auth);
    CHECK_EQ(curl(s, "/v1/chat/completions", args, &body), 400);
    check_error_body(body, "invalid_type");
    CHECK(strstr(body, "\"param\":\"temperature\"") != NULL);
    free(body);
    /* Beyond the context (--max-ctx 4096 on this server). */
    snprintf(args, sizeof args, "%s -d '{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":5000}'", auth);
    CHECK_EQ(curl(s, "/v1/chat/completions", args, &body), 400);
    check_error_body(body, "context_length_exceeded");
    free(body);
    /* Above --max-body 64K. */
    char big[400];
    snprintf(big, sizeof big, "%s/big.json", tmpdir);
    FILE *f = fopen(big, "w");
    REQUIRE(f);
    fprintf(f, "{\"prompt\":\"");
    for (int i = 0; i < 100000; i++)
        fputc('a', f);
    fprintf(f, "\"}");
    fclose(f);
    snprintf(args, sizeof args, "%s --data-binary '@%s'", auth, big);
    CHECK_EQ(curl(s, "/v1/completions", args, &body), 413);
    check_error_body(body, "request_too_large");
    free(body);
}

/* Several clients at once: each gets the same greedy reply. */
static void test_concurrent(const server *s)
{
    enum { N = 4 };
    char cmd[4096], args[2048];
    chat_body(args, sizeof args, "Hi", MAX_TOKENS, 0);
    double t0 = now_s();
    snprintf(cmd, sizeof cmd, "cd '%s' && for i in 1 2 3 4; do curl -s -o par$i.json %s "
             "'http://127.0.0.1:%u/v1/chat/completions' & done; wait", tmpdir, args, s->port);
    REQUIRE(system(cmd) == 0);
    double dt = now_s() - t0;
    char *first = NULL;
    for (int i = 1; i <= N; i++) {
        char path[400];
        snprintf(path, sizeof path, "%s/par%d.json", tmpdir, i);
        char *body = slurp(path);
        cJSON *root = cJSON_Parse(body);
        const cJSON *c = path2(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(root, "choices"), 0), "message",
                               "content");
        CHECK_MSG(cJSON_IsString(c), "client %d got %s", i, body);
        if (cJSON_IsString(c) && !first) first = strdup(c->valuestring);
        if (cJSON_IsString(c) && first) CHECK(strcmp(first, c->valuestring) == 0);
        cJSON_Delete(root);
        free(body);
    }
    printf("%d clients at once: all answered in %.3f s (%.1f requests/s, %d tokens each)\n", N, dt, N / dt, MAX_TOKENS);
    free(first);
}

/* A curl that streams or waits for a long reply in the background, until
 * killed. */
static pid_t curl_background(const server *s, const char *args)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "exec curl -sN -o /dev/null %s 'http://127.0.0.1:%u/v1/chat/completions'", args, s->port);
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    return pid;
}

static void curl_kill(pid_t pid)
{
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
}

/* Waits (up to 60 s: sanitizer builds on a loaded machine are slow) until
 * /metrics shows line. */
static void wait_metric(const server *s, const char *line)
{
    double t0 = now_s();
    for (;;) {
        char *body = NULL;
        curl(s, "/metrics", auth, &body);
        int found = strstr(body, line) != NULL;
        free(body);
        if (found) return;
        REQUIRE(now_s() - t0 < 60);
        usleep(20000);
    }
}

/* A client that leaves mid-stream or while waiting for a whole reply
 * cancels its generation: the next request is answered at once. */
static void test_disconnect(const server *s)
{
    char args[2048], *body = NULL;
    for (int stream = 1; stream >= 0; stream--) {
        chat_body(args, sizeof args, "Hi", 3000, stream);
        pid_t client = curl_background(s, args);
        wait_metric(s, "mb_requests_running 1");
        curl_kill(client);
        double t0 = now_s();
        chat_body(args, sizeof args, "Hi", 2, 0);
        CHECK_EQ(curl(s, "/v1/chat/completions", args, NULL), 200);
        double dt = now_s() - t0;
        printf("%s client left: the next request answered in %.3f s\n", stream ? "streaming" : "waiting", dt);
        CHECK_MSG(dt < 10.0, "the abandoned generation went on (%.3f s; 3000 tokens take longer)", dt);
    }
    CHECK_EQ(curl(s, "/metrics", auth, &body), 200);
    CHECK(strstr(body, "mb_queue_length 0") != NULL);
    CHECK(strstr(body, "mb_queue_limit 8") != NULL);
    CHECK(strstr(body, "mb_requests_total{outcome=\"cancelled\"} 2") != NULL);
    CHECK_MSG(strstr(body, "mb_ipc_calls_total{backend=") && strstr(body, "phase=\"decode\"}"), "no IPC statistics:\n%s",
              body);
    free(body);
}

/* --queue-max 1: one generating, one waiting, the third is refused. */
static void test_queue_full(void)
{
    server s;
    server_start(&s, "small", "--api-key " KEY " --queue-max 1 --max-ctx 4096");
    char args[2048], *body = NULL;
    chat_body(args, sizeof args, "Hi", 3000, 1);
    pid_t running = curl_background(&s, args);
    wait_metric(&s, "mb_requests_running 1");
    pid_t waiting = curl_background(&s, args);
    wait_metric(&s, "mb_queue_length 1");
    chat_body(args, sizeof args, "Hi", 2, 0);
    CHECK_EQ(curl(&s, "/v1/chat/completions", args, &body), 503);
    check_error_body(body, "queue_full");
    free(body);
    curl_kill(running);
    curl_kill(waiting);
    server_stop(&s);
}

static void test_openai_client(const server *s, const char *ref_dir)
{
    char dir[1024], cmd[4096];
    snprintf(dir, sizeof dir, "%s/node_modules/openai", ref_dir);
    struct stat sb;
    if (!have("node") || stat(dir, &sb) != 0) {
        printf("SKIP openai client: node or %s missing ((cd %s && npm ci))\n", dir, ref_dir);
        return;
    }
    snprintf(cmd, sizeof cmd, "cd '%s' && node openai_client.js 'http://127.0.0.1:%u/v1' '%s' Hi %d >'%s/node.out'",
             ref_dir, s->port, KEY, MAX_TOKENS, tmpdir);
    CHECK(system(cmd) == 0);
    char out[400];
    snprintf(out, sizeof out, "%s/node.out", tmpdir);
    char *js = slurp(out);
    cJSON *root = cJSON_Parse(js);
    REQUIRE(root);
    run_result chat = run_reference("--chat", "Hi"), raw = run_reference("--prompt", "Hi");
    const char *pairs[][2] = {{"chat", "chat_stream"}, {"completion", "completion_stream"}};
    for (int i = 0; i < 2; i++) {
        const cJSON *whole = cJSON_GetObjectItemCaseSensitive(root, pairs[i][0]);
        const cJSON *streamed = cJSON_GetObjectItemCaseSensitive(root, pairs[i][1]);
        const char *want = i == 0 ? chat.text : raw.text;
        const cJSON *wt = cJSON_GetObjectItemCaseSensitive(whole, "text"), *st = cJSON_GetObjectItemCaseSensitive(streamed, "text");
        CHECK_MSG(cJSON_IsString(wt) && same_as_run(wt->valuestring, want), "openai %s: %s", pairs[i][0], js);
        CHECK_MSG(cJSON_IsString(st) && same_as_run(st->valuestring, want), "openai %s: %s", pairs[i][1], js);
        int p, c;
        usage_of(whole, &p, &c);
        CHECK_EQ(p, i == 0 ? chat.prompt_tokens : raw.prompt_tokens);
        CHECK_EQ(c, i == 0 ? chat.generated : raw.generated);
    }
    int p, c;
    usage_of(cJSON_GetObjectItemCaseSensitive(root, "chat_stream"), &p, &c);
    CHECK_EQ(p, chat.prompt_tokens);
    CHECK_EQ(c, chat.generated);
    const cJSON *status = cJSON_GetObjectItemCaseSensitive(root, "wrong_key_status");
    CHECK(cJSON_IsNumber(status) && status->valueint == 401);
    CHECK(strstr(js, "\"models\":[\"model\"]") != NULL);
    printf("openai client: chat and completion, whole and streamed, agree with run\n");
    cJSON_Delete(root);
    free(js);
    free(chat.text);
    free(raw.text);
}

int main(int argc, char **argv)
{
    broker = getenv("MB_BROKER_BIN");
    const char *data = getenv("MB_TEST_DATA");
    if (!broker || !data || argc < 2) MB_TEST_SKIP("MB_BROKER_BIN / MB_TEST_DATA / the ref folder not given");
    int with_curl = have("curl");
    if (!with_curl && !have("node")) MB_TEST_SKIP("neither curl nor node is installed");
    snprintf(tmpdir, sizeof tmpdir, "/tmp/mb-serve-XXXXXX");
    REQUIRE(mkdtemp(tmpdir));
    snprintf(model, sizeof model, "%s/model", tmpdir);
    mb_test_text_model(data, model);
    server s;
    server_start(&s, "main", "--api-key " KEY " --queue-max 8 --max-ctx 4096 --max-body 64K");
    if (with_curl) {
        test_cross_check(&s);
        test_prefix_and_stop(&s);
        test_errors(&s);
        test_concurrent(&s);
        test_disconnect(&s);
    } else {
        printf("SKIP curl parts: curl missing\n");
    }
    test_openai_client(&s, argv[1]);
    server_stop(&s);
    if (with_curl) test_queue_full();
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    CHECK(system(cmd) == 0);
    return mb_test_finish("test_serve");
}
