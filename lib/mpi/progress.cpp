// The MPI progress thread (see progress.hpp).
#include "progress.hpp"

#include <coproc/error.hpp>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <string>

namespace coproc::detail {

namespace {

// Rounds with nothing to do before the thread sleeps, and its sleeps: from the first to the
// longest, doubling. A message arriving while it sleeps waits at most the longest sleep.
constexpr int spin_rounds = 200;
constexpr std::chrono::microseconds first_sleep{20};
constexpr std::chrono::microseconds longest_sleep{500};

} // namespace

void check_mpi(int rc, const char* what) {
    if (rc == MPI_SUCCESS)
        return;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS)
        len = 0;
    throw coproc::error(std::string(what) + " failed: " + std::string(msg, len));
}

progress::progress(int& argc, char**& argv) {
    std::promise<void> started;
    auto ready = started.get_future();
    thread_ = std::thread([&] { run(argc, argv, started); });
    try {
        ready.get();
    } catch (...) {
        thread_.join();
        throw;
    }
}

progress::~progress() {
    {
        std::lock_guard lk(mu_);
        stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
}

void progress::send(MPI_Comm comm, int dest, int tag, std::vector<char> bytes) {
    if (bytes.size() > static_cast<std::size_t>(INT_MAX))
        throw coproc::error("MPI message of " + std::to_string(bytes.size()) +
                            " bytes is too large; pass large data in pieces");
    {
        std::lock_guard lk(mu_);
        outbox_.push_back({comm, dest, tag, std::move(bytes)});
        ++unsent_;
    }
    cv_.notify_one();
}

void progress::listen(MPI_Comm comm, listener fn) {
    std::lock_guard lk(mu_);
    std::erase_if(listeners_, [&](const auto& l) { return l.first == comm; });
    listeners_.emplace_back(comm, std::move(fn));
    ++listeners_version_;
}

void progress::unlisten(MPI_Comm comm) {
    std::unique_lock lk(mu_);
    std::erase_if(listeners_, [&](const auto& l) { return l.first == comm; });
    const auto version = ++listeners_version_;
    cv_.notify_one();
    // The progress thread takes the new list at the start of a round, after every call of
    // the round before has returned.
    idle_cv_.wait(lk, [&] { return taken_version_ >= version; });
}

void progress::call(std::function<void()> fn) {
    std::packaged_task<void()> task(std::move(fn));
    auto done = task.get_future();
    {
        std::lock_guard lk(mu_);
        calls_.push_back(std::move(task));
    }
    cv_.notify_one();
    done.get();
}

void progress::flush() {
    std::unique_lock lk(mu_);
    idle_cv_.wait(lk, [&] { return unsent_ == 0; });
}

void progress::run(int& argc, char**& argv, std::promise<void>& started) {
    try {
        int provided = 0;
        check_mpi(MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided), "MPI_Init_thread");
        if (provided < MPI_THREAD_MULTIPLE) {
            MPI_Finalize();
            throw coproc::error("MPI_Init_thread granted less than MPI_THREAD_MULTIPLE");
        }
        check_mpi(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), "MPI_Comm_rank");
        check_mpi(MPI_Comm_size(MPI_COMM_WORLD, &size_), "MPI_Comm_size");
        // Errors come back as codes (and become exceptions) instead of aborting the job.
        MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
        MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN);
    } catch (...) {
        started.set_exception(std::current_exception());
        return;
    }
    started.set_value();

    int idle = 0;
    auto sleep = first_sleep;
    for (;;) {
        bool busy = false;
        try {
            busy = step();
        } catch (const std::exception& e) {
            std::fprintf(stderr, "coproc: MPI progress: %s\n", e.what());
        }
        if (busy) {
            idle = 0;
            sleep = first_sleep;
            continue;
        }
        std::unique_lock lk(mu_);
        if (stop_ && outbox_.empty() && calls_.empty() && sends_.empty())
            break;
        if (++idle < spin_rounds)
            continue;
        cv_.wait_for(lk, sleep, [&] {
            return !outbox_.empty() || !calls_.empty() || stop_ ||
                   active_version_ != listeners_version_;
        });
        sleep = std::min(sleep * 2, longest_sleep);
    }
    MPI_Finalize();
}

bool progress::step() {
    bool busy = take_queued();
    busy |= test_sends();
    busy |= receive();
    return busy;
}

bool progress::take_queued() {
    std::deque<outgoing> out;
    std::deque<std::packaged_task<void()>> calls;
    {
        std::lock_guard lk(mu_);
        if (outbox_.empty() && calls_.empty() && active_version_ == listeners_version_)
            return false;
        out.swap(outbox_);
        calls.swap(calls_);
        if (active_version_ != listeners_version_) {
            active_ = listeners_;
            active_version_ = taken_version_ = listeners_version_;
            idle_cv_.notify_all();
        }
    }
    for (auto& o : out) {
        in_flight f{std::move(o.bytes), MPI_REQUEST_NULL};
        const int rc = MPI_Isend(f.bytes.data(), static_cast<int>(f.bytes.size()), MPI_BYTE, o.dest,
                                 o.tag, o.comm, &f.request);
        if (rc != MPI_SUCCESS) {
            std::fprintf(stderr, "coproc: MPI_Isend to rank %d failed (error %d)\n", o.dest, rc);
            std::lock_guard lk(mu_);
            if (--unsent_ == 0)
                idle_cv_.notify_all();
            continue;
        }
        sends_.push_back(std::move(f));
    }
    for (auto& c : calls)
        c(); // a packaged_task keeps what it throws for its caller
    return true;
}

bool progress::test_sends() {
    if (sends_.empty())
        return false;
    requests_.clear();
    for (const auto& s : sends_)
        requests_.push_back(s.request);
    done_.resize(requests_.size());
    int count = 0;
    check_mpi(MPI_Testsome(static_cast<int>(requests_.size()), requests_.data(), &count,
                           done_.data(), MPI_STATUSES_IGNORE),
              "MPI_Testsome");
    if (count <= 0 || count == MPI_UNDEFINED)
        return false;
    for (int i = 0; i < count; ++i)
        sends_[done_[i]].request = MPI_REQUEST_NULL;
    std::erase_if(sends_, [](const in_flight& s) { return s.request == MPI_REQUEST_NULL; });
    {
        std::lock_guard lk(mu_);
        unsent_ -= static_cast<std::size_t>(count);
        if (unsent_ == 0)
            idle_cv_.notify_all();
    }
    return true;
}

bool progress::receive() {
    bool any = false;
    for (auto& [comm, fn] : active_) {
        for (;;) {
            int flag = 0;
            MPI_Message msg;
            MPI_Status st;
            check_mpi(MPI_Improbe(MPI_ANY_SOURCE, MPI_ANY_TAG, comm, &flag, &msg, &st),
                      "MPI_Improbe");
            if (!flag)
                break;
            int n = 0;
            check_mpi(MPI_Get_count(&st, MPI_BYTE, &n), "MPI_Get_count");
            mpi_message m{comm, st.MPI_SOURCE, st.MPI_TAG, std::vector<char>(n)};
            check_mpi(MPI_Mrecv(m.bytes.data(), n, MPI_BYTE, &msg, MPI_STATUS_IGNORE), "MPI_Mrecv");
            any = true;
            try {
                fn(m);
            } catch (const std::exception& e) {
                std::fprintf(stderr, "coproc: handling an MPI message (tag %d from rank %d): %s\n",
                             m.tag, m.source, e.what());
            }
        }
    }
    return any;
}

} // namespace coproc::detail
