/* Hotness files: a --stats-json report's "routing" counts read back for a
 * model of the same shape; every malformed, mistyped or foreign file
 * refused with a message saying what is wrong (never a crash, never a
 * partial result); and the round trip: counts a run records, written by
 * the JSON report, read back equal. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "broker/hotness.h"
#include "broker/stats.h"
#include "tests/testutil.h"

/* Parses text for a 2 x 3 model; returns the status and leaves the message in err. */
static mb_status parse(const char *text, mb_hotness *h, char *err, size_t cap)
{
    err[0] = '\0';
    return mb_hotness_parse(text, strlen(text), "hotness file t.json", 2, 3, h, err, cap);
}

static void refused(const char *text, const char *says)
{
    mb_hotness h = {0};
    char err[512];
    mb_status st = parse(text, &h, err, sizeof err);
    CHECK_MSG(st == MB_STATUS_CONFIG, "accepted: %s", text);
    CHECK_MSG(strstr(err, "t.json") && strstr(err, says), "for %s: message '%s' lacks '%s'", text,
              err, says);
    CHECK(h.counts == NULL);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    REQUIRE(f != NULL);
    fputs(text, f);
    fclose(f);
}

int main(void)
{
    mb_hotness h = {0};
    char err[512];
    /* A good file, with other members around (as a stats report has). */
    REQUIRE(parse("{\"backends\":[],\"routing\":{\"n_layers\":2,\"n_experts\":3,\"counts\":[[1,0,7]"
                  ",[2,3,9007199254740992]]}}",
                  &h, err, sizeof err) == MB_STATUS_OK);
    CHECK(h.n_layers == 2 && h.n_experts == 3);
    CHECK(h.counts[0] == 1 && h.counts[2] == 7 && h.counts[3] == 2 &&
          h.counts[5] == 9007199254740992ull);
    CHECK_EQ(h.total, 13ull + 9007199254740992ull);
    mb_hotness_free(&h);
    CHECK(h.counts == NULL);
    mb_hotness_free(&h); /* twice: fine */

    refused("", "not valid JSON");
    refused("{\"routing\":", "not valid JSON");
    refused("{\"routing\":{}} trailing", "not valid JSON");
    refused("{\"routing\":{}}\n{}", "not valid JSON");
    refused("[1,2,3]", "no \"routing\" object");
    refused("{\"routing\":[]}", "no \"routing\" object");
    refused("{\"Routing\":{}}", "no \"routing\" object");
    refused("{\"routing\":{\"n_layers\":2,\"counts\":[[1,2,3],[4,5,6]]}}", "n_experts");
    refused("{\"routing\":{\"n_layers\":\"2\",\"n_experts\":3,\"counts\":[]}}", "n_layers");
    refused("{\"routing\":{\"n_layers\":-2,\"n_experts\":3,\"counts\":[]}}",
            "non-negative integers");
    refused("{\"routing\":{\"n_layers\":2.5,\"n_experts\":3,\"counts\":[]}}",
            "non-negative integers");
    refused("{\"routing\":{\"n_layers\":1e300,\"n_experts\":3,\"counts\":[]}}",
            "non-negative integers");
    /* Another model's shape. */
    refused("{\"routing\":{\"n_layers\":48,\"n_experts\":128,\"counts\":[]}}",
            "48 layers x 128 experts; this model "
            "has 2 layers x 3 experts");
    refused("{\"routing\":{\"n_layers\":2,\"n_experts\":4,\"counts\":[[1,2,3,4],[1,2,3,4]]}}",
            "another model");
    /* Wrong shapes of counts. */
    refused("{\"routing\":{\"n_layers\":2,\"n_experts\":3}}", "array of 2 rows");
    refused("{\"routing\":{\"n_layers\":2,\"n_experts\":3,\"counts\":{}}}", "array of 2 rows");
    refused("{\"routing\":{\"n_layers\":2,\"n_experts\":3,\"counts\":[[1,2,3]]}}",
            "array of 2 rows");
    refused("{\"routing\":{\"n_layers\":2,\"n_experts\":3,\"counts\":[[1,2,3],[1,2,3],[1,2,3]]}}",
            "array of 2 rows");
    refused("{\"routing\":{\"n_layers\":2,\"n_experts\":3,\"counts\":[[1,2,3],[1,2]]}}",
            "counts[1] must be an array of 3");
    refused("{\"routing\":{\"n_layers\":2,\"n_experts\":3,\"counts\":[[1,2,3],7]}}",
            "counts[1] must be an array of 3");
    refused("{\"routing\":{\"n_layers\":2,\"n_experts\":3,\"counts\":[[1,2,3,4],[1,2,3]]}}",
            "counts[0] must");
    /* Bad counts. */
    refused("{\"routing\":{\"n_layers\":2,\"n_experts\":3,\"counts\":[[1,-2,3],[1,2,3]]}}",
            "counts[0][1] is not");
    refused("{\"routing\":{\"n_layers\":2,\"n_experts\":3,\"counts\":[[1,2,3],[1,2.5,3]]}}",
            "counts[1][1] is not");
    refused("{\"routing\":{\"n_layers\":2,\"n_experts\":3,\"counts\":[[1,2,3],[1,2,\"3\"]]}}",
            "counts[1][2] is not");
    refused("{\"routing\":{\"n_layers\":2,\"n_experts\":3,\"counts\":[[1,2,3],[1,2,null]]}}",
            "counts[1][2] is not");
    refused("{\"routing\":{\"n_layers\":2,\"n_experts\":3,\"counts\":[[1,2,3],[1,2,1e300]]}}",
            "counts[1][2] is not");
    refused("{\"routing\":{\"n_layers\":2,\"n_experts\":3,\"counts\":[[1,2,3],[1,2,"
            "9007199254740994]]}}",
            "counts[1][2] is not");
    /* Deep nesting does not crash the parser. */
    char *deep = malloc(200002);
    REQUIRE(deep != NULL);
    memset(deep, '[', 100000);
    memset(deep + 100000, ']', 100000);
    deep[200000] = '\0';
    refused(deep, "t.json");
    free(deep);
    /* Text without a terminator: only len bytes are read. */
    const char good[] =
        "{\"routing\":{\"n_layers\":2,\"n_experts\":3,\"counts\":[[1,2,3],[4,5,6]]}}XXXX";
    CHECK_EQ(mb_hotness_parse(good, sizeof good - 5, "x", 2, 3, &h, err, sizeof err), MB_STATUS_OK);
    mb_hotness_free(&h);

    /* Files: missing, a directory, empty; then a --stats-json report. */
    char dir[] = "/tmp/mb_hotness_XXXXXX";
    REQUIRE(mkdtemp(dir) != NULL);
    char path[600];
    snprintf(path, sizeof path, "%s/none.json", dir);
    CHECK_EQ(mb_hotness_load(path, 2, 3, &h, err, sizeof err), MB_STATUS_IO);
    CHECK_MSG(strstr(err, "none.json") && strstr(err, "cannot read"), "%s", err);
    CHECK_EQ(mb_hotness_load(dir, 2, 3, &h, err, sizeof err), MB_STATUS_CONFIG);
    CHECK_MSG(strstr(err, "regular"), "%s", err);
    snprintf(path, sizeof path, "%s/empty.json", dir);
    write_file(path, "");
    CHECK_EQ(mb_hotness_load(path, 2, 3, &h, err, sizeof err), MB_STATUS_CONFIG);
    CHECK_MSG(strstr(err, "empty.json") && strstr(err, "non-empty"), "%s", err);
    unlink(path);

    /* Round trip: counts recorded as a run would, the report written and
     * read back. */
    mb_stats *s = NULL;
    const char *names[2] = {"w0", "w1"};
    REQUIRE(mb_stats_create(2, names, 2, 0, &s) == MB_STATUS_OK);
    const uint16_t group[6] = {0, 1, 0, 1, 0, 1};
    CHECK_EQ(mb_stats_track_routing(s, 2, 3, NULL), MB_STATUS_OK);
    CHECK_EQ(mb_stats_track_routing(s, 2, 3, (const uint16_t[6]){0, 1, 2, 0, 0, 0}),
             MB_STATUS_INVALID_ARG);
    REQUIRE(mb_stats_track_routing(s, 2, 3, group) == MB_STATUS_OK);
    const int32_t ids0[] = {0, 2, 2, 1, 2, 0, 7, -1}; /* 7 and -1: out of range, skipped */
    const int32_t ids1[] = {1, 1, 1};
    CHECK_EQ(mb_stats_record_routing(s, 0, ids0, 8), MB_STATUS_OK);
    CHECK_EQ(mb_stats_record_routing(s, 1, ids1, 3), MB_STATUS_OK);
    CHECK_EQ(mb_stats_record_routing(s, 2, ids1, 3), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_stats_routed(s, 0, 0), 2);
    CHECK_EQ(mb_stats_routed(s, 0, 1), 1);
    CHECK_EQ(mb_stats_routed(s, 0, 2), 3);
    CHECK_EQ(mb_stats_routed(s, 1, 1), 3);
    /* group: (0,0)=0 (0,1)=1 (0,2)=0 (1,0)=1 (1,1)=0 (1,2)=1 */
    CHECK_EQ(mb_stats_routed_to_group(s, 0), 8);
    CHECK_EQ(mb_stats_routed_to_group(s, 1), 1);
    const uint32_t copy_on[1] = {1};
    mb_stats_replica r = {.backend = 0,
                          .experts = 3,
                          .rank = 0,
                          .wanted = 1,
                          .n_copies = 1,
                          .copies = copy_on,
                          .detail = "w0's 3 experts: copy on w1"};
    CHECK_EQ(mb_stats_record_replica(s, &r), MB_STATUS_OK);
    r = (mb_stats_replica){.backend = 1,
                           .experts = 3,
                           .rank = 1,
                           .wanted = 1,
                           .short_why = "memory",
                           .hotness_known = 1,
                           .hotness_pairs = 42,
                           .detail = "w1's 3 experts: no copy (memory)"};
    CHECK_EQ(mb_stats_record_replica(s, &r), MB_STATUS_OK);
    r.backend = 2;
    CHECK_EQ(mb_stats_record_replica(s, &r), MB_STATUS_INVALID_ARG);
    snprintf(path, sizeof path, "%s/stats.json", dir);
    REQUIRE(mb_stats_write_json(s, path) == MB_STATUS_OK);
    REQUIRE(mb_hotness_load(path, 2, 3, &h, err, sizeof err) == MB_STATUS_OK);
    const uint64_t want[6] = {2, 1, 3, 0, 3, 0};
    for (int i = 0; i < 6; i++)
        CHECK_EQ(h.counts[i], want[i]);
    CHECK_EQ(h.total, 9);
    mb_hotness_free(&h);
    CHECK_EQ(mb_hotness_load(path, 3, 3, &h, err, sizeof err), MB_STATUS_CONFIG);
    /* The report lists the replicas with this run's share. */
    FILE *f = fopen(path, "r");
    char text[8192] = "";
    size_t n = f ? fread(text, 1, sizeof text - 1, f) : 0;
    if (f) fclose(f);
    text[n] = '\0';
    CHECK_MSG(strstr(text, "\"replicas\"") && strstr(text, "\"copies\":\t[\"w1\"]") &&
                  strstr(text, "\"short\":\t\"memory\"") && strstr(text, "\"routed_pairs\":\t8") &&
                  strstr(text, "\"hotness_pairs\":\t42"),
              "%s", text);
    char table[4096] = "";
    FILE *mem = fmemopen(table, sizeof table - 1, "w");
    REQUIRE(mem != NULL);
    CHECK_EQ(mb_stats_print_table(s, mem), MB_STATUS_OK);
    fclose(mem);
    CHECK_MSG(strstr(table, "w0's 3 experts: copy on w1; this run: 88.9% of routed pairs") &&
                  strstr(table, "w1's 3 experts: no copy (memory); this run: 11.1%"),
              "%s", table);
    /* Reset zeroes the counts. */
    mb_stats_reset(s);
    CHECK_EQ(mb_stats_routed(s, 0, 2), 0);
    /* Counts made elsewhere (the GPU coordinator's, on its device) add in;
     * a layer past the table or no counts are refused and change nothing. */
    const uint64_t counts[3] = {1, 0, 2};
    CHECK_EQ(mb_stats_add_routed(s, 2, counts), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_stats_add_routed(s, 1, NULL), MB_STATUS_INVALID_ARG);
    CHECK_EQ(mb_stats_add_routed(s, 1, counts), MB_STATUS_OK);
    CHECK_EQ(mb_stats_add_routed(s, 1, counts), MB_STATUS_OK);
    CHECK_EQ(mb_stats_routed(s, 1, 0), 2);
    CHECK_EQ(mb_stats_routed(s, 1, 1), 0);
    CHECK_EQ(mb_stats_routed(s, 1, 2), 4);
    CHECK_EQ(mb_stats_routed(s, 0, 0), 0);
    CHECK_EQ(mb_stats_routed_to_group(s, 1), 6);
    mb_stats_destroy(s);
    unlink(path);
    rmdir(dir);
    return mb_test_finish("test_hotness");
}
