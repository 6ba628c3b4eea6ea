// Python:
//   def f(l, i):
//       l.acquire()
//       try:
//           print('hello world', i)
//       finally:
//           l.release()
//
//   lock = Lock()
//   for num in range(10):
//       Process(target=f, args=(lock, num)).start()
#include <coproc/coproc.hpp>

#include <cstdio>
#include <vector>

void f(coproc::lock l, int i) {
    l.acquire(); // or: auto held = l.scoped(); which releases however the block is left
    std::printf("hello world %d\n", i);
    std::fflush(stdout); // written while the lock is held, even when stdout is a pipe
    l.release();
}

int main() {
    coproc::lock lock;
    std::vector<coproc::process> procs;
    for (int num = 0; num < 10; ++num)
        procs.emplace_back(f, lock, num);
    for (auto& p : procs)
        p.start();
    for (auto& p : procs)
        p.join();
    std::puts("05_process_lock: ok");
}
