// The caller's side of an mpi_pool (rank 0): a pool core whose workers are the agents' local
// pools. Jobs are queued here and sent to the agent with the most free capacity (up to twice
// its workers in flight, so its workers do not idle while replies travel); replies arrive on
// the progress thread and are delivered on the pool's executor.
#include <coproc/detail/handler_slot.hpp>
#include <coproc/detail/wire.hpp>
#include <coproc/error.hpp>
#include "code_address.hpp"
#include "mpi_state.hpp"
#include "protocol.hpp"

#include <asio/execution/outstanding_work.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/prefer.hpp>
#include <asio/use_awaitable.hpp>

#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <mutex>
#include <unistd.h>
#include <unordered_map>

namespace coproc::detail {

namespace {

// How long the caller waits for its agents to start, or to stop when the pool is destroyed.
constexpr std::chrono::seconds agent_wait{60};

class mpi_core final : public pool_core, public std::enable_shared_from_this<mpi_core> {
  public:
    mpi_core(std::shared_ptr<mpi_state> st, asio::any_io_executor ex, std::thread::id own_loop)
        : st_(std::move(st)), p_(*st_->p), ex_(std::move(ex)), own_loop_(own_loop),
          work_(asio::prefer(ex_, asio::execution::outstanding_work.tracked)) {}

    void start(const mpi_pool_options& o, std::vector<std::string>& lines);

    void submit(job_ptr j) override {
        std::vector<job_ptr> v;
        v.push_back(std::move(j));
        submit(std::move(v));
    }
    void submit(std::vector<job_ptr> jobs) override {
        auto q = encode_jobs(jobs);
        std::lock_guard lk(mu_);
        check_open_locked();
        queue_locked(q);
    }
    void submit_more(std::vector<job_ptr> jobs) override {
        auto q = encode_jobs(jobs);
        std::lock_guard lk(mu_);
        if (state_ == run_state::terminated)
            throw pool_closed("the pool was terminated before the task finished");
        queue_locked(q);
    }
    void hold() noexcept override {
        std::lock_guard lk(mu_);
        ++holds_;
    }
    void release() noexcept override {
        std::lock_guard lk(mu_);
        --holds_;
        pump_locked();
    }
    void post(std::function<void()> fn) override { asio::post(ex_, std::move(fn)); }
    void check_open() const override {
        std::lock_guard lk(mu_);
        check_open_locked();
    }

    void close() override {
        std::lock_guard lk(mu_);
        if (state_ == run_state::running)
            state_ = run_state::closing;
        pump_locked();
    }
    void terminate() override;
    void join() override {
        check_blocking("pool::join()");
        std::unique_lock lk(mu_);
        if (state_ == run_state::running)
            throw error("pool::join() called on a running pool: call close() or terminate() first");
        cv_.wait(lk, [&] { return joinable_locked(); });
    }
    void park_join(const std::function<void(waiter_list&)>& park) override {
        std::lock_guard lk(mu_);
        if (state_ == run_state::running)
            throw error("pool::async_join() called on a running pool: call close() or "
                        "terminate() first");
        park(join_waiters_);
        wake_locked();
    }
    void unpark_join(waiter_list::id_type id) noexcept override {
        join_waiters_.abort(mu_, id);
    }
    // Queued jobs of the call are dropped; jobs already sent to an agent run there to the end
    // (their outcome is discarded): a cancellation does not travel to the agents.
    void cancel(const std::shared_ptr<task_sink>& sink) noexcept override {
        std::vector<queued> dropped; // freed without the mutex
        std::lock_guard lk(mu_);
        sink->cancel();
        for (auto& q : pending_)
            if (q.j->sink == sink)
                dropped.push_back(std::move(q));
        std::erase_if(pending_, [](const queued& q) { return !q.j; });
    }
    void shutdown() noexcept override;

    std::size_t size() const noexcept override { return workers_; }
    std::vector<pid_t> pids() const override { return {}; }
    bool on_loop_thread() const noexcept override {
        if (own_loop_ != std::thread::id{})
            return std::this_thread::get_id() == own_loop_;
        if (const auto* io = ex_.target<asio::io_context::executor_type>())
            return io->running_in_this_thread();
        return false;
    }

  private:
    enum class run_state { running, closing, terminated };
    struct agent {
        int rank = 0;
        std::size_t workers = 0;
        std::size_t inflight = 0;
        std::string host;
        bool answered = false; // to tag_start
        bool running = false;  // started and not yet stopped
    };
    struct sent {
        job_ptr j;
        std::size_t agent;
    };
    struct queued {
        job_ptr j;
        std::vector<char> message; // to an agent (the job's frame keeps its size: the call
                                   // counts the bytes it has in flight by it)
    };

