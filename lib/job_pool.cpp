// Reuse of pool jobs (see job_recycler in pool_core.hpp): a per-thread cache in front of a
// shared depot, both bounded; jobs move between them in batches, so the depot's lock is taken
// once per batch, not once per job.
#include <coproc/detail/archive.hpp>
#include <coproc/detail/pool_core.hpp>

#include <mutex>
#include <pthread.h>
#include <vector>

namespace coproc::detail {

namespace {

constexpr std::size_t batch = 64;            // moved between a cache and the depot at once
constexpr std::size_t cache_max = 2 * batch; // kept by one thread
constexpr std::size_t depot_max = 4096;      // kept in all: ~5 MiB at most with their frames

// The depot's mutex is held across fork() (pthread_atfork), so a child never inherits it
// locked by a thread it does not have. Never destroyed: threads may free jobs during exit.
struct depot {
    std::mutex mu;
    std::vector<job*> jobs;

    depot() {
        jobs.reserve(depot_max);
        pthread_atfork([] { instance().mu.lock(); }, [] { instance().mu.unlock(); },
                       [] { instance().mu.unlock(); });
    }
    static depot& instance() {
        static depot* d = new depot;
        return *d;
    }
};

// Set once this thread's cache is destroyed (a thread-local bool never is): jobs made or
// freed later in the thread's exit bypass the cache.
thread_local bool cache_gone = false;

struct cache {
    std::vector<job*> jobs;

    cache() { jobs.reserve(cache_max); }
    ~cache() { // the thread ends: its jobs go to the depot, or are freed
        give_back(jobs.size());
        cache_gone = true;
    }
    // Moves the last `n` jobs to the depot (freeing those it has no room for).
    void give_back(std::size_t n) {
        const auto from = jobs.end() - static_cast<std::ptrdiff_t>(n);
        {
            depot& d = depot::instance();
            std::lock_guard lk(d.mu);
            for (auto it = from; it != jobs.end() && d.jobs.size() < depot_max; ++it)
                d.jobs.push_back(std::exchange(*it, nullptr));
        }
        for (auto it = from; it != jobs.end(); ++it)
            delete *it;
        jobs.erase(from, jobs.end());
    }
    // Takes up to a batch of jobs from the depot.
    void take() {
        depot& d = depot::instance();
        std::lock_guard lk(d.mu);
        const std::size_t n = std::min(batch, d.jobs.size());
        jobs.insert(jobs.end(), d.jobs.end() - static_cast<std::ptrdiff_t>(n), d.jobs.end());
        d.jobs.resize(d.jobs.size() - n);
    }
    static cache& of_thread() {
        thread_local cache c;
        return c;
    }
};

} // namespace

job_ptr new_job() {
    if (cache_gone)
        return job_ptr(new job);
    cache& c = cache::of_thread();
    if (c.jobs.empty())
        c.take();
    if (c.jobs.empty())
        return job_ptr(new job);
    job* j = c.jobs.back();
    c.jobs.pop_back();
    return job_ptr(j);
}

void release_kept_jobs() noexcept {
    {
        depot& d = depot::instance();
        std::lock_guard lk(d.mu);
        for (job* j : d.jobs)
            delete j;   // a kept job holds nothing but its frame's buffer
        d.jobs.clear(); // keeps its capacity: give_back() still never allocates
    }
    if (!cache_gone) {
        try {
            cache& c = cache::of_thread();
            for (job* j : c.jobs)
                delete j;
            c.jobs.clear();
        } catch (...) { // no thread-local storage left (the thread is exiting)
        }
    }
}

void job_recycler::operator()(job* j) const noexcept {
    // What a job holds goes now, as with delete: its call, its arguments' memfd.
    j->sink.reset();
    j->payload = payload_fd();
    if (cache_gone || j->frame.capacity() > job_kept_frame_bytes) {
        keep_buffer(std::move(j->frame)); // a large frame's buffer serves the next one
        delete j;
        return;
    }
    j->frame.clear();
    j->chunk = 0;
    j->id = 0;
    j->seq = 0;
    j->ran_ns = 0;
    j->name = {};
    try {
        cache& c = cache::of_thread();
        c.jobs.push_back(j); // reserved: cache_max is never exceeded
        if (c.jobs.size() == cache_max)
            c.give_back(batch);
    } catch (...) { // no thread-local storage left (the thread is exiting)
        delete j;
    }
}

} // namespace coproc::detail
