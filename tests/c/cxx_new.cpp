// C++ operator new/delete in every form under LD_PRELOAD: they resolve to
// librangealloc.so, honour alignment, interoperate with malloc_usable_size, call the
// new-handler in a loop and throw std::bad_alloc on failure (nothrow forms: nullptr),
// and carry a multithreaded STL workload.
#include <dlfcn.h>
#include <malloc.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#define CHECK(cond)                                                               \
    do {                                                                          \
        if (!(cond)) {                                                            \
            std::fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);  \
            std::fflush(nullptr);                                                 \
            std::_Exit(1);                                                        \
        }                                                                         \
    } while (0)

static size_t opaque(size_t v) {
    volatile size_t x = v;
    return x;
}

static bool aligned(const void *p, size_t a) { return (reinterpret_cast<uintptr_t>(p) & (a - 1)) == 0; }

static const char *const FORMS[] = {
    "_Znwm", "_Znam", "_ZnwmRKSt9nothrow_t", "_ZnamRKSt9nothrow_t", "_ZdlPv", "_ZdaPv",
    "_ZdlPvm", "_ZdaPvm", "_ZdlPvRKSt9nothrow_t", "_ZdaPvRKSt9nothrow_t",
    "_ZnwmSt11align_val_t", "_ZnamSt11align_val_t", "_ZnwmSt11align_val_tRKSt9nothrow_t",
    "_ZnamSt11align_val_tRKSt9nothrow_t", "_ZdlPvSt11align_val_t", "_ZdaPvSt11align_val_t",
    "_ZdlPvmSt11align_val_t", "_ZdaPvmSt11align_val_t",
    "_ZdlPvSt11align_val_tRKSt9nothrow_t", "_ZdaPvSt11align_val_tRKSt9nothrow_t",
};

static void test_resolution() {
    for (const char *name : FORMS) {
        void *sym = dlsym(RTLD_DEFAULT, name);
        Dl_info info;
        CHECK(sym != nullptr);
        CHECK(dladdr(sym, &info) != 0 && std::strstr(info.dli_fname, "rangealloc") != nullptr);
    }
    std::puts("ok resolution");
}

static void test_forms() {
    const size_t sizes[] = {0, 1, 15, 16, 17, 100, 4096, 100000, 5u << 20};
    for (size_t n : sizes) {
        void *p = ::operator new(opaque(n));
        CHECK(aligned(p, __STDCPP_DEFAULT_NEW_ALIGNMENT__) && malloc_usable_size(p) >= n);
        std::memset(p, 1, n);
        ::operator delete(p);
        p = ::operator new[](opaque(n));
        std::memset(p, 2, n);
        ::operator delete[](p);
        p = ::operator new(opaque(n));
        ::operator delete(p, n);  // sized
        p = ::operator new[](opaque(n));
        ::operator delete[](p, n);
        p = ::operator new(opaque(n), std::nothrow);
        CHECK(p != nullptr);
        ::operator delete(p, std::nothrow);
        p = ::operator new[](opaque(n), std::nothrow);
        CHECK(p != nullptr);
        ::operator delete[](p, std::nothrow);
        for (size_t a = 1; a <= (size_t{1} << 21); a <<= 3) {
            std::align_val_t al{a};
            p = ::operator new(opaque(n), al);
            CHECK(aligned(p, a) && malloc_usable_size(p) >= n);
            std::memset(p, 3, n);
            ::operator delete(p, al);
            p = ::operator new[](opaque(n), al);
            CHECK(aligned(p, a));
            ::operator delete[](p, al);
            p = ::operator new(opaque(n), al);
            ::operator delete(p, n, al);
            p = ::operator new[](opaque(n), al);
            ::operator delete[](p, n, al);
            p = ::operator new(opaque(n), al, std::nothrow);
            CHECK(p != nullptr && aligned(p, a));
            ::operator delete(p, al, std::nothrow);
            p = ::operator new[](opaque(n), al, std::nothrow);
            CHECK(p != nullptr && aligned(p, a));
            ::operator delete[](p, al, std::nothrow);
        }
    }
    ::operator delete(nullptr);
    ::operator delete[](nullptr);
    // Blocks cross between the C and C++ APIs (same allocator underneath).
    void *m = std::malloc(100);
    ::operator delete(m);
    void *n = ::operator new(100);
    std::free(n);
    std::puts("ok forms");
}

struct alignas(256) Overaligned {
    char bytes[300];
};

