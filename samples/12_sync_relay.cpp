// Python:
//   def runner(i, start, batons, finish):
//       start.wait()                        # every runner at the line (a Barrier)
//       batons[i].wait()                    # my turn (an Event)
//       print(f'runner {i} runs')
//       (batons[i + 1] if i + 1 < len(batons) else finish).set()
//
//   start, batons, finish = Barrier(5), [Event() for _ in range(4)], Event()
//   procs = [Process(target=runner, args=(i, start, batons, finish)) for i in range(4)]
//   for p in procs: p.start()
//   start.wait(); batons[0].set(); finish.wait(timeout=10)
#include <coproc/coproc.hpp>

#include <chrono>
#include <cstdio>
#include <vector>

using namespace std::chrono_literals;

constexpr int runners = 4;

void runner(int i, coproc::barrier start, std::vector<coproc::event> batons, coproc::event finish) {
    start.wait();
    batons[i].wait();
    std::printf("runner %d runs\n", i);
    std::fflush(stdout); // before the next runner may print
    (i + 1 < runners ? batons[i + 1] : finish).set();
}

int main() {
    coproc::barrier start(runners + 1); // the runners and this process
    std::vector<coproc::event> batons(runners);
    coproc::event finish;
    std::vector<coproc::process> procs;
    for (int i = 0; i < runners; ++i)
        procs.emplace_back(runner, i, start, batons, finish);
    for (auto& p : procs)
        p.start();
    start.wait();
    std::puts("all at the line");
    std::fflush(stdout);
    batons[0].set();
    const bool finished = finish.wait_for(10s);
    for (auto& p : procs)
        p.join();
    std::puts(finished ? "relay finished" : "relay timed out");
    if (finished)
        std::puts("12_sync_relay: ok");
    return finished ? 0 : 1;
}
