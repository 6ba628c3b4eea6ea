// Workers killed hundreds of times (by their own task, or from outside) while eight threads of
// the parent allocate and log without pause: every loss is reported exactly once, every other
// task is right, and the pool ends as it began (serving, full, no zombie, no descriptor more).
//
//   COPROC_RESPAWN_KILLS=N   kill N workers instead of 500 (default)
#include "tasks.hpp"
#include "test_util.hpp"
#include <coproc/pool.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <sys/resource.h>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace std::chrono_literals;
using coproc::test::child_count;
using coproc::test::fd_count;
using coproc::test::watchdog;

namespace {

using clock_type = std::chrono::steady_clock;

/// The worker running it SIGKILLs itself.
int die(int) {
    ::kill(::getpid(), SIGKILL);
    return -1;
}
int triple(int x) { return 3 * x; }
int die_at_7(int x) { return x == 7 ? die(x) : triple(x); }

int kills_wanted() {
    const char* n = std::getenv("COPROC_RESPAWN_KILLS");
    return n ? std::max(1, std::atoi(n)) : 500;
}

/// One of the busy threads: allocates (malloc and new, small to mmap-sized) and formats and
/// writes log lines (to a shared FILE* and its own, both /dev/null), until `stop`. It never
/// pauses, but runs at nice 10: on a 2-core machine eight spinning threads at the pool's
/// priority would only stretch each respawn's thread hand-offs (the run took 2-3x longer, and
/// over 40 s with the machine otherwise loaded), not add interleavings.
void churn(int id, const std::atomic<bool>& stop, FILE* shared, std::atomic<long>& ops,
           std::atomic<int>& started) {
    ::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), 10); // this thread only
    std::mt19937 rng(static_cast<unsigned>(id));
    FILE* own = std::fopen("/dev/null", "w");
    std::vector<void*> blocks;
    std::vector<std::unique_ptr<char[]>> objects;
    long n = 0;
    while (!stop.load(std::memory_order_relaxed)) {
        const std::size_t size = (std::size_t{1} << (rng() % 17)) + rng() % 100; // 1 B .. 128 KiB
        if (rng() % 2) {
            void* p = std::malloc(size);
            std::memset(p, id, std::min<std::size_t>(size, 64));
            blocks.push_back(p);
        } else {
            objects.push_back(std::make_unique<char[]>(size));
        }
        if (blocks.size() > 32) {
            std::swap(blocks[rng() % blocks.size()], blocks.back());
            std::free(blocks.back());
            blocks.pop_back();
        }
        if (objects.size() > 32)
            objects.erase(objects.begin() + static_cast<long>(rng() % objects.size()));
        if (n % 64 == 0)
            std::free(std::malloc(1 << 20)); // above the mmap threshold

        std::ostringstream line;
        line << "thread " << id << " op " << n << " size " << size << " ratio " << 3.25 * n;
        const std::time_t now = std::time(nullptr);
        std::tm tm{};
        localtime_r(&now, &tm);
        char stamp[32];
        std::strftime(stamp, sizeof stamp, "%F %T", &tm);
        std::fprintf(shared, "[%s] %s\n", stamp, line.str().c_str());
        if (own)
            std::fprintf(own, "%s %s\n", std::to_string(n).c_str(), line.str().c_str());
        if (n % 256 == 0)
            std::fflush(shared);
        if (n++ == 0)
            ++started; // after a first round, which opened what it opens once (the time zone)
        ops.fetch_add(1, std::memory_order_relaxed);
    }
    for (void* p : blocks)
        std::free(p);
    if (own)
        std::fclose(own);
}

/// Eight churn threads, stopped and joined on destruction (also when a REQUIRE fails).
class busy_threads {
  public:
    explicit busy_threads(FILE* shared_log) {
        for (int i = 0; i < 8; ++i)
            threads_.emplace_back(churn, i, std::cref(stop_), shared_log, std::ref(ops_),
                                  std::ref(started_));
    }
    /// Returns once every thread has been once round its loop.
    void wait_started() const {
        while (started_.load() < 8)
            std::this_thread::sleep_for(1ms);
    }
    ~busy_threads() { join(); }
    void join() {
        stop_ = true;
        for (auto& t : threads_)
            if (t.joinable())
                t.join();
    }
    long ops() const { return ops_.load(); }

  private:
    std::atomic<bool> stop_{false};
    std::atomic<long> ops_{0};
    std::atomic<int> started_{0};
    std::vector<std::thread> threads_;
};

bool wait_for_full_pool(const coproc::pool& pool, pid_t gone = -1) {
    const auto until = clock_type::now() + 10s;
    for (;;) {
        const auto pids = pool.pids();
        if (pids.size() == pool.size() && std::find(pids.begin(), pids.end(), gone) == pids.end())
            return true;
        if (clock_type::now() > until)
            return false;
        std::this_thread::sleep_for(1ms);
    }
}

} // namespace

