/* Chat templates: turns a conversation (system, user and assistant messages)
 * into the prompt text the model was trained on, as the checkpoint's Jinja
 * chat_template renders plain multi-turn conversations. There is no Jinja
 * engine here: the template's text picks one of the families below (ChatML
 * for Qwen, [INST] for Mistral and Mixtral) and its parameters (a default
 * system message, Qwen3's <think> handling, the BOS and EOS texts). Tests
 * render the real templates with @huggingface/jinja and compare. */
#ifndef MB_BROKER_CHAT_TEMPLATE_H
#define MB_BROKER_CHAT_TEMPLATE_H

#include <stddef.h>

#include "protocol/status.h"

typedef enum {
    MB_CHAT_FORMAT_CHATML = 0,  /* <|im_start|>role\ncontent<|im_end|>\n (Qwen) */
    MB_CHAT_FORMAT_MISTRAL = 1, /* <s> [INST] user [/INST] reply</s> (Mistral, Mixtral) */
} mb_chat_format;

typedef struct {
    mb_chat_format format;
    char *default_system;  /* ChatML: the system message added when none is given; NULL = none */
    int think;             /* ChatML: Qwen3's <think> blocks in assistant messages */
    int inst_space;        /* Mistral: " [INST] " and " reply" (the current template)
                            * rather than "[INST] " and "reply" (the first one) */
    int system_in_first;   /* Mistral: the system message joins the first user message */
    char *bos, *eos;       /* Mistral: bos_token / eos_token texts ("<s>", "</s>") */
} mb_chat_template;

typedef struct {
    const char *role; /* "system", "user" or "assistant" */
    const char *content;
} mb_chat_message;

/* Chooses the family and parameters from a chat_template's text (NULL when
 * the checkpoint has none: then model_type decides, "qwen2_moe"/"qwen3_moe"
 * ChatML and "mixtral" Mistral). bos and eos are the tokenizer's texts for
 * those tokens (NULL when it has none). On success *out owns copies (free
 * with mb_chat_template_fini). Errors: MB_STATUS_UNSUPPORTED (a template of
 * another family; err names what it looked for), MB_STATUS_NOMEM,
 * MB_STATUS_INVALID_ARG. */
mb_status mb_chat_template_init(mb_chat_template *out, const char *template_text,
                                const char *model_type, const char *bos, const char *eos,
                                char *err, size_t err_cap);

/* Reads chat_template from tokenizer_config.json (beside a tokenizer.json
 * file, or in a folder) into *text (malloc'd, NULL when the file or the key
 * is absent: not an error). A list of named templates yields "default".
 * Errors: MB_STATUS_FORMAT (malformed JSON), MB_STATUS_NOMEM. */
mb_status mb_chat_template_read(const char *tokenizer_path, char **text, char *err,
                                size_t err_cap);

void mb_chat_template_fini(mb_chat_template *t);

/* Renders messages[0..n) and, when add_generation_prompt is set, the start
 * of the assistant's reply. *text is malloc'd, NUL-terminated (*bytes long).
 * Errors: MB_STATUS_INVALID_ARG with err set for a conversation the template
 * refuses (roles out of order for Mistral, an unknown role), MB_STATUS_NOMEM. */
mb_status mb_chat_render(const mb_chat_template *t, const mb_chat_message *messages, size_t n,
                         int add_generation_prompt, char **text, size_t *bytes, char *err,
                         size_t err_cap);

#endif
