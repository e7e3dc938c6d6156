// bench/shim.cc: the C interface of bench/shim.h over google-benchmark.
//
// tb_state and tb_bench are never defined: a tb_state* is a benchmark::State*
// and a tb_bench* a benchmark::internal::Benchmark*, cast at the boundary.
#include "shim.h"

#include <benchmark/benchmark.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

using benchmark::Counter;
using benchmark::State;
using benchmark::internal::Benchmark;

namespace {

// What the shim knows of a registered benchmark: the C function, its
// argument, and how many arguments each run gets (for tb_range's bound).
struct Reg {
    tb_fn fn;
    void *arg;
    size_t nargs;
};
std::map<Benchmark *, Reg *> &regs() {
    static std::map<Benchmark *, Reg *> m;  // registrations live as long as the process
    return m;
}
thread_local const Reg *current;  // the benchmark this thread is running

void note_args(tb_bench *b, size_t n) {
    auto it = regs().find(reinterpret_cast<Benchmark *>(b));
    if (it != regs().end() && it->second->nargs < n) it->second->nargs = n;
}

State &S(tb_state *st) { return *reinterpret_cast<State *>(st); }
Benchmark *B(tb_bench *b) { return reinterpret_cast<Benchmark *>(b); }
tb_bench *T(Benchmark *b) { return reinterpret_cast<tb_bench *>(b); }

Counter::Flags counter_flags(unsigned f) {
    int out = Counter::kDefaults;
    if (f & TB_COUNTER_RATE) out |= Counter::kIsRate;
    if (f & TB_COUNTER_AVG_THREADS) out |= Counter::kAvgThreads;
    if (f & TB_COUNTER_ITER_INVARIANT) out |= Counter::kIsIterationInvariant;
    if (f & TB_COUNTER_AVG_ITERATIONS) out |= Counter::kAvgIterations;
    if (f & TB_COUNTER_INVERT) out |= Counter::kInvert;
    return static_cast<Counter::Flags>(out);
}

Counter make_counter(double v, unsigned f) {
    return Counter(v, counter_flags(f),
                   (f & TB_COUNTER_BASE_1024) ? Counter::kIs1024 : Counter::kIs1000);
}

bool has_flag(int argc, char **argv, const char *name) {
    size_t n = std::strlen(name);
    for (int i = 1; i < argc; i++)
        if (std::strncmp(argv[i], name, n) == 0 && (argv[i][n] == '=' || argv[i][n] == '\0'))
            return true;
    return false;
}

// Initialize + run; -1 if an argument was not understood or if a run was
// already made.
long run(int argc, char **argv, bool last) {
    // google-benchmark 1.7 crashes in a second RunSpecifiedBenchmarks
    static bool ran_once;
    if (ran_once) {
        std::fprintf(stderr, "tieralloc bench shim: benchmarks can run only once per process\n");
        return -1;
    }
    ran_once = true;
    // The default min time of google-benchmark (0.5 s) makes the suite take
    // minutes; use a shorter one unless the caller chose.
    std::vector<char *> args(argv, argv + argc);
    static char default_min_time[64];
    if (!has_flag(argc, argv, "--benchmark_min_time") && !std::getenv("BENCHMARK_MIN_TIME")) {
        std::snprintf(default_min_time, sizeof default_min_time, "--benchmark_min_time=%g",
                      TB_DEFAULT_MIN_TIME);
        args.insert(args.begin() + (argc > 0 ? 1 : 0), default_min_time);
    }
    args.push_back(nullptr);
    int n = static_cast<int>(args.size()) - 1;
    benchmark::Initialize(&n, args.data());
    if (benchmark::ReportUnrecognizedArguments(n, args.data())) return -1;
    long ran = static_cast<long>(benchmark::RunSpecifiedBenchmarks());
    if (last) benchmark::Shutdown();
    return ran;
}

}  // namespace

