// The fault matrix: every way a task can fail (rows) under every way of calling the pool
// (columns). Each cell checks that
//   1. nothing hangs (a watchdog aborts the binary if a cell runs too long);
//   2. every task returns its value or fails with the documented error (error.hpp), once;
//   3. the pool keeps serving afterwards (a closed or terminated pool says pool_closed);
//   4. no zombie is left among this process's descendants (workers are children of the
//      pool's fork server, so the whole process tree is scanned);
//   5. no descriptor leaks: the count is back once the pool is gone, and within a pool it
//      does not grow from one fault to the next.
// The run ends with the matrix of cells passed / run (COPROC_FAULT_MATRIX_FILE=path also
// appends one line per cell to that file).
#include "listener.hpp"
#include "tasks.hpp"
#include "test_util.hpp"
#include <coproc/pool.hpp>

#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <dirent.h>
#include <exception>
#include <fstream>
#include <iomanip>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <sys/mman.h>
#include <sys/resource.h>
#include <thread>
#include <typeinfo>
#include <unistd.h>
#include <vector>

using namespace std::chrono_literals;
using coproc::test::fd_count;
using tasks::iota;
using tasks::squares;

namespace {

// ------------------------------------------------------------------ shared with the workers

/// Memory shared with every worker (mapped before any pool exists; workers inherit it).
struct shared_state {
    static constexpr int tracked = 4096;
    std::atomic<int> victim{0};        // a pid a task published for the outside signaller
    std::atomic<int> last_victim{0};   // the pid the outside signaller signalled last
    std::atomic<int> fault_started{0}; // faulting tasks that began
    std::atomic<int> fault_pid{0};     // the worker the last faulting task ran in
    std::atomic<int> runs[tracked];    // how often each item ran

