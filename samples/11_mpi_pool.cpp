// Python (mpi4py.futures):
//   with MPIPoolExecutor() as ex:
//       print(list(ex.map(f, [1, 2, 3, 4, 5])))
// Run:  mpirun -np 3 ./11_mpi_pool     rank 0 runs main(); ranks 1 and 2 each fork 2 workers
//       ./11_mpi_pool                  without mpirun: the pool spawns one agent rank itself
#include <coproc/mpi.hpp>

#include <cstdio>
#include <cstdlib>
#include <vector>

int f(int x) { return x * x; }
int crash(int) { std::abort(); }

int main(int argc, char** argv) {
    coproc::mpi::session mpi(argc, argv); // ranks other than 0 serve tasks here, then exit
    coproc::mpi_pool pool(mpi, {.processes_per_rank = 2});
    for (const auto& agent : pool.agents())
        std::printf("agent %s\n", agent.c_str());

    std::vector<int> squares = pool.map_async(f, std::vector{1, 2, 3, 4, 5}).get();
    std::printf("[%d, %d, %d, %d, %d]\n", squares[0], squares[1], squares[2], squares[3],
                squares[4]);

    // A task that crashes takes down one forked worker on its rank, not the MPI job.
    try {
        pool.apply_async(crash, {0}).get();
    } catch (const coproc::worker_lost& e) {
        std::printf("worker_lost: %s\n", e.what());
    }
    std::printf("still serving: %d\n", pool.apply_async(f, {7}).get());
    std::puts("11_mpi_pool: ok");
}
