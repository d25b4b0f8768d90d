/* The bodies the server answers with, in the OpenAI API's shapes: errors,
 * chat.completion / text_completion objects, their streamed chunks as
 * server-sent events, and the model list. Built with cJSON so every string
 * is escaped. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "broker/serve/serve_internal.h"

/* Appends the JSON text of root (deleted here) to b; NULL root marks b failed. */
static void put_json(mb_serve_buf *b, cJSON *root)
{
    char *text = root ? cJSON_PrintUnformatted(root) : NULL;
    if (text)
        mb_serve_buf_put(b, text, strlen(text));
    else
        b->failed = 1;
    free(text);
    cJSON_Delete(root);
}

/* A string of n bytes that may hold NULs or lack a terminator. */
static cJSON *string_n(const char *s, size_t n)
{
    char *copy = malloc(n + 1);
    if (!copy) return NULL;
    memcpy(copy, s, n);
    copy[n] = '\0';
    cJSON *v = cJSON_CreateString(copy);
    free(copy);
    return v;
}

void mb_serve_reply_error(mb_serve_buf *b, const char *message, const char *type, const char *param,
                          const char *code)
{
    cJSON *root = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(root, "error");
    cJSON_AddStringToObject(e, "message", message);
    cJSON_AddStringToObject(e, "type", type);
    if (param && param[0])
        cJSON_AddStringToObject(e, "param", param);
    else
        cJSON_AddNullToObject(e, "param");
    if (code && code[0])
        cJSON_AddStringToObject(e, "code", code);
    else
        cJSON_AddNullToObject(e, "code");
    put_json(b, root);
}

static const char *finish_name(mb_serve_finish f)
{
    return f == MB_SERVE_FINISH_STOP ? "stop" : f == MB_SERVE_FINISH_LENGTH ? "length" : NULL;
}

static void add_finish(cJSON *choice, mb_serve_finish f)
{
    if (finish_name(f))
        cJSON_AddStringToObject(choice, "finish_reason", finish_name(f));
    else
        cJSON_AddNullToObject(choice, "finish_reason");
}

/* id, object, created, model: the head every reply object starts with. */
static cJSON *reply_head(const mb_serve_server *s, const mb_serve_job *job, const char *object)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "id", job->id);
    cJSON_AddStringToObject(root, "object", object);
    cJSON_AddNumberToObject(root, "created", (double)job->created);
    cJSON_AddStringToObject(root, "model", s->model_name);
    return root;
}

static void add_usage(cJSON *root, const mb_serve_job *job)
{
    cJSON *u = cJSON_AddObjectToObject(root, "usage");
    cJSON_AddNumberToObject(u, "prompt_tokens", (double)job->n_ids);
    cJSON_AddNumberToObject(u, "completion_tokens", job->n_completion);
    cJSON_AddNumberToObject(u, "total_tokens", (double)job->n_ids + job->n_completion);
    cJSON *details = cJSON_AddObjectToObject(u, "prompt_tokens_details");
    cJSON_AddNumberToObject(details, "cached_tokens", job->n_cached);
}

/* One choice: a chat message or delta, or a completion's text. */
static cJSON *add_choice(cJSON *root, const mb_serve_job *job, const char *text, size_t len, int delta,
                         int with_role)
{
    cJSON *choices = cJSON_AddArrayToObject(root, "choices"), *c = cJSON_CreateObject();
    cJSON_AddItemToArray(choices, c);
    cJSON_AddNumberToObject(c, "index", 0);
    if (job->req.kind == MB_SERVE_KIND_CHAT) {
        cJSON *m = cJSON_AddObjectToObject(c, delta ? "delta" : "message");
        if (with_role) cJSON_AddStringToObject(m, "role", "assistant");
        if (text) cJSON_AddItemToObject(m, "content", string_n(text, len));
    } else {
        cJSON_AddItemToObject(c, "text", string_n(text ? text : "", text ? len : 0));
    }
    cJSON_AddNullToObject(c, "logprobs");
    return c;
}

void mb_serve_reply_complete(mb_serve_buf *b, const mb_serve_server *s, const mb_serve_job *job)
{
    int chat = job->req.kind == MB_SERVE_KIND_CHAT;
    cJSON *root = reply_head(s, job, chat ? "chat.completion" : "text_completion");
    cJSON *c = add_choice(root, job, job->text.data ? job->text.data : "", job->text.len, 0, 1);
    add_finish(c, job->finish);
    add_usage(root, job);
    put_json(b, root);
}

void mb_serve_reply_event(mb_serve_buf *b, const mb_serve_server *s, const mb_serve_job *job,
                          const char *delta, size_t delta_len, mb_serve_finish finish)
{
    int chat = job->req.kind == MB_SERVE_KIND_CHAT;
    cJSON *root = reply_head(s, job, chat ? "chat.completion.chunk" : "text_completion");
    /* The first chat chunk carries the role and empty content, the last an
     * empty delta and the finish reason: as OpenAI streams. */
    int first = !delta && finish == MB_SERVE_FINISH_NONE;
    cJSON *c = add_choice(root, job, delta ? delta : first ? "" : NULL, delta_len, 1, first);
    add_finish(c, finish);
    mb_serve_buf_put(b, "data: ", 6);
    put_json(b, root);
    mb_serve_buf_put(b, "\n\n", 2);
}

void mb_serve_reply_usage_event(mb_serve_buf *b, const mb_serve_server *s, const mb_serve_job *job)
{
    int chat = job->req.kind == MB_SERVE_KIND_CHAT;
    cJSON *root = reply_head(s, job, chat ? "chat.completion.chunk" : "text_completion");
    cJSON_AddArrayToObject(root, "choices");
    add_usage(root, job);
    mb_serve_buf_put(b, "data: ", 6);
    put_json(b, root);
    mb_serve_buf_put(b, "\n\n", 2);
}

void mb_serve_reply_models(mb_serve_buf *b, const mb_serve_server *s)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(root, "data"), *m = cJSON_CreateObject();
    cJSON_AddItemToArray(data, m);
    cJSON_AddStringToObject(m, "id", s->model_name);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", (double)s->started);
    cJSON_AddStringToObject(m, "owned_by", "moe-broker");
    cJSON_AddNumberToObject(m, "max_model_len", s->max_ctx);
    put_json(b, root);
}
