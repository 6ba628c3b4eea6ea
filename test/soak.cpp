// coproc-soak: a long mixed workload on two pools while a killer SIGKILLs random workers.
//
//   coproc-soak DURATION_S [SEED [INTERVAL_S]]        (test/soak.sh runs it; not a meson test)
//
// Pool A (3 workers, task_timeout) runs on this program's io_context; pool B (2 workers,
// maxtasksperchild, task_timeout) owns its loop thread. Coroutine clients mix apply, map (large,
// chunked), starmap, imap / imap_unordered (some abandoned early), a queue round trip through
// pool tasks and a process/pipe echo; a plain thread calls apply_async / map_async with
// callbacks; tasks are fast, slow, throwing (standard and not) and now and then faulting (abort,
// _exit, SIGSEGV, an endless loop that task_timeout ends).
//
// Accounting: every call (every chunk of a fully read imap) gets a ledger id and must end
// exactly once, as done (its value checked) or failed with an error its kind allows:
// worker_lost by SIGKILL for anything (the killer) or for a task that finished in a worker that
// died before its reply left (at most once), its own signal or exit status for a faulting
// task, timeout_error for the endless loop, its own exception for a throwing one. A wrong value,
// an unexpected error, a second completion or no completion by the end counts as lost. Tasks
// that take their ledger id also count their executions in shared memory: a task that returns
// after running twice is reported as "reexec" (it ran again after its worker died).
//
// Every INTERVAL_S (default 10) one line: elapsed, done, failed, lost, kills, open calls and the
// oldest one's age, parent RSS (VmRSS after malloc_trim, so the allocator's cache is not counted;
// it includes the 16 MiB execution table, resident from the start), open descriptors, live
// descendants, zombies among them. At the end clients stop, the pools are closed and joined, and
// one summary line is printed. Exit status: 0 if all is well; 1 on a lost task, a descriptor not
// given back, a zombie that outlives an interval or a descendant left at the end, or RSS at the
// end more than 50 MiB above the warm-up floor (the lowest sample of the minute after warm-up);
// 2 if the drain hangs (the step that hung, the clients still running and the open calls are
// printed).
#include <coproc/coproc.hpp>

#include <asio/co_spawn.hpp>
#include <asio/io_context.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dirent.h>
#include <exception>
#include <fstream>
#include <functional>
#include <malloc.h>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <optional>
#include <random>
#include <ranges>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <sys/mman.h>
#include <sys/resource.h>
#include <thread>
#include <tuple>
#include <typeinfo>
#include <unistd.h>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

using namespace std::chrono_literals;
using i64 = std::int64_t;
using steady = std::chrono::steady_clock;
using rng = std::mt19937_64;

// ------------------------------------------------------------------ executions, in shared memory

// Made before the pools, so every worker shares it: the tasks that take their ledger id count
// how often they ran.
constexpr std::size_t exec_slots = std::size_t{1} << 22;
std::atomic<std::uint32_t>* g_exec = nullptr;

std::atomic<std::uint32_t>& exec_count(i64 id) {
    return g_exec[static_cast<std::uint64_t>(id) % exec_slots];
}

// ------------------------------------------------------------------ task functions

i64 square_id(i64 id) {
    exec_count(id).fetch_add(1, std::memory_order_relaxed);
    return id * id;
}
i64 sleep_id(i64 id, int ms) {
    exec_count(id).fetch_add(1, std::memory_order_relaxed);
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    return id + 1;
}
i64 throw_std(i64 id) { throw std::out_of_range("soak out_of_range " + std::to_string(id)); }
struct soak_error : std::exception {
    const char* what() const noexcept override { return "soak custom error"; }
};
i64 throw_custom(i64) { throw soak_error{}; }
i64 throw_int(i64 id) { throw static_cast<int>(id % 1000); }
i64 fault_abort(i64) { std::abort(); }
i64 fault_exit(i64 code) { ::_exit(static_cast<int>(code)); }
i64 fault_segv(i64) {
    ::raise(SIGSEGV);
    return -1;
}
i64 fault_spin(i64 id) {
    volatile i64 x = id;
    for (;;)
        x = x + 1;
}

i64 square_or_throw(i64 x) {
    if (x < 0)
        throw std::out_of_range("soak bad item " + std::to_string(x));
    return x * x;
}
i64 add(i64 a, i64 b) { return a + b; }
using blob = std::vector<std::uint8_t>;
/// The blob's size if all its bytes are equal, else -1.
i64 blob_check(const blob& b) {
    if (std::ranges::any_of(b, [&](std::uint8_t c) { return c != b.front(); }))
        return -1;
    return static_cast<i64>(b.size()) * 256 + b.front();
}

constexpr i64 bad_every = 1009; // tag_throwing throws for multiples of it
i64 tag(i64 x) { return 3 * x + 1; }
i64 tag_throwing(i64 x) {
    if (x % bad_every == 0)
        throw std::invalid_argument("soak bad tag " + std::to_string(x));
    return 3 * x + 1;
}
i64 tag_slow(i64 x) {
    std::this_thread::sleep_for(1ms);
    return 3 * x + 1;
}

struct qmsg {
    i64 v = 0;
    std::string pad;
    template <class Archive> void serialize(Archive& ar) { ar(v, pad); }
};
/// Takes a token from `in`, puts twice it (padded) on `out`, returns the token.
i64 queue_echo(coproc::queue<i64> in, coproc::queue<qmsg> out, int pad) {
    const auto v = in.get_for(500ms);
    if (!v)
        throw std::length_error("soak: input queue empty");
    out.put(
        qmsg{*v * 2, std::string(static_cast<std::size_t>(pad), static_cast<char>('a' + *v % 26))});
    return *v;
}

/// A coproc::process target: answers `n` messages with the message and "!".
void echo_child(coproc::connection<std::string> c, int n) {
    for (int i = 0; i < n; ++i)
        c.send(c.recv() + "!");
}

// ------------------------------------------------------------------ the ledger

enum class kind : int {
    fast,
    slow,
    throw_std,
    throw_custom,
    throw_int,
    abort_,
    exit_,
    segv,
    spin,
    map,
    map_bad,
    starmap,
    map_blob,
    imap_chunk,
    imap_abandoned,
    queue_echo,
    map_async,
    starmap_async,
    process_echo,
    count_
};
constexpr std::size_t kinds = static_cast<std::size_t>(kind::count_);
constexpr std::array<const char*, kinds> kind_names = {
    "fast",       "slow",      "throw_std",     "throw_custom", "throw_int",
    "abort",      "exit",      "segv",          "spin",         "map",
    "map_bad",    "starmap",   "map_blob",      "imap_chunk",   "imap_abandoned",
    "queue_echo", "map_async", "starmap_async", "process_echo"};

const char* name_of(kind k) { return kind_names[static_cast<std::size_t>(k)]; }

double seconds(steady::duration d) { return std::chrono::duration<double>(d).count(); }

