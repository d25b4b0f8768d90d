/* What turning text into tokens and back needs besides the model: the
 * tokenizer, the end-of-sequence ids the checkpoint's configs name, and the
 * chat template. The text run (run_text.c) and the server (serve/) load it
 * the same way. Immutable once open: any number of threads may use it. */
#ifndef MB_BROKER_TEXT_H
#define MB_BROKER_TEXT_H

#include <stddef.h>
#include <stdint.h>

#include "broker/chat_template.h"
#include "broker/model.h"
#include "broker/options.h"
#include "broker/tokenizer/tokenizer.h"

#define MB_TEXT_MAX_EOS 16

typedef struct {
    mb_tokenizer *tok;
    mb_chat_template tmpl; /* valid when have_tmpl */
    int have_tmpl;
    int32_t eos[MB_TEXT_MAX_EOS]; /* ids that end a reply */
    uint32_t n_eos;
    uint32_t vocab; /* the model's: every encoded id is checked against it */
} mb_text;

/* Loads the tokenizer (--tokenizer, else the --model folder), the EOS ids of
 * config.json, generation_config.json and the tokenizer, and when
 * want_template the chat template. Blocking (file reads). Notes (no chat
 * template, no EOS) go to stderr unless --quiet; errors always do. Returns 0,
 * or -1 with everything released. */
int mb_text_open(mb_text *t, const mb_options *opt, const mb_model *model, int want_template);

/* Releases what mb_text_open loaded. Safe on a zeroed struct. */
void mb_text_close(mb_text *t);

/* 1 when id ends a reply. */
int mb_text_is_eos(const mb_text *t, int32_t id);

/* Encodes text[0..bytes) (BOS and the like when add_special) into a malloc'd
 * id array, checking every id fits the model's vocabulary. Errors:
 * MB_STATUS_NOMEM / OVERFLOW from the tokenizer, MB_STATUS_CONFIG when an id
 * is outside the vocabulary (the tokenizer belongs to another model); err
 * says which. *ids is written only on success. */
mb_status mb_text_encode(const mb_text *t, const char *text, size_t bytes, int add_special,
                         int32_t **ids, size_t *n_ids, char *err, size_t err_cap);

#endif