    void reset() noexcept {
        victim = 0;
        last_victim = 0;
        fault_started = 0;
        fault_pid = 0;
        for (auto& r : runs)
            r = 0;
    }
};
static_assert(std::atomic<int>::is_always_lock_free, "atomics in shared memory must be lock-free");

shared_state& shared() {
    static shared_state* const s = [] {
        void* m = ::mmap(nullptr, sizeof(shared_state), PROT_READ | PROT_WRITE,
                         MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED)
            throw std::runtime_error("mmap of the fault test's shared state failed");
        return new (m) shared_state;
    }();
    return *s;
}

// ------------------------------------------------------------------ the faulting tasks

// Items >= 0 are squared, items >= slow_base sleep first (still running when the pool is
// terminated) and square (x - slow_base); a negative item runs the fault.
constexpr int slow_base = 100'000;

int expected(int x) {
    const int base = x >= slow_base ? x - slow_base : x;
    return base * base;
}

template <class Fault> int run_item(int x, Fault fault) {
    auto& s = shared();
    if (x < 0) {
        s.fault_pid.store(static_cast<int>(::getpid()));
        s.fault_started.fetch_add(1);
        return fault();
    }
    const int base = x >= slow_base ? x - slow_base : x;
    if (base < shared_state::tracked)
        s.runs[base].fetch_add(1);
    if (x >= slow_base)
        std::this_thread::sleep_for(5s);
    return base * base;
}

/// A type that is not a std::exception.
struct fault_token {
    int code;
};

inline char* volatile g_sink = nullptr; // keeps the hog's allocations from being elided

int abort_task(int x) {
    return run_item(x, []() -> int { std::abort(); });
}
int segv_task(int x) {
    return run_item(x, [] {
        ::raise(SIGSEGV);
        return -1;
    });
}
int exit0_task(int x) {
    return run_item(x, []() -> int { ::_exit(0); });
}
int exit3_task(int x) {
    return run_item(x, []() -> int { ::_exit(3); });
}
int throw_task(int x) {
    return run_item(x, []() -> int { throw fault_token{42}; });
}
int spin_task(int x) {
    return run_item(x, []() -> int {
        volatile unsigned long n = 0;
        for (;;)
            n = n + 1;
    });
}
/// The worker's VmData (its data segment, what RLIMIT_DATA caps) in bytes, -1 if unknown.
long long vm_data() {
    std::ifstream status("/proc/self/status");
    std::string line;
    while (std::getline(status, line))
        if (line.rfind("VmData:", 0) == 0)
            return std::stoll(line.substr(7)) * 1024;
    return -1;
}

constexpr long long mib = 1 << 20;

/// Allocates 16 MiB blocks until less than 32 MiB of the data limit is left, then asks for
/// more than what is left: that allocation fails with 16-32 MiB still free, so the allocator
/// has room to report the failure. (With none left, ASan's out-of-memory report itself fails to
/// map memory and deadlocks in its symbolizer: the worker hangs instead of dying.)
int hog() {
    rlimit r{};
    if (::getrlimit(RLIMIT_DATA, &r) != 0 || r.rlim_cur == RLIM_INFINITY)
        return -2; // no limit to run into: the test fails on this value
    const auto left = [&] { return static_cast<long long>(r.rlim_cur) - vm_data(); };
    std::vector<std::unique_ptr<char[]>> blocks;
    blocks.reserve(64);
    for (;;) {
        const long long size = left() > 32 * mib ? 16 * mib : left() + 1 * mib;
        std::unique_ptr<char[]> b(new char[static_cast<std::size_t>(size)]);
        b[0] = 1;
        g_sink = b.get();
        blocks.push_back(std::move(b));
    }
}

int hog_task(int x) { return run_item(x, hog); }
int wait_for_kill_task(int x) {
    return run_item(x, [] {
        shared().victim.store(static_cast<int>(::getpid()));
        for (int i = 0; i < 3000; ++i) // 30 s: the outside signaller kills it long before
            std::this_thread::sleep_for(10ms);
        return -1;
    });
}
int stop_task(int x) {
    return run_item(x, [] {
        ::raise(SIGSTOP);
        return -1;
    });
}

void init_worker() { tasks::no_core_dumps(); }

/// Caps the worker's data segment at its current size + 256 MiB (RLIMIT_AS would break under
/// ASan, whose shadow memory reserves terabytes of address space).
void init_worker_with_memory_limit() {
    tasks::no_core_dumps();
    const long long data = vm_data();
    if (data < 0)
        throw std::runtime_error("no VmData in /proc/self/status");
    const rlim_t limit = static_cast<rlim_t>(data + 256 * mib);
    const rlimit r{limit, limit};
    if (::setrlimit(RLIMIT_DATA, &r) != 0)
        throw std::runtime_error("setrlimit(RLIMIT_DATA) failed");
}

// ------------------------------------------------------------------ the rows: faults

enum class expect {
    killed,    // worker_lost with signal() == signal
    exited,    // worker_lost with exit_status() == exit_status
    remote,    // remote_error naming fault_token
    timed_out, // timeout_error
    no_memory, // std::bad_alloc (as itself or as remote_error) or worker_lost
};

struct fault {
    const char* name;
    int (*task)(int);
    expect outcome;
    int signal;
    int exit_status;
    void (*initializer)();
    std::chrono::milliseconds timeout; // the pool's task_timeout
    int outside;                       // a signal sent from outside to the pid the task publishes
};

constexpr auto no_limit = std::chrono::milliseconds(0);
constexpr auto limit = std::chrono::milliseconds(300);

constexpr fault faults[] = {
    {"abort()", abort_task, expect::killed, SIGABRT, -1, init_worker, no_limit, 0},
    {"raise(SIGSEGV)", segv_task, expect::killed, SIGSEGV, -1, init_worker, no_limit, 0},
    {"_exit(0)", exit0_task, expect::exited, 0, 0, init_worker, no_limit, 0},
    {"_exit(3)", exit3_task, expect::exited, 0, 3, init_worker, no_limit, 0},
    {"throw non-std type", throw_task, expect::remote, 0, 0, init_worker, no_limit, 0},
    {"endless loop", spin_task, expect::timed_out, 0, 0, init_worker, limit, 0},
    {"out of memory", hog_task, expect::no_memory, 0, 0, init_worker_with_memory_limit, no_limit,
     0},
    {"SIGKILL from outside", wait_for_kill_task, expect::killed, SIGKILL, -1, init_worker, no_limit,
     SIGKILL},
    {"raise(SIGSTOP)", stop_task, expect::timed_out, 0, 0, init_worker, limit, 0},
};

coproc::pool_options options_of(const fault& f) {
    return {.processes = 2, .initializer = f.initializer, .task_timeout = f.timeout};
}

/// Sends `f.outside` to every pid a task publishes, while it lives.
class outside_signaller {
  public:
    explicit outside_signaller(int sig) {
        if (sig == 0)
            return;
        t_ = std::jthread([sig](std::stop_token stop) {
            while (!stop.stop_requested()) {
                if (const int pid = shared().victim.exchange(0); pid > 0) {
                    shared().last_victim = pid;
                    ::kill(pid, sig);
                }
                std::this_thread::sleep_for(1ms);
            }
        });
    }