class ledger {
  public:
    std::uint64_t open(kind k) {
        std::lock_guard lk(m_);
        const std::uint64_t id = next_++;
        open_.emplace(id, entry{k, steady::now()});
        exec_count(static_cast<i64>(id)).store(0, std::memory_order_relaxed);
        return id;
    }
    void done(std::uint64_t id) { close(id, 0, {}); }
    void failed(std::uint64_t id) { close(id, 1, {}); }
    void wrong(std::uint64_t id, const std::string& why) { close(id, 2, why); }
    /// A discrepancy that belongs to no single call (e.g. a spurious imap error).
    void wrong_extra(kind k, const std::string& why) { wrong(open(k), why); }
    void reexec(std::uint64_t id, std::uint32_t runs) {
        std::lock_guard lk(m_);
        if (++reexec_ <= 10)
            std::fprintf(stderr, "soak: note: task %llu ran %u times before its result arrived\n",
                         static_cast<unsigned long long>(id), runs);
    }

    struct counts {
        std::uint64_t done = 0, failed = 0, lost = 0, reexec = 0, open = 0;
        double oldest = 0;
    };
    counts snapshot() const {
        std::lock_guard lk(m_);
        counts c{done_, failed_, lost_, reexec_, open_.size(), 0};
        const auto now = steady::now();
        for (const auto& [id, e] : open_)
            c.oldest = std::max(c.oldest, seconds(now - e.t));
        return c;
    }
    /// Prints the calls still open (oldest first, at most `max`).
    void print_open(std::size_t max) const {
        std::lock_guard lk(m_);
        std::vector<std::pair<std::uint64_t, entry>> v(open_.begin(), open_.end());
        std::sort(v.begin(), v.end(), [](auto& a, auto& b) { return a.second.t < b.second.t; });
        const auto now = steady::now();
        for (std::size_t i = 0; i < v.size() && i < max; ++i)
            std::fprintf(stderr, "soak:   open task %llu (%s), %.1f s old\n",
                         static_cast<unsigned long long>(v[i].first), name_of(v[i].second.k),
                         seconds(now - v[i].second.t));
    }
    /// Counts every call still open as lost (it never completed); returns how many.
    std::size_t close_all_open() {
        std::vector<std::uint64_t> ids;
        {
            std::lock_guard lk(m_);
            for (const auto& [id, e] : open_)
                ids.push_back(id);
        }
        for (auto id : ids)
            wrong(id, "never completed");
        return ids.size();
    }
    void print_by_kind() const {
        std::lock_guard lk(m_);
        std::fprintf(stdout, "soak: by kind (done/failed/lost):");
        for (std::size_t k = 0; k < kinds; ++k)
            if (by_kind_[k][0] + by_kind_[k][1] + by_kind_[k][2])
                std::fprintf(stdout, " %s %llu/%llu/%llu", kind_names[k],
                             static_cast<unsigned long long>(by_kind_[k][0]),
                             static_cast<unsigned long long>(by_kind_[k][1]),
                             static_cast<unsigned long long>(by_kind_[k][2]));
        std::fprintf(stdout, "\n");
    }

  private:
    struct entry {
        kind k;
        steady::time_point t;
    };
    void close(std::uint64_t id, int outcome, const std::string& why) {
        std::lock_guard lk(m_);
        auto it = open_.find(id);
        if (it == open_.end()) {
            ++lost_;
            if (++reported_ <= 50)
                std::fprintf(stderr, "soak: LOST: task %llu completed twice (second: %s%s)\n",
                             static_cast<unsigned long long>(id),
                             outcome == 0   ? "done"
                             : outcome == 1 ? "failed"
                                            : "wrong: ",
                             why.c_str());
            return;
        }
        const kind k = it->second.k;
        const double age = seconds(steady::now() - it->second.t);
        open_.erase(it);
        ++by_kind_[static_cast<std::size_t>(k)][outcome];
        if (outcome == 0)
            ++done_;
        else if (outcome == 1)
            ++failed_;
        else {
            ++lost_;
            if (++reported_ <= 50)
                std::fprintf(stderr, "soak: LOST: task %llu (%s, %.2f s): %s\n",
                             static_cast<unsigned long long>(id), name_of(k), age, why.c_str());
        }
    }

    mutable std::mutex m_;
    std::unordered_map<std::uint64_t, entry> open_;
    std::uint64_t next_ = 1;
    std::uint64_t done_ = 0, failed_ = 0, lost_ = 0, reexec_ = 0;
    std::uint64_t reported_ = 0;
    std::array<std::array<std::uint64_t, 3>, kinds> by_kind_{};
};

// ------------------------------------------------------------------ expected errors

std::string describe(const std::exception_ptr& e) {
    try {
        std::rethrow_exception(e);
    } catch (const coproc::remote_error& x) {
        return "remote_error(" + x.type_name() + "): " + x.what();
    } catch (const std::exception& x) {
        return std::string(typeid(x).name()) + ": " + x.what();
    } catch (...) {
        return "a non-standard exception";
    }
}

/// Which failures a call may end with besides worker_lost by SIGKILL (the killer).
struct allowed {
    kind k;
    i64 arg = 0;              // the task's argument (exit status, id in a message)
    bool invalid_arg = false; // an imap chunk holding a tag_throwing item
};

/// Empty if `e` is a failure `a` allows, else what is wrong with it.
std::string unexpected(const allowed& a, const std::exception_ptr& e) {
    try {
        std::rethrow_exception(e);
    } catch (const coproc::worker_lost& x) {
        if (x.signal() == SIGKILL)
            return {};
        // Finished in a worker that then died, whatever killed it, before its reply left: a
        // task runs at most once, so it fails rather than run again.
        if (std::string_view(x.what()).find("before sending its result") != std::string_view::npos)
            return {};
        if (a.k == kind::abort_ && x.signal() == SIGABRT)
            return {};
        if (a.k == kind::segv && x.signal() == SIGSEGV)
            return {};
        if (a.k == kind::exit_ && x.signal() == 0 && x.exit_status() == a.arg)
            return {};
    } catch (const coproc::timeout_error&) {
        if (a.k == kind::spin)
            return {};
    } catch (const coproc::remote_error& x) {
        if (a.k == kind::throw_custom && x.type_name().find("soak_error") != std::string::npos &&
            std::string(x.what()) == "soak custom error")
            return {};
        if (a.k == kind::throw_int && x.type_name() == "int")
            return {};
    } catch (const std::out_of_range& x) {
        if (typeid(x) == typeid(std::out_of_range)) {
            if (a.k == kind::throw_std && x.what() == "soak out_of_range " + std::to_string(a.arg))
                return {};
            if (a.k == kind::map_bad && std::string(x.what()) == "soak bad item -1")
                return {};
        }
    } catch (const std::invalid_argument& x) {
        if (a.invalid_arg && typeid(x) == typeid(std::invalid_argument) &&
            std::string(x.what()).starts_with("soak bad tag "))
            return {};
    } catch (const std::length_error& x) {
        if (a.k == kind::queue_echo && std::string(x.what()) == "soak: input queue empty")
            return {};
    } catch (...) {
    }
    return "unexpected error " + describe(e);
}

// ------------------------------------------------------------------ process metrics

double rss_mib() {
    std::ifstream f("/proc/self/status");
    std::string line;
    while (std::getline(f, line))
        if (line.starts_with("VmRSS:"))
            return std::atof(line.c_str() + 6) / 1024.0;
    return 0;
}