TEST_SUITE_BEGIN("threaded respawn");

TEST_CASE("500 worker kills while 8 threads allocate and log: exact losses, right results") {
    watchdog dog(280s);
    const int kills = kills_wanted();
    const auto t0 = clock_type::now();
    const int fds_before = fd_count();
    const int children_before = child_count().total;

    FILE* shared_log = std::fopen("/dev/null", "w");
    REQUIRE(shared_log);
    std::optional<busy_threads> busy;

    int killed = 0, outside = 0, lost = 0, expected_lost = 0, right = 0, expected_right = 0,
        wrong = 0;
    {
        // The pool first: it forks its fork server from this process, and a fork must not
        // catch other threads holding locks (a sanitizer's allocator lock, under ASan, would be
        // inherited held by every worker). Every respawn below is forked by that
        // single-threaded server while the busy threads keep going.
        coproc::pool pool(2);
        REQUIRE(wait_for_full_pool(pool));
        busy.emplace(shared_log);
        busy->wait_started();
        // The busy threads open a few files once, early (glibc reads the time zone, the CPU
        // count, the overcommit mode): a leak is permanent, so the fewest seen is the baseline.
        int fds_pool = fd_count();
        for (int i = 0; i < 20; ++i, std::this_thread::sleep_for(5ms))
            fds_pool = std::min(fds_pool, fd_count());
        for (int round = 0; killed < kills; ++round) {
            if (round % 5 == 4 && kills - killed >= 2) {
                // From outside: kill both (idle) workers; the pool replaces them, no task is lost.
                REQUIRE(wait_for_full_pool(pool)); // the last round's replacements have started
                const auto pids = pool.pids();
                REQUIRE(pids.size() == 2);
                for (pid_t victim : pids)
                    REQUIRE(::kill(victim, SIGKILL) == 0);
                for (pid_t victim : pids)
                    REQUIRE(wait_for_full_pool(pool, victim));
                killed += 2;
                outside += 2;
                continue;
            }
            if (round % 10 == 3 || kills - killed == 1) {
                // A map with one item whose worker dies fails whole, once.
                ++killed;
                ++expected_lost;
                try {
                    pool.map_async(die_at_7, tasks::iota(16), 1).get();
                    ++wrong;
                } catch (const coproc::worker_lost&) {
                    ++lost;
                }
                continue;
            }
            // apply_async: two dying tasks, then good ones, some queued behind a dying task on
            // its worker (they go to another worker). Each worker's first task of the round is
            // a dying one, so no task has run there whose result could die with it: exactly the
            // two dying tasks fail, however the pool batches (at-least- or at-most-once).
            REQUIRE(wait_for_full_pool(pool));
            std::vector<coproc::async_result<int>> rs;
            rs.push_back(pool.apply_async(die, {0}));
            rs.push_back(pool.apply_async(die, {1}));
            for (int i = 2; i < 8; ++i)
                rs.push_back(pool.apply_async(triple, {round * 10 + i}));
            const int die_a = 0, die_b = 1;
            killed += 2;
            expected_lost += 2;
            expected_right += 6;
            for (int i = 0; i < 8; ++i) {
                const bool dies = i == die_a || i == die_b;
                try {
                    const int v = rs[static_cast<std::size_t>(i)].get();
                    ++(!dies && v == 3 * (round * 10 + i) ? right : wrong);
                } catch (const coproc::worker_lost&) {
                    ++(dies ? lost : wrong);
                }
            }
        }
        CHECK(killed == kills);
        CHECK(lost == expected_lost);
        CHECK(wrong == 0);
        CHECK(right == expected_right);
        // Still serving, at full size, with the descriptors it had before the kills.
        CHECK(pool.map_async(tasks::square, tasks::iota(2000)).get() == tasks::squares(2000));
        CHECK(wait_for_full_pool(pool));
        const auto settled = clock_type::now() + 2s; // a late one-off open, as above
        while (fd_count() != fds_pool && clock_type::now() < settled)
            std::this_thread::sleep_for(5ms);
        CHECK(fd_count() == fds_pool);
        CHECK(child_count().zombies == 0);
    }
    busy->join();
    const long ops = busy->ops();
    busy.reset();
    std::fclose(shared_log);
    CHECK(ops > 8 * 100); // the threads did run meanwhile
    const auto c = child_count();
    CHECK(c.total == children_before);
    CHECK(c.zombies == 0);
    CHECK(fd_count() == fds_before);
    MESSAGE(killed
            << " kills (" << outside << " from outside), " << lost << " worker_lost, " << right
            << " right results, " << ops << " allocate+log rounds in "
            << std::chrono::duration_cast<std::chrono::milliseconds>(clock_type::now() - t0).count()
            << " ms");
}

TEST_SUITE_END();
