// pool: the public class around pool_core, and the event-loop thread a pool may own.
#include <coproc/pool.hpp>

#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>

#include <cstdio>
#include <string>
#include <thread>

namespace coproc {

namespace detail {

void pool_core::check_blocking(const char* what) const {
    if (on_loop_thread())
        throw coproc::error(std::string(what) +
                            " would deadlock: it was called on the thread that runs the pool's "
                            "event loop; co_await the async_ form instead");
}

struct own_loop {
    asio::io_context ctx{1};
    asio::executor_work_guard<asio::io_context::executor_type> guard{ctx.get_executor()};
    std::thread thread{[this] { run(); }};

    void run() noexcept {
        for (;;) {
            try {
                ctx.run();
                return;
            } catch (const std::exception& e) {
                std::fprintf(stderr, "coproc: a handler on the pool's loop threw: %s\n", e.what());
            } catch (...) {
                std::fprintf(stderr, "coproc: a handler on the pool's loop threw\n");
            }
        }
    }

    ~own_loop() {
        guard.reset();
        ctx.stop();
        thread.join();
        // Handlers posted but not run yet (e.g. the callbacks of an empty map_async) run here,
        // so no result is left unfinished.
        try {
            ctx.restart();
            ctx.poll();
        } catch (...) {
        }
    }
};

} // namespace detail

pool::pool(std::size_t processes) : pool(pool_options{.processes = processes}) {}

pool::pool(pool_options options) : loop_(std::make_unique<detail::own_loop>()) {
    core_ = detail::pool_core::create(loop_->ctx.get_executor(), options, loop_->thread.get_id());
}

pool::pool(asio::any_io_executor ex, pool_options options)
    : core_(detail::pool_core::create(std::move(ex), options)) {}

pool::~pool() {
    core_->shutdown();
    loop_.reset();
}

void pool::close() { core_->close(); }
void pool::terminate() { core_->terminate(); }
void pool::join() { core_->join(); }
asio::awaitable<void> pool::async_join() { return core_->async_join(); }
std::size_t pool::size() const noexcept { return core_->size(); }
std::vector<pid_t> pool::pids() const { return core_->pids(); }
void pool::core_check_open() const { core_->check_open(); }

} // namespace coproc