std::vector<int> open_fds() {
    std::vector<int> v;
    if (DIR* d = opendir("/proc/self/fd")) {
        const int own = dirfd(d);
        while (dirent* e = readdir(d))
            if (e->d_name[0] != '.' && std::atoi(e->d_name) != own)
                v.push_back(std::atoi(e->d_name));
        closedir(d);
    }
    std::sort(v.begin(), v.end());
    return v;
}

std::string fd_target(int fd) {
    char buf[256];
    const std::string path = "/proc/self/fd/" + std::to_string(fd);
    const ssize_t n = ::readlink(path.c_str(), buf, sizeof buf - 1);
    return n < 0 ? "?" : std::string(buf, static_cast<std::size_t>(n));
}

struct proc_info {
    pid_t pid;
    pid_t ppid;
    char state;
    std::string comm;
};

/// Every descendant of this process (children, their children...).
std::vector<proc_info> descendants() {
    std::vector<proc_info> all;
    if (DIR* d = opendir("/proc")) {
        while (dirent* e = readdir(d)) {
            if (e->d_name[0] < '0' || e->d_name[0] > '9')
                continue;
            std::ifstream f(std::string("/proc/") + e->d_name + "/stat");
            std::string line;
            if (!std::getline(f, line))
                continue;
            const auto open = line.find('(');
            const auto close = line.rfind(')');
            if (open == std::string::npos || close == std::string::npos)
                continue;
            std::istringstream rest(line.substr(close + 2));
            proc_info p{std::atoi(e->d_name), 0, '?', line.substr(open + 1, close - open - 1)};
            rest >> p.state >> p.ppid;
            all.push_back(p);
        }
        closedir(d);
    }
    std::set<pid_t> mine{::getpid()};
    std::vector<proc_info> out;
    for (bool grew = true; grew;) {
        grew = false;
        for (const auto& p : all)
            if (mine.count(p.ppid) && !mine.count(p.pid)) {
                mine.insert(p.pid);
                out.push_back(p);
                grew = true;
            }
    }
    return out;
}

// ------------------------------------------------------------------ the soak

template <class T> T pick(rng& r, std::initializer_list<std::pair<T, int>> weighted) {
    int total = 0;
    for (const auto& w : weighted)
        total += w.second;
    int x = static_cast<int>(r() % static_cast<std::uint64_t>(total));
    for (const auto& w : weighted) {
        if (x < w.second)
            return w.first;
        x -= w.second;
    }
    return weighted.begin()->first;
}

i64 uniform(rng& r, i64 lo, i64 hi) { // [lo, hi]
    return lo + static_cast<i64>(r() % static_cast<std::uint64_t>(hi - lo + 1));
}

asio::awaitable<void> sleep_for(steady::duration d) {
    asio::steady_timer t(co_await asio::this_coro::executor, d);
    co_await t.async_wait(asio::use_awaitable);
}

struct soak {
    soak(asio::io_context& io_, coproc::pool& a, coproc::pool& b, coproc::queue<i64>& in,
         coproc::queue<qmsg>& out, std::uint64_t seed_, double duration_)
        : io(io_), pa(a), pb(b), q_in(in), q_out(out), seed(seed_), duration(duration_) {}

    asio::io_context& io;
    coproc::pool& pa; // on io
    coproc::pool& pb; // its own loop, maxtasksperchild
    coproc::queue<i64>& q_in;
    coproc::queue<qmsg>& q_out;
    const std::uint64_t seed;
    const double duration;
    steady::time_point t0 = steady::now();

    ledger led;
    std::atomic<bool> stop{false};
    std::atomic<std::uint64_t> kills{0};
    std::atomic<int> live{0}; // client coroutines still running
    std::mutex names_m;
    std::multiset<std::string> live_names;
    std::atomic<int> client_errors{0};
    std::uint64_t seeds = 0;

    // queue round trip (all on io's thread)
    i64 next_token = 0;
    std::set<i64> put_tokens, returned_tokens;
    std::map<i64, int> seen_tokens;

    bool stopping() const { return stop.load(std::memory_order_relaxed); }
    rng make_rng() { return rng(seed * 1'000'003 + ++seeds); }
    coproc::pool& pick_pool(rng& r) { return r() % 5 < 3 ? pa : pb; }

    void settle_error(std::uint64_t id, const allowed& a, const std::exception_ptr& e) {
        if (auto why = unexpected(a, e); why.empty())
            led.failed(id);
        else
            led.wrong(id, why);
    }
    void settle_value(std::uint64_t id, bool ok, const std::string& why) {
        if (ok)
            led.done(id);
        else
            led.wrong(id, why);
    }
    /// For the tasks that count their runs: done if `ok` and it ran once.
    void settle_counted(std::uint64_t id, bool ok, const std::string& why) {
        const auto runs = exec_count(static_cast<i64>(id)).load(std::memory_order_relaxed);
        if (ok && runs == 0)
            return led.wrong(id, "a result arrived but the task never ran");
        if (ok && runs > 1)
            led.reexec(id, runs);
        settle_value(id, ok, why);
    }

    /// Starts a client coroutine that the drain waits for.
    void spawn(std::string name, asio::awaitable<void> body) {
        ++live;
        {
            std::lock_guard lk(names_m);
            live_names.insert(name);
        }
        asio::co_spawn(io, std::move(body), [this, name](std::exception_ptr e) {
            if (e) {
                ++client_errors;
                std::fprintf(stderr, "soak: client %s escaped: %s\n", name.c_str(),
                             describe(e).c_str());
            }
            {
                std::lock_guard lk(names_m);
                live_names.erase(live_names.find(name));
            }
            --live;
        });
    }

    // ---------------------------------------------------------------- apply

    asio::awaitable<void> apply_client() {
        rng r = make_rng();
        while (!stopping()) {
            coproc::pool& p = pick_pool(r);
            const kind k = pick<kind>(r, {{kind::fast, 70},
                                          {kind::slow, 6},
                                          {kind::throw_std, 8},
                                          {kind::throw_custom, 8},
                                          {kind::throw_int, 8}});
            const auto id = led.open(k);
            const i64 x = static_cast<i64>(id);
            const bool via_result = r() % 8 == 0; // apply_async(...).async_get()
            try {
                i64 v = 0;
                switch (k) {
                case kind::fast:
                    v = via_result ? co_await p.apply_async(square_id, {x}).async_get()
                                   : co_await p.apply(square_id, x);
                    settle_counted(id, v == x * x, "wrong square " + std::to_string(v));
                    break;
                case kind::slow: {
                    const int ms = static_cast<int>(uniform(r, 1, 100));
                    v = via_result ? co_await p.apply_async(sleep_id, {x, ms}).async_get()
                                   : co_await p.apply(sleep_id, x, ms);
                    settle_counted(id, v == x + 1, "wrong slow result " + std::to_string(v));
                    break;
                }
                case kind::throw_std:
                    v = co_await p.apply(throw_std, x);
                    led.wrong(id, "a throwing task returned");
                    break;
                case kind::throw_custom:
                    v = co_await p.apply(throw_custom, x);
                    led.wrong(id, "a throwing task returned");
                    break;
                default:
                    v = co_await p.apply(throw_int, x);
                    led.wrong(id, "a throwing task returned");
                    break;
                }
            } catch (...) {
                settle_error(id, {k, x}, std::current_exception());
            }
        }
    }