    void on_message(mpi_message& m);
    void deliver(std::span<const char> bytes, std::size_t from);
    static std::vector<queued> encode_jobs(std::vector<job_ptr>& jobs);
    void queue_locked(std::vector<queued>& jobs) {
        for (auto& q : jobs)
            pending_.push_back(std::move(q));
        pump_locked();
    }
    void pump_locked();
    void send_all_locked(int tag, std::vector<char> bytes);
    void check_open_locked() const {
        if (state_ != run_state::running)
            throw pool_closed("the pool is closed: no new tasks after close() or terminate()");
    }
    std::size_t running_locked() const {
        std::size_t n = 0;
        for (const auto& a : agents_)
            n += a.running;
        return n;
    }
    bool joinable_locked() const { return running_locked() == 0 && undelivered_ == 0; }
    void wake_locked() {
        if (!joinable_locked())
            return;
        work_ = asio::any_io_executor();
        join_waiters_.take_all().post(false);
        cv_.notify_all();
    }
    std::string where(std::size_t a) const {
        return "rank " + std::to_string(agents_[a].rank) + " on " + agents_[a].host;
    }

    std::shared_ptr<mpi_state> st_;
    progress& p_;
    MPI_Comm comm_ = MPI_COMM_NULL;
    bool listening_ = false;
    asio::any_io_executor ex_;
    std::thread::id own_loop_;

