/* JSON body -> mb_serve_request (request.h): every field checked for its
 * type and range before it is stored, every error named by its field. */
#include "broker/serve/request.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static mb_status fail(mb_serve_error *err, mb_status st, const char *param, const char *code,
                      const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static mb_status fail(mb_serve_error *err, mb_status st, const char *param, const char *code,
                      const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    snprintf(err->param, sizeof err->param, "%s", param ? param : "");
    snprintf(err->code, sizeof err->code, "%s", code ? code : "");
    return st;
}

static char *dup_bytes(const char *s, size_t n)
{
    char *copy = malloc(n + 1);
    if (copy) {
        memcpy(copy, s, n);
        copy[n] = '\0';
    }
    return copy;
}

/* ---- scalar fields: absent and null both mean "not given" ---- */

static int absent(const cJSON *v)
{
    return v == NULL || cJSON_IsNull(v);
}

static mb_status get_number(const cJSON *root, const char *name, double min, double max,
                            unsigned bit, unsigned *given, double *out, mb_serve_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    if (absent(v)) return MB_STATUS_OK;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return fail(err, MB_STATUS_CONFIG, name, "invalid_type", "'%s' must be a number", name);
    if (v->valuedouble < min || v->valuedouble > max)
        return fail(err, MB_STATUS_CONFIG, name, "invalid_value", "'%s' must be between %g and %g, got %g",
                    name, min, max, v->valuedouble);
    *out = v->valuedouble;
    *given |= bit;
    return MB_STATUS_OK;
}

/* An integral number in [min, max]. */
static mb_status get_integer(const cJSON *v, const char *name, double min, double max, double *out,
                             mb_serve_error *err)
{
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || floor(v->valuedouble) != v->valuedouble)
        return fail(err, MB_STATUS_CONFIG, name, "invalid_type", "'%s' must be an integer", name);
    if (v->valuedouble < min || v->valuedouble > max)
        return fail(err, MB_STATUS_CONFIG, name, "invalid_value", "'%s' must be between %.0f and %.0f, got %.0f",
                    name, min, max, v->valuedouble);
    *out = v->valuedouble;
    return MB_STATUS_OK;
}

static mb_status get_u32(const cJSON *root, const char *name, uint32_t min, uint32_t max, unsigned bit,
                         mb_serve_request *r, uint32_t *out, mb_serve_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    double d = 0;
    if (absent(v)) return MB_STATUS_OK;
    mb_status st = get_integer(v, name, min, max, &d, err);
    if (st != MB_STATUS_OK) return st;
    *out = (uint32_t)d;
    r->given |= bit;
    return MB_STATUS_OK;
}

static mb_status get_bool(const cJSON *root, const char *name, int *out, mb_serve_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, name);
    if (absent(v)) return MB_STATUS_OK;
    if (!cJSON_IsBool(v))
        return fail(err, MB_STATUS_CONFIG, name, "invalid_type", "'%s' must be true or false", name);
    *out = cJSON_IsTrue(v);
    return MB_STATUS_OK;
}

/* seed: any integer JSON can carry exactly (|x| <= 2^53); negative ones wrap
 * to uint64, so every seed names one generator state. */
static mb_status get_seed(const cJSON *root, mb_serve_request *r, mb_serve_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "seed");
    double d = 0;
    if (absent(v)) return MB_STATUS_OK;
    mb_status st = get_integer(v, "seed", -9007199254740992.0, 9007199254740992.0, &d, err);
    if (st != MB_STATUS_OK) return st;
    r->seed = (uint64_t)(int64_t)d;
    r->given |= MB_SERVE_GIVEN_SEED;
    return MB_STATUS_OK;
}

