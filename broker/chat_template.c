/* Chat template families and their renderers. Each renderer follows its
 * Jinja template line by line for conversations of system, user and
 * assistant messages (tools are out of scope); the comments quote the
 * template expression each branch reproduces. */
#include "broker/chat_template.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- a growable string ---- */

typedef struct {
    char *p;
    size_t len, cap;
    int failed;
} strbuf;

static void sb_addn(strbuf *b, const char *s, size_t n)
{
    if (b->failed) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->failed = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_add(strbuf *b, const char *s)
{
    sb_addn(b, s, strlen(s));
}

/* ---- detection ---- */

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* The literal system message a ChatML template adds when the conversation
 * has none: the text between "<|im_start|>system" plus a newline (a real one
 * or the two characters \n of a Jinja string) and "<|im_end|>", when it is
 * plain text rather than an expression such as messages[0].content. */
static char *find_default_system(const char *tmpl)
{
    static const char head[] = "<|im_start|>system";
    for (const char *p = strstr(tmpl, head); p; p = strstr(p + 1, head)) {
        const char *q = p + strlen(head);
        if (q[0] == '\n')
            q += 1;
        else if (q[0] == '\\' && q[1] == 'n')
            q += 2;
        else
            continue;
        const char *end = strstr(q, "<|im_end|>");
        if (!end || end == q) continue;
        size_t n = (size_t)(end - q);
        if (memchr(q, '\'', n) || memchr(q, '"', n) || memchr(q, '{', n) || memchr(q, '+', n))
            continue;
        char *text = malloc(n + 1);
        if (!text) return NULL;
        /* Jinja string escapes that can appear in such a message. */
        size_t w = 0;
        for (size_t i = 0; i < n; i++) {
            if (q[i] == '\\' && i + 1 < n && q[i + 1] == 'n') {
                text[w++] = '\n';
                i++;
            } else {
                text[w++] = q[i];
            }
        }
        text[w] = '\0';
        return text;
    }
    return NULL;
}

mb_status mb_chat_template_init(mb_chat_template *out, const char *template_text,
                                const char *model_type, const char *bos, const char *eos,
                                char *err, size_t err_cap)
{
    if (!out) return MB_STATUS_INVALID_ARG;
    mb_chat_template t;
    memset(&t, 0, sizeof t);
    if (template_text) {
        if (strstr(template_text, "<|im_start|>")) {
            t.format = MB_CHAT_FORMAT_CHATML;
            t.think = strstr(template_text, "</think>") != NULL;
            t.default_system = find_default_system(template_text);
        } else if (strstr(template_text, "[INST]")) {
            t.format = MB_CHAT_FORMAT_MISTRAL;
            t.inst_space = strstr(template_text, "' [INST] '") != NULL;
            t.system_in_first = strstr(template_text, "system_message") != NULL;
        } else {
            if (err && err_cap)
                snprintf(err, err_cap,
                         "the chat template is of a family this build cannot render (it knows "
                         "ChatML, <|im_start|>, and Mistral's [INST])");
            return MB_STATUS_UNSUPPORTED;
        }
    } else if (model_type && (strcmp(model_type, "qwen2_moe") == 0 || strcmp(model_type, "qwen3_moe") == 0)) {
        t.format = MB_CHAT_FORMAT_CHATML;
        t.think = strcmp(model_type, "qwen3_moe") == 0;
    } else if (model_type && strcmp(model_type, "mixtral") == 0) {
        t.format = MB_CHAT_FORMAT_MISTRAL;
        t.inst_space = 1;
        t.system_in_first = 1;
    } else {
        if (err && err_cap)
            snprintf(err, err_cap, "no chat template (tokenizer_config.json has no chat_template)");
        return MB_STATUS_UNSUPPORTED;
    }
    t.bos = dup_or_null(bos ? bos : "");
    t.eos = dup_or_null(eos ? eos : "");
    if (!t.bos || !t.eos) {
        mb_chat_template_fini(&t);
        return MB_STATUS_NOMEM;
    }
    *out = t;
    return MB_STATUS_OK;
}

void mb_chat_template_fini(mb_chat_template *t)
{
    if (!t) return;
    free(t->default_system);
    free(t->bos);
    free(t->eos);
    memset(t, 0, sizeof *t);
}

mb_status mb_chat_template_read(const char *tokenizer_path, char **text, char *err,
                                size_t err_cap)
{
    if (!tokenizer_path || !text) return MB_STATUS_INVALID_ARG;
    *text = NULL;
    char path[4096];
    struct stat sb;
    if (stat(tokenizer_path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        snprintf(path, sizeof path, "%s/tokenizer_config.json", tokenizer_path);
    } else {
        const char *slash = strrchr(tokenizer_path, '/');
        int dir_len = slash ? (int)(slash - tokenizer_path) : 1;
        snprintf(path, sizeof path, "%.*s/tokenizer_config.json", dir_len,
                 slash ? tokenizer_path : ".");
    }
    FILE *f = fopen(path, "rb");
    if (!f) return MB_STATUS_OK;
    char *data = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 65536;
            char *p = realloc(data, cap);
            if (!p) {
                free(data);
                fclose(f);
                return MB_STATUS_NOMEM;
            }
            data = p;
        }
        size_t got = fread(data + len, 1, cap - len - 1, f);
        len += got;
        if (got == 0) break;
    }
    fclose(f);
    data[len] = '\0';
    cJSON *root = cJSON_ParseWithLength(data, len);
    free(data);
    if (!root) {
        if (err && err_cap) snprintf(err, err_cap, "%s: malformed JSON", path);
        return MB_STATUS_FORMAT;
    }
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(root, "chat_template");
    const char *found = NULL;
    if (cJSON_IsString(ct)) {
        found = ct->valuestring;
    } else if (cJSON_IsArray(ct)) { /* [{"name": "default", "template": "..."}, ...] */
        const cJSON *item;
        cJSON_ArrayForEach(item, ct)
        {
            const cJSON *name = cJSON_GetObjectItemCaseSensitive(item, "name");
            const cJSON *tmpl = cJSON_GetObjectItemCaseSensitive(item, "template");
            if (cJSON_IsString(name) && strcmp(name->valuestring, "default") == 0 &&
                cJSON_IsString(tmpl))
                found = tmpl->valuestring;
        }
    }
    mb_status st = MB_STATUS_OK;
    if (found && !(*text = strdup(found))) st = MB_STATUS_NOMEM;
    cJSON_Delete(root);
    return st;
}

