// Python (the seed):
//   with Pool(4) as pool:
//       results = pool.starmap_async(add, [(1, 2), (3, 4), (5, 6)])
//       while not results.ready():
//           print("waiting"); time.sleep(0.1)
//       for r in results.get(): print(r)
#include <coproc/coproc.hpp>

#include <chrono>
#include <cstdio>
#include <thread>
#include <tuple>
#include <vector>

using namespace std::chrono_literals;

int add(int a, int b) {
    std::this_thread::sleep_for(150ms); // some work, so there is something to wait for
    return a + b;
}

int main() {
    coproc::pool pool(4);
    std::vector<std::tuple<int, int>> pairs{{1, 2}, {3, 4}, {5, 6}};
    auto results = pool.starmap_async(add, pairs);
    while (!results.ready()) {
        std::puts("waiting");
        std::this_thread::sleep_for(100ms);
    }
    for (int r : results.get())
        std::printf("%d\n", r);
    std::puts("03_starmap_async: ok");
}