  private:
    std::jthread t_;
};

// ------------------------------------------------------------------ process tree

struct family {
    int descendants = 0;
    int zombies = 0;
    std::string zombie_list;
    std::vector<int> pids; // the descendants
};

/// This process's descendants (children, grandchildren, ...) and the zombies among them.
family scan_family();

/// The family when the current cell began: a cell is checked against it, so a process left
/// over by one failed cell does not fail the next ones too.
family g_family_before;

/// No zombie more than when the cell began.
bool no_new_zombie() { return scan_family().zombies <= g_family_before.zombies; }

family scan_family() {
    const auto procs = coproc::test::process_table();
    family out;
    std::set<int> tree{static_cast<int>(::getpid())};
    for (bool grew = true; grew;) {
        grew = false;
        for (const auto& [pid, p] : procs)
            if (tree.count(p.ppid) && tree.insert(pid).second) {
                grew = true;
                ++out.descendants;
                out.pids.push_back(pid);
                if (p.state == 'Z') {
                    ++out.zombies;
                    out.zombie_list +=
                        " " + std::to_string(pid) + "(parent " + std::to_string(p.ppid) + ")";
                }
            }
    }
    return out;
}

std::string read_line(const std::string& path) {
    std::ifstream f(path);
    std::string line;
    std::getline(f, line);
    return line;
}

/// Every thread of this process and of its descendants: state, where it sleeps, its syscall.
void dump_family(std::FILE* out) {
    auto pids = scan_family().pids;
    pids.insert(pids.begin(), static_cast<int>(::getpid()));
    for (int pid : pids) {
        const std::string dir = "/proc/" + std::to_string(pid);
        const std::string stat = read_line(dir + "/stat"); // "pid (comm) state ppid ..."
        std::fprintf(out, "  process %s\n",
                     stat.substr(0, stat.find(' ', stat.rfind(')') + 4)).c_str());
        if (DIR* d = opendir((dir + "/task").c_str())) {
            while (dirent* e = readdir(d)) {
                if (e->d_name[0] == '.')
                    continue;
                const std::string t = dir + "/task/" + e->d_name;
                const std::string line = read_line(t + "/stat");
                const auto close = line.rfind(')');
                std::fprintf(out, "    thread %s state %c wchan %s syscall %s\n", e->d_name,
                             close != std::string::npos && close + 2 < line.size() ? line[close + 2]
                                                                                   : '?',
                             read_line(t + "/wchan").c_str(), read_line(t + "/syscall").c_str());
            }
            closedir(d);
        }
    }
}

// ------------------------------------------------------------------ per-cell bookkeeping

struct cell_stats {
    int runs = 0;
    int passed = 0;
    double ms = 0;
    std::set<std::string> outcomes; // what the faulting calls actually failed with
};

std::atomic<int> g_failures{0};                    // failed assertions so far (the listener counts)
std::map<std::pair<int, int>, cell_stats> g_cells; // (fault, call) -> stats

/// Counts failed assertions, and prints the matrix when the run ends.
struct matrix_listener : coproc::test::quiet_listener {
    explicit matrix_listener(const doctest::ContextOptions& o) : opt(o) {}

    void log_assert(const doctest::AssertData& a) override {
        if (a.m_failed)
            ++g_failures;
    }
    void log_message(const doctest::MessageData& m) override {
        if (m.m_severity & (doctest::assertType::is_check | doctest::assertType::is_require))
            ++g_failures;
    }
    void test_case_exception(const doctest::TestCaseException&) override { ++g_failures; }
    void test_run_end(const doctest::TestRunStats&) override;