/* ---- rendering ---- */

static int starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* Appends s[0..n) with leading (lead) and trailing (trail) newlines
 * removed: Python's lstrip('\n') / rstrip('\n'). */
static void add_stripped(strbuf *b, const char *s, size_t n, int lead, int trail)
{
    while (lead && n > 0 && *s == '\n') {
        s++;
        n--;
    }
    while (trail && n > 0 && s[n - 1] == '\n')
        n--;
    sb_addn(b, s, n);
}

/* Qwen3's assistant message. content.split('</think>') gives the reply
 * (after the last </think>, lstrip('\n')) and the reasoning (before the first
 * </think>, after the last <think>, stripped of newlines). The template keeps
 * a <think> block only after the last user query, and there only for the last
 * message or one with reasoning. */
static void chatml_assistant(strbuf *b, const char *content, int after_last_query, int last)
{
    const char *first_close = strstr(content, "</think>");
    const char *body = content, *reason = "";
    size_t reason_len = 0;
    if (first_close) {
        const char *last_close = first_close;
        for (const char *p; (p = strstr(last_close + 1, "</think>"));)
            last_close = p;
        body = last_close + strlen("</think>");
        while (*body == '\n')
            body++;
        size_t n = (size_t)(first_close - content);
        while (n > 0 && content[n - 1] == '\n')
            n--;
        const char *start = content;
        for (const char *p = content; (p = strstr(p, "<think>")) && p + strlen("<think>") <= content + n; p++)
            start = p + strlen("<think>");
        while (start < content + n && *start == '\n')
            start++;
        reason = start;
        reason_len = (size_t)(content + n - start);
    }
    sb_add(b, "<|im_start|>assistant\n");
    if (after_last_query && (last || reason_len > 0)) {
        sb_add(b, "<think>\n");
        add_stripped(b, reason, reason_len, 1, 1);
        sb_add(b, "\n</think>\n\n");
        add_stripped(b, body, strlen(body), 1, 0);
    } else {
        sb_add(b, body);
    }
}

