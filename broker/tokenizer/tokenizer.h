/* The text tokenizer: loads a Hugging Face tokenizer.json (and its sibling
 * tokenizer_config.json) and turns text into token ids and back, with the
 * same ids as Hugging Face's tokenizers library. Supported: BPE models, both
 * byte-level (GPT-2, Qwen2, Qwen3, Llama 3) and SentencePiece-style with byte
 * fallback (Llama 2, Mistral, Mixtral); added and special tokens; the
 * normalizers, pre-tokenizers, post-processors and decoders those files use.
 * A loaded tokenizer is immutable: any number of threads may encode and
 * decode with it at once. */
#ifndef MB_BROKER_TOKENIZER_H
#define MB_BROKER_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "protocol/status.h"

typedef struct mb_tokenizer mb_tokenizer;
typedef struct mb_tokenizer_stream mb_tokenizer_stream;

/* Largest tokenizer.json read, and the largest token id accepted. */
#define MB_TOKENIZER_MAX_FILE_BYTES (512u << 20)
#define MB_TOKENIZER_MAX_ID ((1 << 24) - 1)

/* Loads a tokenizer from path: a checkpoint folder holding tokenizer.json, or
 * a tokenizer.json file itself. tokenizer_config.json beside it is read when
 * present (for the BOS and EOS tokens). On success *out is a new tokenizer
 * (free with mb_tokenizer_destroy). Blocks on file reads.
 * Errors: MB_STATUS_IO (missing or unreadable file), MB_STATUS_FORMAT
 * (malformed JSON, a missing or ill-typed field, an id out of range, a merge
 * naming an unknown token), MB_STATUS_UNSUPPORTED (a model, normalizer,
 * pre-tokenizer, post-processor or decoder type this tokenizer lacks, or a
 * regex PCRE2 rejects), MB_STATUS_NOMEM, MB_STATUS_INVALID_ARG for NULL
 * path/out. err (when err_cap > 0) gets one line naming the file and the
 * problem. */
mb_status mb_tokenizer_load(const char *path, mb_tokenizer **out, char *err, size_t err_cap);

/* As mb_tokenizer_load, from tokenizer.json text already in memory and an
 * optional tokenizer_config.json text (config NULL = none). The inputs need
 * not be NUL-terminated and are not kept. Same errors, less MB_STATUS_IO. */
mb_status mb_tokenizer_load_json(const char *json, size_t json_bytes, const char *config,
                                 size_t config_bytes, mb_tokenizer **out, char *err,
                                 size_t err_cap);

/* As mb_tokenizer_load, from a GGUF file's tokenizer.ggml.* metadata (the
 * GGUF alone is enough): .model "gpt2" (byte-level BPE with .merges and the
 * .pre family default, gpt2, qwen2 or llama-bpe) or "llama" (SentencePiece:
 * .merges, or merges derived from .scores as Hugging Face's converter
 * does), .tokens, .token_type (CONTROL and UNKNOWN tokens are special added
 * tokens, USER_DEFINED ones plain added tokens, UNUSED ones left out),
 * .bos_token_id / .eos_token_id / .unknown_token_id, .add_bos_token /
 * .add_eos_token (the post-processor), .add_space_prefix. Same errors as
 * mb_tokenizer_load_json; UNSUPPORTED names an unknown model or .pre. */
struct mb_gguf;
mb_status mb_tokenizer_load_gguf(const struct mb_gguf *g, mb_tokenizer **out, char *err,
                                 size_t err_cap);

/* The GGUF's tokenizer.chat_template into *text (malloc'd; NULL when the
 * file has none, not an error). Errors: FORMAT/CONFIG for a key that is
 * not a string, NOMEM. */
mb_status mb_tokenizer_chat_template_gguf(const struct mb_gguf *g, char **text, char *err,
                                          size_t err_cap);

/* Frees a tokenizer; NULL is a no-op. No stream may still use it. */
void mb_tokenizer_destroy(mb_tokenizer *tok);

/* One more than the largest token id (the model's or an added token's). */
uint32_t mb_tokenizer_n_vocab(const mb_tokenizer *tok);

/* The BOS / EOS ids named by tokenizer_config.json, -1 when none. */
int32_t mb_tokenizer_bos_id(const mb_tokenizer *tok);
int32_t mb_tokenizer_eos_id(const mb_tokenizer *tok);

/* The token's text as the vocabulary spells it (byte-level tokens in their
 * mapped alphabet), or NULL for an unknown id. Owned by tok. */
const char *mb_tokenizer_token_text(const mb_tokenizer *tok, int32_t id, size_t *bytes);

/* 1 when id is an added token (special or not: <s>, <|im_end|>, <think>),
 * else 0, unknown ids included. */
int mb_tokenizer_is_added(const mb_tokenizer *tok, int32_t id);

/* Encodes text[0..bytes) (need not be NUL-terminated). Added and special
 * tokens in the text become their ids; add_special also applies the
 * post-processor (a Llama BOS, for example). Invalid UTF-8 is first replaced
 * as Hugging Face's callers see it: each maximal invalid subsequence becomes
 * U+FFFD. On success *ids is a malloc'd array of *n_ids ids (NULL when none)
 * that the caller frees. Errors: MB_STATUS_NOMEM, MB_STATUS_OVERFLOW (text
 * beyond 2^31 bytes), MB_STATUS_INVALID_ARG for NULL arguments. */
mb_status mb_tokenizer_encode(const mb_tokenizer *tok, const char *text, size_t bytes,
                              int add_special, int32_t **ids, size_t *n_ids);

/* Decodes ids into text, as Hugging Face's decode(ids, skip_special) does:
 * ids no token has are skipped. On success *text is a malloc'd,
 * NUL-terminated string of *bytes bytes (valid UTF-8) that the caller frees.
 * Errors: MB_STATUS_NOMEM, MB_STATUS_INVALID_ARG. */
mb_status mb_tokenizer_decode(const mb_tokenizer *tok, const int32_t *ids, size_t n_ids,
                              int skip_special, char **text, size_t *bytes);

/* Streaming decode, one token at a time, for generated text. The pieces a
 * stream returns, concatenated, equal mb_tokenizer_decode of the same ids:
 * an incomplete UTF-8 sequence (and a run of byte-fallback tokens, which
 * decodes as a whole) is held back until it completes. The stream keeps tok
 * and must be destroyed before it. One thread at a time per stream. */
mb_status mb_tokenizer_stream_create(const mb_tokenizer *tok, int skip_special,
                                     mb_tokenizer_stream **out);
void mb_tokenizer_stream_destroy(mb_tokenizer_stream *s);

/* Feeds one id; *text / *bytes receive the text now complete (possibly
 * empty), owned by the stream and valid until its next call. Errors:
 * MB_STATUS_NOMEM (the stream stays usable), MB_STATUS_INVALID_ARG. */
mb_status mb_tokenizer_stream_push(mb_tokenizer_stream *s, int32_t id, const char **text,
                                   size_t *bytes);

/* Ends the text: returns what was held back (incomplete sequences become
 * U+FFFD) and resets the stream for a new text. Same errors as push. */
mb_status mb_tokenizer_stream_finish(mb_tokenizer_stream *s, const char **text, size_t *bytes);

#endif
