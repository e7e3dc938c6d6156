/* bench/main.c: tieralloc-bench, the allocator benchmarks.
 *
 * The binary links no allocator of its own: run it as is to measure glibc's
 * malloc, or under LD_PRELOAD=lib.so to measure another one (that is what
 * tools/tieralloc-compare does).  It accepts google-benchmark's flags, e.g.
 *   bench/tieralloc-bench --benchmark_filter=fastpath
 *   LD_PRELOAD=.libs/libtieralloc.so bench/tieralloc-bench --benchmark_format=json
 * The report's context says which library answers malloc ("malloc_from"). */
#include "workloads.h"

#include <string.h>

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--small-process") == 0)
        return bench_small_process(); /* the program spawn_small starts */
    if (argc == 2 && strcmp(argv[1], "--cpu-roundtrip") == 0)
        return bench_cpu_roundtrip(); /* tools/tieralloc-compare's probe of the machine */
    bench_register_single();
    bench_register_threads();
    bench_register_memory();
    bench_register_shapes();
    bench_register_arena();
    tb_add_context("malloc_from", bench_malloc_origin());
    return tb_main(argc, argv);
}
