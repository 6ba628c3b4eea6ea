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
    std::unique_ptr<progress> p; // reset last: MPI_Finalize
    MPI_Comm world = MPI_COMM_NULL; // a duplicate of MPI_COMM_WORLD
    std::vector<std::string> args;  // argv[1..], for the agents a pool spawns
    std::atomic<bool> pool_active{false};

    /// Tells the world's agents to exit, then finalizes MPI.
    ~mpi_state();
};

/// A process other than rank 0: serve as a node agent for the caller, rank 0 of `comm` (the
/// world, or the intercommunicator to the process that spawned this one), until it says to
/// finalize; then finalize MPI and exit the process.
[[noreturn]] void run_agent(std::shared_ptr<mpi_state> state, MPI_Comm comm, bool spawned);

/// Rank 0: the core of an mpi_pool; fills `agents` with a line per agent.
std::shared_ptr<pool_core> make_mpi_core(std::shared_ptr<mpi_state> state,
                                         asio::any_io_executor ex, std::thread::id own_loop,
                                         const mpi_pool_options& options,
                                         std::vector<std::string>& agents);

} // namespace coproc::detail
