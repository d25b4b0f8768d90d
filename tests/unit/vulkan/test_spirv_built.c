/* The Vulkan build plumbing: each kernels/vulkan/NAME.comp has a NAME.spv
 * in the build tree that starts with the SPIR-V magic number. */
#include <dirent.h>
#include <stdint.h>
#include <string.h>

#include "tests/testutil.h"

int main(int argc, char **argv)
{
    if (argc != 3) MB_TEST_SKIP("usage: test_spirv_built SPV_DIR SRC_DIR");
    DIR *d = opendir(argv[2]);
    REQUIRE(d);
    struct dirent *de;
    int n = 0;
    while ((de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (len < 6 || strcmp(de->d_name + len - 5, ".comp") != 0) continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%.*s.spv", argv[1], (int)(len - 5), de->d_name);
        FILE *f = fopen(path, "rb");
        CHECK_MSG(f != NULL, "missing %s", path);
        if (!f) continue;
        uint32_t magic = 0;
        CHECK(fread(&magic, 4, 1, f) == 1 && magic == 0x07230203u);
        fclose(f);
        n++;
    }
    closedir(d);
    CHECK(n > 0);
    return mb_test_finish("test_spirv_built");
}
