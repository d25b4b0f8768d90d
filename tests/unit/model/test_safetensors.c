/* The safetensors reader: a crafted valid file parses and looks up right,
 * hostile headers are refused with FORMAT/OVERFLOW/BAD_DTYPE (never a crash),
 * random header corruption never crashes, and the reference-file reader
 * reads the fixtures and refuses bad ones. */
#include "broker/safetensors.h"

#include "tests/unit/model/st_testutil.h"

static char err[512];

/* Parses header+data as an in-memory image; returns the status. */
static mb_status parse_header(const char *header, size_t data_len)
{
    size_t len;
    unsigned char *data = calloc(1, data_len + 1);
    unsigned char *img = tst_image(header, data, data_len, 0, &len);
    mb_safetensors *f = NULL;
    err[0] = 0;
    mb_status st = mb_safetensors_parse(img, len, "hostile.safetensors", &f, err, sizeof(err));
    if (st == MB_STATUS_OK)
        mb_safetensors_close(f);
    else
        CHECK_MSG(tst_contains(err, "hostile.safetensors"), "message lacks the file: %s", err);
    free(img);
    free(data);
    return st;
}

static void test_valid(void)
{
    /* a: f32 [2][3] at 0..24, b: bf16 [4] 24..32, c: i64 [] 32..40,
     * d: i32 [0] (empty) 40..40, e: f16 [1][1][2] 40..44. */
    const char *hdr =
        "{\"__metadata__\":{\"format\":\"pt\"},"
        "\"e\":{\"dtype\":\"F16\",\"shape\":[1,1,2],\"data_offsets\":[40,44]},"
        "\"a\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
        "\"c\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[32,40]},"
        "\"b\":{\"dtype\":\"BF16\",\"shape\":[4],\"data_offsets\":[24,32]},"
        "\"d\":{\"dtype\":\"I32\",\"shape\":[0],\"data_offsets\":[40,40]}}";
    unsigned char data[44];
    for (int i = 0; i < 44; i++)
        data[i] = (unsigned char)i;
    size_t len;
    unsigned char *img = tst_image(hdr, data, sizeof(data), 0, &len);
    char *dir = tst_tmpdir();
    char *path = tst_path(dir, "ok.safetensors");
    tst_write(path, img, len);

    for (int from_disk = 0; from_disk < 2; from_disk++) {
        mb_safetensors *f = NULL;
        mb_status st = from_disk ? mb_safetensors_open(path, &f, err, sizeof(err))
                                 : mb_safetensors_parse(img, len, "mem", &f, err, sizeof(err));
        CHECK_MSG(st == MB_STATUS_OK, "%s", err);
        if (st != MB_STATUS_OK)
            continue;
        CHECK_EQ(mb_safetensors_count(f), 5);
        const char *want[] = {"a", "b", "c", "d", "e"};
        for (uint32_t i = 0; i < 5; i++)
            CHECK(strcmp(mb_safetensors_at(f, i)->name, want[i]) == 0);
        CHECK(mb_safetensors_at(f, 5) == NULL);
        CHECK(mb_safetensors_find(f, "__metadata__") == NULL);
        CHECK(mb_safetensors_find(f, "zz") == NULL);
        uint64_t bytes;
        const unsigned char *base = mb_safetensors_base(f, &bytes);
        CHECK_EQ(bytes, len);
        const uint64_t data_start = 8 + tst_header_len(img);
        const mb_st_tensor *a = mb_safetensors_find(f, "a");
        REQUIRE(a);
        CHECK_EQ(a->dtype, MB_ST_DTYPE_F32);
        CHECK_EQ(a->n_dims, 2);
        CHECK_EQ(a->shape[0], 2);
        CHECK_EQ(a->shape[1], 3);
        CHECK_EQ(a->n_elems, 6);
        CHECK_EQ(a->bytes, 24);
        CHECK_EQ(a->file_offset, data_start);
        CHECK(a->data == base + data_start);
        const mb_st_tensor *b = mb_safetensors_find(f, "b");
        REQUIRE(b);
        CHECK_EQ(b->dtype, MB_ST_DTYPE_BF16);
        CHECK_EQ(((const unsigned char *)b->data)[0], 24);
        const mb_st_tensor *c = mb_safetensors_find(f, "c");
        REQUIRE(c);
        CHECK_EQ(c->n_dims, 0);
        CHECK_EQ(c->n_elems, 1);
        const mb_st_tensor *d = mb_safetensors_find(f, "d");
        REQUIRE(d);
        CHECK_EQ(d->n_elems, 0);
        CHECK_EQ(d->bytes, 0);
        CHECK_EQ(mb_safetensors_find(f, "e")->n_dims, 3);
        CHECK_EQ(mb_safetensors_fd(f) >= 0, from_disk);
        CHECK(strcmp(mb_safetensors_path(f), from_disk ? path : "mem") == 0);

        const mb_st_tensor *t = NULL;
        CHECK_EQ(mb_safetensors_expect(f, "a", MB_ST_DTYPE_F32, 2, &t, err, sizeof(err)),
                 MB_STATUS_OK);
        CHECK(t == a);
        CHECK_EQ(mb_safetensors_expect(f, "a", MB_ST_DTYPE_F16, 2, &t, err, sizeof(err)),
                 MB_STATUS_BAD_DTYPE);
        CHECK(tst_contains(err, "'a'"));
        CHECK_EQ(mb_safetensors_expect(f, "a", MB_ST_DTYPE_F32, 1, &t, err, sizeof(err)),
                 MB_STATUS_BAD_SHAPE);
        CHECK_EQ(mb_safetensors_expect(f, "nope", MB_ST_DTYPE_F32, 1, &t, err, sizeof(err)),
                 MB_STATUS_NOT_FOUND);
        CHECK(tst_contains(err, "'nope'"));
        mb_safetensors_close(f);
    }
    mb_safetensors *f = NULL;
    char *missing = tst_path(dir, "missing.safetensors");
    CHECK_EQ(mb_safetensors_open(missing, &f, err, sizeof(err)), MB_STATUS_IO);
    CHECK(tst_contains(err, missing));
    CHECK_EQ(mb_safetensors_open(dir, &f, err, sizeof(err)), MB_STATUS_IO); /* a folder */
    mb_safetensors_close(NULL);
    free(missing);
    free(path);
    free(img);
    tst_rmdir(dir);
}

