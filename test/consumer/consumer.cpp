// The README's first example, built by check.sh against coproc as a subproject and as installed.
#include <coproc/coproc.hpp>

#include <chrono>
#include <cstdio>
#include <thread>
#include <tuple>
#include <vector>

int add(int a, int b) { return a + b; }

int main() {
    coproc::pool pool(2);
    std::vector<std::tuple<int, int>> pairs{{1, 2}, {3, 4}, {5, 6}};
    auto results = pool.starmap_async(add, pairs);
    while (!results.ready())
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    const auto r = results.get();
    std::printf("coproc %s: %d %d %d\n", COPROC_VERSION_STRING, r[0], r[1], r[2]);
    return r == std::vector<int>{3, 7, 11} ? 0 : 1;
}
