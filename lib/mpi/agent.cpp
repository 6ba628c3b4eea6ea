// A node agent: a rank other than 0 that runs rank 0's tasks in a local pool of forked workers.
//
// The progress thread hands task frames straight to the local pool and terminates it at once
// when told to; starting and stopping the pool, which block, happen on the agent's main thread.
// A reply leaves when the local pool delivers the outcome, from the pool's loop thread.
#include <coproc/detail/wire.hpp>
#include <coproc/error.hpp>
#include "code_address.hpp"
#include "mpi_state.hpp"
#include "protocol.hpp"

#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>

#include <cstdio>
#include <cstdlib>
#include <deque>
#include <future>
#include <unistd.h>

namespace coproc::detail {

namespace {

constexpr int caller = 0; // rank 0 of the world, or of the spawner's side of the intercomm

std::string host_name() {
    char name[MPI_MAX_PROCESSOR_NAME] = {};
    if (::gethostname(name, sizeof name - 1) != 0)
        return "?";
    return name;
}

// The local pool's event loop, running once the constructor returns (so that the pool forks
// its fork server while no thread is starting up).
struct local_loop {
    asio::io_context ctx{1};
    asio::executor_work_guard<asio::io_context::executor_type> guard{ctx.get_executor()};
    std::thread thread{[this] { ctx.run(); }};

    local_loop() {
        std::promise<void> running;
        asio::post(ctx, [&] { running.set_value(); });
        running.get_future().wait();
    }
    ~local_loop() {
        guard.reset();
        ctx.stop();
        thread.join();
    }
};

// Sends the outcome of one task back to the caller, under the caller's task id.
class reply_sink final : public task_sink {
  public:
    reply_sink(progress& p, MPI_Comm comm, std::uint64_t id) : p_(p), comm_(comm), id_(id) {}

    void on_result(const job&, std::span<const char> payload) override {
        std::vector<char> out;
        out.reserve(sizeof(frame_header) + payload.size());
        const auto at = begin_frame(out, frame_kind::result, id_, 0);
        out.insert(out.end(), payload.begin(), payload.end());
        end_frame(out, at, 0);
        p_.send(comm_, caller, tag_reply, std::move(out));
    }
    void on_error(const job&, std::exception_ptr e) override {
        p_.send(comm_, caller, tag_reply, error_frame(id_, e));
    }

  private:
    progress& p_;
    MPI_Comm comm_;
    std::uint64_t id_;
};

class agent {
  public:
    agent(progress& p, MPI_Comm comm) : p_(p), comm_(comm) {}

    // On the progress thread.
    void on_message(mpi_message& m) {
        if (m.tag == tag_task)
            return run_task(m.bytes);
        if (m.tag == tag_stop && !m.bytes.empty() && m.bytes[0] == 1) {
            std::lock_guard lk(mu_);
            if (core_)
                core_->terminate(); // at once, even while the main thread waits for a close
        }
        {
            std::lock_guard lk(mu_);
            control_.push_back(std::move(m));
        }
        cv_.notify_one();
    }

    // On the main thread, until rank 0 says to finalize; false after an error.
    bool serve() {
        bool ok = true;
        for (;;) {
            mpi_message m;
            {
                std::unique_lock lk(mu_);
                cv_.wait(lk, [&] { return !control_.empty(); });
                m = std::move(control_.front());
                control_.pop_front();
            }
            try {
                if (m.tag == tag_start)
                    start(m.bytes);
                else if (m.tag == tag_stop)
                    stop(!m.bytes.empty() && m.bytes[0] == 1);
                else if (m.tag == tag_finalize)
                    break;
            } catch (const std::exception& e) {
                std::fprintf(stderr, "coproc: mpi agent: %s\n", e.what());
                ok = false;
            }
        }
        end_pool(true); // rank 0 ended without stopping its pool
        return ok;
    }

  private:
    void run_task(std::span<const char> message) {
        const std::uint64_t id = task_message_id(message);
        std::shared_ptr<pool_core> core;
        {
            std::lock_guard lk(mu_);
            core = core_;
        }
        try {
            if (!core)
                throw pool_closed("the agent's pool is not running");
            auto j = new_job();
            j->frame = task_frame(message);
            j->sink = std::make_shared<reply_sink>(p_, comm_, id);
            j->name = task_placeholder; // rank 0 names the task in messages
            core->submit(std::move(j));
        } catch (...) {
            p_.send(comm_, caller, tag_reply, error_frame(id, std::current_exception()));
        }
    }

    void start(std::span<const char> bytes) {
        end_pool(true); // one rank 0 gave up waiting for (it answers only this start)
        start_reply r;
        r.host = host_name();
        try {
            const auto req = decode_start(bytes);
            if (req.build_id != build_id())
                throw error("rank " + std::to_string(p_.world_rank()) + " on " + r.host +
                            " runs a different build of the program (build id " + build_id() +
                            ", rank 0 has " + req.build_id +
                            "): every rank must run the same executable");
            auto opts = req.options;
            opts.close_fds = true; // the workers keep none of MPI's descriptors
            auto loop = std::make_unique<local_loop>();
            auto core = pool_core::create(loop->ctx.get_executor(), opts, loop->thread.get_id());
            r.workers = core->size();
            r.ok = true;
            std::lock_guard lk(mu_);
            loop_ = std::move(loop);
            core_ = std::move(core);
        } catch (const std::exception& e) {
            r.error = e.what();
        }
        p_.send(comm_, caller, tag_started, encode(r));
    }

    void stop(bool terminate) {
        if (end_pool(terminate))
            p_.send(comm_, caller, tag_stopped, {});
    }

    // Closes (or terminates) the local pool and waits for its workers; false if none ran.
    bool end_pool(bool terminate) {
        std::shared_ptr<pool_core> core;
        {
            std::lock_guard lk(mu_);
            core = core_;
        }
        if (core) {
            if (terminate)
                core->terminate();
            else
                core->close();
            core->join();
            core->shutdown();
            std::lock_guard lk(mu_);
            core_.reset();
        }
        loop_.reset();
        return core != nullptr;
    }

    progress& p_;
    MPI_Comm comm_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::deque<mpi_message> control_;
    std::unique_ptr<local_loop> loop_; // the main thread's
    std::shared_ptr<pool_core> core_;
};

} // namespace

void run_agent(std::shared_ptr<mpi_state> state, MPI_Comm comm, bool spawned) {
    bool ok = false;
    {
        agent a(*state->p, comm);
        state->p->listen(comm, [&a](mpi_message& m) { a.on_message(m); });
        ok = a.serve();
        state->p->unlisten(comm);
        state->p->flush();
    }
    if (spawned)
        state->p->call([&] { MPI_Comm_disconnect(&comm); });
    state.reset(); // MPI_Finalize
    std::exit(ok ? 0 : 1);
}

} // namespace coproc::detail