static void test_hostile_lengths(void)
{
    mb_safetensors *f = NULL;
    unsigned char img[64] = {0};
    /* Shorter than the length field itself. */
    CHECK_EQ(mb_safetensors_parse(img, 5, "short", &f, err, sizeof(err)), MB_STATUS_FORMAT);
    CHECK(tst_contains(err, "short"));
    CHECK_EQ(mb_safetensors_parse(img, 0, "empty", &f, err, sizeof(err)), MB_STATUS_FORMAT);
    /* Length field huge, just over the limit, and past the end. */
    memset(img, 0xff, 8);
    CHECK_EQ(mb_safetensors_parse(img, sizeof(img), "huge", &f, err, sizeof(err)),
             MB_STATUS_FORMAT);
    uint64_t over = (uint64_t)MB_ST_MAX_HEADER_BYTES + 1;
    for (int i = 0; i < 8; i++)
        img[i] = (unsigned char)(over >> (8 * i));
    CHECK_EQ(mb_safetensors_parse(img, sizeof(img), "limit", &f, err, sizeof(err)),
             MB_STATUS_FORMAT);
    memset(img, 0, 8);
    img[0] = 57; /* 64 - 8 + 1 */
    CHECK_EQ(mb_safetensors_parse(img, sizeof(img), "past", &f, err, sizeof(err)),
             MB_STATUS_FORMAT);
    CHECK(tst_contains(err, "truncated"));
    img[0] = 0;
    CHECK_EQ(mb_safetensors_parse(img, sizeof(img), "zero", &f, err, sizeof(err)),
             MB_STATUS_FORMAT);
}