static mb_status add_stop(mb_serve_request *r, const cJSON *v, mb_serve_error *err)
{
    if (!cJSON_IsString(v))
        return fail(err, MB_STATUS_CONFIG, "stop", "invalid_type", "'stop' must be a string or an array of strings");
    size_t n = strlen(v->valuestring);
    if (n == 0) return MB_STATUS_OK; /* an empty stop would end every reply at once: ignore it */
    if (n > MB_SERVE_MAX_STOP_BYTES)
        return fail(err, MB_STATUS_CONFIG, "stop", "invalid_value", "a stop sequence may be at most %u bytes",
                    MB_SERVE_MAX_STOP_BYTES);
    if (r->n_stop >= MB_SERVE_MAX_STOPS)
        return fail(err, MB_STATUS_CONFIG, "stop", "invalid_value", "at most %u stop sequences",
                    MB_SERVE_MAX_STOPS);
    if (!(r->stop[r->n_stop] = dup_bytes(v->valuestring, n))) return MB_STATUS_NOMEM;
    r->n_stop++;
    return MB_STATUS_OK;
}

static mb_status get_stop(const cJSON *root, mb_serve_request *r, mb_serve_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "stop");
    if (absent(v)) return MB_STATUS_OK;
    if (!cJSON_IsArray(v)) return add_stop(r, v, err);
    const cJSON *item;
    cJSON_ArrayForEach(item, v)
    {
        mb_status st = add_stop(r, item, err);
        if (st != MB_STATUS_OK) return st;
    }
    return MB_STATUS_OK;
}

/* ---- chat messages ---- */

/* content: a string, or an array of parts of which only {"type":"text"}
 * ones are understood (their texts are joined). */
static mb_status message_content(const cJSON *c, size_t index, char **out, mb_serve_error *err)
{
    if (cJSON_IsString(c)) return (*out = dup_bytes(c->valuestring, strlen(c->valuestring))) ? MB_STATUS_OK
                                                                                            : MB_STATUS_NOMEM;
    if (absent(c)) return (*out = dup_bytes("", 0)) ? MB_STATUS_OK : MB_STATUS_NOMEM;
    if (!cJSON_IsArray(c))
        return fail(err, MB_STATUS_CONFIG, "messages", "invalid_type",
                    "messages[%zu].content must be a string or an array of text parts", index);
    size_t len = 0;
    const cJSON *part;
    cJSON_ArrayForEach(part, c)
    {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsString(type) || strcmp(type->valuestring, "text") != 0 || !cJSON_IsString(text))
            return fail(err, MB_STATUS_UNSUPPORTED, "messages", "unsupported_content",
                        "messages[%zu].content: only parts {\"type\":\"text\",\"text\":...} are supported", index);
        len += strlen(text->valuestring);
    }
    char *joined = malloc(len + 1);
    if (!joined) return MB_STATUS_NOMEM;
    size_t at = 0;
    cJSON_ArrayForEach(part, c)
    {
        const char *s = cJSON_GetObjectItemCaseSensitive(part, "text")->valuestring;
        size_t n = strlen(s);
        memcpy(joined + at, s, n);
        at += n;
    }
    joined[at] = '\0';
    *out = joined;
    return MB_STATUS_OK;
}

/* OpenAI's "developer" role is its newer name for "system". */
static const char *message_role(const cJSON *role)
{
    static const char *const roles[] = {"system", "user", "assistant"};
    if (!cJSON_IsString(role)) return NULL;
    if (strcmp(role->valuestring, "developer") == 0) return "system";
    for (size_t i = 0; i < sizeof roles / sizeof roles[0]; i++)
        if (strcmp(role->valuestring, roles[i]) == 0) return roles[i];
    return NULL;
}

