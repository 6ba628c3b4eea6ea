// The pool core's units without forking: dispatch, the at-most-once loss rules, the timeout
// rule, a worker link's lifecycle.
#include <coproc/detail/chunked_call.hpp>
#include <coproc/detail/pool_core.hpp>
#include "../lib/dispatcher.hpp"
#include "../lib/loss_rules.hpp"
#include "../lib/task_key.hpp"
#include "../lib/timeout_watch.hpp"
#include "../lib/worker_link.hpp"
#include "alloc_counter.hpp"

#include <doctest/doctest.h>

#include <array>
#include <csignal>
#include <cstring>
#include <list>
#include <memory>
#include <ranges>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

using namespace coproc::detail;

namespace {

int twice(int x) { return 2 * x; }
std::size_t length_of(std::string s) { return s.size(); }
double weigh(long a, double b, short c) { return static_cast<double>(a) * b + c; }

struct null_sink final : task_sink {
    void on_result(const job&, std::span<const char>) override {}
    void on_error(const job&, std::exception_ptr) override {}
};

job_ptr make_test_job(const std::shared_ptr<task_sink>& sink) {
    return make_job(
        &twice, [](auto&) { return 0; }, sink, 0);
}

// Workers that are never forked: pid -1, so kill() signals nobody.
std::vector<link_ptr> make_links(std::size_t n) {
    std::vector<link_ptr> links;
    for (std::size_t i = 0; i < n; ++i)
        links.push_back(std::make_shared<worker_link>(-1, i, false));
    return links;
}

task_prefix prefix_of(const job& j) {
    task_prefix p;
    std::memcpy(&p, j.frame.data() + sizeof(frame_header), sizeof p);
    return p;
}

constexpr task_key test_key{0x0123456789abcdef, 0xfedcba9876543210};

} // namespace

TEST_SUITE_BEGIN("pool_core_units");

TEST_CASE("dispatch hands each job to the least-loaded link that accepts work") {
    auto sink = std::make_shared<null_sink>();
    dispatcher d(test_key, 0);
    auto links = make_links(3);
    links[0]->inflight.push_back(make_test_job(sink));
    links[0]->inflight.push_back(make_test_job(sink));
    links[1]->inflight.push_back(make_test_job(sink));
    d.push(make_test_job(sink));
    d.push(make_test_job(sink));
    d.push(make_test_job(sink));
    d.dispatch(links);
    CHECK(d.empty());
    // 2,1,0 → 2,1,1 → 2,2,1 (first of the least loaded) → 2,2,2
    CHECK(links[0]->inflight.size() == 2);
    CHECK(links[1]->inflight.size() == 2);
    CHECK(links[2]->inflight.size() == 2);
    CHECK(links[0]->to_send.empty());
    CHECK(links[1]->to_send.size() == 1);
    CHECK(links[2]->to_send.size() == 2);
    CHECK(links[2]->to_send[0] == links[2]->inflight[0].get());
}

TEST_CASE("dispatch gives a link at most cap() jobs, the cap following task durations") {
    auto sink = std::make_shared<null_sink>();
    dispatcher d(test_key, 0);
    CHECK(d.cap() == 4); // durations unknown
    auto links = make_links(2);
    for (int i = 0; i < 10; ++i)
        d.push(make_test_job(sink));
    d.dispatch(links);
    CHECK(links[0]->inflight.size() == 4);
    CHECK(links[1]->inflight.size() == 4);
    CHECK(d.size() == 2); // kept for later

    dispatcher slow(test_key, 0);
    for (int i = 0; i < 50; ++i)
        slow.note_duration(100'000'000); // 100 ms each
    CHECK(slow.cap() == 2);
    dispatcher fast(test_key, 0);
    for (int i = 0; i < 50; ++i)
        fast.note_duration(10); // 10 ns each
    CHECK(fast.cap() == 1024);
    dispatcher absurd(test_key, 0);
    absurd.note_duration(~std::uint64_t{0}); // a worker's figure: bounded
    CHECK(absurd.cap() == 2);
}