static void test_hostile_json(void)
{
    /* Non-object or malformed JSON. */
    const char *bad_json[] = {"[]", "123", "\"str\"", "null", "{", "{\"a\":}", "{}x",
                              "{\"a\":1} {\"b\":2}", "true"};
    for (size_t i = 0; i < sizeof(bad_json) / sizeof(bad_json[0]); i++)
        CHECK_MSG(parse_header(bad_json[i], 0) == MB_STATUS_FORMAT, "header %s", bad_json[i]);
    CHECK_EQ(parse_header("{}", 0), MB_STATUS_OK);
    CHECK_EQ(parse_header("{\"__metadata__\":[1,2]}", 0), MB_STATUS_OK);

    struct {
        const char *hdr;
        mb_status want;
    } cases[] = {
        /* entry not an object, fields missing or mistyped */
        {"{\"t\":5}", MB_STATUS_FORMAT},
        {"{\"t\":{\"shape\":[1],\"data_offsets\":[0,4]}}", MB_STATUS_FORMAT},
        {"{\"t\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", MB_STATUS_FORMAT},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1]}}", MB_STATUS_FORMAT},
        {"{\"t\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", MB_STATUS_FORMAT},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":1,\"data_offsets\":[0,4]}}", MB_STATUS_FORMAT},
        /* unknown dtype */
        {"{\"t\":{\"dtype\":\"F8_E4M3\",\"shape\":[4],\"data_offsets\":[0,4]}}",
         MB_STATUS_BAD_DTYPE},
        /* negative, fractional, non-numeric, too many dims */
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", MB_STATUS_FORMAT},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", MB_STATUS_FORMAT},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}", MB_STATUS_FORMAT},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1e300],\"data_offsets\":[0,4]}}", MB_STATUS_FORMAT},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}",
         MB_STATUS_FORMAT},
        /* element count or byte size overflows 64 bits */
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}",
         MB_STATUS_OVERFLOW},
        {"{\"t\":{\"dtype\":\"I64\",\"shape\":[4294967296,1073741824],\"data_offsets\":[0,4]}}",
         MB_STATUS_OVERFLOW},
        /* offsets: out of range, reversed, wrong count, negative, size mismatch */
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[16,20]}}", MB_STATUS_FORMAT},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", MB_STATUS_FORMAT},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", MB_STATUS_FORMAT},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", MB_STATUS_FORMAT},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", MB_STATUS_FORMAT},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", MB_STATUS_FORMAT},
        {"{\"t\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,4]}}", MB_STATUS_FORMAT},
        /* overlapping ranges, partial and nested; duplicate names */
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", MB_STATUS_FORMAT},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", MB_STATUS_FORMAT},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", MB_STATUS_FORMAT},
        /* adjacent ranges and holes are fine */
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]},"
         "\"c\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", MB_STATUS_OK},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[12,16]}}", MB_STATUS_OK},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        mb_status st = parse_header(cases[i].hdr, 16);
        CHECK_MSG(st == cases[i].want, "case %zu: got %s want %s (%s)", i, mb_status_name(st),
                  mb_status_name(cases[i].want), err);
    }
    /* Data after the JSON object that is not padding. */
    size_t len;
    unsigned char *img = tst_image("{}", NULL, 0, 0, &len);
    img[8 + 3] = 'x';
    mb_safetensors *f = NULL;
    CHECK_EQ(mb_safetensors_parse(img, len, "pad", &f, err, sizeof(err)), MB_STATUS_FORMAT);
    img[8 + 3] = 0;
    CHECK_EQ(mb_safetensors_parse(img, len, "pad", &f, err, sizeof(err)), MB_STATUS_FORMAT);
    free(img);
}

/* Random corruption of a real header must be refused or accepted, never
 * crash; an accepted table must still lie inside the image. */
static void test_mutations(void)
{
    char *path = tst_path(tst_fixture("qwen2moe-a"), "model.safetensors");
    size_t len;
    unsigned char *orig = tst_read(path, &len);
    const size_t span = 8 + (size_t)tst_header_len(orig);
    unsigned char *img = malloc(len);
    REQUIRE(img);
    unsigned long long seed = 0x5eed;
    int accepted = 0;
    memcpy(img, orig, len);
    for (int iter = 0; iter < 400; iter++) {
        memcpy(img, orig, span); /* only the header is ever damaged */
        int n_flips = 1 + (int)(mb_test_rand_u64(&seed) % 4);
        for (int k = 0; k < n_flips; k++) {
            size_t at = (size_t)(mb_test_rand_u64(&seed) % span);
            const char pool[] = "0123456789[]{}\",:-.eE ";
            img[at] = (mb_test_rand_u64(&seed) & 1) ? (unsigned char)mb_test_rand_u64(&seed)
                                                    : (unsigned char)pool[mb_test_rand_u64(&seed)
                                                                          % (sizeof(pool) - 1)];
        }
        size_t cut = (iter % 7 == 0) ? (size_t)(mb_test_rand_u64(&seed) % len) : len;
        mb_safetensors *f = NULL;
        if (mb_safetensors_parse(img, cut, "mutant", &f, err, sizeof(err)) == MB_STATUS_OK) {
            accepted++;
            for (uint32_t i = 0; i < mb_safetensors_count(f); i++) {
                const mb_st_tensor *t = mb_safetensors_at(f, i);
                CHECK(t->file_offset <= cut && t->bytes <= cut - t->file_offset);
            }
            mb_safetensors_close(f);
        }
    }
    (void)accepted;
    free(img);
    free(orig);
    free(path);
}

