/* The Hugging Face fixtures under MB_TEST_DATA (tests/data/README.md): every
 * folder holding config.json and reference.safetensors, with the model and
 * transformers' reference logits loaded for the caller. Header-only; the
 * test links mb_broker. */
#ifndef MB_TESTS_PARITY_FIXTURES_H
#define MB_TESTS_PARITY_FIXTURES_H

#include <dirent.h>
#include <stdio.h>
#include <sys/stat.h>

#include "broker/model.h"
#include "broker/safetensors.h"
#include "tests/testutil.h"

typedef void (*mb_fixture_fn)(const char *name, const mb_model *m, const mb_reference *ref, void *ctx);

/* Calls fn for each fixture under data, loading and freeing it around the
 * call; a fixture that fails to load stops the test. Returns how many ran. */
static inline int mb_test_each_fixture(const char *data, mb_fixture_fn fn, void *ctx)
{
    DIR *dir = opendir(data);
    REQUIRE(dir);
    struct dirent *de;
    int n = 0;
    while ((de = readdir(dir))) {
        if (de->d_name[0] == '.') continue;
        char path[1024], cfg[1100], refpath[1100];
        snprintf(path, sizeof path, "%s/%s", data, de->d_name);
        snprintf(cfg, sizeof cfg, "%s/config.json", path);
        snprintf(refpath, sizeof refpath, "%s/reference.safetensors", path);
        struct stat sb;
        if (stat(cfg, &sb) != 0 || stat(refpath, &sb) != 0) continue;
        char err[512];
        mb_model *m = NULL;
        mb_reference ref;
        REQUIRE(mb_model_load(path, &m, err, sizeof err) == MB_STATUS_OK);
        REQUIRE(mb_reference_init(&ref, refpath, err, sizeof err) == MB_STATUS_OK);
        REQUIRE(ref.vocab == m->cfg.vocab);
        printf("%s:\n", de->d_name);
        fn(de->d_name, m, &ref, ctx);
        mb_reference_fini(&ref);
        mb_model_destroy(m);
        n++;
    }
    closedir(dir);
    return n;
}

#endif