static void test_expressions() {
    auto *o = new Overaligned[7];  // aligned array new
    CHECK(aligned(o, 256));
    delete[] o;
    auto u = std::make_unique<Overaligned>();
    CHECK(aligned(u.get(), 256));
    std::puts("ok new-expressions");
}

static const size_t IMPOSSIBLE = (size_t{1} << 62);

static void test_bad_alloc() {
    int caught = 0;
    try { (void)::operator new(opaque(SIZE_MAX)); } catch (const std::bad_alloc &) { caught++; }
    try { (void)::operator new[](opaque(IMPOSSIBLE)); } catch (const std::bad_alloc &) { caught++; }
    try { (void)::operator new(opaque(IMPOSSIBLE), std::align_val_t{64}); } catch (const std::bad_alloc &) { caught++; }
    try { (void)::operator new[](opaque(SIZE_MAX), std::align_val_t{4096}); } catch (const std::bad_alloc &) { caught++; }
    // An alignment that is not a power of two: bad_alloc, as libstdc++ does.
    try { (void)::operator new(opaque(64), std::align_val_t{opaque(48)}); } catch (const std::bad_alloc &) { caught++; }
    CHECK(caught == 5);

    CHECK(::operator new(opaque(SIZE_MAX), std::nothrow) == nullptr);
    CHECK(::operator new[](opaque(IMPOSSIBLE), std::nothrow) == nullptr);
    CHECK(::operator new(opaque(IMPOSSIBLE), std::align_val_t{64}, std::nothrow) == nullptr);
    CHECK(::operator new[](opaque(64), std::align_val_t{opaque(3)}, std::nothrow) == nullptr);
    std::puts("ok bad_alloc");
}

static int handler_calls;

static void counting_handler() {
    // Returning means "try again"; after three calls, uninstall so new throws.
    if (++handler_calls == 3) std::set_new_handler(nullptr);
}

static void throwing_handler() {
    handler_calls++;
    throw std::bad_alloc();
}

static void test_new_handler() {
    std::set_new_handler(counting_handler);
    handler_calls = 0;
    bool caught = false;
    try { (void)::operator new(opaque(IMPOSSIBLE)); } catch (const std::bad_alloc &) { caught = true; }
    CHECK(caught && handler_calls == 3);

    std::set_new_handler(counting_handler);
    handler_calls = 0;
    caught = false;
    try { (void)::operator new[](opaque(IMPOSSIBLE), std::align_val_t{128}); } catch (const std::bad_alloc &) { caught = true; }
    CHECK(caught && handler_calls == 3);

    // A handler that throws: the exception unwinds out of operator new to us.
    std::set_new_handler(throwing_handler);
    handler_calls = 0;
    caught = false;
    try { (void)::operator new(opaque(IMPOSSIBLE)); } catch (const std::bad_alloc &) { caught = true; }
    CHECK(caught && handler_calls == 1);

    // nothrow forms do not call the handler (documented deviation) and return nullptr.
    handler_calls = 0;
    CHECK(::operator new(opaque(IMPOSSIBLE), std::nothrow) == nullptr);
    CHECK(handler_calls == 0);
    std::set_new_handler(nullptr);

    void *ok = ::operator new(opaque(64));  // still working
    ::operator delete(ok);
    std::puts("ok new_handler");
}

static void test_stl_threads() {
    std::atomic<long> total{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 16; t++) {
        threads.emplace_back([t, &total] {
            std::map<int, std::string> m;
            std::unordered_map<std::string, std::vector<int>> u;
            std::vector<std::shared_ptr<std::string>> shared;
            for (int i = 0; i < 20000; i++) {
                m[i % 1000] = std::string(static_cast<size_t>(i % 300), static_cast<char>('a' + t));
                u[std::to_string(i % 500)].push_back(i);
                if (i % 7 == 0) shared.push_back(std::make_shared<std::string>(m[i % 1000]));
                if (i % 1000 == 999) {
                    m.clear();
                    shared.clear();
                }
                try {
                    if (i % 2500 == 0) throw std::runtime_error(std::string(100, 'x'));
                } catch (const std::exception &e) {
                    total += static_cast<long>(std::strlen(e.what()));
                }
            }
            long sum = 0;
            for (auto &kv : u) sum += static_cast<long>(kv.second.size());
            total += sum;
        });
    }
    for (auto &th : threads) th.join();
    CHECK(total == 16 * (20000 + 8 * 100));
    std::puts("ok stl threads");
}

int main() {
    test_resolution();
    test_forms();
    test_expressions();
    test_bad_alloc();
    test_new_handler();
    test_stl_threads();
    std::puts("ALL OK");
    return 0;
}
