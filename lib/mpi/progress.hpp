// The MPI progress thread (private to libcoproc_mpi): the one thread of a process that calls MPI,
// from MPI_Init_thread to MPI_Finalize.
//
// MPI gives no descriptor to wait on, so the thread polls: it starts the sends other threads
// queued, tests them (MPI_Testsome), probes every listened communicator for messages
// (MPI_Improbe, then MPI_Mrecv of exactly the probed size) and hands each to its listener. After
// a short spin with nothing to do it sleeps, a little longer each time up to a bound, and wakes
// at once when a thread queues a send or a call.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <future>
#include <mpi.h>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace coproc::detail {

/// The messages of an mpi_pool and its agents (MPI tags).
enum mpi_tag : int {
    tag_start = 1,    // caller -> agent: start a local pool (start_request)
    tag_started = 2,  // agent -> caller: its size, host, or why it could not start
    tag_task = 3,     // caller -> agent: a task frame; its id is the caller's
    tag_reply = 4,    // agent -> caller: a result or error frame for that id
    tag_stop = 5,     // caller -> agent: close (0) or terminate (1) the local pool
    tag_stopped = 6,  // agent -> caller: the local pool's workers have all exited
    tag_finalize = 7, // caller -> agent: leave, finalize MPI, exit
};

struct mpi_message {
    MPI_Comm comm;
    int source;
    int tag;
    std::vector<char> bytes;
};

/// Throws coproc::error naming `what` and MPI's message if `rc` is not MPI_SUCCESS.
void check_mpi(int rc, const char* what);

class progress {
  public:
    using listener = std::function<void(mpi_message&)>;

    /// Starts the thread, which initializes MPI; throws if MPI_Init_thread fails or does not
    /// grant MPI_THREAD_MULTIPLE.
    progress(int& argc, char**& argv);
    /// Completes the queued sends, finalizes MPI and joins the thread.
    ~progress();
    progress(const progress&) = delete;
    progress& operator=(const progress&) = delete;

    int world_rank() const noexcept { return rank_; }
    int world_size() const noexcept { return size_; }

    /// Queues `bytes` for `dest` in `comm`; sends to one destination keep their order. Any thread.
    void send(MPI_Comm comm, int dest, int tag, std::vector<char> bytes);
    /// Messages arriving on `comm` go to `fn`, called on the progress thread (briefly: it holds
    /// up every other message). Replaces an earlier listener of `comm`.
    void listen(MPI_Comm comm, listener fn);
    /// Once this returns, the listener of `comm` is not running and will not be called again.
    /// Not on the progress thread.
    void unlisten(MPI_Comm comm);
    /// Runs `fn` on the progress thread and returns (or throws) what it did; for MPI calls
    /// that block, such as MPI_Comm_spawn. Not on the progress thread itself.
    void call(std::function<void()> fn);
    /// Waits until every send queued so far has completed.
    void flush();

  private:
    struct outgoing {
        MPI_Comm comm;
        int dest;
        int tag;
        std::vector<char> bytes;
    };
    struct in_flight {
        std::vector<char> bytes;
        MPI_Request request;
    };

    void run(int& argc, char**& argv, std::promise<void>& started);
    bool step();        // one round; true if it did anything
    bool take_queued(); // starts queued sends and calls
    bool test_sends();
    bool receive();

    std::mutex mu_;
    std::condition_variable cv_;      // wakes the progress thread
    std::condition_variable idle_cv_; // wakes flush() and unlisten()
    std::deque<outgoing> outbox_;
    std::deque<std::packaged_task<void()>> calls_;
    std::vector<std::pair<MPI_Comm, listener>> listeners_;
    std::size_t listeners_version_ = 0;
    std::size_t taken_version_ = 0; // the version the progress thread uses
    bool stop_ = false;
    std::size_t unsent_ = 0; // queued or in flight

    // The progress thread's own.
    std::vector<in_flight> sends_;
    std::vector<MPI_Request> requests_;
    std::vector<int> done_;
    std::vector<std::pair<MPI_Comm, listener>> active_;
    std::size_t active_version_ = ~std::size_t{0};

    int rank_ = 0;
    int size_ = 1;
    std::thread thread_;
};

} // namespace coproc::detail
