/* A text fixture for the integration tests: the qwen3moe-a checkpoint of
 * tests/data paired with a byte-level tokenizer written here (every byte one
 * token, ChatML specials) and the real Qwen2-MoE chat template, so text runs,
 * chats and the server have a model that speaks. Header-only: each test is
 * one executable. */
#ifndef MB_TESTS_INTEGRATION_TEXT_FIXTURE_H
#define MB_TESTS_INTEGRATION_TEXT_FIXTURE_H

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tests/testutil.h"

/* A byte-level BPE tokenizer without merges: token i is byte i (in GPT-2's
 * byte-to-unicode alphabet), then <|endoftext|>, <|im_start|>, <|im_end|>
 * (256..258) and plain added tokens "<tN>" up to vocab - 1, so every id the
 * fixture can produce decodes to text. */
static inline void mb_test_write_tokenizer(const char *dir, uint32_t vocab, const char *template_path)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    FILE *f = fopen(path, "w");
    REQUIRE(f);
    int map[256], n = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        map[b] = printable ? b : 256 + n++;
    }
    fprintf(f, "{\"version\":\"1.0\",\"added_tokens\":[");
    static const char *const specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
    for (uint32_t id = 256; id < vocab; id++) {
        char content[32];
        if (id < 259)
            snprintf(content, sizeof content, "%s", specials[id - 256]);
        else
            snprintf(content, sizeof content, "<t%u>", id);
        fprintf(f,
                "%s{\"id\":%u,\"content\":\"%s\",\"single_word\":false,\"lstrip\":false,"
                "\"rstrip\":false,\"normalized\":false,\"special\":%s}",
                id > 256 ? "," : "", id, content, id < 259 ? "true" : "false");
    }
    fprintf(f, "],\"normalizer\":null,\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,"
               "\"trim_offsets\":true,\"use_regex\":true},\"post_processor\":null,\"decoder\":{\"type\":"
               "\"ByteLevel\",\"add_prefix_space\":true,\"trim_offsets\":true,\"use_regex\":true},"
               "\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":null,\"fuse_unk\":false,"
               "\"byte_fallback\":false,\"vocab\":{");
    for (int b = 0; b < 256; b++) {
        cJSON *key = cJSON_CreateString("");
        char utf8[4];
        int cp = map[b], len = cp < 0x80 ? 1 : 2;
        if (len == 1) {
            utf8[0] = (char)cp;
        } else {
            utf8[0] = (char)(0xc0 | (cp >> 6));
            utf8[1] = (char)(0x80 | (cp & 0x3f));
        }
        utf8[len] = '\0';
        cJSON_SetValuestring(key, utf8);
        char *quoted = cJSON_PrintUnformatted(key);
        fprintf(f, "%s%s:%d", b ? "," : "", quoted, b);
        free(quoted);
        cJSON_Delete(key);
    }
    fprintf(f, "},\"merges\":[]}}");
    fclose(f);

    /* tokenizer_config.json: the real Qwen2-MoE chat template. */
    FILE *t = fopen(template_path, "rb");
    REQUIRE(t);
    char tmpl[8192];
    size_t got = fread(tmpl, 1, sizeof tmpl - 1, t);
    fclose(t);
    tmpl[got] = '\0';
    cJSON *cfg = cJSON_CreateObject();
    cJSON_AddStringToObject(cfg, "chat_template", tmpl);
    cJSON_AddStringToObject(cfg, "eos_token", "<|endoftext|>");
    char *text = cJSON_Print(cfg);
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    f = fopen(path, "w");
    REQUIRE(f);
    fputs(text, f);
    fclose(f);
    free(text);
    cJSON_Delete(cfg);
}

/* Tokens of text under that tokenizer: each special one token, every other
 * byte one token. */
static inline int mb_test_count_tokens(const char *text)
{
    int n = 0;
    while (*text) {
        if (strncmp(text, "<|im_start|>", 12) == 0)
            text += 12;
        else if (strncmp(text, "<|im_end|>", 10) == 0)
            text += 10;
        else
            text++;
        n++;
    }
    return n;
}

/* Makes dir a text model: qwen3moe-a's config and weights (copied from
 * data, the tests/data folder) with the tokenizer above (vocab 512). */
static inline void mb_test_text_model(const char *data, const char *dir)
{
    char cmd[4096], tmpl[1024];
    mkdir(dir, 0700);
    snprintf(cmd, sizeof cmd, "cp '%s/qwen3moe-a/config.json' '%s/qwen3moe-a/model.safetensors' '%s/'", data,
             data, dir);
    REQUIRE(system(cmd) == 0);
    snprintf(tmpl, sizeof tmpl, "%s/chat_templates/qwen2-moe-chat.jinja", data);
    mb_test_write_tokenizer(dir, 512, tmpl);
}

#endif