TEST_CASE("a job carries several chunks only when one chunk runs far below group_ns") {
    CHECK(group_chunks(1, 0) == 1); // nothing measured yet
    CHECK(group_chunks(1, 100) == max_group_chunks);
    CHECK(group_chunks(50, 100) == group_ns / 5'000); // chunks of 5 us: 4 of them
    CHECK(group_chunks(200, 100) == 1);               // a chunk of 20 us
    CHECK(group_chunks(1, group_ns) == 1);
    CHECK(group_chunks(1, ~std::uint64_t{0}) == 1); // a worker's figure: no overflow
    CHECK(group_chunks(~std::size_t{0}, 1) == 1);
    CHECK(group_chunks(0, 100) == 1);
}

TEST_CASE("a chunk encoder puts whole chunks in a job and numbers them in input order") {
    auto sink = std::make_shared<null_sink>();
    const std::vector<int> numbers = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13};
    const std::list<int> listed(numbers.begin(), numbers.end()); // item by item
    auto check = [&](auto& enc) {
        std::exception_ptr error;
        job_ptr a = enc.next(sink, error, 3); // chunks 0..2: items 0..8
        REQUIRE(a);
        CHECK(a->chunk == 0);
        CHECK(items_of(*a) == 9);
        job_ptr b = enc.next(sink, error); // chunk 3: items 9..11
        REQUIRE(b);
        CHECK(b->chunk == 3);
        CHECK(items_of(*b) == 3);
        job_ptr c = enc.next(sink, error, 5); // chunk 4, short: items 12, 13
        REQUIRE(c);
        CHECK(c->chunk == 4);
        CHECK(items_of(*c) == 2);
        CHECK(enc.next(sink, error, 5) == nullptr);
        CHECK(!error);
    };
    chunk_encoder<int (*)(int), false, decltype(std::views::all(numbers))> raw(
        &twice, std::views::all(numbers), 3);
    check(raw);
    chunk_encoder<int (*)(int), false, decltype(std::views::all(listed))> item_by_item(
        &twice, std::views::all(listed), 3);
    check(item_by_item);
}

TEST_CASE("freed jobs are reused, until a fork server is about to be forked") {
    release_kept_jobs();
    std::vector<job_ptr> jobs;
    auto make = [&] {
        for (int i = 0; i < 10; ++i)
            jobs.push_back(new_job());
    };
    make();
    jobs.clear(); // kept in this thread's cache
    coproc::test::take_total_allocated();
    make();
    CHECK(coproc::test::take_total_allocated() == 0); // all ten reused
    jobs.clear();
    // The fork server would share their pages, and the next writes to them would copy them.
    release_kept_jobs();
    make();
    CHECK(coproc::test::take_total_allocated() >= 10 * sizeof(job));
    jobs.clear();
}

// A random-access range of numbers (or tuples of numbers, for starmap) is written a chunk at a
// time; its frames must hold the bytes that writing each item on its own gives.
TEST_CASE("a chunk of numbers written in one pass is what item by item writes") {
    auto sink = std::make_shared<null_sink>();
    auto frames_of = [&](auto fn, auto star, const auto& items, std::size_t chunksize) {
        using view = decltype(std::views::all(items));
        chunk_encoder<decltype(fn), decltype(star)::value, view> enc(fn, std::views::all(items),
                                                                     chunksize);
        std::vector<std::vector<char>> frames;
        std::exception_ptr error;
        while (job_ptr j = enc.next(sink, error, 2))
            frames.push_back(j->frame);
        CHECK(!error);
        return frames;
    };
    using star = std::true_type;
    std::vector<std::tuple<int, float, int>> tuples;
    std::vector<std::pair<long, double>> pairs;
    std::vector<std::array<short, 3>> arrays;
    for (int i = 0; i < 50; ++i) {
        tuples.emplace_back(i, 0.5f * static_cast<float>(i), -i);
        pairs.emplace_back(1000L * i, 0.25 * i);
        arrays.push_back({static_cast<short>(i), 3, static_cast<short>(-i)});
    }
    for (std::size_t chunksize : {1, 7, 100}) {
        CAPTURE(chunksize);
        const std::list<std::tuple<int, float, int>> tuple_list(tuples.begin(), tuples.end());
        CHECK(frames_of(&weigh, star{}, tuples, chunksize) ==
              frames_of(&weigh, star{}, tuple_list, chunksize));
        const std::list<std::array<short, 3>> array_list(arrays.begin(), arrays.end());
        CHECK(frames_of(&weigh, star{}, arrays, chunksize) ==
              frames_of(&weigh, star{}, array_list, chunksize));
        const std::list<std::pair<long, double>> pair_list(pairs.begin(), pairs.end());
        auto scale = +[](long a, double b) { return static_cast<double>(a) * b; };
        CHECK(frames_of(scale, star{}, pairs, chunksize) ==
              frames_of(scale, star{}, pair_list, chunksize));
        const std::vector<short> shorts(50, 9);
        const std::list<short> short_list(shorts.begin(), shorts.end());
        CHECK(frames_of(&twice, std::false_type{}, shorts, chunksize) ==
              frames_of(&twice, std::false_type{}, short_list, chunksize));
    }
}

