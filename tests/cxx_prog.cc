// cxx_prog: exercises every form of the global operator new/delete and the
// standard containers, and checks that each block came from tieralloc.
//
// It is not linked with tieralloc: run it with
//   LD_PRELOAD=.libs/libtieralloc.so tests/cxx_prog
// It finds ta_owns() with dlsym and fails if tieralloc is not loaded.  On
// success the last line on stdout is "cxx ok" and the exit status is 0; every
// failed check prints one line on stderr and the exit status is 1.
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#ifndef __cpp_sized_deallocation
// clang enables sized deallocation only with -fsized-deallocation; the
// operators exist in libstdc++ either way, so declare them to call them.
void operator delete(void *, std::size_t) noexcept;
void operator delete[](void *, std::size_t) noexcept;
void operator delete(void *, std::size_t, std::align_val_t) noexcept;
void operator delete[](void *, std::size_t, std::align_val_t) noexcept;
#endif

namespace {

typedef int (*owns_fn)(const void *);
owns_fn ta_owns_p;
std::atomic<int> n_fail{0};
std::atomic<long> n_checks{0};

void fail(int line, const char *what, const void *p) {
    n_fail++;
    std::fprintf(stderr, "cxx_prog: line %d: %s (p=%p)\n", line, what, p);
}

#define CHECK(cond, p)                                    \
    do {                                                  \
        n_checks++;                                       \
        if (!(cond)) fail(__LINE__, #cond, (const void *)(p)); \
    } while (0)

bool owned(const void *p) { return ta_owns_p(p) == 1; }
bool aligned(const void *p, size_t a) { return ((uintptr_t)p & (a - 1)) == 0; }

// Write the whole block, so a block smaller than requested corrupts its
// neighbours (and the allocator's checks or ours notice).
void fill(void *p, size_t n, unsigned char v) {
    if (n) std::memset(p, v, n);
}
bool filled(const void *p, size_t n, unsigned char v) {
    const unsigned char *c = (const unsigned char *)p;
    for (size_t i = 0; i < n; i++)
        if (c[i] != v) return false;
    return true;
}

// A live block after allocation, gone after deallocation.
#define CHECK_LIVE(p, align)                  \
    do {                                      \
        CHECK((p) != nullptr, p);             \
        CHECK(owned(p), p);                   \
        CHECK(aligned(p, align), p);          \
    } while (0)
// ta_owns of an address whose block was freed: 0.  The address is taken
// before the delete (see hide) so the compiler does not see a freed pointer.
#define CHECK_GONE(addr) CHECK(!owned((const void *)(addr)), (addr))
uintptr_t hide(const void *p) {
    uintptr_t a = (uintptr_t)p;
    __asm__("" : "+r"(a));
    return a;
}

const size_t kSizes[] = {0, 1, 7, 8, 15, 16, 17, 48, 100, 255, 256, 1000, 1024, 1025, 4096, 10000,
                         65536, 100000, 262144, 262145, 1 << 20, 5 << 20};
const size_t kAligns[] = {32, 64, 128, 256, 1024, 4096, 8192, 65536, 1 << 20};
const size_t kDefaultAlign = __STDCPP_DEFAULT_NEW_ALIGNMENT__;

// ---- the operators called directly ------------------------------------------
void test_plain_operators() {
    unsigned char v = 1;
    for (size_t n : kSizes) {
        // operator new / operator delete (unsized, then sized)
        for (int form = 0; form < 2; form++, v++) {
            void *p = ::operator new(n);
            CHECK_LIVE(p, kDefaultAlign);
            fill(p, n, v);
            CHECK(filled(p, n, v), p);
            const uintptr_t p_addr = hide(p);
            if (form == 0)
                ::operator delete(p);
            else
                ::operator delete(p, n);
            CHECK_GONE(p_addr);
        }
        // operator new[] / operator delete[] (unsized, then sized)
        for (int form = 0; form < 2; form++, v++) {
            void *p = ::operator new[](n);
            CHECK_LIVE(p, kDefaultAlign);
            fill(p, n, v);
            const uintptr_t p_addr = hide(p);
            if (form == 0)
                ::operator delete[](p);
            else
                ::operator delete[](p, n);
            CHECK_GONE(p_addr);
        }
        // nothrow forms, with the nothrow and the plain delete
        for (int form = 0; form < 2; form++, v++) {
            void *p = ::operator new(n, std::nothrow);
            CHECK_LIVE(p, kDefaultAlign);
            fill(p, n, v);
            const uintptr_t p_addr = hide(p);
            if (form == 0)
                ::operator delete(p, std::nothrow);
            else
                ::operator delete(p);
            CHECK_GONE(p_addr);
            void *q = ::operator new[](n, std::nothrow);
            CHECK_LIVE(q, kDefaultAlign);
            fill(q, n, v);
            const uintptr_t q_addr = hide(q);
            if (form == 0)
                ::operator delete[](q, std::nothrow);
            else
                ::operator delete[](q, n);
            CHECK_GONE(q_addr);
        }
    }
    // operator new(0) gives distinct live blocks
    void *a = ::operator new(0), *b = ::operator new(0);
    CHECK(a != b, a);
    CHECK(owned(a) && owned(b), b);
    ::operator delete(a, (size_t)0);
    ::operator delete(b);
}

void test_aligned_operators() {
    unsigned char v = 3;
    for (size_t al : kAligns) {
        const std::align_val_t a = std::align_val_t(al);
        const size_t sizes[] = {1, 24, al / 2, al, al + 1, 3 * al + 5, 100000};
        for (size_t n : sizes) {
            for (int form = 0; form < 3; form++, v++) {
                void *p = ::operator new(n, a);
                CHECK_LIVE(p, al);
                fill(p, n, v);
                CHECK(filled(p, n, v), p);
                const uintptr_t p_addr = hide(p);
                if (form == 0)
                    ::operator delete(p, a);
                else if (form == 1)
                    ::operator delete(p, n, a); // sized + aligned
                else
                    ::operator delete(p, a, std::nothrow);
                CHECK_GONE(p_addr);

                void *q = ::operator new[](n, a);
                CHECK_LIVE(q, al);
                fill(q, n, v);
                const uintptr_t q_addr = hide(q);
                if (form == 0)
                    ::operator delete[](q, a);
                else if (form == 1)
                    ::operator delete[](q, n, a);
                else
                    ::operator delete[](q, a, std::nothrow);
                CHECK_GONE(q_addr);

                void *r = ::operator new(n, a, std::nothrow);
                CHECK_LIVE(r, al);
                fill(r, n, v);
                const uintptr_t r_addr = hide(r);
                if (form == 2)
                    ::operator delete(r, a, std::nothrow);
                else
                    ::operator delete(r, n, a);
                CHECK_GONE(r_addr);

                void *s = ::operator new[](n, a, std::nothrow);
                CHECK_LIVE(s, al);
                fill(s, n, v);
                const uintptr_t s_addr = hide(s);
                if (form == 2)
                    ::operator delete[](s, a, std::nothrow);
                else
                    ::operator delete[](s, n, a);
                CHECK_GONE(s_addr);
            }
        }
    }
    // Many live aligned blocks at once: they must not overlap.
    std::vector<std::pair<char *, size_t>> live;
    for (int i = 0; i < 200; i++) {
        size_t al = kAligns[i % 6]; // up to 8 KiB
        size_t n = 1 + (size_t)(i * 37) % 3000;
        char *p = (char *)::operator new(n, std::align_val_t(al));
        CHECK_LIVE(p, al);
        fill(p, n, (unsigned char)i);
        live.push_back({p, n});
    }
    for (size_t i = 0; i < live.size(); i++) {
        CHECK(filled(live[i].first, live[i].second, (unsigned char)i), live[i].first);
        ::operator delete(live[i].first, live[i].second, std::align_val_t(kAligns[i % 6]));
    }
}

// ---- new-expressions --------------------------------------------------------
struct alignas(256) A256 {
    char c[300];
};
struct alignas(4096) A4096 {
    char c[5000];
};
std::atomic<long> n_dtor{0};
struct alignas(64) D64 { // non-trivial destructor: arrays carry a cookie
    char c[72];
    ~D64() { n_dtor++; }
};
struct Obj {
    std::string s;
    long x = 0;
    ~Obj() { n_dtor++; }
};
struct Base {
    virtual ~Base() {}
    long b = 1;
};
struct Derived : Base {
    char pad[1000];
    long d = 2;
    ~Derived() override { n_dtor++; }
};

// Itanium C++ ABI: an array of a type with a non-trivial destructor starts
// max(sizeof(size_t), alignof(T)) bytes after the block operator new[] returned.
template <class T> const void *array_block(const T *p) {
    return (const char *)p - std::max(sizeof(size_t), alignof(T));
}

void test_new_expressions() {
    for (int round = 0; round < 50; round++) {
        A256 *a = new A256;
        CHECK_LIVE(a, 256);
        std::memset(a->c, round, sizeof a->c);
        const uintptr_t a_addr = hide(a);
        delete a; // sized + aligned delete
        CHECK_GONE(a_addr);

        A256 *aa = new A256[round + 1];
        CHECK_LIVE(aa, 256);
        std::memset(aa, round, sizeof(A256) * (round + 1));
        const uintptr_t aa_addr = hide(aa);
        delete[] aa;
        CHECK_GONE(aa_addr);

        A4096 *b = new A4096;
        CHECK_LIVE(b, 4096);
        std::memset(b->c, round, sizeof b->c);
        const uintptr_t b_addr = hide(b);
        delete b;
        CHECK_GONE(b_addr);

        A4096 *bb = new A4096[(round % 5) + 1];
        CHECK_LIVE(bb, 4096);
        const uintptr_t bb_addr = hide(bb);
        delete[] bb;
        CHECK_GONE(bb_addr);

        long before = n_dtor;
        D64 *d = new D64[round + 2];
        CHECK(aligned(d, 64), d);
        CHECK(owned(array_block(d)), array_block(d));
        const uintptr_t dblk = hide(array_block(d));
        delete[] d; // sized + aligned delete[], size includes the cookie
        CHECK(n_dtor - before == round + 2, nullptr);
        CHECK_GONE(dblk);

        before = n_dtor;
        Obj *o = new Obj[round + 3];
        CHECK(owned(array_block(o)), array_block(o));
        for (int i = 0; i < round + 3; i++) o[i].s.assign(100 + i, 'o'); // heap strings
        CHECK(owned(o[round].s.data()), o[round].s.data());
        const uintptr_t oblk = hide(array_block(o));
        delete[] o; // sized delete[]
        CHECK(n_dtor - before == round + 3, nullptr);
        CHECK_GONE(oblk);

        Base *p = new Derived; // deleting destructor: sized delete with sizeof(Derived)
        CHECK_LIVE(p, kDefaultAlign);
        const uintptr_t p_addr = hide(p);
        delete p;
        CHECK_GONE(p_addr);

        int *ia = new int[1000 + round];
        CHECK_LIVE(ia, kDefaultAlign);
        for (int i = 0; i < 1000 + round; i++) ia[i] = i;
        const uintptr_t ia_addr = hide(ia);
        delete[] ia;
        CHECK_GONE(ia_addr);

        A4096 *nb = new (std::nothrow) A4096;
        CHECK_LIVE(nb, 4096);
        delete nb;
        int *ni = new (std::nothrow) int[50];
        CHECK_LIVE(ni, kDefaultAlign);
        delete[] ni;
        A256 *na = new (std::nothrow) A256[3];
        CHECK_LIVE(na, 256);
        delete[] na;
    }
}

// ---- failures ---------------------------------------------------------------
int handler_calls;
void counting_handler() {
    handler_calls++;
    std::set_new_handler(nullptr); // the next failure throws
}

template <class F> void expect_bad_alloc(F f, int line, const char *what) {
    n_checks++;
    try {
        void *p = f();
        n_fail++;
        std::fprintf(stderr, "cxx_prog: line %d: %s did not throw (returned %p)\n", line, what, p);
    } catch (const std::bad_alloc &) {
    } catch (...) {
        n_fail++;
        std::fprintf(stderr, "cxx_prog: line %d: %s threw something other than std::bad_alloc\n", line,
                     what);
    }
}
#define EXPECT_BAD_ALLOC(expr) expect_bad_alloc([&]() -> void * { return (void *)(expr); }, __LINE__, #expr)

void test_failures() {
    volatile size_t huge_v = (size_t)1 << 62;
    const size_t huge = huge_v;
    volatile size_t max_v = SIZE_MAX;
    const size_t maxsz = max_v;

    EXPECT_BAD_ALLOC(new char[huge]);
    EXPECT_BAD_ALLOC(::operator new(huge));
    EXPECT_BAD_ALLOC(::operator new[](maxsz));
    EXPECT_BAD_ALLOC(::operator new(huge, std::align_val_t(4096)));
    EXPECT_BAD_ALLOC(::operator new[](huge, std::align_val_t(64)));
    EXPECT_BAD_ALLOC(::operator new(maxsz - 100, std::align_val_t(1 << 20)));

    char *c = new (std::nothrow) char[huge];
    CHECK(c == nullptr, c);
    void *p = ::operator new(huge, std::nothrow);
    CHECK(p == nullptr, p);
    p = ::operator new[](maxsz, std::nothrow);
    CHECK(p == nullptr, p);
    p = ::operator new(huge, std::align_val_t(4096), std::nothrow);
    CHECK(p == nullptr, p);
    p = ::operator new[](huge, std::align_val_t(256), std::nothrow);
    CHECK(p == nullptr, p);

    // The new-handler is called when an allocation fails; once it uninstalls
    // itself, operator new throws.
    handler_calls = 0;
    std::set_new_handler(counting_handler);
    EXPECT_BAD_ALLOC(new char[huge]);
    CHECK(handler_calls == 1, nullptr);
    std::set_new_handler(nullptr);

    // Allocation still works after the failures.
    char *ok = new char[100];
    CHECK_LIVE(ok, kDefaultAlign);
    delete[] ok;
}

// ---- containers ---------------------------------------------------------------
void test_containers(unsigned seed, long *checksum) {
    unsigned x = seed * 2654435761u + 1;
    auto rnd = [&x]() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        return x;
    };
    long sum = 0;
    for (int round = 0; round < 4; round++) {
        std::vector<int> v;
        for (int i = 0; i < 100000; i++) {
            v.push_back((int)(rnd() % 1000));
            if ((i & (i - 1)) == 0) CHECK(owned(v.data()), v.data());
        }
        std::sort(v.begin(), v.end());
        CHECK(std::is_sorted(v.begin(), v.end()), v.data());
        for (int e : v) sum += e;

        std::vector<std::string> strs;
        for (int i = 0; i < 5000; i++) {
            strs.emplace_back(16 + rnd() % 300, (char)('a' + i % 26));
            if (i % 97 == 0) CHECK(owned(strs.back().data()), strs.back().data());
        }
        std::string joined;
        for (auto &s : strs) joined += s;
        CHECK(owned(joined.data()), joined.data());
        sum += (long)joined.size();

        std::map<int, std::string> m;
        for (int i = 0; i < 20000; i++) m[(int)(rnd() % 50000)] = std::to_string(i) + std::string(i % 64, 'm');
        for (int i = 0; i < 10000; i++) m.erase((int)(rnd() % 50000));
        for (auto &kv : m) sum += kv.first + (long)kv.second.size();

        std::unordered_map<std::string, std::vector<long>> um;
        for (int i = 0; i < 20000; i++) um["key" + std::to_string(rnd() % 5000)].push_back(i);
        for (auto &kv : um) sum += (long)kv.second.size() * (long)kv.first.size();

        std::list<std::string> l;
        for (int i = 0; i < 10000; i++) l.push_back(std::string(i % 40, 'l'));
        l.remove_if([](const std::string &s) { return s.size() % 3 == 0; });
        sum += (long)l.size();

        std::vector<std::shared_ptr<Obj>> sp;
        std::vector<std::weak_ptr<Obj>> wp;
        for (int i = 0; i < 3000; i++) {
            if (i % 2) {
                auto o = std::make_shared<Obj>();
                o->x = i;
                sp.push_back(o);
            } else {
                std::shared_ptr<Obj> o(new Obj);
                CHECK(owned(o.get()), o.get());
                o->x = i;
                sp.push_back(o);
            }
            wp.push_back(sp.back());
        }
        for (size_t i = 0; i < sp.size(); i += 2) sp[i].reset();
        long alive = 0;
        for (auto &w : wp) alive += !w.expired();
        CHECK(alive == 1500, nullptr);
        sum += alive;

        std::unique_ptr<A4096[]> ua(new A4096[2]);
        CHECK_LIVE(ua.get(), 4096);
    }
    *checksum = sum;
}

// ---- threads ------------------------------------------------------------------
std::mutex handoff_lock;
std::vector<std::pair<void *, size_t>> handoff; // freed by another thread

void thread_body(int id, long *checksum) {
    std::vector<std::pair<void *, size_t>> mine;
    unsigned x = (unsigned)id * 7919u + 17;
    for (int i = 0; i < 20000; i++) {
        x = x * 1103515245u + 12345u;
        size_t n = (x >> 8) % 2048;
        void *p;
        if (i % 5 == 0) {
            p = ::operator new(n, std::align_val_t(128));
            CHECK_LIVE(p, 128);
            fill(p, n, (unsigned char)id);
            ::operator delete(p, n, std::align_val_t(128));
            continue;
        }
        p = (i % 2) ? ::operator new(n) : ::operator new[](n);
        CHECK_LIVE(p, kDefaultAlign);
        fill(p, n, (unsigned char)id);
        if (i % 3 == 0) {
            std::lock_guard<std::mutex> g(handoff_lock);
            handoff.push_back({p, n});
        } else {
            mine.push_back({p, n});
        }
        if (mine.size() > 500) {
            for (auto &b : mine) {
                CHECK(filled(b.first, b.second, (unsigned char)id), b.first);
                ::operator delete(b.first, b.second);
            }
            mine.clear();
        }
    }
    for (auto &b : mine) ::operator delete(b.first);
    test_containers((unsigned)id, checksum);
}

void test_threads() {
    const int nthreads = 4;
    long sums[2][nthreads];
    for (int wave = 0; wave < 2; wave++) {
        std::vector<std::thread> ts;
        for (int t = 0; t < nthreads; t++) ts.emplace_back(thread_body, t + 1, &sums[wave][t]);
        for (auto &t : ts) t.join();
        // Blocks allocated by the (now finished) threads are freed here.
        std::lock_guard<std::mutex> g(handoff_lock);
        for (auto &b : handoff) {
            CHECK(owned(b.first), b.first);
            ::operator delete(b.first, b.second);
        }
        handoff.clear();
        handoff.shrink_to_fit();
    }
    for (int t = 0; t < nthreads; t++) CHECK(sums[0][t] == sums[1][t], nullptr); // same work, same result
}

} // namespace

int main() {
    dlerror();
    ta_owns_p = (owns_fn)dlsym(RTLD_DEFAULT, "ta_owns");
    if (!ta_owns_p) {
        const char *e = dlerror();
        std::fprintf(stderr,
                     "cxx_prog: ta_owns not found (%s): run me with LD_PRELOAD=libtieralloc.so\n",
                     e ? e : "no error text");
        return 2;
    }
    // A pointer tieralloc never handed out is not owned (the check can fail).
    static char not_heap[64];
    CHECK(!owned(not_heap), not_heap);

    test_plain_operators();
    test_aligned_operators();
    test_new_expressions();
    test_failures();
    long sum0 = 0;
    test_containers(99, &sum0);
    test_threads();

    if (n_fail) {
        std::fprintf(stderr, "cxx_prog: %d of %ld checks failed\n", n_fail.load(), n_checks.load());
        return 1;
    }
    std::printf("%ld checks\ncxx ok\n", n_checks.load());
    return 0;
}