    // ---------------------------------------------------------------- faults

    asio::awaitable<void> one_fault(kind k, coproc::pool& p, i64 code) {
        const auto id = led.open(k);
        const i64 arg = k == kind::exit_ ? code : static_cast<i64>(id);
        try {
            i64 (*fn)(i64) = k == kind::abort_  ? fault_abort
                             : k == kind::exit_ ? fault_exit
                             : k == kind::segv  ? fault_segv
                                                : fault_spin;
            co_await p.apply(fn, arg);
            led.wrong(id, "a faulting task returned");
        } catch (...) {
            settle_error(id, {k, arg}, std::current_exception());
        }
    }

    asio::awaitable<void> fault_client() {
        rng r = make_rng();
        while (!stopping()) {
            co_await sleep_for(std::chrono::milliseconds(uniform(r, 100, 800)));
            if (stopping())
                break;
            const kind k = pick<kind>(
                r, {{kind::abort_, 30}, {kind::exit_, 30}, {kind::segv, 30}, {kind::spin, 8}});
            spawn(std::string("fault-") + name_of(k),
                  one_fault(k, pick_pool(r), uniform(r, 1, 120)));
        }
    }

    // ---------------------------------------------------------------- killer

    asio::awaitable<void> killer() {
        rng r = make_rng();
        while (!stopping()) {
            co_await sleep_for(std::chrono::milliseconds(uniform(r, 50, 500)));
            if (stopping())
                break;
            const auto pids = pick_pool(r).pids();
            if (pids.empty())
                continue;
            if (::kill(pids[r() % pids.size()], SIGKILL) == 0)
                ++kills;
        }
    }

    // ---------------------------------------------------------------- map / starmap

    asio::awaitable<void> map_client() {
        rng r = make_rng();
        while (!stopping()) {
            coproc::pool& p = pick_pool(r);
            const int what = static_cast<int>(r() % 100);
            const std::size_t cs =
                r() % 2 ? 0 : static_cast<std::size_t>(i64{1} << uniform(r, 0, 14));
            if (what < 45) { // map, sometimes with an item that throws
                const i64 n = i64{1} << uniform(r, 6, 17);
                const i64 base = uniform(r, 0, 1'000'000);
                const bool bad = r() % 6 == 0;
                const kind k = bad ? kind::map_bad : kind::map;
                const auto id = led.open(k);
                try {
                    std::vector<i64> v;
                    if (!bad && r() % 2) { // a lazy view, read in place
                        auto items = std::views::iota(base, base + n);
                        v = co_await p.map(square_or_throw, items, cs);
                    } else {
                        std::vector<i64> items(static_cast<std::size_t>(n));
                        std::iota(items.begin(), items.end(), base);
                        if (bad)
                            items[static_cast<std::size_t>(uniform(r, 0, n - 1))] = -1;
                        v = co_await p.map(square_or_throw, std::move(items), cs);
                    }
                    bool ok = !bad && v.size() == static_cast<std::size_t>(n);
                    for (i64 i = 0; ok && i < n; ++i)
                        ok = v[static_cast<std::size_t>(i)] == (base + i) * (base + i);
                    settle_value(id, ok,
                                 bad ? "a map with a throwing item returned" : "wrong map result");
                } catch (...) {
                    settle_error(id, {k}, std::current_exception());
                }
            } else if (what < 75) {
                const i64 n = i64{1} << uniform(r, 4, 16);
                std::vector<std::tuple<i64, i64>> pairs;
                for (i64 i = 0; i < n; ++i)
                    pairs.emplace_back(i, 2 * i + 1);
                const auto id = led.open(kind::starmap);
                try {
                    auto v = co_await p.starmap(add, pairs, cs);
                    bool ok = v.size() == pairs.size();
                    for (i64 i = 0; ok && i < n; ++i)
                        ok = v[static_cast<std::size_t>(i)] == 3 * i + 1;
                    settle_value(id, ok, "wrong starmap result");
                } catch (...) {
                    settle_error(id, {kind::starmap}, std::current_exception());
                }
            } else if (what < 85) { // large arguments: blobs of 64 KiB to 1 MiB
                const i64 n = uniform(r, 4, 32);
                std::vector<blob> blobs;
                std::vector<i64> want;
                for (i64 i = 0; i < n; ++i) {
                    const auto size = static_cast<std::size_t>(uniform(r, 64, 1024) * 1024);
                    const auto fill = static_cast<std::uint8_t>(r());
                    blobs.emplace_back(size, fill);
                    want.push_back(static_cast<i64>(size) * 256 + fill);
                }
                const auto id = led.open(kind::map_blob);
                try {
                    auto v = co_await p.map(blob_check, blobs, 1);
                    settle_value(id, v == want, "wrong blob_check result");
                } catch (...) {
                    settle_error(id, {kind::map_blob}, std::current_exception());
                }
            } else { // the blocking forms awaited from a coroutine
                const i64 n = i64{1} << uniform(r, 4, 14);
                const auto id = led.open(kind::map_async);
                try {
                    auto v = co_await p.map_async(square_or_throw, std::views::iota(i64{0}, n), cs)
                                 .async_get();
                    bool ok = v.size() == static_cast<std::size_t>(n);
                    for (i64 i = 0; ok && i < n; ++i)
                        ok = v[static_cast<std::size_t>(i)] == i * i;
                    settle_value(id, ok, "wrong map_async result");
                } catch (...) {
                    settle_error(id, {kind::map_async}, std::current_exception());
                }
            }
        }
    }

    // ---------------------------------------------------------------- imap