TEST_CASE("a request's bytes count its arguments out of line, and a call's window a job per "
          "worker") {
    auto sink = std::make_shared<null_sink>();
    auto request_of = [&](const std::string& arg) {
        return make_job(
            &length_of,
            [&](auto& w) {
                w(arg);
                return 1;
            },
            sink, 0);
    };
    const std::string small(100, 'a');
    job_ptr inline_job = request_of(small);
    REQUIRE(!inline_job->payload);
    CHECK(request_bytes(*inline_job) == inline_job->frame.size());
    const std::string large(out_of_line_threshold + 1000, 'b');
    job_ptr large_job = request_of(large);
    if (large_job->payload) { // a memfd could be had: only the count stays in the frame
        CHECK(large_job->frame.size() < 100);
        CHECK(request_bytes(*large_job) ==
              large_job->frame.size() + large.size() + sizeof(std::uint64_t));
    } else {
        CHECK(request_bytes(*large_job) == large_job->frame.size());
    }
    CHECK(request_bytes(*large_job) > large.size());
    CHECK(window_for(4, 1).min_jobs == 4);
    CHECK(window_for(0, 1).min_jobs == 1);
}

TEST_CASE("a job of several chunks stops adding chunks once its frame holds max_group_bytes") {
    auto sink = std::make_shared<null_sink>();
    std::exception_ptr error;
    const std::vector<std::string> words(100, std::string(10 * 1024, 'x'));
    chunk_encoder<std::size_t (*)(std::string), false, decltype(std::views::all(words))> large(
        &length_of, std::views::all(words), 2);
    job_ptr a = large.next(sink, error, max_group_chunks); // chunks of 20 KiB: 4 make 80 KiB
    REQUIRE(a);
    CHECK(items_of(*a) == 8);
    job_ptr b = large.next(sink, error, max_group_chunks);
    REQUIRE(b);
    CHECK(b->chunk == 4);

    const std::vector<int> numbers(100'000, 7); // 4 bytes each, 1000 a chunk
    chunk_encoder<int (*)(int), false, decltype(std::views::all(numbers))> raw(
        &twice, std::views::all(numbers), 1'000);
    job_ptr c = raw.next(sink, error, max_group_chunks);
    REQUIRE(c);
    CHECK(items_of(*c) == max_group_bytes / 4 / 1'000 * 1'000);
    CHECK(!error);
}

TEST_CASE("dispatch drops the queued jobs of cancelled calls") {
    auto live = std::make_shared<null_sink>();
    auto gone = std::make_shared<null_sink>();
    gone->cancel();
    dispatcher d(test_key, 0);
    auto links = make_links(1);
    d.push(make_test_job(gone));
    d.push(make_test_job(live));
    d.push(make_test_job(gone));
    d.dispatch(links);
    CHECK(d.empty());
    REQUIRE(links[0]->inflight.size() == 1);
    CHECK(links[0]->inflight[0]->sink == live);
}

TEST_CASE("a job gets its id and its sealed frame once, even when queued again") {
    auto sink = std::make_shared<null_sink>();
    dispatcher d(test_key, 0);
    auto links = make_links(1);
    d.push(make_test_job(sink));
    d.push(make_test_job(sink));
    const task_prefix unsealed = prefix_of(*make_test_job(sink));
    d.dispatch(links);
    REQUIRE(links[0]->inflight.size() == 2);
    const job& first = *links[0]->inflight[0];
    CHECK(first.id == 1);
    CHECK(links[0]->inflight[1]->id == 2);
    CHECK(read_header(first.frame.data()).id == 1);
    const task_prefix sealed = prefix_of(first);
    CHECK(sealed.mac == task_mac(test_key, unsealed.entry, unsealed.fn, unsealed.mac));
    const std::vector<char> frame = first.frame;

    // The worker died before running it: it is queued again and handed to another worker.
    std::vector<job_ptr> again;
    again.push_back(std::move(links[0]->inflight[0]));
    links[0]->inflight.clear();
    links[0]->to_send.clear();
    links[0]->mark_exited(SIGKILL);
    d.requeue(std::move(again));
    auto others = make_links(1);
    d.dispatch(others);
    REQUIRE(others[0]->inflight.size() == 1);
    CHECK(others[0]->inflight[0]->id == 1);
    CHECK(others[0]->inflight[0]->frame == frame);
}

TEST_CASE("a MAC memo gives task_mac of each prefix, whichever part of it changes") {
    mac_memo memo(test_key);
    const std::int64_t entries[] = {64, 128};
    const std::int64_t fns[] = {-4096, 8192};
    const std::uint64_t digests[] = {0x1111, 0x2222};
    for (int round = 0; round < 2; ++round)
        for (const auto e : entries)
            for (const auto f : fns)
                for (const auto d : digests) {
                    CHECK(memo(e, f, d) == task_mac(test_key, e, f, d));
                    CHECK(memo(e, f, d) == task_mac(test_key, e, f, d)); // from the memo
                }
    const task_key other{1, 2};
    CHECK(mac_memo(other)(64, 8192, 0x1111) == task_mac(other, 64, 8192, 0x1111));
    CHECK(mac_memo(other)(64, 8192, 0x1111) != memo(64, 8192, 0x1111));
}

TEST_CASE("maxtasksperchild marks a link retiring once it has its last job") {
    auto sink = std::make_shared<null_sink>();
    dispatcher d(test_key, 3);
    auto links = make_links(1);
    for (int i = 0; i < 5; ++i)
        d.push(make_test_job(sink));
    d.dispatch(links);
    CHECK(links[0]->inflight.size() == 3);
    CHECK(links[0]->state() == link_state::retiring);
    CHECK_FALSE(links[0]->accepts());
    CHECK(d.size() == 2);
}

TEST_CASE("links that do not accept work get no jobs") {
    auto sink = std::make_shared<null_sink>();
    dispatcher d(test_key, 0);
    auto links = make_links(5);
    links[0]->retire();
    links[1]->eof = true;
    links[2]->kill(kill_reason::timeout);
    links[3]->mark_exited(0);
    links[4]->kill(kill_reason::protocol_error, "garbage");
    d.push(make_test_job(sink));
    d.dispatch(links);
    CHECK(d.size() == 1);
    for (const auto& w : links) {
        CHECK(w->inflight.empty());
        CHECK(w->to_send.empty());
    }
    const auto more = make_links(1);
    const std::vector<link_ptr> all{links[0], more[0]};
    d.dispatch(all);
    CHECK(d.empty());
    CHECK(more[0]->inflight.size() == 1);
}

TEST_CASE("a dead worker's running job fails as lost, the jobs it never started run again") {
    const std::vector<std::uint64_t> ids{4, 5, 6};
    const auto plan = plan_losses(ids, 4, 0, false);
    REQUIRE(plan.failures.size() == 1);
    CHECK(plan.failures[0].job == 0);
    CHECK_FALSE(plan.failures[0].ran);
    CHECK(plan.requeue == std::vector<std::size_t>{1, 2});
}

TEST_CASE("jobs a dead worker finished fail as result lost and are not run again") {
    const std::vector<std::uint64_t> ids{4, 5, 6, 7};
    const auto plan = plan_losses(ids, 0, 5, false); // died idle, replies of 4 and 5 unwritten
    REQUIRE(plan.failures.size() == 2);
    CHECK(plan.failures[0].job == 0);
    CHECK(plan.failures[0].ran);
    CHECK(plan.failures[1].job == 1);
    CHECK(plan.failures[1].ran);
    CHECK(plan.requeue == std::vector<std::size_t>{2, 3});
}

TEST_CASE("the jobs of a worker that died idle are re-queued in their order") {
    const std::vector<std::uint64_t> ids{9, 10, 11};
    const auto plan = plan_losses(ids, 0, 0, false);
    CHECK(plan.failures.empty());
    CHECK(plan.requeue == std::vector<std::size_t>{0, 1, 2});
    const auto stale = plan_losses(ids, 0, 3, false); // finished a job answered already
    CHECK(stale.failures.empty());
    CHECK(stale.requeue == std::vector<std::size_t>{0, 1, 2});
}

TEST_CASE("every job of a worker that broke the protocol fails as lost") {
    const std::vector<std::uint64_t> ids{1, 2, 3};
    const auto plan = plan_losses(ids, 2, 1, true);
    REQUIRE(plan.failures.size() == 3);
    for (std::size_t i = 0; i < 3; ++i) {
        CHECK(plan.failures[i].job == i);
        CHECK_FALSE(plan.failures[i].ran);
    }
    CHECK(plan.requeue.empty());
}

TEST_CASE("the culprit's failure comes before those of the jobs that ran") {
    const std::vector<std::uint64_t> ids{1, 2, 3, 4};
    const auto plan = plan_losses(ids, 3, 2, false);
    REQUIRE(plan.failures.size() == 3);
    CHECK(plan.failures[0].job == 2);
    CHECK_FALSE(plan.failures[0].ran);
    CHECK(plan.failures[1].job == 0);
    CHECK(plan.failures[1].ran);
    CHECK(plan.failures[2].job == 1);
    CHECK(plan.failures[2].ran);
    CHECK(plan.requeue == std::vector<std::size_t>{3});
}

TEST_CASE("a worker is stuck past the timeout running one task or idle with work") {
    std::int64_t idle = 0;
    CHECK_FALSE(is_stuck(1000, 100, 7, 950, true, idle));
    CHECK(is_stuck(1000, 100, 7, 800, true, idle));
    CHECK(idle == 0);
    CHECK_FALSE(is_stuck(1000, 100, 0, 0, false, idle)); // idle without work: fine
    CHECK_FALSE(is_stuck(1000, 100, 0, 0, true, idle));  // work but nothing runs: watched
    CHECK(idle == 1000);
    CHECK_FALSE(is_stuck(1100, 100, 0, 0, true, idle));
    CHECK(is_stuck(1101, 100, 0, 0, true, idle));
    CHECK_FALSE(is_stuck(1200, 100, 8, 1150, true, idle)); // it runs again
    CHECK(idle == 0);
}

TEST_CASE("a worker link's lifecycle only moves forward and says how the worker ended") {
    worker_link w(-1, 0, false);
    CHECK(w.accepts());
    CHECK(w.exit_info() == std::pair{0, -1});
    w.retire();
    CHECK(w.state() == link_state::retiring);
    w.shut(); // no socket: nothing to shut
    CHECK(w.state() == link_state::retiring);
    w.mark_exited(SIGKILL); // a wait status: killed by SIGKILL
    CHECK(w.has_exited());
    CHECK(w.exit_info() == std::pair{SIGKILL, -1});
    CHECK(w.how_it_ended().find("killed by signal 9") != std::string::npos);
    w.retire();
    CHECK(w.state() == link_state::exited);
    w.finalize();
    CHECK(w.state() == link_state::finalized);

    worker_link code(-1, 1, true);
    code.mark_exited(3 << 8);
    CHECK(code.exit_info() == std::pair{0, 3});
    CHECK(code.how_it_ended() == "exited with status 3");
    worker_link unknown(-1, 2, true);
    unknown.mark_exited(std::nullopt);
    CHECK(unknown.how_it_ended() == "exited (its exit status was not reported)");
}

TEST_CASE("the first reason a worker was killed for is the one its jobs report") {
    worker_link w(-1, 0, false);
    w.kill(kill_reason::protocol_error, "bad frame");
    w.kill(kill_reason::timeout);
    CHECK(w.reason() == kill_reason::protocol_error);
    CHECK(w.protocol_error() == "bad frame");
    auto sink = std::make_shared<null_sink>();
    const auto j = make_test_job(sink);
    std::string what;
    try {
        std::rethrow_exception(w.lost_error(*j, std::chrono::milliseconds(5)));
    } catch (const coproc::worker_lost& e) {
        what = e.what();
    }
    CHECK(what.find("sent a malformed reply (bad frame)") != std::string::npos);
}

TEST_SUITE_END();