    const doctest::ContextOptions& opt;
};

/// The error of a faulting call: checks it is the documented one for `f` (pool_closed too if
/// `closed_ok`) and returns what it was, for the report.
std::string check_fault_error(const fault& f, const std::exception_ptr& e, bool closed_ok = false) {
    INFO("fault: " << std::string(f.name));
    if (!e) {
        FAIL_CHECK("the faulting task did not fail");
        return "no error";
    }
    try {
        std::rethrow_exception(e);
    } catch (const coproc::worker_lost& w) {
        const std::string got = w.signal()
                                    ? "worker_lost(signal " + std::to_string(w.signal()) + ")"
                                    : "worker_lost(exit " + std::to_string(w.exit_status()) + ")";
        INFO("got " << got << ": " << std::string(w.what()));
        CHECK(w.pid() > 0);
        CHECK(w.pid() != ::getpid());
        CHECK(std::string(w.what()).find(std::to_string(w.pid())) != std::string::npos);
        switch (f.outcome) {
        case expect::killed:
            CHECK(w.signal() == f.signal);
            CHECK(w.exit_status() == -1);
            break;
        case expect::exited:
            CHECK(w.signal() == 0);
            CHECK(w.exit_status() == f.exit_status);
            break;
        case expect::no_memory: // the allocator gave up by killing the process
            CHECK((w.signal() != 0 || w.exit_status() != 0));
            break;
        default:
            FAIL_CHECK("expected " << std::string(f.outcome == expect::timed_out ? "timeout_error"
                                                                                 : "remote_error")
                                   << " (the fault's own error), got worker_lost");
        }
        if (f.outside)
            CHECK(w.pid() == shared().last_victim.load());
        return got;
    } catch (const coproc::timeout_error& t) {
        CHECK_MESSAGE(f.outcome == expect::timed_out,
                      "unexpected timeout_error: " << std::string(t.what()));
        return "timeout_error";
    } catch (const coproc::remote_error& r) {
        if (f.outcome == expect::remote) {
            CHECK(r.type_name().find("fault_token") != std::string::npos);
            CHECK(std::string(r.what()).size() > 0);
        } else if (f.outcome == expect::no_memory) {
            CHECK(r.type_name() == "std::bad_alloc");
        } else {
            FAIL_CHECK("unexpected remote_error " << r.type_name() << ": "
                                                  << std::string(r.what()));
        }
        return "remote_error(" + r.type_name() + ")";
    } catch (const coproc::pool_closed& c) {
        CHECK_MESSAGE(closed_ok, "unexpected pool_closed: " << std::string(c.what()));
        return "pool_closed";
    } catch (const std::bad_alloc&) {
        CHECK_MESSAGE(f.outcome == expect::no_memory, "unexpected std::bad_alloc");
        return "std::bad_alloc";
    } catch (const std::exception& x) {
        FAIL_CHECK("unexpected " << std::string(typeid(x).name()) << ": " << std::string(x.what()));
        return typeid(x).name();
    } catch (...) {
        FAIL_CHECK("an unexpected non-standard exception");
        return "?";
    }
}

/// What a column gets to run its calls.
struct cell {
    asio::io_context& io;
    const fault& f;
    std::set<std::string>& outcomes;

    void check_error(const std::exception_ptr& e, bool closed_ok = false) {
        outcomes.insert(check_fault_error(f, e, closed_ok));
    }
};

// ------------------------------------------------------------------ helpers

asio::awaitable<void> pause(std::chrono::milliseconds d) {
    asio::steady_timer t(co_await asio::this_coro::executor, d);
    co_await t.async_wait(asio::use_awaitable);
}

/// Polls `done` every 5 ms for up to `within`, letting the executor run (an io pool keeps
/// working meanwhile). Returns whether it came true.
template <class Pred>
asio::awaitable<bool> eventually(Pred done, std::chrono::milliseconds within = 5000ms) {
    const auto until = std::chrono::steady_clock::now() + within;
    for (;;) {
        if (done())
            co_return true;
        if (std::chrono::steady_clock::now() > until)
            co_return false;
        co_await pause(5ms);
    }
}

/// The pool answers new calls.
asio::awaitable<void> check_serves(coproc::pool& pool) {
    CHECK(co_await pool.apply(tasks::square, 7) == 49);
    CHECK(co_await pool.map(tasks::square, iota(50), 3) == squares(50));
}

/// A closed pool refuses new calls with pool_closed.
asio::awaitable<void> check_refuses(coproc::pool& pool) {
    CHECK_THROWS_AS(co_await pool.apply(tasks::square, 7), coproc::pool_closed);
    CHECK_THROWS_AS((void)pool.apply_async(tasks::square, {7}), coproc::pool_closed);
    CHECK_THROWS_AS(co_await pool.map(tasks::square, iota(10)), coproc::pool_closed);
    CHECK_THROWS_AS((void)pool.map_async(tasks::square, iota(10)), coproc::pool_closed);
}

constexpr int rounds = 3; // faults per pool in the columns where the pool lives on

/// After the fault of `round`: the pool serves, gets all its workers back, leaves no zombie,
/// and has as many descriptors open after the last round as after the first.
asio::awaitable<void> recover(coproc::pool& pool, int round, int& fds_after_first) {
    co_await check_serves(pool);
    const bool settled =
        co_await eventually([&] { return pool.pids().size() == pool.size() && no_new_zombie(); });
    CHECK_MESSAGE(settled, "workers " << pool.pids().size() << " of " << pool.size()
                                      << ", zombies:" << scan_family().zombie_list);
    if (round == 0) {
        fds_after_first = fd_count();
    } else if (round == rounds - 1) {
        co_await eventually([&] { return fd_count() == fds_after_first; }, 2000ms);
        CHECK(fd_count() == fds_after_first);
    }
}

/// Callbacks of one apply_async, counted on the pool's loop thread.
struct tally {
    std::atomic<int> values{0};
    std::atomic<int> errors{0};
    std::atomic<int> value{-1};
    std::exception_ptr error; // written once, before the result is ready
};

/// Submits items[i] with callbacks counted in tallies[i].
std::vector<coproc::async_result<int>> submit_all(coproc::pool& pool, int (*task)(int),
                                                  const std::vector<int>& items,
                                                  std::vector<tally>& tallies) {
    std::vector<coproc::async_result<int>> rs;
    for (std::size_t i = 0; i < items.size(); ++i) {
        tally* t = &tallies[i];
        rs.push_back(pool.apply_async(
            task, {items[i]},
            [t](int v) {
                t->value = v;
                ++t->values;
            },
            [t](std::exception_ptr e) {
                t->error = e;
                ++t->errors;
            }));
    }
    return rs;
}

std::string what_of(const std::exception_ptr& e) {
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& x) {
        return std::string(typeid(x).name()) + ": " + x.what();
    } catch (...) {
        return "non-standard";
    }
}