static mb_status get_messages(const cJSON *root, mb_serve_request *r, mb_serve_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "messages");
    if (absent(v)) return fail(err, MB_STATUS_CONFIG, "messages", "missing_required_parameter",
                               "'messages' is required");
    if (!cJSON_IsArray(v))
        return fail(err, MB_STATUS_CONFIG, "messages", "invalid_type", "'messages' must be an array");
    int n = cJSON_GetArraySize(v);
    if (n <= 0) return fail(err, MB_STATUS_CONFIG, "messages", "invalid_value", "'messages' must not be empty");
    if ((unsigned)n > MB_SERVE_MAX_MESSAGES)
        return fail(err, MB_STATUS_CONFIG, "messages", "invalid_value", "at most %u messages",
                    MB_SERVE_MAX_MESSAGES);
    if (!(r->messages = calloc((size_t)n, sizeof *r->messages))) return MB_STATUS_NOMEM;
    const cJSON *m;
    cJSON_ArrayForEach(m, v)
    {
        size_t i = r->n_messages;
        if (!cJSON_IsObject(m))
            return fail(err, MB_STATUS_CONFIG, "messages", "invalid_type", "messages[%zu] must be an object", i);
        const char *role = message_role(cJSON_GetObjectItemCaseSensitive(m, "role"));
        if (!role)
            return fail(err, MB_STATUS_UNSUPPORTED, "messages", "invalid_role",
                        "messages[%zu].role must be \"system\", \"developer\", \"user\" or \"assistant\"", i);
        char *content = NULL;
        mb_status st = message_content(cJSON_GetObjectItemCaseSensitive(m, "content"), i, &content, err);
        if (st != MB_STATUS_OK) return st;
        r->messages[i] = (mb_chat_message){role, content};
        r->n_messages++;
    }
    return MB_STATUS_OK;
}

/* prompt: a string, or an array holding exactly one string (token-id
 * prompts and batches are not served). */
static mb_status get_prompt(const cJSON *root, mb_serve_request *r, mb_serve_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    if (absent(v)) return fail(err, MB_STATUS_CONFIG, "prompt", "missing_required_parameter", "'prompt' is required");
    if (cJSON_IsArray(v) && cJSON_GetArraySize(v) == 1) v = cJSON_GetArrayItem(v, 0);
    if (!cJSON_IsString(v))
        return fail(err, MB_STATUS_UNSUPPORTED, "prompt", "invalid_type",
                    "'prompt' must be a string (or an array of one string)");
    return (r->prompt = dup_bytes(v->valuestring, strlen(v->valuestring))) ? MB_STATUS_OK : MB_STATUS_NOMEM;
}

/* Asks this server cannot answer as asked: refused, not ignored. */
static mb_status refuse_unsupported(const cJSON *root, mb_serve_error *err)
{
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(root, "n");
    if (!absent(n) && !(cJSON_IsNumber(n) && n->valuedouble == 1))
        return fail(err, MB_STATUS_UNSUPPORTED, "n", "unsupported_value", "only n = 1 is supported");
    const cJSON *lp = cJSON_GetObjectItemCaseSensitive(root, "logprobs");
    if (!absent(lp) && !cJSON_IsFalse(lp))
        return fail(err, MB_STATUS_UNSUPPORTED, "logprobs", "unsupported_value", "logprobs are not supported");
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(root, "tools");
    if (!absent(tools) && !(cJSON_IsArray(tools) && cJSON_GetArraySize(tools) == 0))
        return fail(err, MB_STATUS_UNSUPPORTED, "tools", "unsupported_value", "tools are not supported");
    return MB_STATUS_OK;
}

static mb_status get_stream(const cJSON *root, mb_serve_request *r, mb_serve_error *err)
{
    mb_status st = get_bool(root, "stream", &r->stream, err);
    const cJSON *so = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
    if (st != MB_STATUS_OK || absent(so)) return st;
    if (!cJSON_IsObject(so))
        return fail(err, MB_STATUS_CONFIG, "stream_options", "invalid_type", "'stream_options' must be an object");
    return get_bool(so, "include_usage", &r->include_usage, err);
}