    mutable std::mutex mu_;
    std::condition_variable cv_;
    asio::any_io_executor work_; // tracked while the agents run
    run_state state_ = run_state::running;
    std::vector<agent> agents_;
    std::size_t workers_ = 0;
    std::size_t holds_ = 0;
    std::size_t undelivered_ = 0; // outcomes taken out of the queues and not yet delivered
    std::string start_error_;     // the first reason an agent gave for not starting
    bool stop_sent_ = false;
    bool shut_ = false;
    static inline std::atomic<std::uint64_t> next_id_{1};
    std::deque<queued> pending_;
    std::unordered_map<std::uint64_t, sent> inflight_;
    waiter_list join_waiters_;
};

void mpi_core::start(const mpi_pool_options& o, std::vector<std::string>& lines) {
    if (st_->pool_active.exchange(true))
        throw error("mpi_pool: this session already has a pool; destroy it before making "
                    "another");
    try {
        int first = 1;
        int count = p_.world_size() - 1;
        comm_ = st_->world;
        if (count == 0) { // no mpirun: spawned agents
            if (o.spawn == 0 || o.spawn > static_cast<std::size_t>(INT_MAX))
                throw error("mpi_pool: mpi_pool_options::spawn must be at least 1");
            comm_ = st_->spawn_agents(o.spawn, o.hostfile);
            first = 0;
            count = static_cast<int>(o.spawn);
        }
        agents_.resize(static_cast<std::size_t>(count));
        for (int r = 0; r < count; ++r)
            agents_[static_cast<std::size_t>(r)].rank = first + r;
        // Not a strong reference: the progress thread must never hold the last one (the
        // session's state would end there, joining that very thread). shutdown() unlistens
        // before the core can go.
        p_.listen(comm_, [this](mpi_message& m) { on_message(m); });
        listening_ = true;
        const start_request req{build_id(),
                                {.processes = o.processes_per_rank,
                                 .initializer = o.initializer,
                                 .maxtasksperchild = o.maxtasksperchild,
                                 .task_timeout = o.task_timeout}};
        std::unique_lock lk(mu_);
        send_all_locked(tag_start, encode(req));
        const bool answered = cv_.wait_for(lk, agent_wait, [&] {
            return std::all_of(agents_.begin(), agents_.end(),
                               [](const agent& a) { return a.answered; });
        });
        std::string failure;
        for (const auto& a : agents_)
            if (!a.answered && failure.empty())
                failure = "rank " + std::to_string(a.rank) + " did not answer within " +
                          std::to_string(agent_wait.count()) + " s";
        if (answered && failure.empty())
            failure = start_error_;
        if (!failure.empty()) {
            lk.unlock();
            throw error("mpi_pool could not start: " + failure);
        }
        for (std::size_t a = 0; a < agents_.size(); ++a) {
            workers_ += agents_[a].workers;
            lines.push_back(where(a) + ": " + std::to_string(agents_[a].workers) + " workers");
        }
    } catch (...) {
        shutdown();
        throw;
    }
}

// On the progress thread.
void mpi_core::on_message(mpi_message& m) {
    const auto a = static_cast<std::size_t>(m.source - agents_.front().rank);
    if (m.source < agents_.front().rank || a >= agents_.size())
        return;
    if (m.tag == tag_reply) {
        // The pool's executor may be run by several threads: deliver in any order.
        asio::post(ex_, [self = shared_from_this(), bytes = std::move(m.bytes), a] {
            self->deliver(bytes, a);
        });
        return;
    }
    std::lock_guard lk(mu_);
    if (m.tag == tag_started) {
        const auto r = decode_started(m.bytes);
        agents_[a].answered = true;
        agents_[a].running = r.ok;
        agents_[a].workers = r.workers;
        agents_[a].host = r.host;
        if (!r.ok && start_error_.empty())
            start_error_ = r.error.empty() ? where(a) + " did not start" : r.error;
        cv_.notify_all();
    } else if (m.tag == tag_stopped) {
        agents_[a].running = false;
        agents_[a].inflight = 0;
        wake_locked();
    }
}

void mpi_core::deliver(std::span<const char> bytes, std::size_t from) {
    if (bytes.size() < sizeof(frame_header))
        return;
    const auto h = read_header(bytes.data());
    job_ptr j;
    {
        std::lock_guard lk(mu_);
        auto it = inflight_.find(h.id);
        if (it == inflight_.end())
            return; // failed already (terminate)
        j = std::move(it->second.j);
        inflight_.erase(it);
        --agents_[from].inflight;
        ++undelivered_;
        pump_locked();
    }
    const auto payload = bytes.subspan(sizeof(frame_header));
    const bool cancelled = j->sink->cancelled(); // its call was cancelled: the outcome is dropped
    if (cancelled)
        j.reset();
    else if (h.kind == static_cast<std::uint16_t>(frame_kind::result) && h.size == payload.size())
        j->sink->on_result(*j, payload);
    else if (h.kind == static_cast<std::uint16_t>(frame_kind::error))
        j->sink->on_error(*j, decode_error(h.aux, payload, where(from), describe(*j)));
    else
        j->sink->on_error(*j,
                          std::make_exception_ptr(error("malformed reply to " + describe(*j) +
                                                        " from " + where(from))));
    j.reset();
    std::lock_guard lk(mu_);
    --undelivered_;
    wake_locked();
}

// Off the lock: each job's id, and its message to an agent.
std::vector<mpi_core::queued> mpi_core::encode_jobs(std::vector<job_ptr>& jobs) {
    std::vector<queued> out;
    out.reserve(jobs.size());
    for (auto& j : jobs) {
        j->id = next_id_.fetch_add(1, std::memory_order_relaxed);
        auto message = task_message(j->id, j->frame);
        out.push_back({std::move(j), std::move(message)});
    }
    return out;
}

void mpi_core::pump_locked() {
    while (!pending_.empty() && state_ != run_state::terminated) {
        if (pending_.front().j->sink->cancelled()) {
            pending_.pop_front();
            continue;
        }
        std::size_t best = agents_.size();
        std::size_t best_free = 0;
        for (std::size_t a = 0; a < agents_.size(); ++a) {
            const auto cap = 2 * agents_[a].workers;
            if (agents_[a].running && agents_[a].inflight < cap &&
                cap - agents_[a].inflight > best_free) {
                best = a;
                best_free = cap - agents_[a].inflight;
            }
        }
        if (best == agents_.size())
            break;
        auto [j, message] = std::move(pending_.front());
        pending_.pop_front();
        ++agents_[best].inflight;
        p_.send(comm_, agents_[best].rank, tag_task, std::move(message));
        const auto id = j->id;
        inflight_.emplace(id, sent{std::move(j), best});
    }
    if (state_ == run_state::closing && holds_ == 0 && pending_.empty() && inflight_.empty() &&
        !stop_sent_) {
        stop_sent_ = true;
        send_all_locked(tag_stop, {0});
    }
}

void mpi_core::send_all_locked(int tag, std::vector<char> bytes) {
    for (const auto& a : agents_)
        if (tag == tag_start || a.running)
            p_.send(comm_, a.rank, tag, bytes);
}

void mpi_core::terminate() {
    std::vector<job_ptr> failed;
    {
        std::lock_guard lk(mu_);
        if (state_ == run_state::terminated)
            return;
        state_ = run_state::terminated;
        for (auto& q : pending_)
            failed.push_back(std::move(q.j));
        pending_.clear();
        for (auto& [id, s] : inflight_)
            failed.push_back(std::move(s.j));
        inflight_.clear();
        for (auto& a : agents_)
            a.inflight = 0;
        undelivered_ += failed.size();
        send_all_locked(tag_stop, {1});
    }
    const auto n = failed.size();
    for (auto& j : failed)
        if (!j->sink->cancelled())
            j->sink->on_error(*j, std::make_exception_ptr(
                                  pool_closed("the pool was terminated before the task finished")));
    failed.clear(); // the jobs are freed without the mutex
    std::lock_guard lk(mu_);
    undelivered_ -= n;
    wake_locked();
}

void mpi_core::shutdown() noexcept {
    terminate();
    std::unique_lock lk(mu_);
    if (shut_)
        return;
    shut_ = true;
    if (!cv_.wait_for(lk, agent_wait, [&] { return running_locked() == 0; }))
        std::fputs("coproc: mpi_pool: an agent did not stop; leaving it\n", stderr);
    lk.unlock();
    if (listening_)
        p_.unlisten(comm_);
    st_->pool_active = false;
}

} // namespace

std::shared_ptr<pool_core> make_mpi_core(std::shared_ptr<mpi_state> state, asio::any_io_executor ex,
                                         std::thread::id own_loop, const mpi_pool_options& options,
                                         std::vector<std::string>& agents) {
    auto c = std::make_shared<mpi_core>(std::move(state), std::move(ex), own_loop);
    c->start(options, agents);
    return c;
}

} // namespace coproc::detail