/// Whether the fault's error says its worker died (killed for a timeout, or otherwise).
bool worker_died(const std::exception_ptr& e) {
    try {
        if (e)
            std::rethrow_exception(e);
    } catch (const coproc::worker_lost&) {
        return true;
    } catch (const coproc::timeout_error&) {
        return true;
    } catch (...) {
    }
    return false;
}

/// What every task of a multi-task call came to: a value or an error, by position.
struct outcomes {
    std::vector<std::optional<int>> values;
    std::vector<std::exception_ptr> errors;
    explicit outcomes(std::size_t n) : values(n), errors(n) {}
};

/// Checks the outcome of every task: the faulting one (at `at`) failed with its documented
/// error (`closed_ok`: or pool_closed); every other one returned its value, or failed with
/// pool_closed if `closed_ok`, or with worker_lost naming the faulting task's worker: the
/// documented fate of a task that had finished there but whose result died with the worker (a
/// task runs at most once). Each item ran at most once, and a task that returned a value ran.
/// (With `closed_ok` the pool was terminated: a slow task may also have hit task_timeout.)
void check_outcomes(cell& c, const std::vector<int>& items, std::size_t at, const outcomes& o,
                    bool closed_ok = false) {
    CHECK_MESSAGE(!o.values[at], "the faulting task returned " << *o.values[at]);
    if (o.errors[at])
        c.check_error(o.errors[at], closed_ok);
    const bool died = worker_died(o.errors[at]);
    int lost = 0;
    for (std::size_t i = 0; i < items.size(); ++i) {
        if (i == at)
            continue;
        CAPTURE(i);
        CHECK_MESSAGE((o.values[i].has_value() != (o.errors[i] != nullptr)),
                      "a task has no outcome, or two");
        if (o.values[i]) {
            CHECK(*o.values[i] == expected(items[i]));
            continue;
        }
        if (!o.errors[i])
            continue;
        try {
            std::rethrow_exception(o.errors[i]);
        } catch (const coproc::worker_lost& w) {
            INFO("a task that does not fault failed: " << std::string(w.what()));
            CHECK(died);
            CHECK(w.pid() == shared().fault_pid.load());
            ++lost;
        } catch (const coproc::pool_closed& e) {
            CHECK_MESSAGE(closed_ok, "unexpected pool_closed: " << std::string(e.what()));
        } catch (const coproc::timeout_error& e) { // a slow task, before terminate() came
            CHECK_MESSAGE((closed_ok && items[i] >= slow_base && c.f.timeout.count() > 0),
                          "unexpected timeout_error: " << std::string(e.what()));
        } catch (const std::exception& e) {
            FAIL_CHECK("a task that does not fault failed: " << std::string(typeid(e).name())
                                                             << ": " << std::string(e.what()));
        } catch (...) {
            FAIL_CHECK("a task that does not fault threw a non-standard exception");
        }
    }
    if (lost > 0)
        c.outcomes.insert("results lost with the worker: " + std::to_string(lost));
    for (std::size_t i = 0; i < items.size(); ++i) { // at most once; at least once if it returned
        if (items[i] < 0)
            continue;
        CAPTURE(i);
        const int base = items[i] >= slow_base ? items[i] - slow_base : items[i];
        const int runs = shared().runs[base].load();
        CHECK(runs <= 1);
        if (o.values[i])
            CHECK(runs == 1);
    }
}

