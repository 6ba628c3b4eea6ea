// Python:
//   def f(x): return x * x
//   with Pool(5) as p:
//       print(p.map(f, [1, 2, 3]))
#include <coproc/coproc.hpp>

#include <cstdio>
#include <vector>

int f(int x) { return x * x; }

int main() {
    coproc::pool p(5);
    std::vector<int> squares = p.map_async(f, std::vector{1, 2, 3}).get();
    std::printf("[%d, %d, %d]\n", squares[0], squares[1], squares[2]);
    std::puts("01_pool_map: ok");
}
