/* The tokenizer, end-of-sequence ids and chat template of a checkpoint,
 * loaded once for a text run or the server (text.h). */
#include "broker/text.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void add_eos(mb_text *t, int64_t id)
{
    if (id < 0 || id > INT32_MAX || t->n_eos >= MB_TEXT_MAX_EOS) return;
    for (uint32_t i = 0; i < t->n_eos; i++)
        if (t->eos[i] == id) return;
    t->eos[t->n_eos++] = (int32_t)id;
}

/* eos_token_id of a JSON file in the model folder: a number or a list. */
static void add_eos_from_file(mb_text *t, const char *dir, const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) return;
    char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    cJSON *root = cJSON_Parse(buf);
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(root, "eos_token_id");
    if (cJSON_IsNumber(e)) add_eos(t, (int64_t)e->valuedouble);
    const cJSON *item;
    if (cJSON_IsArray(e)) cJSON_ArrayForEach(item, e)
        {
            if (cJSON_IsNumber(item)) add_eos(t, (int64_t)item->valuedouble);
        }
    cJSON_Delete(root);
}

/* The id of a text that is exactly one added token, else -1. */
static int32_t single_token(const mb_tokenizer *tok, const char *text)
{
    int32_t *ids = NULL, id = -1;
    size_t n = 0;
    if (mb_tokenizer_encode(tok, text, strlen(text), 0, &ids, &n) == MB_STATUS_OK && n == 1 &&
        mb_tokenizer_is_added(tok, ids[0]))
        id = ids[0];
    free(ids);
    return id;
}

static char *token_text(const mb_tokenizer *tok, int32_t id)
{
    size_t bytes = 0;
    const char *s = id >= 0 ? mb_tokenizer_token_text(tok, id, &bytes) : NULL;
    if (!s) return NULL;
    char *copy = malloc(bytes + 1);
    if (copy) {
        memcpy(copy, s, bytes);
        copy[bytes] = '\0';
    }
    return copy;
}

static const char *arch_model_type(mb_arch a)
{
    return a == MB_ARCH_MIXTRAL ? "mixtral" : a == MB_ARCH_QWEN2_MOE ? "qwen2_moe" : "qwen3_moe";
}

static int load_template(mb_text *t, const char *tok_path, const struct mb_gguf *gguf, const mb_model *model,
                         int quiet)
{
    char *text = NULL, err[512] = "";
    mb_status st = gguf ? mb_tokenizer_chat_template_gguf(gguf, &text, err, sizeof err)
                        : mb_chat_template_read(tok_path, &text, err, sizeof err);
    if (st != MB_STATUS_OK) {
        fprintf(stderr, "moe-broker: %s\n", err);
        return -1;
    }
    char *bos = token_text(t->tok, mb_tokenizer_bos_id(t->tok));
    char *eos = token_text(t->tok, mb_tokenizer_eos_id(t->tok));
    st = mb_chat_template_init(&t->tmpl, text, arch_model_type(model->cfg.arch), bos, eos, err,
                               sizeof err);
    if (st == MB_STATUS_OK && !text && !quiet)
        fprintf(stderr, "moe-broker: no chat_template in %s: using the %s format of %s models\n",
                gguf ? "the GGUF metadata" : "tokenizer_config.json", t->tmpl.format == MB_CHAT_FORMAT_CHATML ? "ChatML" : "[INST]",
                arch_model_type(model->cfg.arch));
    free(text);
    free(bos);
    free(eos);
    if (st != MB_STATUS_OK) {
        fprintf(stderr, "moe-broker: chat template: %s\n", err[0] ? err : mb_status_str(st));
        return -1;
    }
    t->have_tmpl = 1;
    /* The template's own end of turn ends a reply even where the configs
     * name another EOS (Qwen's <|im_end|>). */
    if (t->tmpl.format == MB_CHAT_FORMAT_CHATML) add_eos(t, single_token(t->tok, "<|im_end|>"));
    return 0;
}

int mb_text_open(mb_text *t, const mb_options *opt, const mb_model *model, int want_template)
{
    memset(t, 0, sizeof *t);
    t->vocab = model->cfg.vocab;
    const char *tok_path = opt->tokenizer ? opt->tokenizer : opt->model_dir;
    /* A GGUF checkpoint carries its tokenizer and chat template in its
     * metadata, unless --tokenizer names another. */
    const struct mb_gguf *gguf = !opt->tokenizer && model->n_files ? model->files[0].gguf : NULL;
    char err[512] = "";
    if (!tok_path && !gguf) {
        fprintf(stderr, "moe-broker: text needs a tokenizer: the embedded model has none (give "
                        "--model DIR with tokenizer.json or FILE.gguf, or --tokenizer FILE)\n");
        return -1;
    }
    mb_status st = gguf ? mb_tokenizer_load_gguf(gguf, &t->tok, err, sizeof err)
                        : mb_tokenizer_load(tok_path, &t->tok, err, sizeof err);
    if (st != MB_STATUS_OK) {
        fprintf(stderr, "moe-broker: tokenizer: %s\n", err[0] ? err : mb_status_str(st));
        if (st == MB_STATUS_IO && !opt->tokenizer && !gguf)
            fprintf(stderr, "moe-broker: (the model folder has no tokenizer.json: --tokenizer "
                            "FILE names one)\n");
        return -1;
    }
    if (opt->model_dir && !gguf) {
        add_eos_from_file(t, opt->model_dir, "config.json");
        add_eos_from_file(t, opt->model_dir, "generation_config.json");
    }
    add_eos(t, mb_tokenizer_eos_id(t->tok));
    if (want_template && load_template(t, tok_path, gguf, model, opt->quiet) != 0) {
        mb_text_close(t);
        return -1;
    }
    if (t->n_eos == 0 && !opt->quiet)
        fprintf(stderr, "moe-broker: the model names no end-of-sequence token: generation stops "
                        "at --gen or the context limit\n");
    return 0;
}

void mb_text_close(mb_text *t)
{
    mb_tokenizer_destroy(t->tok);
    if (t->have_tmpl) mb_chat_template_fini(&t->tmpl);
    memset(t, 0, sizeof *t);
}

int mb_text_is_eos(const mb_text *t, int32_t id)
{
    for (uint32_t i = 0; i < t->n_eos; i++)
        if (t->eos[i] == id) return 1;
    return 0;
}

mb_status mb_text_encode(const mb_text *t, const char *text, size_t bytes, int add_special,
                         int32_t **ids, size_t *n_ids, char *err, size_t err_cap)
{
    int32_t *got = NULL;
    size_t n = 0;
    mb_status st = mb_tokenizer_encode(t->tok, text, bytes, add_special, &got, &n);
    if (st != MB_STATUS_OK) {
        snprintf(err, err_cap, "cannot tokenize the text: %s", mb_status_str(st));
        return st;
    }
    for (size_t i = 0; i < n; i++) {
        if ((uint32_t)got[i] >= t->vocab) {
            snprintf(err, err_cap,
                     "token %d of the text is outside the model's vocabulary (%u): the tokenizer "
                     "does not belong to this model",
                     got[i], t->vocab);
            free(got);
            return MB_STATUS_CONFIG;
        }
    }
    *ids = got;
    *n_ids = n;
    return MB_STATUS_OK;
}