/// Waits for every result: get() of each.
outcomes get_all(std::vector<coproc::async_result<int>>& rs) {
    outcomes o(rs.size());
    for (std::size_t i = 0; i < rs.size(); ++i) {
        try {
            o.values[i] = rs[i].get();
        } catch (...) {
            o.errors[i] = std::current_exception();
        }
    }
    return o;
}

/// Each task's callback or error_callback ran once, with its outcome.
void check_callbacks(const std::vector<tally>& tallies, const outcomes& o) {
    for (std::size_t i = 0; i < tallies.size(); ++i) {
        CAPTURE(i);
        const auto& t = tallies[i];
        CHECK(t.values + t.errors == 1);
        if (o.values[i]) {
            CHECK(t.values == 1);
            CHECK(t.value == *o.values[i]);
        } else {
            CHECK(t.errors == 1);
            // The error_callback got the same error as get().
            CHECK((t.error && o.errors[i] && what_of(t.error) == what_of(o.errors[i])));
        }
    }
}

/// Rethrows `e` unless it is an E: then throws pool_closed (so "E or pool_closed" is one check).
template <class E> void rethrow_unless(const std::exception_ptr& e) {
    try {
        std::rethrow_exception(e);
    } catch (const E&) {
        throw coproc::pool_closed("accepted: " + std::string(typeid(E).name()));
    }
}

// ------------------------------------------------------------------ the columns: calls

asio::awaitable<void> call_apply(cell c) {
    coproc::pool pool(c.io.get_executor(), options_of(c.f));
    int fds = 0;
    for (int round = 0; round < rounds; ++round) {
        std::exception_ptr e;
        try {
            const int v = co_await pool.apply(c.f.task, -1);
            FAIL_CHECK("the faulting apply returned " << v);
        } catch (...) {
            e = std::current_exception();
        }
        c.check_error(e);
        co_await recover(pool, round, fds);
    }
    pool.close();
    co_await pool.async_join();
}

asio::awaitable<void> map_with_fault(cell c, int n, int at, std::size_t chunksize) {
    coproc::pool pool(c.io.get_executor(), options_of(c.f));
    auto items = iota(n);
    items[static_cast<std::size_t>(at)] = -1;
    int fds = 0;
    for (int round = 0; round < rounds; ++round) {
        std::exception_ptr e;
        try {
            const auto v = co_await pool.map(c.f.task, items, chunksize);
            FAIL_CHECK("the faulting map returned " << v.size() << " results");
        } catch (...) {
            e = std::current_exception();
        }
        c.check_error(e);
        co_await recover(pool, round, fds);
    }
    pool.close();
    co_await pool.async_join();
}

asio::awaitable<void> call_map_large(cell c) {
    co_await map_with_fault(c, 2000, 1234, 0); // default chunksize: 250
}

asio::awaitable<void> call_map_chunked(cell c) { co_await map_with_fault(c, 300, 150, 7); }

asio::awaitable<void> call_imap(cell c) {
    coproc::pool pool(c.io.get_executor(), options_of(c.f));
    constexpr std::size_t n = 24;
    constexpr std::size_t at = 9;
    auto items = iota(static_cast<int>(n));
    items[at] = -1;
    int fds = 0;
    for (int round = 0; round < rounds; ++round) {
        shared().reset();
        auto results = pool.imap(c.f.task, items, 1);
        outcomes o(n);
        std::size_t pos = 0; // each next() yields one position: its value or its error
        for (; pos <= n; ++pos) {
            try {
                auto v = co_await results.next();
                if (!v)
                    break;
                if (pos < n)
                    o.values[pos] = *v;
            } catch (...) {
                if (pos < n)
                    o.errors[pos] = std::current_exception();
            }
        }
        CHECK(pos == n); // every position, in order, and then the end
        check_outcomes(c, items, at, o);
        co_await recover(pool, round, fds);
    }
    pool.close();
    co_await pool.async_join();
}

