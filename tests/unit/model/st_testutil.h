/* Helpers for the model-loading tests: temporary folders, whole-file I/O,
 * and building or rewriting safetensors images so each test can craft the
 * exact damage it wants from a real fixture. */
#ifndef MB_TESTS_MODEL_ST_TESTUTIL_H
#define MB_TESTS_MODEL_ST_TESTUTIL_H

#include <cjson/cJSON.h>
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/testutil.h"

/* The checked-in fixture folder for name; skips the test when the data
 * folder is not known (MB_TEST_DATA is set by ctest). */
static inline const char *tst_fixture(const char *name)
{
    static char buf[4][1024];
    static int next;
    const char *root = getenv("MB_TEST_DATA");
    if (!root)
        MB_TEST_SKIP("MB_TEST_DATA not set (run through ctest)");
    char *out = buf[next++ % 4];
    snprintf(out, sizeof(buf[0]), "%s/%s", root, name);
    return out;
}

static inline char *tst_path(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = malloc(n);
    REQUIRE(p);
    snprintf(p, n, "%s/%s", dir, name);
    return p;
}

static inline char *tst_tmpdir(void)
{
    const char *base = getenv("TMPDIR");
    char *t = tst_path(base && *base ? base : "/tmp", "mb_model_test_XXXXXX");
    REQUIRE(mkdtemp(t));
    return t;
}

/* Removes the files of a flat temporary folder, then the folder. */
static inline void tst_rmdir(char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
                char *p = tst_path(dir, e->d_name);
                unlink(p);
                free(p);
            }
        closedir(d);
    }
    rmdir(dir);
    free(dir);
}

static inline unsigned char *tst_read(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    REQUIRE(f);
    REQUIRE(fseek(f, 0, SEEK_END) == 0);
    long n = ftell(f);
    REQUIRE(n >= 0);
    rewind(f);
    unsigned char *buf = malloc((size_t)n + 1);
    REQUIRE(buf);
    REQUIRE(fread(buf, 1, (size_t)n, f) == (size_t)n);
    fclose(f);
    buf[n] = 0;
    *len = (size_t)n;
    return buf;
}

static inline void tst_write(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    REQUIRE(f);
    REQUIRE(len == 0 || fwrite(buf, 1, len, f) == len);
    REQUIRE(fclose(f) == 0);
}

static inline void tst_write_in(const char *dir, const char *name, const void *buf, size_t len)
{
    char *p = tst_path(dir, name);
    tst_write(p, buf, len);
    free(p);
}

static inline void tst_copy(const char *src_dir, const char *dst_dir, const char *name)
{
    size_t len;
    char *src = tst_path(src_dir, name);
    unsigned char *buf = tst_read(src, &len);
    tst_write_in(dst_dir, name, buf, len);
    free(buf);
    free(src);
}

/* Image = le64(header length) + header + data. pad_odd makes the data start
 * at an odd offset (to test alignment checks); otherwise the header is
 * padded with spaces to a multiple of 8, as the reference writer does. */
static inline unsigned char *tst_image(const char *header, const void *data, size_t data_len,
                                       int pad_odd, size_t *out_len)
{
    size_t h = strlen(header);
    size_t padded = pad_odd ? (h % 2 ? h : h + 1) : (h + 7) / 8 * 8;
    unsigned char *img = malloc(8 + padded + data_len + 1);
    REQUIRE(img);
    for (int i = 0; i < 8; i++)
        img[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    memcpy(img + 8, header, h);
    memset(img + 8 + h, ' ', padded - h);
    if (data_len)
        memcpy(img + 8 + padded, data, data_len);
    *out_len = 8 + padded + data_len;
    return img;
}

static inline uint64_t tst_header_len(const unsigned char *img)
{
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = n << 8 | img[i];
    return n;
}

/* Parses an image's header JSON (which the test trusts: fixtures only). */
static inline cJSON *tst_header(const unsigned char *img, size_t len)
{
    uint64_t h = tst_header_len(img);
    REQUIRE(h <= len - 8);
    cJSON *root = cJSON_ParseWithLength((const char *)img + 8, (size_t)h);
    REQUIRE(root);
    return root;
}

/* Rewrites the header of an image through edit(), keeping the data area
 * (offsets are relative to it, so they stay valid). */
static inline unsigned char *tst_rewrite(const unsigned char *img, size_t len,
                                         void (*edit)(cJSON *root, void *ctx), void *ctx,
                                         int pad_odd, size_t *out_len)
{
    cJSON *root = tst_header(img, len);
    edit(root, ctx);
    char *text = cJSON_PrintUnformatted(root);
    REQUIRE(text);
    uint64_t h = tst_header_len(img);
    unsigned char *out = tst_image(text, img + 8 + h, len - 8 - (size_t)h, pad_odd, out_len);
    free(text);
    cJSON_Delete(root);
    return out;
}

/* Adds one header entry for a tensor of the given shape at [begin, end). */
static inline void tst_add_entry(cJSON *root, const char *name, const char *dtype, int n_dims,
                                 const uint64_t *shape, uint64_t begin, uint64_t end)
{
    cJSON *e = cJSON_CreateObject(), *s = cJSON_CreateArray(), *o = cJSON_CreateArray();
    REQUIRE(e && s && o);
    cJSON_AddStringToObject(e, "dtype", dtype);
    for (int i = 0; i < n_dims; i++)
        cJSON_AddItemToArray(s, cJSON_CreateNumber((double)shape[i]));
    cJSON_AddItemToObject(e, "shape", s);
    cJSON_AddItemToArray(o, cJSON_CreateNumber((double)begin));
    cJSON_AddItemToArray(o, cJSON_CreateNumber((double)end));
    cJSON_AddItemToObject(e, "data_offsets", o);
    cJSON_AddItemToObject(root, name, e);
}

static inline int tst_contains(const char *hay, const char *needle)
{
    return hay && needle && strstr(hay, needle) != NULL;
}

#endif
