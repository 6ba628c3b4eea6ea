// coproc/mpi.hpp — mpi_pool, the same pool across hosts on MPI (built with the Meson option
// `mpi`; link libcoproc_mpi, dependency 'coproc-mpi').
//
//   int main(int argc, char** argv) {
//       coproc::mpi::session mpi(argc, argv);      // ranks other than 0 serve tasks here, then
//       exit coproc::mpi_pool pool(mpi, {.processes_per_rank = 2}); auto squares =
//       pool.map_async(square, xs).get();  // every method of coproc::pool
//   }
//   // mpirun -np 3 ./app       rank 0 is the caller; ranks 1 and 2 each run a local fork pool
//   // ./app                    no mpirun: the pool spawns its agents (MPI_Comm_spawn)
//
// Every rank other than 0 is a node agent: it runs a local coproc::pool of forked workers and
// runs the tasks rank 0 sends it there, so a task that crashes kills a forked worker and fails
// with worker_lost, as in a local pool, and the MPI job goes on. Tasks travel in the local
// pool's own frames; every rank must run the same executable, which the pool checks when it
// starts (a build id). All MPI calls run on one progress thread per process; completions are
// posted to the pool's executor. MPI itself survives no death of a whole rank: if an agent
// process dies (killed, out of memory), mpirun ends the whole job.
//
// mpi.h is not included here: a program that uses mpi_pool needs MPI only to link.
#pragma once

#include <coproc/pool.hpp>

#include <asio/any_io_executor.hpp>

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace coproc {

class mpi_pool;

namespace detail {
struct mpi_state;
} // namespace detail

namespace mpi {

/// The process's MPI session: MPI_Init_thread (MPI_THREAD_MULTIPLE) on a progress thread that
/// makes every MPI call of the process, MPI_Finalize when the session and every mpi_pool made
/// from it are gone. Make it first thing in main(), before any thread or pool: in every process
/// other than the caller (world rank 0) the constructor does not return: it serves tasks until
/// rank 0's session ends, then exits the process (status 0, or 1 after an error it printed).
class session {
  public:
    session(int& argc, char**& argv);
    ~session();
    session(const session&) = delete;
    session& operator=(const session&) = delete;

    /// This process's rank in MPI_COMM_WORLD (0: the caller, the only one that returns here).
    int rank() const noexcept;
    /// The number of ranks in MPI_COMM_WORLD (1 when started without mpirun).
    int size() const noexcept;

  private:
    friend class coproc::mpi_pool;
    std::shared_ptr<detail::mpi_state> state_;
};

} // namespace mpi

struct mpi_pool_options {
    /// Worker processes each agent rank forks; 0: the cores of the agent's node.
    std::size_t processes_per_rank = 0;
    /// As pool_options: run once in each worker when it starts.
    void (*initializer)() = nullptr;
    /// As pool_options: replace a worker after this many tasks (0: never).
    std::size_t maxtasksperchild = 0;
    /// As pool_options: fail a task that runs longer (0: no limit).
    std::chrono::milliseconds task_timeout{0};
    /// Only without mpirun (a world of one rank): how many agent ranks to spawn (at least 1).
    std::size_t spawn = 1;
    /// Only without mpirun: an Open MPI hostfile the spawned agents are placed by (MPI_Info
    /// key "hostfile"); empty: the local host.
    std::string hostfile = {};
};

/// A pool whose workers are the forked workers of the agent ranks of an MPI job. It offers
/// every method of coproc::pool (it is one), with the same results and errors; `size()` is the
/// number of workers over all agents, chunks of map and imap go to the agent with the most free
/// capacity, and `pids()` is empty (the workers live on other hosts). One mpi_pool at a time
/// per session; pools may follow one another. Without mpirun the first pool spawns its agents,
/// which serve the later pools that ask for as many on the same hostfile (others are spawned
/// in their place) and end with the session.
class mpi_pool : public pool {
  public:
    /// Starts the agents' local pools; the pool runs its own event-loop thread. Throws
    /// coproc::error if an agent runs a different build of the program, or could not start.
    explicit mpi_pool(mpi::session& s, mpi_pool_options options = {});
    /// As above; completions run on `ex` (the caller's io_context), which the pool keeps busy
    /// until its agents have stopped after close() or terminate().
    mpi_pool(mpi::session& s, asio::any_io_executor ex, mpi_pool_options options = {});

    /// Per agent, in rank order: "rank N on HOST: K workers".
    std::vector<std::string> agents() const { return agents_; }

  private:
    // `agents` is filled while the base pool is made, then moved into agents_.
    mpi_pool(std::shared_ptr<std::vector<std::string>> agents, mpi::session& s,
             std::optional<asio::any_io_executor> ex, const mpi_pool_options& options);
    std::vector<std::string> agents_;
};

} // namespace coproc
