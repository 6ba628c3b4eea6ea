// Another program than mpi_pool_test: as an agent of mpi_pool_test's rank 0 (an MPMD mpirun
// line), it must be refused with a clear error, not sent tasks it cannot run.
#include <coproc/mpi.hpp>

int main(int argc, char** argv) {
    coproc::mpi::session session(argc, argv); // an agent: serves, then exits
    return 0;
}
