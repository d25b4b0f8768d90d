/* A loaded MoE checkpoint: its configuration and views of every weight
 * tensor. Weights stay where they were mapped (safetensors files or memory
 * the synthetic generator filled); nothing here copies them. Expert tensors
 * also record where they live in their file so a worker on the same host can
 * map them itself and the coordinator never touches them. */
#ifndef MB_BROKER_MODEL_H
#define MB_BROKER_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "protocol/dtype.h"
#include "protocol/status.h"

typedef enum {
    MB_ARCH_MIXTRAL = 0,   /* MixtralForCausalLM */
    MB_ARCH_QWEN2_MOE = 1, /* Qwen2MoeForCausalLM: shared expert + sigmoid gate, qkv bias */
    MB_ARCH_QWEN3_MOE = 2, /* Qwen3MoeForCausalLM: q/k RMSNorm per head */
} mb_arch;

typedef struct {
    mb_arch arch;
    uint32_t n_layers;
    uint32_t d_model;          /* hidden_size */
    uint32_t n_heads;          /* num_attention_heads */
    uint32_t n_kv_heads;       /* num_key_value_heads */
    uint32_t head_dim;         /* head_dim, or hidden_size / num_attention_heads */
    uint32_t vocab;
    uint32_t n_experts;        /* num_local_experts / num_experts */
    uint32_t top_k;            /* num_experts_per_tok */
    uint32_t d_ff_expert;      /* intermediate_size (Mixtral) / moe_intermediate_size (Qwen) */
    uint32_t d_ff_shared;      /* shared_expert_intermediate_size, 0 when none */
    uint32_t max_positions;    /* max_position_embeddings */
    float rms_eps;
    float rope_theta;
    int norm_topk_prob;        /* renormalise the top-k weights to sum to 1 (1 for Mixtral) */
    int qkv_bias;              /* q/k/v projections have biases (1 for Qwen2-MoE) */
    int qk_norm;               /* RMSNorm over each head of q and k */
    int tie_embeddings;        /* lm_head shares embed_tokens */
    uint32_t sliding_window;   /* Mixtral sliding_window; 0 = full attention */
    /* RoPE pairs dimension 2i with 2i+1 (ggml's NORM mode: GGUF llama
     * checkpoints store q/k rows permuted for it) instead of i with
     * i + head_dim/2 (transformers' rotate-half, ggml's NEOX). */
    int rope_interleaved;
    /* dtype of the weights as stored. mb_model_config_parse sets it from the
     * config's dtype/torch_dtype (MB_DTYPE_COUNT_ when the config names none);
     * mb_model_load overwrites it with the dtype every weight tensor shares.
     * GGUF checkpoints mix types: there it is the first layer's expert
     * gate/up type, and each mb_tensor carries its own. */
    mb_dtype dtype;
    /* Bytes of the largest expert over all layers when its matrices' types
     * differ from dtype (GGUF; 0: three matrices in dtype). Placement
     * budgets memory with it (mb_expert_bytes). */
    uint64_t expert_bytes;
} mb_model_config;

/* A view of one tensor: row-major [rows][cols] (1-D tensors have rows 1).
 * data is aligned to the dtype's size (the loader checks). For a fused 3-D
 * expert tensor each expert's view is a sub-region of it. A quantized
 * tensor's rows are whole blocks (cols a multiple of the block), each row
 * mb_dtype_row_bytes(dtype, cols) bytes. */
typedef struct {
    mb_dtype dtype;
    const void *data;      /* NULL when absent (optional tensors) */
    uint64_t rows;
    uint64_t cols;
    int file;              /* index into mb_model.files, -1 for in-memory */
    uint64_t file_offset;  /* byte offset of data in that file */
} mb_tensor;

typedef struct {
    mb_tensor gate; /* [d_ff][d_model]  w1 / gate_proj */
    mb_tensor up;   /* [d_ff][d_model]  w3 / up_proj */
    mb_tensor down; /* [d_model][d_ff]  w2 / down_proj */
} mb_expert_tensors;

typedef struct {
    mb_tensor attn_norm;          /* [d_model] input_layernorm */
    mb_tensor wq, wk, wv;         /* [n_heads*head_dim][d_model], [n_kv*head_dim][d_model] x2 */
    mb_tensor bq, bk, bv;         /* biases, Qwen2-MoE only */
    mb_tensor q_norm, k_norm;     /* [head_dim], Qwen3-MoE only */
    mb_tensor wo;                 /* [d_model][n_heads*head_dim] */
    mb_tensor ffn_norm;           /* [d_model] post_attention_layernorm */
    mb_tensor router;             /* [n_experts][d_model] */
    mb_expert_tensors *experts;   /* [n_experts] */
    mb_expert_tensors shared;     /* Qwen2-MoE shared expert, data NULL otherwise */
    mb_tensor shared_gate;        /* [1][d_model] shared_expert_gate, Qwen2-MoE */
} mb_layer_weights;

