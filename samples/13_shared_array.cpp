// Python:
//   def fill(start, stop):                  # arr and done come from the pool's initializer
//       for i in range(start, stop):
//           arr[i] = i * i
//       with done.get_lock():
//           done.value += 1
//
//   arr, done = Array('q', 1000), Value('i', 0)
//   with Pool(4, initializer=init, initargs=(arr, done)) as p:
//       p.starmap(fill, [(0, 250), (250, 500), (500, 750), (750, 1000)])
//   print(sum(arr), done.value)
//
// coproc passes the shared array and value to the tasks as plain arguments (they were made
// before the pool, so its workers share their memory); the workers fill the array in place.
#include <coproc/coproc.hpp>

#include <cstdio>
#include <numeric>
#include <tuple>
#include <vector>

void fill(coproc::array<long long> arr, coproc::value<int> done, long long start, long long stop) {
    for (long long i = start; i < stop; ++i)
        arr[static_cast<std::size_t>(i)] = i * i;
    auto held = done.get_lock().scoped();
    done.store(done.load() + 1);
}

int main() {
    coproc::array<long long> arr(1000); // zero-filled, in shared memory
    coproc::value<int> done(0);
    coproc::pool pool(4); // after arr and done: its workers share them
    std::vector<std::tuple<coproc::array<long long>, coproc::value<int>, long long, long long>>
        parts;
    for (long long start = 0; start < 1000; start += 250)
        parts.emplace_back(arr, done, start, start + 250);
    pool.starmap_async(fill, parts).get();
    const auto span = arr.span();
    const long long sum = std::accumulate(span.begin(), span.end(), 0LL);
    std::printf("sum of squares below 1000: %lld\n", sum);
    std::printf("chunks done: %d\n", done.load());
    const bool ok = sum == 332'833'500 && done.load() == 4;
    if (ok)
        std::puts("13_shared_array: ok");
    return ok ? 0 : 1;
}
