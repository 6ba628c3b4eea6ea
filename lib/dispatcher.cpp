// Which worker runs which job (see dispatcher.hpp).
#include "dispatcher.hpp"

#include <algorithm>
#include <cstring>
#include <iterator>

namespace coproc::detail {

void dispatcher::requeue(std::vector<job_ptr> jobs) {
    for (auto it = jobs.rbegin(); it != jobs.rend(); ++it)
        pending_.push_front(std::move(*it));
}

std::vector<job_ptr> dispatcher::take_all() {
    std::vector<job_ptr> out(std::make_move_iterator(pending_.begin()),
                             std::make_move_iterator(pending_.end()));
    pending_.clear();
    return out;
}

std::vector<job_ptr> dispatcher::take(const task_sink* sink) {
    std::vector<job_ptr> out;
    for (auto& j : pending_)
        if (j->sink.get() == sink)
            out.push_back(std::move(j));
    std::erase(pending_, nullptr);
    return out;
}

std::size_t dispatcher::cap() const noexcept {
    if (avg_ns_ <= 0)
        return 4;
    return std::clamp<std::size_t>(static_cast<std::size_t>(2'000'000 / avg_ns_), 2, 1024);
}

void dispatcher::note_duration(std::uint64_t ns) noexcept {
    avg_ns_ += (static_cast<std::int64_t>(std::min(ns, max_task_ns)) - avg_ns_) / 8;
}

void dispatcher::assign_id(job& j) noexcept {
    j.id = next_id_++;
    std::memcpy(j.frame.data() + offsetof(frame_header, id), &j.id, sizeof j.id);
    macs_.seal(j.frame);
}

void dispatcher::dispatch(std::span<const link_ptr> links) {
    const std::size_t limit = cap();
    while (!pending_.empty()) {
        job_ptr& j = pending_.front();
        if (j->sink->cancelled()) {
            pending_.pop_front();
            continue;
        }
        worker_link* best = nullptr;
        for (const auto& w : links)
            if (w->accepts() && w->inflight.size() < limit &&
                (!best || w->inflight.size() < best->inflight.size()))
                best = w.get();
        if (!best)
            break;
        if (j->id == 0)
            assign_id(*j);
        j->seq = ++best->sent;
        best->to_send.push_back(j.get());
        best->inflight.push_back(std::move(j));
        pending_.pop_front();
        if (maxtasks_ && ++best->assigned >= maxtasks_)
            best->retire();
    }
}

} // namespace coproc::detail