static mb_status render_chatml(const mb_chat_template *t, const mb_chat_message *m, size_t n,
                               int add_generation_prompt, strbuf *b, char *err, size_t err_cap)
{
    int has_system = n > 0 && strcmp(m[0].role, "system") == 0;
    if (n > 0 && !has_system && t->default_system) {
        sb_add(b, "<|im_start|>system\n");
        sb_add(b, t->default_system);
        sb_add(b, "<|im_end|>\n");
    }
    /* Qwen3: ns.last_query_index, the last user message that is not a tool
     * response. */
    size_t last_query = n ? n - 1 : 0;
    for (size_t i = n; i-- > 0;) {
        if (strcmp(m[i].role, "user") == 0 &&
            !(starts_with(m[i].content, "<tool_response>") &&
              ends_with(m[i].content, "</tool_response>"))) {
            last_query = i;
            break;
        }
    }
    for (size_t i = 0; i < n; i++) {
        const char *role = m[i].role;
        if (strcmp(role, "user") == 0 || strcmp(role, "system") == 0) {
            /* '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' */
            sb_add(b, "<|im_start|>");
            sb_add(b, role);
            sb_add(b, "\n");
            sb_add(b, m[i].content);
            sb_add(b, "<|im_end|>\n");
        } else if (strcmp(role, "assistant") == 0) {
            if (t->think) {
                chatml_assistant(b, m[i].content, i > last_query, i == n - 1);
            } else {
                sb_add(b, "<|im_start|>assistant\n");
                sb_add(b, m[i].content);
            }
            sb_add(b, "<|im_end|>\n");
        } else {
            if (err && err_cap) snprintf(err, err_cap, "unknown chat role '%s'", role);
            return MB_STATUS_INVALID_ARG;
        }
    }
    if (add_generation_prompt) sb_add(b, "<|im_start|>assistant\n");
    return MB_STATUS_OK;
}

static mb_status render_mistral(const mb_chat_template *t, const mb_chat_message *m, size_t n,
                                strbuf *b, char *err, size_t err_cap)
{
    const char *system = NULL;
    if (n > 0 && strcmp(m[0].role, "system") == 0 && t->system_in_first) {
        system = m[0].content;
        m++;
        n--;
    }
    sb_add(b, t->bos);
    for (size_t i = 0; i < n; i++) {
        int user = strcmp(m[i].role, "user") == 0;
        if (user != (i % 2 == 0)) {
            if (err && err_cap)
                snprintf(err, err_cap,
                         "After the optional system message, conversation roles must alternate "
                         "user/assistant/user/assistant/...");
            return MB_STATUS_INVALID_ARG;
        }
        if (user) {
            sb_add(b, t->inst_space ? " [INST] " : "[INST] ");
            if (i == 0 && system) {
                sb_add(b, system);
                sb_add(b, "\n\n");
            }
            sb_add(b, m[i].content);
            sb_add(b, " [/INST]");
        } else if (strcmp(m[i].role, "assistant") == 0) {
            if (t->inst_space) sb_add(b, " ");
            sb_add(b, m[i].content);
            sb_add(b, t->eos);
        } else {
            if (err && err_cap)
                snprintf(err, err_cap,
                         "Only user and assistant roles are supported, with the exception of an "
                         "initial optional system message!");
            return MB_STATUS_INVALID_ARG;
        }
    }
    return MB_STATUS_OK;
}

mb_status mb_chat_render(const mb_chat_template *t, const mb_chat_message *messages, size_t n,
                         int add_generation_prompt, char **text, size_t *bytes, char *err,
                         size_t err_cap)
{
    if (!t || (n && !messages) || !text) return MB_STATUS_INVALID_ARG;
    for (size_t i = 0; i < n; i++)
        if (!messages[i].role || !messages[i].content) return MB_STATUS_INVALID_ARG;
    strbuf b = {0};
    sb_add(&b, "");
    mb_status st = t->format == MB_CHAT_FORMAT_CHATML
                       ? render_chatml(t, messages, n, add_generation_prompt, &b, err, err_cap)
                       : render_mistral(t, messages, n, &b, err, err_cap);
    if (st == MB_STATUS_OK && b.failed) st = MB_STATUS_NOMEM;
    if (st != MB_STATUS_OK) {
        free(b.p);
        return st;
    }
    *text = b.p;
    if (bytes) *bytes = b.len;
    return MB_STATUS_OK;
}