extern "C" {

tb_bench *tb_register(const char *name, tb_fn fn, void *arg) {
    Reg *reg = new Reg{fn, arg, 0};
    Benchmark *b = benchmark::RegisterBenchmark(name, [reg](State &st) {
        current = reg;
        reg->fn(reinterpret_cast<tb_state *>(&st), reg->arg);
        current = nullptr;
    });
    regs()[b] = reg;
    return T(b);
}

tb_bench *tb_bench_arg(tb_bench *b, int64_t x) {
    note_args(b, 1);
    return T(B(b)->Arg(x));
}
tb_bench *tb_bench_args(tb_bench *b, const int64_t *xs, size_t n) {
    note_args(b, n);
    return T(B(b)->Args(std::vector<int64_t>(xs, xs + n)));
}
tb_bench *tb_bench_range(tb_bench *b, int64_t lo, int64_t hi) {
    note_args(b, 1);
    return T(B(b)->Range(lo, hi));
}
tb_bench *tb_bench_range_multiplier(tb_bench *b, int m) { return T(B(b)->RangeMultiplier(m)); }
tb_bench *tb_bench_dense_range(tb_bench *b, int64_t lo, int64_t hi, int step) {
    note_args(b, 1);
    return T(B(b)->DenseRange(lo, hi, step));
}
tb_bench *tb_bench_arg_name(tb_bench *b, const char *name) { return T(B(b)->ArgName(name)); }
tb_bench *tb_bench_threads(tb_bench *b, int n) { return T(B(b)->Threads(n)); }
tb_bench *tb_bench_thread_range(tb_bench *b, int lo, int hi) {
    return T(B(b)->ThreadRange(lo, hi));
}
tb_bench *tb_bench_use_real_time(tb_bench *b) { return T(B(b)->UseRealTime()); }
tb_bench *tb_bench_measure_process_cpu_time(tb_bench *b) {
    return T(B(b)->MeasureProcessCPUTime());
}
tb_bench *tb_bench_min_time(tb_bench *b, double seconds) { return T(B(b)->MinTime(seconds)); }
tb_bench *tb_bench_iterations(tb_bench *b, int64_t n) {
    return T(B(b)->Iterations(static_cast<benchmark::IterationCount>(n)));
}
tb_bench *tb_bench_repetitions(tb_bench *b, int n) { return T(B(b)->Repetitions(n)); }
tb_bench *tb_bench_unit(tb_bench *b, tb_unit unit) {
    benchmark::TimeUnit u = benchmark::kNanosecond;
    switch (unit) {
    case TB_NS: u = benchmark::kNanosecond; break;
    case TB_US: u = benchmark::kMicrosecond; break;
    case TB_MS: u = benchmark::kMillisecond; break;
    case TB_S: u = benchmark::kSecond; break;
    }
    return T(B(b)->Unit(u));
}

int tb_main(int argc, char **argv) { return run(argc, argv, true) < 0 ? 1 : 0; }
long tb_run(int argc, char **argv) { return run(argc, argv, false); }

void tb_add_context(const char *key, const char *value) {
    benchmark::AddCustomContext(key, value);
}

bool tb_keep_running(tb_state *st) { return S(st).KeepRunning(); }
bool tb_keep_running_batch(tb_state *st, int64_t n) {
    return S(st).KeepRunningBatch(static_cast<benchmark::IterationCount>(n));
}
int64_t tb_range(tb_state *st, size_t i) {
    // google-benchmark asserts (or reads out of bounds) past the last argument
    if (!current || i >= current->nargs) return 0;
    return S(st).range(i);
}
int64_t tb_iterations(tb_state *st) { return static_cast<int64_t>(S(st).iterations()); }
int64_t tb_max_iterations(tb_state *st) { return static_cast<int64_t>(S(st).max_iterations); }
int tb_threads(tb_state *st) { return S(st).threads(); }
int tb_thread_index(tb_state *st) { return S(st).thread_index(); }
void tb_pause_timing(tb_state *st) { S(st).PauseTiming(); }
void tb_resume_timing(tb_state *st) { S(st).ResumeTiming(); }
void tb_skip_with_error(tb_state *st, const char *msg) { S(st).SkipWithError(msg); }
bool tb_error_occurred(tb_state *st) { return S(st).error_occurred(); }
void tb_set_items_processed(tb_state *st, int64_t items) { S(st).SetItemsProcessed(items); }
void tb_set_bytes_processed(tb_state *st, int64_t bytes) { S(st).SetBytesProcessed(bytes); }
void tb_set_label(tb_state *st, const char *label) { S(st).SetLabel(label); }

void tb_counter_set(tb_state *st, const char *name, double value, unsigned flags) {
    S(st).counters[name] = make_counter(value, flags);
}
void tb_counter_add(tb_state *st, const char *name, double value, unsigned flags) {
    auto &counters = S(st).counters;
    auto it = counters.find(name);
    double prev = it == counters.end() ? 0.0 : it->second.value;
    counters[name] = make_counter(prev + value, flags);
}
double tb_counter_get(tb_state *st, const char *name) {
    auto &counters = S(st).counters;
    auto it = counters.find(name);
    return it == counters.end() ? 0.0 : it->second.value;
}

}  // extern "C"