asio::awaitable<void> call_apply_async(cell c) {
    coproc::pool pool(options_of(c.f)); // blocking calls: the pool runs its own loop thread
    constexpr std::size_t n = 12;
    constexpr std::size_t at = 5;
    auto items = iota(static_cast<int>(n));
    items[at] = -1;
    std::vector<std::vector<tally>> all;
    all.reserve(rounds);
    int fds = 0;
    for (int round = 0; round < rounds; ++round) {
        shared().reset();
        auto& tallies = all.emplace_back(n);
        auto rs = submit_all(pool, c.f.task, items, tallies);
        const auto o = get_all(rs);
        check_outcomes(c, items, at, o);
        check_callbacks(tallies, o);
        co_await recover(pool, round, fds);
    }
    pool.close();
    pool.join();
    for (const auto& tallies : all) // and no callback ran twice later
        for (const auto& t : tallies)
            CHECK(t.values + t.errors == 1);
}

/// close() then join() with n tasks in flight, the one at `at` faulting.
asio::awaitable<void> close_join_with_fault(cell c, std::size_t n, std::size_t at) {
    CAPTURE(n);
    CAPTURE(at);
    shared().reset(); // run counts from the layout before
    coproc::pool pool(options_of(c.f));
    auto items = iota(static_cast<int>(n));
    items[at] = -1;
    std::vector<tally> tallies(n);
    auto rs = submit_all(pool, c.f.task, items, tallies);
    pool.close();
    pool.join();
    for (std::size_t i = 0; i < n; ++i) {
        CAPTURE(i);
        CHECK_MESSAGE(rs[i].ready(), "join() returned before the result was set");
    }
    const auto o = get_all(rs);
    check_outcomes(c, items, at, o);
    check_callbacks(tallies, o);
    const auto fam = scan_family(); // join() waited for the workers and the fork server
    CHECK(fam.descendants == g_family_before.descendants);
    CHECK(fam.zombies == g_family_before.zombies);
    co_await check_refuses(pool);
}

asio::awaitable<void> call_close_join(cell c) {
    // The fault mid-queue: the tasks behind it go to another worker while the pool closes.
    co_await close_join_with_fault(c, 10, 3);
    // The fault last: its worker's death is what finishes the pool, and join() must still
    // return only after the fault's error is set.
    co_await close_join_with_fault(c, 3, 2);
}

asio::awaitable<void> call_terminate(cell c) {
    coproc::pool pool(options_of(c.f));
    constexpr std::size_t n = 10;
    constexpr std::size_t at = 3;
    std::vector<int> items;
    for (int i = 0; i < static_cast<int>(n); ++i) // quick tasks, the fault, then slow ones
        items.push_back(i < static_cast<int>(at) ? i : slow_base + i);
    items[at] = -1;
    std::vector<tally> tallies(n);
    auto rs = submit_all(pool, c.f.task, items, tallies);
    const bool started = co_await eventually([] { return shared().fault_started.load() > 0; });
    CHECK_MESSAGE(started, "the faulting task never started");
    pool.terminate();
    pool.join();
    for (std::size_t i = 0; i < n; ++i) {
        CAPTURE(i);
        CHECK_MESSAGE(rs[i].ready(), "join() returned before the result was set");
    }
    const auto o = get_all(rs);
    check_outcomes(c, items, at, o, true);
    check_callbacks(tallies, o);
    for (std::size_t i = at + 1; i < n; ++i) { // the slow ones were still sleeping
        CAPTURE(i);
        CHECK_MESSAGE(!o.values[i], "a slow task returned " << *o.values[i]);
        if (o.errors[i] && c.f.timeout.count() > 0) // a task_timeout may have struck first
            CHECK_THROWS_AS(rethrow_unless<coproc::timeout_error>(o.errors[i]),
                            coproc::pool_closed);
        else if (o.errors[i])
            CHECK_THROWS_AS(std::rethrow_exception(o.errors[i]), coproc::pool_closed);
    }
    const auto fam = scan_family(); // join() waited for the workers and the fork server
    CHECK(fam.descendants == g_family_before.descendants);
    CHECK(fam.zombies == g_family_before.zombies);
    co_await check_refuses(pool);
}

struct call_kind {
    const char* name;
    asio::awaitable<void> (*run)(cell);
};

constexpr call_kind calls[] = {
    {"apply", call_apply},
    {"map 2000", call_map_large},
    {"map chunksize 7", call_map_chunked},
    {"imap", call_imap},
    {"apply_async", call_apply_async},
    {"close+join", call_close_join},
    {"terminate", call_terminate},
};

// ------------------------------------------------------------------ cells

