// The state an mpi::session shares with its pools (private to libcoproc_mpi).
#pragma once

#include <coproc/detail/pool_core.hpp>
#include <coproc/mpi.hpp>
#include "progress.hpp"

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace coproc::detail {

struct mpi_state {
    std::unique_ptr<progress> p;    // reset last: MPI_Finalize
    MPI_Comm world = MPI_COMM_NULL; // a duplicate of MPI_COMM_WORLD
    std::vector<std::string> args;  // argv[1..], for the agents a pool spawns
    std::atomic<bool> pool_active{false};

    // Without mpirun: the agents the first pool spawned (an intercommunicator), kept for the
    // pools after it that ask for as many on the same hostfile.
    MPI_Comm spawned = MPI_COMM_NULL;
    std::size_t spawned_count = 0;
    std::string spawned_hostfile;

    /// The spawned agents for `count` ranks on `hostfile` (empty: this host), spawning them
    /// (and ending others) if need be.
    MPI_Comm spawn_agents(std::size_t count, const std::string& hostfile);
    /// Tells the spawned agents to exit and disconnects from them.
    void end_spawned() noexcept;

    /// Tells the agents to exit, then finalizes MPI.
    ~mpi_state();
};

/// A process other than rank 0: serve as a node agent for the caller, rank 0 of `comm` (the
/// world, or the intercommunicator to the process that spawned this one), until it says to
/// finalize; then finalize MPI and exit the process.
[[noreturn]] void run_agent(std::shared_ptr<mpi_state> state, MPI_Comm comm, bool spawned);

/// Rank 0: the core of an mpi_pool; fills `agents` with a line per agent.
std::shared_ptr<pool_core> make_mpi_core(std::shared_ptr<mpi_state> state, asio::any_io_executor ex,
                                         std::thread::id own_loop, const mpi_pool_options& options,
                                         std::vector<std::string>& agents);

} // namespace coproc::detail
