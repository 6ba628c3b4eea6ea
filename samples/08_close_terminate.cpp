// Python:
//   pool.close(); pool.join()       # let queued work finish, then the workers exit
//   pool.terminate(); pool.join()   # stop now; unfinished tasks are abandoned
#include <coproc/coproc.hpp>

#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

int slow_double(int x) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    return 2 * x;
}

int main() {
    {
        coproc::pool pool(2);
        auto r = pool.map_async(slow_double, std::vector{1, 2, 3, 4});
        pool.close(); // no new tasks, but the four above still run
        pool.join();  // waits until every worker has exited
        std::printf("close+join: %zu results, last %d\n", r.get().size(), r.get().back());
    }
    {
        coproc::pool pool(2);
        auto r = pool.map_async(slow_double, std::vector<int>(100, 1), 1);
        pool.terminate(); // kill the workers now
        pool.join();
        try {
            r.get();
        } catch (const coproc::pool_closed& e) {
            std::printf("terminate: %s\n", e.what());
        }
    }
    std::puts("08_close_terminate: ok");
}
