// mpi::session and mpi_pool's constructors (see include/coproc/mpi.hpp).
#include <coproc/mpi.hpp>
#include "mpi_state.hpp"

#include <cstdio>

namespace coproc {

namespace detail {

mpi_state::~mpi_state() {
    if (!p)
        return;
    try {
        if (world != MPI_COMM_NULL) {
            if (p->world_rank() == 0)
                for (int r = 1; r < p->world_size(); ++r)
                    p->send(world, r, tag_finalize, {});
            p->flush();
            p->call([&] { MPI_Comm_free(&world); });
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "coproc: ending the MPI session: %s\n", e.what());
    }
    p.reset();
}

} // namespace detail

namespace mpi {

session::session(int& argc, char**& argv) {
    auto st = std::make_shared<detail::mpi_state>();
    st->p = std::make_unique<detail::progress>(argc, argv);
    for (int i = 1; i < argc; ++i)
        st->args.emplace_back(argv[i]);
    MPI_Comm parent = MPI_COMM_NULL;
    st->p->call([&] {
        detail::check_mpi(MPI_Comm_get_parent(&parent), "MPI_Comm_get_parent");
        if (parent == MPI_COMM_NULL)
            detail::check_mpi(MPI_Comm_dup(MPI_COMM_WORLD, &st->world), "MPI_Comm_dup");
        else
            MPI_Comm_set_errhandler(parent, MPI_ERRORS_RETURN);
    });
    if (parent != MPI_COMM_NULL)
        detail::run_agent(std::move(st), parent, true);
    if (st->p->world_rank() != 0) {
        MPI_Comm world = st->world;
        detail::run_agent(std::move(st), world, false);
    }
    state_ = std::move(st);
}

session::~session() = default;

int session::rank() const noexcept { return state_->p->world_rank(); }
int session::size() const noexcept { return state_->p->world_size(); }

} // namespace mpi

mpi_pool::mpi_pool(mpi::session& s, mpi_pool_options options)
    : mpi_pool(std::make_shared<std::vector<std::string>>(), s, std::nullopt, options) {}

mpi_pool::mpi_pool(mpi::session& s, asio::any_io_executor ex, mpi_pool_options options)
    : mpi_pool(std::make_shared<std::vector<std::string>>(), s, std::move(ex), options) {}

mpi_pool::mpi_pool(std::shared_ptr<std::vector<std::string>> agents, mpi::session& s,
                   std::optional<asio::any_io_executor> ex, const mpi_pool_options& options)
    : pool(
          [&](asio::any_io_executor e, std::thread::id own_loop) {
              return detail::make_mpi_core(s.state_, std::move(e), own_loop, options, *agents);
          },
          std::move(ex)),
      agents_(std::move(*agents)) {}

} // namespace coproc
