// Test that header file is self-contained.
#include <coproc/pool.hpp>
#include <coproc/process.hpp>
#include <coproc/shared_state.hpp>
#include "test_util.hpp"

#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace std::chrono_literals;
using coproc::test::watchdog;

namespace {

struct point {
    double x, y;
};

void add_under_lock(coproc::value<long> v, int n) {
    for (int i = 0; i < n; ++i) {
        auto g = v.get_lock().scoped();
        v.store(v.load() + 1); // load() and store() take the rlock again: re-entrant
    }
}

void add_to_all(coproc::array<int> a, int n) {
    for (int i = 0; i < n; ++i) {
        auto g = a.get_lock().scoped();
        for (auto& x : a.span()) {
            volatile int* p = &x;
            *p = *p + 1;
        }
    }
}

int fill_part(coproc::array<int> a, coproc::value<int> done, int part, int parts) {
    const auto n = a.size() / static_cast<std::size_t>(parts);
    for (std::size_t i = 0; i < n; ++i)
        a[static_cast<std::size_t>(part) * n + i] = part * 1000 + static_cast<int>(i);
    auto g = done.get_lock().scoped();
    done.store(done.load() + 1);
    return part;
}

// Writes `text` into the shared memory named `name`; exit status 0 on success.
void write_named(std::string name, std::string text) {
    coproc::shared_memory m(name, false, 0);
    std::memcpy(m.buf().data(), text.data(), text.size());
    m.close();
    _exit(0);
}

std::size_t size_in_task(coproc::shared_memory m) { return m.size(); }

} // namespace

TEST_SUITE_BEGIN("shared_state");

TEST_CASE("value: 4 processes x 20k increments under get_lock() lose none") {
    watchdog dog(120s);
    coproc::value<long> v(5);
    CHECK(v.load() == 5);
    std::vector<coproc::process> procs;
    for (int i = 0; i < 4; ++i)
        procs.emplace_back(add_under_lock, v, 20'000);
    for (auto& p : procs)
        p.start();
    for (auto& p : procs) {
        p.join();
        CHECK(p.exitcode() == 0);
    }
    CHECK(v.load() == 80'005);
    coproc::value<point> pt(point{1, 2});
    pt.store({3, 4});
    CHECK(pt.load().x == 3);
    CHECK(pt.get()->y == 4);
}

TEST_CASE("array: zero-filled; 4 processes x 5k whole-array increments under the lock") {
    watchdog dog(120s);
    coproc::array<int> a(16);
    CHECK(a.size() == 16);
    for (int x : a.span())
        CHECK(x == 0);
    std::vector<coproc::process> procs;
    for (int i = 0; i < 4; ++i)
        procs.emplace_back(add_to_all, a, 5'000);
    for (auto& p : procs)
        p.start();
    for (auto& p : procs)
        p.join();
    for (int x : a.span())
        CHECK(x == 20'000);
}

TEST_CASE("pool workers fill an array made before the pool, in place, and count in a value") {
    watchdog dog(60s);
    coproc::array<int> a(400);
    coproc::value<int> done(0);
    coproc::pool pool(2);
    std::vector<std::tuple<coproc::array<int>, coproc::value<int>, int, int>> parts;
    for (int p = 0; p < 4; ++p)
        parts.emplace_back(a, done, p, 4);
    CHECK(pool.starmap_async(fill_part, parts).get() == std::vector<int>{0, 1, 2, 3});
    for (std::size_t i = 0; i < 400; ++i)
        CHECK(a[i] == static_cast<int>((i / 100) * 1000 + i % 100));
    CHECK(done.load() == 4);
}

TEST_CASE("shared_memory: create, attach from another process, unlink") {
    watchdog dog(30s);
    const std::string name = "coproc_test_" + std::to_string(getpid());
    coproc::shared_memory m(name, true, 4096);
    CHECK(m.name() == name);
    CHECK(m.size() == 4096);
    CHECK(m.buf()[100] == std::byte{0});
    coproc::process p(write_named, name, std::string("hello"));
    p.start();
    p.join();
    CHECK(p.exitcode() == 0);
    CHECK(std::memcmp(m.buf().data(), "hello", 5) == 0);
    coproc::shared_memory again("/" + name, false, 0); // a leading slash is accepted
    CHECK(again.size() == 4096);
    CHECK(std::memcmp(again.buf().data(), "hello", 5) == 0);
    m.unlink();
    CHECK(std::memcmp(again.buf().data(), "hello", 5) == 0); // mapped still
    m.close();
    CHECK_THROWS_AS(m.buf(), coproc::error);
    CHECK_THROWS_AS(coproc::shared_memory(name, false, 0), coproc::error);
    CHECK_THROWS_AS(m.unlink(), coproc::error);
}

TEST_CASE("shared_memory errors: existing name, missing name, bad names, sizes") {
    const std::string name = "coproc_test_err_" + std::to_string(getpid());
    coproc::shared_memory m(name, true, 100);
    try {
        coproc::shared_memory dup(name, true, 100);
        FAIL("created twice");
    } catch (const coproc::error& e) {
        CHECK(std::string(e.what()).find("exists already") != std::string::npos);
    }
    try {
        coproc::shared_memory none(name + "_none", false, 0);
        FAIL("attached to nothing");
    } catch (const coproc::error& e) {
        CHECK(std::string(e.what()).find("no shared memory named") != std::string::npos);
    }
    CHECK_THROWS_AS(coproc::shared_memory(name, false, 101), coproc::error);
    for (const std::string& bad :
         std::vector<std::string>{"", "/", "a/b", "..", std::string(300, 'x')})
        CHECK_THROWS_AS(coproc::shared_memory(bad, false, 0), coproc::error);
    CHECK_THROWS_AS(coproc::shared_memory(name + "_zero", true, 0), coproc::error);
    coproc::shared_memory anon("", true, 10);
    CHECK(!anon.name().empty());
    anon.unlink();
    m.unlink();
    coproc::shared_memory empty;
    CHECK_THROWS_AS(empty.buf(), coproc::error);
    coproc::array<int> no_elements;
    CHECK(no_elements.size() == 0);
    CHECK_THROWS_AS(no_elements.get_lock(), coproc::error);
}

TEST_CASE("shared_memory travels to a pool task by name") {
    watchdog dog(60s);
    coproc::pool pool(1);
    const std::string name = "coproc_test_pool_" + std::to_string(getpid());
    coproc::shared_memory m(name, true, 333); // made after the pool: found by name
    CHECK(pool.apply_async(size_in_task, {m}).get() == 333);
    m.unlink();
}

TEST_SUITE_END();