    asio::awaitable<void> imap_client() {
        rng r = make_rng();
        while (!stopping()) {
            coproc::pool& p = pick_pool(r);
            const int f = static_cast<int>(r() % 100);
            i64 (*fn)(i64) = f < 60 ? tag : f < 85 ? tag_throwing : tag_slow;
            const i64 n = fn == tag_slow ? uniform(r, 10, 1500) : uniform(r, 100, 20'000);
            const i64 cs = i64{1} << uniform(r, 0, 6);
            const i64 base = uniform(r, 0, 1'000'000);
            const bool ordered = r() % 2;
            std::vector<i64> items(static_cast<std::size_t>(n));
            std::iota(items.begin(), items.end(), base);
            if (r() % 4 == 0)
                co_await imap_abandoned(r, p, fn, std::move(items), cs, ordered);
            else
                co_await imap_full(p, fn, std::move(items), cs, ordered);
        }
    }

    static i64 item_of(i64 v) { return (v - 1) / 3; }

    /// Reads every result; each chunk is one ledger entry.
    asio::awaitable<void> imap_full(coproc::pool& p, i64 (*fn)(i64), std::vector<i64> items, i64 cs,
                                    bool ordered) {
        const i64 n = static_cast<i64>(items.size());
        const i64 base = items.front();
        const i64 chunks = (n + cs - 1) / cs;
        std::vector<std::uint64_t> ids;
        for (i64 c = 0; c < chunks; ++c)
            ids.push_back(led.open(kind::imap_chunk));
        auto chunk_has_bad = [&](i64 c) {
            if (fn != tag_throwing)
                return false;
            for (i64 i = c * cs; i < std::min(n, (c + 1) * cs); ++i)
                if ((base + i) % bad_every == 0)
                    return true;
            return false;
        };
        std::vector<int> got(static_cast<std::size_t>(n), 0);
        std::vector<std::exception_ptr> errors;         // unordered: in arrival order
        std::map<i64, std::exception_ptr> chunk_errors; // ordered: by chunk
        std::vector<std::string> problems;
        i64 pos = 0; // ordered: the next item expected
        auto gen = ordered ? p.imap(fn, std::move(items), static_cast<std::size_t>(cs))
                           : p.imap_unordered(fn, std::move(items), static_cast<std::size_t>(cs));
        for (;;) {
            std::optional<i64> v;
            try {
                v = co_await gen.next();
            } catch (...) {
                if (!ordered) {
                    errors.push_back(std::current_exception());
                    continue;
                }
                if (pos % cs != 0 || pos >= n) {
                    problems.push_back("an error in mid-chunk at item " + std::to_string(pos) +
                                       ": " + describe(std::current_exception()));
                    pos = std::min(n, (pos / cs + 1) * cs);
                } else {
                    chunk_errors[pos / cs] = std::current_exception();
                    pos = std::min(n, pos + cs);
                }
                continue;
            }
            if (!v)
                break;
            const i64 x = item_of(*v);
            if ((*v - 1) % 3 != 0 || x < base || x >= base + n) {
                problems.push_back("a value of no item: " + std::to_string(*v));
                continue;
            }
            if (ordered) {
                if (x != base + pos)
                    problems.push_back("out of order: item " + std::to_string(x - base) +
                                       " where " + std::to_string(pos) + " was due");
                pos = x - base + 1;
            }
            ++got[static_cast<std::size_t>(x - base)];
        }
        if (ordered && pos != n)
            problems.push_back("ended at item " + std::to_string(pos) + " of " + std::to_string(n));
        // Settle every chunk: whole -> done, empty -> failed by its error, else wrong.
        std::vector<i64> empty_chunks;
        for (i64 c = 0; c < chunks; ++c) {
            i64 have = 0, dup = 0;
            const i64 lo = c * cs, hi = std::min(n, (c + 1) * cs);
            for (i64 i = lo; i < hi; ++i) {
                have += got[static_cast<std::size_t>(i)] > 0;
                dup += got[static_cast<std::size_t>(i)] > 1;
            }
            const auto id = ids[static_cast<std::size_t>(c)];
            if (dup)
                led.wrong(id, "imap delivered an item twice");
            else if (have == hi - lo && chunk_has_bad(c))
                led.wrong(id, "a chunk with a throwing item delivered values");
            else if (have == hi - lo)
                led.done(id);
            else if (have > 0)
                led.wrong(id, "imap delivered part of a chunk (" + std::to_string(have) + " of " +
                                  std::to_string(hi - lo) + ")");
            else if (ordered) {
                auto it = chunk_errors.find(c);
                if (it == chunk_errors.end())
                    led.wrong(id, "imap never delivered this chunk");
                else
                    settle_error(id, {kind::imap_chunk, 0, chunk_has_bad(c)}, it->second);
            } else
                empty_chunks.push_back(c);
        }
        if (!ordered) {
            // Errors are anonymous here: chunks with a throwing item take the invalid_argument
            // ones, the others the rest.
            std::stable_partition(empty_chunks.begin(), empty_chunks.end(), chunk_has_bad);
            std::stable_partition(errors.begin(), errors.end(), [](const std::exception_ptr& e) {
                try {
                    std::rethrow_exception(e);
                } catch (const std::invalid_argument&) {
                    return true;
                } catch (...) {
                    return false;
                }
            });
            for (std::size_t i = 0; i < empty_chunks.size(); ++i) {
                const i64 c = empty_chunks[i];
                const auto id = ids[static_cast<std::size_t>(c)];
                if (i >= errors.size())
                    led.wrong(id, "imap_unordered never delivered this chunk");
                else
                    settle_error(id, {kind::imap_chunk, 0, chunk_has_bad(c)}, errors[i]);
            }
            for (std::size_t i = empty_chunks.size(); i < errors.size(); ++i)
                led.wrong_extra(kind::imap_chunk,
                                "imap_unordered raised more errors than chunks went missing: " +
                                    describe(errors[i]));
        } else {
            for (const auto& [c, e] : chunk_errors)
                if (c < chunks && got[static_cast<std::size_t>(c * cs)] > 0)
                    led.wrong_extra(kind::imap_chunk, "imap raised an error for chunk " +
                                                          std::to_string(c) +
                                                          " and delivered it too");
        }
        for (const auto& why : problems)
            led.wrong_extra(kind::imap_chunk, (ordered ? "imap: " : "imap_unordered: ") + why);
    }

    /// Reads a few results, then drops the generator.
    asio::awaitable<void> imap_abandoned(rng& r, coproc::pool& p, i64 (*fn)(i64),
                                         std::vector<i64> items, i64 cs, bool ordered) {
        const i64 n = static_cast<i64>(items.size());
        const i64 base = items.front();
        const i64 want = uniform(r, 0, std::min<i64>(n - 1, 3 * cs + 10));
        const auto id = led.open(kind::imap_abandoned);
        std::string why;
        {
            auto gen = ordered
                           ? p.imap(fn, std::move(items), static_cast<std::size_t>(cs))
                           : p.imap_unordered(fn, std::move(items), static_cast<std::size_t>(cs));
            std::set<i64> seen;
            i64 pos = 0;
            bool errors = false;
            for (i64 k = 0; k < want && why.empty(); ++k) {
                std::optional<i64> v;
                try {
                    v = co_await gen.next();
                } catch (...) {
                    errors = true;
                    why = unexpected({kind::imap_chunk, 0, fn == tag_throwing},
                                     std::current_exception());
                    if (ordered)
                        pos = std::min(n, (pos / cs + 1) * cs);
                    continue;
                }
                if (!v) {
                    why = "ended after " + std::to_string(k) + " values of " + std::to_string(n);
                    break;
                }
                const i64 x = item_of(*v);
                if ((*v - 1) % 3 != 0 || x < base || x >= base + n || !seen.insert(x).second)
                    why = "a wrong or repeated value " + std::to_string(*v);
                else if (ordered && x != base + pos)
                    why = "out of order: item " + std::to_string(x - base) + " where " +
                          std::to_string(pos) + " was due";
                pos = x - base + 1;
            }
            if (why.starts_with("ended after") && errors)
                why.clear(); // failed chunks took some values: fewer than asked is fine
        }                    // the generator is dropped here with chunks in flight
        settle_value(id, why.empty(), "abandoned imap: " + why);
    }

    // ---------------------------------------------------------------- queue round trip

    asio::awaitable<void> queue_client() {
        rng r = make_rng();
        while (!stopping()) {
            coproc::pool& p = pick_pool(r);
            const i64 t = ++next_token;
            put_tokens.insert(t); // before the put: a worker may echo it at once
            co_await q_in.async_put(t);
            const int pad = r() % 10 == 0 ? 100'000 : r() % 3 == 0 ? 1000 : 0;
            const auto id = led.open(kind::queue_echo);
            try {
                const i64 v = co_await p.apply(queue_echo, q_in, q_out, pad);
                if (!put_tokens.count(v))
                    led.wrong(id, "queue_echo returned a token never put: " + std::to_string(v));
                else if (!returned_tokens.insert(v).second)
                    led.wrong(id, "queue_echo returned a token twice: " + std::to_string(v));
                else {
                    led.done(id);
                    forget_token(v);
                }
            } catch (...) {
                settle_error(id, {kind::queue_echo}, std::current_exception());
            }
        }
    }

    /// A token returned by its task and seen on the output queue is settled: forget it, so the
    /// bookkeeping stays small (a later copy of it is then "never put", still reported).
    void forget_token(i64 t) {
        if (returned_tokens.count(t) && seen_tokens.count(t)) {
            put_tokens.erase(t);
            returned_tokens.erase(t);
            seen_tokens.erase(t);
        }
    }

    /// Collects what queue_echo put, until the sentinel (-1).
    asio::awaitable<void> queue_consumer() {
        for (;;) {
            const qmsg m = co_await q_out.async_get();
            if (m.v < 0)
                break;
            const i64 t = m.v / 2;
            const bool pad_ok =
                (m.pad.empty() || m.pad.size() == 1000 || m.pad.size() == 100'000) &&
                std::ranges::all_of(m.pad, [&](char c) { return c == 'a' + t % 26; });
            if (m.v % 2 != 0 || !put_tokens.count(t) || !pad_ok)
                led.wrong_extra(kind::queue_echo,
                                "the output queue delivered a bad item " + std::to_string(m.v));
            else if (++seen_tokens[t] > 1)
                led.wrong_extra(kind::queue_echo,
                                "the output queue delivered token " + std::to_string(t) + " twice");
            else
                forget_token(t);
        }
    }

    // ---------------------------------------------------------------- process + pipe

    asio::awaitable<void> process_client() {
        rng r = make_rng();
        while (!stopping()) {
            co_await sleep_for(std::chrono::milliseconds(uniform(r, 300, 2000)));
            if (stopping())
                break;
            const auto id = led.open(kind::process_echo);
            try {
                const int n = static_cast<int>(uniform(r, 1, 40));
                auto [a, b] = coproc::pipe<std::string>();
                coproc::process child(echo_child, b, n);
                child.daemon = true; // on an error path, dropping it must not wait for it
                child.start();
                b.close();
                bool ok = true;
                for (int i = 0; i < n && ok; ++i) {
                    const auto size = static_cast<std::size_t>(
                        r() % 8 == 0 ? uniform(r, 64'000, 300'000) : uniform(r, 0, 200));
                    std::string s(size, static_cast<char>('A' + i % 26));
                    co_await a.async_send(s);
                    const std::string back = co_await a.async_recv();
                    ok = back == s + "!";
                }
                a.close();
                co_await child.async_join();
                settle_value(id, ok && child.exitcode() == 0,
                             ok ? "echo child exit code " +
                                      std::to_string(child.exitcode().value_or(-999))
                                : "the echo child answered wrongly");
            } catch (...) {
                led.wrong(id, "process echo threw " + describe(std::current_exception()));
            }
        }
    }

    // ---------------------------------------------------------------- a plain blocking thread

    void blocking_client() {
        rng r = make_rng();
        auto last_fault = steady::now();
        while (!stopping()) {
            struct cb_state {
                std::atomic<int> calls{0};
                std::optional<i64> value;
                std::exception_ptr error;
            };
            struct call {
                std::uint64_t id;
                kind k;
                i64 arg;
                std::shared_ptr<cb_state> cb;
                coproc::async_result<i64> res;
            };
            std::vector<call> calls;
            const int n = static_cast<int>(uniform(r, 1, 40));
            for (int i = 0; i < n && !stopping(); ++i) {
                coproc::pool& p = pick_pool(r);
                kind k = pick<kind>(r, {{kind::fast, 60},
                                        {kind::slow, 10},
                                        {kind::throw_std, 10},
                                        {kind::throw_custom, 5},
                                        {kind::throw_int, 5}});
                if (steady::now() - last_fault > 1500ms) {
                    k = pick<kind>(r, {{kind::abort_, 1}, {kind::exit_, 1}, {kind::segv, 1}});
                    last_fault = steady::now();
                }
                const auto id = led.open(k);
                i64 arg = static_cast<i64>(id);
                auto cb = std::make_shared<cb_state>();
                auto on_value = [cb](i64 v) {
                    cb->value = v;
                    ++cb->calls;
                };
                auto on_error = [cb](std::exception_ptr e) {
                    cb->error = e;
                    ++cb->calls;
                };
                auto submit = [&](auto fn, auto args) {
                    return p.apply_async(fn, args, on_value, on_error);
                };
                try {
                    switch (k) {
                    case kind::fast:
                        calls.push_back({id, k, arg, cb, submit(square_id, std::tuple{arg})});
                        break;
                    case kind::slow:
                        calls.push_back(
                            {id, k, arg, cb,
                             submit(sleep_id,
                                    std::tuple{arg, static_cast<int>(uniform(r, 1, 50))})});
                        break;
                    case kind::throw_std:
                        calls.push_back({id, k, arg, cb, submit(throw_std, std::tuple{arg})});
                        break;
                    case kind::throw_custom:
                        calls.push_back({id, k, arg, cb, submit(throw_custom, std::tuple{arg})});
                        break;
                    case kind::throw_int:
                        calls.push_back({id, k, arg, cb, submit(throw_int, std::tuple{arg})});
                        break;
                    case kind::abort_:
                        calls.push_back({id, k, arg, cb, submit(fault_abort, std::tuple{arg})});
                        break;
                    case kind::exit_:
                        arg = uniform(r, 1, 120);
                        calls.push_back({id, k, arg, cb, submit(fault_exit, std::tuple{arg})});
                        break;
                    default:
                        calls.push_back({id, k, arg, cb, submit(fault_segv, std::tuple{arg})});
                        break;
                    }
                } catch (...) {
                    led.wrong(id, "apply_async threw " + describe(std::current_exception()));
                }
            }
            // Now and then a map_async / starmap_async with callbacks.
            if (r() % 4 == 0) {
                coproc::pool& p = pick_pool(r);
                const i64 m = i64{1} << uniform(r, 3, 15);
                const bool star = r() % 2;
                const auto id = led.open(star ? kind::starmap_async : kind::map_async);
                auto cbs = std::make_shared<std::atomic<int>>(0);
                auto on_v = [cbs](std::vector<i64>) { ++*cbs; };
                auto on_e = [cbs](std::exception_ptr) { ++*cbs; };
                try {
                    std::optional<coproc::async_result<std::vector<i64>>> res;
                    std::vector<i64> want;
                    if (star) {
                        std::vector<std::tuple<i64, i64>> pairs;
                        for (i64 i = 0; i < m; ++i) {
                            pairs.emplace_back(i, i);
                            want.push_back(2 * i);
                        }
                        res.emplace(p.starmap_async(add, std::move(pairs), 0, on_v, on_e));
                    } else {
                        std::vector<i64> items;
                        for (i64 i = 0; i < m; ++i) {
                            items.push_back(i);
                            want.push_back(i * i);
                        }
                        res.emplace(p.map_async(square_or_throw, items, 0, on_v, on_e));
                    }
                    if (!res->wait_for(120s)) {
                        led.wrong(id, "map_async not ready after 120 s");
                    } else if (cbs->load() != 1) {
                        led.wrong(id, "map_async callbacks ran " + std::to_string(cbs->load()) +
                                          " times");
                    } else {
                        try {
                            settle_value(id, res->get() == want, "wrong map_async result");
                        } catch (...) {
                            settle_error(id, {kind::map_async}, std::current_exception());
                        }
                    }
                } catch (...) {
                    led.wrong(id, "map_async threw " + describe(std::current_exception()));
                }
            }
            for (auto& c : calls) {
                if (!c.res.wait_for(60s)) {
                    led.wrong(c.id, "apply_async not ready after 60 s");
                    continue;
                }
                if (c.cb->calls.load() != 1) {
                    led.wrong(c.id, "apply_async callbacks ran " +
                                        std::to_string(c.cb->calls.load()) + " times by ready()");
                    continue;
                }
                try {
                    const i64 v = c.res.get();
                    if (c.cb->error || c.cb->value != v)
                        led.wrong(c.id, "get() and the callback disagree");
                    else if (c.k == kind::fast)
                        settle_counted(c.id, v == c.arg * c.arg, "wrong square");
                    else if (c.k == kind::slow)
                        settle_counted(c.id, v == c.arg + 1, "wrong slow result");
                    else
                        led.wrong(c.id, "a throwing or faulting task returned");
                } catch (...) {
                    if (!c.cb->error || c.cb->value)
                        led.wrong(c.id, "get() threw but the error callback did not run");
                    else
                        settle_error(c.id, {c.k, c.arg}, std::current_exception());
                }
            }
        }
    }

    // ---------------------------------------------------------------- drain

    std::mutex phase_m;
    std::string phase = "running";
    void set_phase(std::string p) {
        std::lock_guard lk(phase_m);
        phase = std::move(p);
    }
    std::string get_phase() {
        std::lock_guard lk(phase_m);
        return phase;
    }

    asio::awaitable<void> run(std::thread& blocking) {
        spawn("killer", killer());
        spawn("faults", fault_client());
        for (int i = 0; i < 4; ++i)
            spawn("apply-" + std::to_string(i), apply_client());
        for (int i = 0; i < 2; ++i)
            spawn("map-" + std::to_string(i), map_client());
        for (int i = 0; i < 2; ++i)
            spawn("imap-" + std::to_string(i), imap_client());
        for (int i = 0; i < 2; ++i)
            spawn("queue-" + std::to_string(i), queue_client());
        spawn("process", process_client());
        asio::co_spawn(io, queue_consumer(), [this](std::exception_ptr e) {
            if (e) {
                ++client_errors;
                std::fprintf(stderr, "soak: the queue consumer escaped: %s\n", describe(e).c_str());
            }
            consumer_done = true;
        });

        co_await sleep_for(
            std::chrono::duration_cast<steady::duration>(std::chrono::duration<double>(duration)));
        stop = true;
        set_phase("waiting for the clients to finish their last calls");
        while (live > 0)
            co_await sleep_for(20ms);
        set_phase("waiting for the blocking client thread");
        while (!blocking_done)
            co_await sleep_for(20ms);
        blocking.join();

        set_phase("draining the output queue");
        qmsg sentinel{-1, {}}; // (a named value: g++ 12 mishandles temporaries in co_await)
        co_await q_out.async_put(sentinel);
        while (!consumer_done)
            co_await sleep_for(20ms);
        for (i64 t : returned_tokens)
            if (!seen_tokens.count(t))
                led.wrong_extra(kind::queue_echo,
                                "token " + std::to_string(t) + " was returned but never arrived");
        while (q_in.get_for(0ms)) { // tokens no task took
        }

        set_phase("pool A: close + async_join");
        pa.close();
        co_await pa.async_join();
        set_phase("pool B: close + join");
        pb.close();
        pb.join();
        set_phase("io_context running out of work after both pools joined");
    }
    std::atomic<bool> consumer_done{false};
    std::atomic<bool> blocking_done{false};
};

// ------------------------------------------------------------------ reporting

struct sample {
    double t = 0, rss = 0;
    std::size_t fds = 0;
    std::vector<proc_info> procs;
    std::size_t zombies() const {
        return static_cast<std::size_t>(
            std::count_if(procs.begin(), procs.end(), [](auto& p) { return p.state == 'Z'; }));
    }
};

sample take_sample(steady::time_point t0) {
    ::malloc_trim(0);
    sample s;
    s.t = seconds(steady::now() - t0);
    s.rss = rss_mib();
    s.fds = open_fds().size();
    s.procs = descendants();
    return s;
}

} // namespace

int main(int argc, char** argv) {
    if (argc < 2 || argc > 4) {
        std::fprintf(stderr, "usage: %s DURATION_S [SEED [INTERVAL_S]]\n", argv[0]);
        return 64;
    }
    const double duration = std::atof(argv[1]);
    const std::uint64_t seed =
        argc > 2 ? std::strtoull(argv[2], nullptr, 10) : std::random_device{}();
    const double interval = argc > 3 ? std::max(0.5, std::atof(argv[3])) : 10.0;
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    const rlimit no_core{0, 0}; // aborting and faulting workers dump no core
    ::setrlimit(RLIMIT_CORE, &no_core);

    void* m = ::mmap(nullptr, exec_slots * sizeof(std::uint32_t), PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        std::perror("mmap");
        return 70;
    }
    std::memset(m, 0, exec_slots * sizeof(std::uint32_t)); // all resident now: no RSS drift later
    g_exec = static_cast<std::atomic<std::uint32_t>*>(m);

    asio::io_context io;
    { // the reactor's own descriptors exist before the first count
        asio::steady_timer t(io, 1ms);
        t.async_wait([](std::error_code) {});
        io.run();
        io.restart();
    }
    // Queues handed to pool tasks are made before the pools.
    coproc::queue<i64> q_in;
    coproc::queue<qmsg> q_out;

    const auto t0 = steady::now();
    const sample first = take_sample(t0);
    const auto fds_before = open_fds();
    std::printf("soak: %.0f s, seed %llu, interval %.0f s; pool A 3 workers on the caller's loop, "
                "pool B 2 workers, maxtasksperchild 100; task_timeout 1500 ms\n",
                duration, static_cast<unsigned long long>(seed), interval);

    int status = 0;
    std::optional<coproc::pool> pa, pb;
    pa.emplace(io.get_executor(), coproc::pool_options{.processes = 3, .task_timeout = 1500ms});
    pb.emplace(
        coproc::pool_options{.processes = 2, .maxtasksperchild = 100, .task_timeout = 1500ms});

    soak s(io, *pa, *pb, q_in, q_out, seed, duration);
    s.t0 = t0;

    // The reporter: one line per interval; after the run, the hard deadline of the drain.
    std::atomic<bool> reporter_stop{false};
    std::mutex rm;
    std::condition_variable rcv;
    double rss_warm = -1, rss_max = first.rss;
    const double warm_at = std::min(60.0, std::max(5.0, duration / 5));
    std::set<pid_t> zombies_before;
    int stale_zombies = 0;
    auto line = [&](const sample& x) {
        const auto c = s.led.snapshot();
        char buf[512];
        std::snprintf(
            buf, sizeof buf,
            "[%6.0fs] done %llu failed %llu lost %llu kills %llu open %llu (oldest %.1fs) "
            "reexec %llu rss %.1f MiB fds %zu procs %zu zombies %zu",
            x.t, static_cast<unsigned long long>(c.done), static_cast<unsigned long long>(c.failed),
            static_cast<unsigned long long>(c.lost),
            static_cast<unsigned long long>(s.kills.load()),
            static_cast<unsigned long long>(c.open), c.oldest,
            static_cast<unsigned long long>(c.reexec), x.rss, x.fds, x.procs.size(), x.zombies());
        std::puts(buf);
    };
    std::thread reporter([&] {
        auto next = t0 + std::chrono::duration_cast<steady::duration>(
                             std::chrono::duration<double>(interval));
        const auto drain_limit = std::chrono::duration_cast<steady::duration>(
            std::chrono::duration<double>(duration + 180));
        while (!reporter_stop) {
            {
                std::unique_lock lk(rm);
                rcv.wait_until(lk, std::min(next, steady::now() + 500ms),
                               [&] { return reporter_stop.load(); });
            }
            if (reporter_stop)
                break;
            if (steady::now() - t0 > drain_limit) {
                std::printf("soak: HANG: still \"%s\" %.0f s after the end of the run\n",
                            s.get_phase().c_str(), seconds(steady::now() - t0) - duration);
                {
                    std::lock_guard lk(s.names_m);
                    for (const auto& n : s.live_names)
                        std::fprintf(stderr, "soak:   client still running: %s\n", n.c_str());
                }
                s.led.print_open(40);
                line(take_sample(t0));
                std::fflush(stdout);
                std::fflush(stderr);
                ::_exit(2);
            }
            if (steady::now() < next)
                continue;
            next += std::chrono::duration_cast<steady::duration>(
                std::chrono::duration<double>(interval));
            const sample x = take_sample(t0);
            rss_max = std::max(rss_max, x.rss);
            if (x.t >= warm_at && x.t <= warm_at + 60) // the floor, not a transient peak
                rss_warm = rss_warm < 0 ? x.rss : std::min(rss_warm, x.rss);
            std::set<pid_t> z;
            for (const auto& p : x.procs)
                if (p.state == 'Z') {
                    z.insert(p.pid);
                    if (zombies_before.count(p.pid)) {
                        ++stale_zombies;
                        std::fprintf(stderr,
                                     "soak: zombie %d (%s, parent %d) for over one interval\n",
                                     p.pid, p.comm.c_str(), p.ppid);
                    }
                }
            zombies_before = std::move(z);
            line(x);
        }
    });

    std::thread blocking([&] {
        try {
            s.blocking_client();
        } catch (const std::exception& e) {
            ++s.client_errors;
            std::fprintf(stderr, "soak: the blocking client escaped: %s\n", e.what());
        }
        s.blocking_done = true;
    });

    bool finished = false;
    asio::co_spawn(io, s.run(blocking), [&](std::exception_ptr e) {
        finished = true;
        if (e) {
            ++s.client_errors;
            std::fprintf(stderr, "soak: the main coroutine escaped: %s\n", describe(e).c_str());
        }
    });
    try {
        io.run();
    } catch (const std::exception& e) {
        std::fprintf(stderr, "soak: a handler on the main loop threw: %s\n", e.what());
        status = 1;
    }
    if (blocking.joinable())
        blocking.join();
    s.set_phase("destroying the pools");
    pa.reset();
    pb.reset();
    {
        std::lock_guard lk(rm);
        reporter_stop = true;
    }
    rcv.notify_all();
    reporter.join();

    // Counted after the pools are gone: everything must be back where it started.
    std::this_thread::sleep_for(100ms);
    const sample end = take_sample(t0);
    rss_max = std::max(rss_max, end.rss);
    if (rss_warm < 0)
        rss_warm = end.rss;
    const std::size_t never = s.led.close_all_open();
    const auto c = s.led.snapshot();
    line(end);
    s.led.print_by_kind();
    std::printf("soak: rss after warm-up (lowest sample in %.0f-%.0f s) %.1f MiB, growth since "
                "%.1f MiB (limit 50)\n",
                warm_at, warm_at + 60, rss_warm, end.rss - rss_warm);
    std::printf("soak: %.0f s, done %llu, failed %llu, lost %llu, kills %llu, rss start/end/max "
                "%.1f/%.1f/%.1f MiB, fds start/end %zu/%zu\n",
                duration, static_cast<unsigned long long>(c.done),
                static_cast<unsigned long long>(c.failed), static_cast<unsigned long long>(c.lost),
                static_cast<unsigned long long>(s.kills.load()), first.rss, end.rss, rss_max,
                first.fds, end.fds);

    std::vector<std::string> fails;
    if (!finished)
        fails.push_back("the main coroutine never finished");
    if (c.lost)
        fails.push_back(std::to_string(c.lost) + " lost or wrong (" + std::to_string(never) +
                        " never completed)");
    if (s.client_errors)
        fails.push_back(std::to_string(s.client_errors.load()) + " clients escaped");
    if (end.fds != first.fds) {
        fails.push_back("descriptors: " + std::to_string(first.fds) + " at start, " +
                        std::to_string(end.fds) + " at the end");
        for (int fd : open_fds())
            if (!std::binary_search(fds_before.begin(), fds_before.end(), fd))
                std::fprintf(stderr, "soak:   new fd %d -> %s\n", fd, fd_target(fd).c_str());
    }
    if (!end.procs.empty()) {
        fails.push_back(std::to_string(end.procs.size()) + " descendants left (" +
                        std::to_string(end.zombies()) + " zombies)");
        for (const auto& p : end.procs)
            std::fprintf(stderr, "soak:   left: %d (%s) state %c parent %d\n", p.pid,
                         p.comm.c_str(), p.state, p.ppid);
    }
    if (stale_zombies)
        fails.push_back(std::to_string(stale_zombies) + " zombies outlived an interval");
    if (end.rss - rss_warm > 50)
        fails.push_back("RSS grew " + std::to_string(end.rss - rss_warm) + " MiB after warm-up");
    if (fails.empty()) {
        std::printf("soak: OK\n");
    } else {
        status = 1;
        for (const auto& f : fails)
            std::printf("soak: FAIL: %s\n", f.c_str());
    }
    return status;
}
