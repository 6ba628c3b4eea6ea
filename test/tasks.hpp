// Task functions shared by the pool tests: plain functions over ints, strings, vectors and a
// user type, and tasks that sleep, throw or kill their worker.
#pragma once

#include <cereal/cereal.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <numeric>
#include <stdexcept>
#include <string>
#include <sys/resource.h>
#include <thread>
#include <unistd.h>
#include <utility>
#include <vector>

namespace tasks {

/// A user type that crosses the process boundary through its cereal `serialize` member.
struct point {
    int x = 0;
    int y = 0;
    std::string label;
    template <class Archive> void serialize(Archive& ar) { ar(x, y, label); }
    bool operator==(const point&) const = default;
};

inline int square(int x) { return x * x; }
inline int add(int a, int b) { return a + b; }
inline std::string shout(std::string s) {
    std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::toupper(c); });
    return s + "!";
}
inline std::string concat(const std::string& a, std::string b) { return a + "+" + b; }
inline std::vector<int> reversed(std::vector<int> v) {
    std::reverse(v.begin(), v.end());
    return v;
}
inline int sum(const std::vector<int>& v) {
    int s = 0;
    for (int x : v)
        s += x;
    return s;
}
inline point flip(point p) { return {p.y, p.x, p.label + "'"}; }
inline point move_by(point p, int dx) {
    p.x += dx;
    return p;
}

/// The number of tasks this worker ran before this one (`tag` is ignored: it tells callers'
/// tasks apart). In a one-worker pool, the order in which tasks ran.
inline long ticket(int /*tag*/) {
    static long next = 0;
    return next++;
}

/// Sleeps `ms` milliseconds and returns it.
inline int sleep_ms(int ms) {
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    return ms;
}
/// Returns x after a delay that is longest for the first items (so they finish last).
inline int late_first(int x) {
    std::this_thread::sleep_for(std::chrono::milliseconds(x < 4 ? 40 - 10 * x : 0));
    return x;
}
/// The pid of the worker running it.
inline int worker_pid() { return static_cast<int>(::getpid()); }
/// (x * x, pid of the worker).
inline std::pair<int, int> square_and_pid(int x) { return {x * x, static_cast<int>(::getpid())}; }

inline int g_effect = 0;
/// A void task; throws for negative input so a test can see it ran.
inline void check_positive(int x) {
    if (x < 0)
        throw std::invalid_argument("negative: " + std::to_string(x));
    g_effect = x;
}
inline void nothing() {}

/// Stops core dumps of aborting workers (slow, and noise on the machine).
inline void no_core_dumps() {
    const rlimit none{0, 0};
    ::setrlimit(RLIMIT_CORE, &none);
}

/// 0, 1, ..., n - 1.
inline std::vector<int> iota(int n) {
    std::vector<int> v(static_cast<std::size_t>(n));
    std::iota(v.begin(), v.end(), 0);
    return v;
}

/// 0, 1, 4, ..., (n - 1)^2.
inline std::vector<int> squares(int n) {
    std::vector<int> v;
    for (int i = 0; i < n; ++i)
        v.push_back(i * i);
    return v;
}

} // namespace tasks