struct mb_safetensors;
struct mb_gguf;

typedef struct {
    char *path;           /* absolute path */
    const void *map;      /* whole-file read-only mapping */
    uint64_t bytes;
    int fd;               /* open read-only until mb_model_destroy */
    struct mb_safetensors *st; /* owns map and fd (broker/safetensors.h) */
    struct mb_gguf *gguf;      /* or this owns them (broker/gguf.h) */
} mb_model_file;

typedef struct {
    mb_model_config cfg;
    mb_tensor embed;          /* [vocab][d_model] */
    mb_tensor final_norm;     /* [d_model] */
    mb_tensor lm_head;        /* [vocab][d_model] (embed when tied) */
    mb_layer_weights *layers; /* [n_layers] */
    mb_model_file *files;     /* [n_files] */
    uint32_t n_files;
    void *owned;              /* memory owned by the model (synthetic weights) */
    size_t owned_bytes;
    char *dir;                /* checkpoint folder, NULL for synthetic */
} mb_model;

/* Loads a checkpoint: a GGUF file (FILE.gguf, the first of split files
 * NAME-00001-of-0000N.gguf, or a folder holding one GGUF model; see
 * mb_model_load_gguf) or a Hugging Face folder. For the latter: loads
 * config.json and the safetensors files of a Hugging Face checkpoint
 * folder (model.safetensors, or the shards named by
 * model.safetensors.index.json, each mapped once), mapping the files
 * read-only. Validates the architecture, every required tensor's presence,
 * dtype and shape, and every header offset against the file size. Expert
 * tensors are bound by name (per-expert hub names, or the fused 3-D
 * mlp.experts.gate_up_proj / down_proj layout) but never read: only the
 * headers are touched. On failure writes a message naming the file and the
 * tensor or field into err (err_cap bytes) and returns IO, FORMAT, CONFIG,
 * UNSUPPORTED, NOT_FOUND (missing file or tensor), BAD_DTYPE, BAD_SHAPE,
 * MISALIGNED, OVERFLOW or NOMEM; *out is then untouched. On success *out
 * owns the mappings (mb_model_destroy). Blocks on reading headers. */
mb_status mb_model_load(const char *dir, mb_model **out, char *err, size_t err_cap);

/* Loads a GGUF checkpoint (path as for mb_model_load: a .gguf file, split
 * files by their first part, or a folder holding exactly one model):
 * architectures qwen3moe, qwen2moe and llama with experts (Mixtral), the
 * configuration from the metadata with llama.cpp's per-architecture
 * conventions (RoPE layout, top-k renormalisation), and every tensor bound
 * by its GGUF name with its own type (F32, F16, BF16, Q8_0, Q4_0, Q4_K,
 * Q5_K, Q6_K), mapped and never read. Errors as mb_model_load; an
 * unsupported architecture or tensor type is refused by name. */
mb_status mb_model_load_gguf(const char *path, mb_model **out, char *err, size_t err_cap);

/* Bytes of one expert's three matrices in layer (quantized bytes for
 * quantized types). */
uint64_t mb_model_expert_bytes(const mb_model *m, uint32_t layer);

/* MB_DTYPE_MASK bits of every dtype an expert matrix of any layer has (a
 * Q4_K_M file: Q4_K and Q6_K); 0 when the model has no expert tensors. */
uint32_t mb_model_expert_dtypes(const mb_model *m);

/* Parses config.json text (NUL-terminated; both the current form with
 * rope_parameters/dtype and the older rope_theta/torch_dtype form) into *cfg,
 * written only on success. Errors: CONFIG naming the missing or invalid
 * field, UNSUPPORTED naming an unknown architecture or a feature this build
 * cannot run (dense layers, rope scaling, sliding windows in Qwen, ...). */
mb_status mb_model_config_parse(const char *json_text, mb_model_config *cfg, char *err, size_t err_cap);

/* "MixtralForCausalLM", ...; "?" for a value that is not an mb_arch. */
const char *mb_model_arch_name(int arch);

/* Frees a model from mb_model_load or from a synthetic generator. Contract
 * for anyone building an mb_model by hand: m, layers, each layers[i].experts,
 * files, each files[i].path, owned and dir are malloc'd (or NULL) and freed
 * here. For each file, st when set is closed (which unmaps and closes fd);
 * otherwise map (bytes long, from mmap) is unmapped when non-NULL and fd
 * closed when >= 0, so a hand-built file must set fd = -1 when it has none.
 * NULL is a no-op. */
void mb_model_destroy(mb_model *m);

#endif
