// mpi::session and mpi_pool's constructors (see include/coproc/mpi.hpp).
#include <coproc/error.hpp>
#include <coproc/mpi.hpp>
#include "mpi_state.hpp"

#include <cstdio>
#include <unistd.h>

namespace coproc {

namespace detail {

namespace {

std::string self_exe() {
    char path[4096];
    const auto n = ::readlink("/proc/self/exe", path, sizeof path - 1);
    if (n <= 0)
        throw error("mpi_pool: cannot find this program's executable to spawn agents");
    return std::string(path, static_cast<std::size_t>(n));
}

} // namespace

// Spawning again and again is what Open MPI 4.1 does worst (a spawn after a disconnect now and
// then never completes): the agents stay for the next pool.
MPI_Comm mpi_state::spawn_agents(std::size_t count, const std::string& hostfile) {
    if (spawned != MPI_COMM_NULL && spawned_count == count && spawned_hostfile == hostfile)
        return spawned;
    end_spawned();
    const std::string exe = self_exe();
    std::vector<char*> argv;
    for (auto& a : args)
        argv.push_back(a.data());
    argv.push_back(nullptr);
    p->call([&] {
        MPI_Info info;
        check_mpi(MPI_Info_create(&info), "MPI_Info_create");
        if (!hostfile.empty())
            MPI_Info_set(info, "hostfile", hostfile.c_str());
        std::vector<int> errors(count);
        const int rc = MPI_Comm_spawn(exe.c_str(), argv.data(), static_cast<int>(count), info, 0,
                                      MPI_COMM_SELF, &spawned, errors.data());
        MPI_Info_free(&info);
        check_mpi(rc, "MPI_Comm_spawn of the mpi_pool's agents (more agents than free slots? give "
                      "mpi_pool_options::hostfile, or allow oversubscription with "
                      "OMPI_MCA_rmaps_base_oversubscribe=1)");
        MPI_Comm_set_errhandler(spawned, MPI_ERRORS_RETURN);
    });
    spawned_count = count;
    spawned_hostfile = hostfile;
    return spawned;
}

void mpi_state::end_spawned() noexcept {
    if (spawned == MPI_COMM_NULL)
        return;
    try {
        for (std::size_t r = 0; r < spawned_count; ++r)
            p->send(spawned, static_cast<int>(r), tag_finalize, {});
        p->flush();
        p->call([&] { MPI_Comm_disconnect(&spawned); });
    } catch (const std::exception& e) {
        std::fprintf(stderr, "coproc: ending the spawned mpi_pool agents: %s\n", e.what());
    }
    spawned = MPI_COMM_NULL;
}

mpi_state::~mpi_state() {
    if (!p)
        return;
    end_spawned();
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
