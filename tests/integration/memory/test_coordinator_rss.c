/* The coordinator maps a checkpoint but never touches the experts it does
 * not compute: after starting workers on the same host (which map the
 * experts themselves), loading and running a prefill and decode steps, the
 * resident part of the coordinator's mapping of each weights file stays
 * within the non-expert tensors (plus page rounding). Checked through
 * /proc/self/smaps for every checkpoint under MB_TEST_DATA. */
#include <dirent.h>
#include <string.h>
#include <sys/stat.h>

#include "broker/model.h"
#include "broker/session.h"
#include "tests/testutil.h"

/* Rss in bytes of the mapping that starts at addr, or -1. A mapping's
 * header line is "LO-HI perms ..."; its fields follow as "Name: value". */
static long long mapping_rss(const void *addr)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return -1;
    char line[512];
    int in = 0;
    long long rss = -1;
    while (fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        char dash;
        if (sscanf(line, "%lx%c%lx ", &lo, &dash, &hi) == 3 && dash == '-') {
            in = lo == (unsigned long)addr;
            continue;
        }
        long long kb;
        if (in && sscanf(line, "Rss: %lld kB", &kb) == 1) {
            rss = kb * 1024;
            break;
        }
    }
    fclose(f);
    return rss;
}

static uint64_t tensor_bytes(const mb_tensor *t)
{
    return t->data ? t->rows * t->cols * mb_dtype_size(t->dtype) : 0;
}

int main(void)
{
    const char *data = getenv("MB_TEST_DATA");
    if (!data) MB_TEST_SKIP("MB_TEST_DATA not set");
    DIR *dir = opendir(data);
    REQUIRE(dir);
    struct dirent *de;
    int n = 0;
    while ((de = readdir(dir))) {
        char path[1024], cfg[1100];
        snprintf(path, sizeof path, "%s/%s", data, de->d_name);
        snprintf(cfg, sizeof cfg, "%s/config.json", path);
        struct stat sb;
        if (de->d_name[0] == '.' || stat(cfg, &sb) != 0) continue;
        char err[512];
        mb_model *m = NULL;
        REQUIRE(mb_model_load(path, &m, err, sizeof err) == MB_STATUS_OK);
        const mb_model_config *c = &m->cfg;
        uint64_t non_expert = tensor_bytes(&m->embed) + tensor_bytes(&m->final_norm) + tensor_bytes(&m->lm_head);
        uint64_t experts = 0;
        for (uint32_t l = 0; l < c->n_layers; l++) {
            const mb_layer_weights *w = &m->layers[l];
            const mb_tensor *t[] = {&w->attn_norm, &w->wq, &w->wk, &w->wv, &w->bq, &w->bk, &w->bv, &w->q_norm,
                                    &w->k_norm, &w->wo, &w->ffn_norm, &w->router, &w->shared.gate, &w->shared.up,
                                    &w->shared.down, &w->shared_gate};
            for (size_t i = 0; i < sizeof t / sizeof *t; i++) non_expert += tensor_bytes(t[i]);
            for (uint32_t e = 0; e < c->n_experts; e++)
                experts += tensor_bytes(&w->experts[e].gate) + tensor_bytes(&w->experts[e].up) +
                           tensor_bytes(&w->experts[e].down);
        }
        mb_options opt;
        mb_options_init(&opt);
        char *workers[] = {"cpu,threads=1", "cpu,threads=1"};
        opt.workers = workers;
        opt.n_workers = 2;
        opt.threads = 1;
        mb_session *s = NULL;
        REQUIRE(mb_session_open(&opt, m, 32, 0, &s, err, sizeof err) == MB_STATUS_OK);
        int32_t ids[24];
        for (int i = 0; i < 24; i++) ids[i] = (int32_t)((i * 7 + 3) % c->vocab);
        float *last = malloc(c->vocab * sizeof *last);
        CHECK(mb_session_step(s, ids, 16, NULL, last, err, sizeof err) == MB_STATUS_OK);
        for (int i = 16; i < 24; i++) CHECK(mb_session_step(s, ids + i, 1, NULL, last, err, sizeof err) == MB_STATUS_OK);
        uint64_t rss = 0;
        for (uint32_t f = 0; f < m->n_files; f++) {
            long long r = mapping_rss(m->files[f].map);
            CHECK_MSG(r >= 0, "mapping of %s not found in smaps", m->files[f].path);
            if (r > 0) rss += (uint64_t)r;
        }
        /* Page rounding: each tensor may pull in up to two partial pages. */
        uint64_t slack = 2ull * 4096 * (3 + 16ull * c->n_layers) + 65536;
        printf("%s: coordinator resident %llu KiB of its mappings; non-expert %llu KiB, experts %llu KiB\n",
               de->d_name, (unsigned long long)rss / 1024, (unsigned long long)non_expert / 1024,
               (unsigned long long)experts / 1024);
        CHECK_MSG(rss <= non_expert + slack, "%s: %llu bytes resident, more than the %llu non-expert bytes", de->d_name,
                  (unsigned long long)rss, (unsigned long long)non_expert);
        free(last);
        mb_session_close(s);
        mb_model_destroy(m);
        n++;
    }
    closedir(dir);
    CHECK(n > 0);
    return mb_test_finish("test_coordinator_rss");
}