/// Runs one cell: the call under the fault, then checks that nothing of the pool is left.
void run_cell(std::size_t fi, std::size_t ci) {
    const fault& f = faults[fi];
    const call_kind& k = calls[ci];
    const std::string what = std::string("fault matrix cell ") + f.name + " x " + k.name;
    INFO(what);
    auto& stats = g_cells[{static_cast<int>(fi), static_cast<int>(ci)}];
    const int failures_before = g_failures.load();
    const auto t0 = std::chrono::steady_clock::now();
    // Counted now, so that a cell which crashes the binary shows as failed.
    ++stats.runs;
    struct record { // passes the cell if no assertion failed, even if a REQUIRE threw
        cell_stats& s;
        int before;
        std::chrono::steady_clock::time_point t0;
        ~record() {
            s.passed += g_failures.load() == before;
            s.ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                        .count();
        }
    } rec{stats, failures_before, t0};

    // Before aborting, show where every process of the tree waits: a hang then tells whether a
    // worker or the parent is stuck.
    coproc::test::watchdog dog(45s, what, [] { dump_family(stderr); });
    shared().reset();
    const auto before = g_family_before = scan_family();
    CHECK_MESSAGE(before.zombies == 0, "zombies before the cell:" << before.zombie_list);
    const int fds = fd_count();
    {
        outside_signaller signaller(f.outside);
        coproc::test::run_coroutine(
            [&](asio::io_context& io) {
                return k.run(cell{io, f, stats.outcomes});
            },
            60s);
    }
    // The pool is gone: its workers and fork server are reaped, its descriptors closed.
    family after;
    for (int i = 0; i < 400; ++i) {
        after = scan_family();
        if (after.zombies == before.zombies && after.descendants == before.descendants)
            break;
        std::this_thread::sleep_for(5ms);
    }
    CHECK_MESSAGE(after.zombies == before.zombies, "zombies:" << after.zombie_list);
    CHECK(after.descendants == before.descendants);
    CHECK(fd_count() == fds);
}

void run_row(std::size_t fi) {
    for (std::size_t ci = 0; ci < std::size(calls); ++ci)
        SUBCASE(calls[ci].name) { run_cell(fi, ci); }
}

void matrix_listener::test_run_end(const doctest::TestRunStats&) {
    if (g_cells.empty())
        return;
    std::ostream& out = *opt.cout;
    int runs = 0;
    int passed = 0;
    out << "\nfault matrix (cells passed / run):\n" << std::left << std::setw(22) << "";
    for (const auto& k : calls)
        out << std::setw(17) << k.name;
    out << "\n";
    for (std::size_t fi = 0; fi < std::size(faults); ++fi) {
        out << std::setw(22) << faults[fi].name;
        for (std::size_t ci = 0; ci < std::size(calls); ++ci) {
            const auto it = g_cells.find({static_cast<int>(fi), static_cast<int>(ci)});
            std::string s = "-";
            if (it != g_cells.end()) {
                s = std::to_string(it->second.passed) + "/" + std::to_string(it->second.runs);
                runs += it->second.runs;
                passed += it->second.passed;
            }
            out << std::setw(17) << s;
        }
        out << "\n";
    }
    out << "cells passed: " << passed << "/" << runs << "\n";
    if (const char* path = std::getenv("COPROC_FAULT_MATRIX_FILE")) {
        std::ofstream file(path, std::ios::app);
        for (const auto& [key, s] : g_cells) {
            file << faults[key.first].name << "\t" << calls[key.second].name << "\t" << s.passed
                 << "/" << s.runs << "\t" << static_cast<long>(s.ms) << " ms\t";
            for (const auto& o : s.outcomes)
                file << o << "; ";
            file << "\n";
        }
    }
}

} // namespace

REGISTER_LISTENER("fault_matrix", 1, matrix_listener);

TEST_SUITE_BEGIN("faults");

static_assert(std::size(faults) == 9, "one TEST_CASE per row below");
TEST_CASE("fault matrix: abort()") { run_row(0); }
TEST_CASE("fault matrix: raise(SIGSEGV)") { run_row(1); }
TEST_CASE("fault matrix: _exit(0)") { run_row(2); }
TEST_CASE("fault matrix: _exit(3)") { run_row(3); }
TEST_CASE("fault matrix: throw non-std type") { run_row(4); }
TEST_CASE("fault matrix: endless loop (task_timeout)") { run_row(5); }
TEST_CASE("fault matrix: out of memory (RLIMIT_DATA)") { run_row(6); }
TEST_CASE("fault matrix: SIGKILL from outside") { run_row(7); }
TEST_CASE("fault matrix: raise(SIGSTOP) (task_timeout)") { run_row(8); }

TEST_SUITE_END();