static void test_reference(void)
{
    const char *names[] = {"mixtral-a", "qwen2moe-a", "qwen3moe-a"};
    for (int i = 0; i < 3; i++) {
        const char *dir = tst_fixture(names[i]);
        char *path = tst_path(dir, "reference.safetensors");
        mb_reference ref;
        mb_status st = mb_reference_init(&ref, path, err, sizeof(err));
        CHECK_MSG(st == MB_STATUS_OK, "%s", err);
        if (st == MB_STATUS_OK) {
            /* Cross-check against the raw tensors. */
            mb_safetensors *f = NULL;
            REQUIRE(mb_safetensors_open(path, &f, err, sizeof(err)) == MB_STATUS_OK);
            const mb_st_tensor *ids = mb_safetensors_find(f, "input_ids");
            const mb_st_tensor *lg = mb_safetensors_find(f, "logits");
            REQUIRE(ids && lg);
            CHECK_EQ(ref.n_tokens, ids->shape[0]);
            CHECK_EQ(ref.vocab, lg->shape[1]);
            CHECK(ref.prompt_len >= 1 && ref.prompt_len <= ref.n_tokens);
            CHECK(memcmp(ref.input_ids, ids->data, ids->bytes) == 0);
            CHECK(memcmp(ref.logits, lg->data, lg->bytes) == 0);
            int finite = 1;
            for (size_t k = 0; k < (size_t)ref.n_tokens * ref.vocab; k++)
                finite &= isfinite(ref.logits[k]);
            CHECK(finite);
            mb_safetensors_close(f);
        }
        mb_reference_fini(&ref);
        mb_reference_fini(&ref);
        free(path);
    }

    /* Bad reference files: wrong dtype, id out of range, prompt_len 0. */
    char *dir = tst_tmpdir();
    char *path = tst_path(dir, "ref.safetensors");
    struct {
        const char *hdr;
        mb_status want;
    } cases[] = {
        {"{\"input_ids\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,16]},"
         "\"prompt_len\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[16,20]},"
         "\"logits\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[20,44]}}",
         MB_STATUS_BAD_DTYPE},
        {"{\"input_ids\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"prompt_len\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[16,20]},"
         "\"logits\":{\"dtype\":\"F32\",\"shape\":[3,3],\"data_offsets\":[20,56]}}",
         MB_STATUS_BAD_SHAPE},
        {"{\"input_ids\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"logits\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[20,44]}}",
         MB_STATUS_NOT_FOUND},
        {"{\"input_ids\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"prompt_len\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[16,20]},"
         "\"logits\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[20,44]}}",
         MB_STATUS_OK},
    };
    for (int variant = 0; variant < 3; variant++)
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
            int32_t words[16] = {1, 2, 0, 0, 2, 0};
            if (variant == 1)
                words[1] = 3; /* id == vocab */
            if (variant == 2)
                words[4] = 0; /* prompt_len 0 */
            size_t len;
            unsigned char *img = tst_image(cases[i].hdr, words, 64, 0, &len);
            tst_write(path, img, len);
            free(img);
            mb_reference ref;
            mb_status want = cases[i].want == MB_STATUS_OK && variant ? MB_STATUS_FORMAT
                                                                       : cases[i].want;
            mb_status st = mb_reference_init(&ref, path, err, sizeof(err));
            CHECK_MSG(st == want, "case %zu variant %d: %s (%s)", i, variant, mb_status_name(st),
                      err);
            if (st != MB_STATUS_OK)
                CHECK(ref.input_ids == NULL && ref.logits == NULL && tst_contains(err, path));
            else
                CHECK(ref.n_tokens == 2 && ref.prompt_len == 2 && ref.vocab == 3);
            mb_reference_fini(&ref);
        }
    free(path);
    tst_rmdir(dir);
}

int main(void)
{
    test_valid();
    test_hostile_lengths();
    test_hostile_json();
    test_mutations();
    test_reference();
    return mb_test_finish("test_safetensors");
}
