/* The decode profile of the dense layers on a CUDA device
 * (MB_CUDA_PROFILE=1: events between operations without graphs;
 * MB_CUDA_PROFILE=graph: clock stamps inside the whole-step graphs), summed
 * per operation and printed at destroy. */
#include <stdio.h>
#include <string.h>

#ifdef MB_HAVE_CUDA

#include "broker/device/forward_cuda_internal.h"

/* Records an event (or, in graph mode, a clock stamp) after the operation
 * just enqueued, in a profiled step. */
void mb_fwdc_prof_mark(mb_fwd_cuda *fc, const char *label)
{
    if (!fc->prof.on || fc->prof.marks < 0 || fc->prof.marks >= fc->prof.cap) return;
    if (fc->prof.stamps) {
        if (mb_kcuda_stamp(fc->stream, fc->prof.ts + fc->prof.marks) != 0) return;
    } else if (cudaEventRecord(fc->prof.ev[fc->prof.marks], fc->stream) != cudaSuccess) {
        return;
    }
    fc->prof.label[fc->prof.marks++] = label;
}

/* After the step's synchronisation: each gap between marks goes to the
 * label of the mark that ends it. */
void mb_fwdc_prof_collect(mb_fwd_cuda *fc)
{
    if (!fc->prof.on || fc->prof.marks < 0) return;
    if (fc->prof.stamps &&
        cudaMemcpy(fc->prof.h_ts, fc->prof.ts, (size_t)fc->prof.marks * sizeof *fc->prof.ts,
                   cudaMemcpyDeviceToHost) != cudaSuccess) {
        fc->prof.marks = -1;
        return;
    }
    for (int i = 1; i < fc->prof.marks; i++) {
        float ms = 0;
        if (fc->prof.stamps) {
            const unsigned long long a = fc->prof.h_ts[i - 1], b = fc->prof.h_ts[i];
            ms = b > a ? (float)((double)(b - a) / 1e6) : 0.0f;
        } else if (cudaEventElapsedTime(&ms, fc->prof.ev[i - 1], fc->prof.ev[i]) != cudaSuccess) {
            continue;
        }
        int r = 0;
        while (r < fc->prof.rows && strcmp(fc->prof.row[r].label, fc->prof.label[i]) != 0) r++;
        if (r == fc->prof.rows) {
            if (r == (int)(sizeof fc->prof.row / sizeof fc->prof.row[0])) continue;
            fc->prof.row[fc->prof.rows++].label = fc->prof.label[i];
        }
        fc->prof.row[r].ms += ms;
    }
    fc->prof.steps++;
    fc->prof.marks = -1;
}

void mb_fwdc_prof_print(const mb_fwd_cuda *fc)
{
    if (!fc->prof.on || fc->prof.steps == 0) return;
    double total = 0;
    for (int r = 0; r < fc->prof.rows; r++) total += fc->prof.row[r].ms;
    fprintf(stderr, "cuda decode profile: %llu steps, %u layers, %s, %.1f us a step\n",
            (unsigned long long)fc->prof.steps, fc->cfg.n_layers,
            fc->prof.stamps ? "whole-step graphs, clock stamps between operations (each a launch)"
                            : "no graphs, event gaps",
            1e3 * total / (double)fc->prof.steps);
    fprintf(stderr, "  %-34s %10s %10s %7s\n", "operation", "us/step", "us/layer", "share");
    for (int r = 0; r < fc->prof.rows; r++) {
        double us = 1e3 * fc->prof.row[r].ms / (double)fc->prof.steps;
        fprintf(stderr, "  %-34s %10.1f %10.2f %6.1f%%\n", fc->prof.row[r].label, us,
                us / (fc->cfg.n_layers ? fc->cfg.n_layers : 1), 100.0 * fc->prof.row[r].ms / total);
    }
}

#endif