static mb_status get_max_tokens(const cJSON *root, mb_serve_request *r, mb_serve_error *err)
{
    const char *name = "max_tokens";
    if (absent(cJSON_GetObjectItemCaseSensitive(root, name)) && r->kind == MB_SERVE_KIND_CHAT)
        name = "max_completion_tokens"; /* the chat endpoint's newer name */
    return get_u32(root, name, 1, MB_SERVE_MAX_TOKENS, MB_SERVE_GIVEN_MAX_TOKENS, r, &r->max_tokens, err);
}

static mb_status parse_fields(const cJSON *root, mb_serve_request *r, mb_serve_error *err)
{
    mb_status st = refuse_unsupported(root, err);
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (st == MB_STATUS_OK && !absent(model)) {
        if (!cJSON_IsString(model))
            return fail(err, MB_STATUS_CONFIG, "model", "invalid_type", "'model' must be a string");
        if (!(r->model = dup_bytes(model->valuestring, strlen(model->valuestring)))) return MB_STATUS_NOMEM;
    }
    if (st == MB_STATUS_OK) st = r->kind == MB_SERVE_KIND_CHAT ? get_messages(root, r, err) : get_prompt(root, r, err);
    if (st == MB_STATUS_OK) st = get_stream(root, r, err);
    if (st == MB_STATUS_OK) st = get_max_tokens(root, r, err);
    if (st == MB_STATUS_OK)
        st = get_number(root, "temperature", 0, 2, MB_SERVE_GIVEN_TEMPERATURE, &r->given, &r->temperature, err);
    if (st == MB_STATUS_OK) st = get_number(root, "top_p", 0, 1, MB_SERVE_GIVEN_TOP_P, &r->given, &r->top_p, err);
    if (st == MB_STATUS_OK)
        st = get_u32(root, "top_k", 0, MB_SERVE_MAX_TOKENS, MB_SERVE_GIVEN_TOP_K, r, &r->top_k, err);
    if (st == MB_STATUS_OK) st = get_number(root, "min_p", 0, 1, MB_SERVE_GIVEN_MIN_P, &r->given, &r->min_p, err);
    if (st == MB_STATUS_OK)
        st = get_number(root, "repeat_penalty", 0.01, 100, MB_SERVE_GIVEN_REPEAT_PENALTY, &r->given,
                        &r->repeat_penalty, err);
    if (st == MB_STATUS_OK) st = get_seed(root, r, err);
    if (st == MB_STATUS_OK) st = get_stop(root, r, err);
    return st;
}

mb_status mb_serve_request_parse(mb_serve_kind kind, const char *body, size_t bytes,
                                 mb_serve_request *out, mb_serve_error *err)
{
    if (!body || !out || !err) return MB_STATUS_INVALID_ARG;
    memset(out, 0, sizeof *out);
    memset(err, 0, sizeof *err);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, bytes, &end, 0);
    if (!root) return fail(err, MB_STATUS_FORMAT, NULL, "invalid_json", "the body is not valid JSON");
    mb_status st = MB_STATUS_OK;
    for (const char *p = end; p && p < body + bytes && st == MB_STATUS_OK; p++)
        if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n')
            st = fail(err, MB_STATUS_FORMAT, NULL, "invalid_json", "the body has text after its JSON value");
    if (st == MB_STATUS_OK && !cJSON_IsObject(root))
        st = fail(err, MB_STATUS_FORMAT, NULL, "invalid_json", "the body must be a JSON object");
    out->kind = kind;
    if (st == MB_STATUS_OK) st = parse_fields(root, out, err);
    cJSON_Delete(root);
    if (st == MB_STATUS_NOMEM) fail(err, st, NULL, NULL, "out of memory");
    if (st != MB_STATUS_OK) mb_serve_request_free(out);
    return st;
}

void mb_serve_request_free(mb_serve_request *r)
{
    if (!r) return;
    free(r->model);
    for (size_t i = 0; i < r->n_messages; i++)
        free((char *)r->messages[i].content);
    free(r->messages);
    free(r->prompt);
    for (size_t i = 0; i < r->n_stop; i++)
        free(r->stop[i]);
    memset(r, 0, sizeof *r);
}
