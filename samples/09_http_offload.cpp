// An HTTP server that keeps answering while it computes: the CPU-heavy routes co_await a
// process pool that runs on the server's own io_context, so the event loop is never blocked
// and /health answers at once even under load. Python (asyncio + multiprocessing):
//   pool = ProcessPoolExecutor(4)
//   async def fib_route(n): return await loop.run_in_executor(pool, fib, n)
//
// Deadlines and disconnects cancel the work: `?deadline_ms=` races the task against a timer
// (`pool.apply(...) || timer.async_wait(...)`) and answers 504 when the timer wins; a client
// that disconnects cancels its task. A cancelled task that checks
// coproc::this_task::stop_requested() (count_primes) returns early and keeps its worker; one
// that does not (spin) has its worker killed and replaced after the pool's cancel_grace.
//
//   09_http_offload                        short demo: benchmarks a server with and without the
//                                          pool, each from a client process, then exits
//   09_http_offload --serve 8080 [--no-pool] [--processes N]
//                                          serves http://127.0.0.1:8080 until Ctrl-C; try
//                                          /fib?n=32, /primes?limit=100000, /health,
//                                          /spin?ms=5000&deadline_ms=200
//   09_http_offload --bench [--requests 200] [--concurrency 16] [--n 32] [--port 8080]
//                                          benchmarks the server on --port, or without --port
//                                          starts one with the pool, then one without
#include <coproc/coproc.hpp>

#include <asio.hpp>
#include <asio/experimental/awaitable_operators.hpp>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

using asio::ip::tcp;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

// The work: deliberately slow, so that it is worth sending to a worker process.

std::uint64_t fib(int n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }

int count_primes(int limit) { // primes below limit, by trial division; stops when cancelled
    int count = 0;
    for (int k = 2; k < limit && !coproc::this_task::stop_requested(); ++k) {
        bool prime = true;
        for (int d = 2; d * d <= k && prime; ++d)
            prime = k % d != 0;
        count += prime;
    }
    return count;
}

int spin(int ms) { // burns CPU for `ms`, deaf to cancellation
    const auto end = steady::now() + std::chrono::milliseconds(ms);
    std::uint64_t x = 0;
    while (steady::now() < end)
        x = x * 31 + 7;
    return static_cast<int>(x & 1);
}

// The server.

constexpr auto cancel_grace = 100ms; // a cancelled task that runs on is killed after this

struct reply {
    int status = 200;
    std::string body;
};

// The value of `name` in a query string ("n=32&x=1"), if it is an integer in [lo, hi].
std::optional<int> int_param(std::string_view query, std::string_view name, int lo, int hi) {
    while (!query.empty()) {
        std::string_view field = query.substr(0, query.find('&'));
        query.remove_prefix(std::min(query.size(), field.size() + 1));
        if (field.size() <= name.size() || !field.starts_with(name) || field[name.size()] != '=')
            continue;
        std::string_view text = field.substr(name.size() + 1);
        int value = 0;
        auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
        if (ec != std::errc() || end != text.data() + text.size() || value < lo || value > hi)
            return std::nullopt;
        return value;
    }
    return std::nullopt;
}

// Thrown when a request's ?deadline_ms= passes before its task returns.
struct deadline_passed {
    int ms;
};

// Runs fn(arg) in the pool, or here without one (--no-pool: it blocks the event loop). With a
// deadline, the task races a timer: if the timer wins, the task is cancelled.
template <class F>
asio::awaitable<int> compute(coproc::pool* pool, F fn, int arg, std::optional<int> deadline_ms) {
    if (!pool)
        co_return static_cast<int>(fn(arg));
    if (!deadline_ms)
        co_return static_cast<int>(co_await pool->apply(fn, arg));
    using namespace asio::experimental::awaitable_operators;
    asio::steady_timer timer(co_await asio::this_coro::executor,
                             std::chrono::milliseconds(*deadline_ms));
    auto won = co_await (pool->apply(fn, arg) || timer.async_wait(asio::use_awaitable));
    if (won.index() == 1)
        throw deadline_passed{*deadline_ms};
    co_return static_cast<int>(std::get<0>(won));
}

// Answers one GET. With a pool the work runs in a worker process while this coroutine waits;
// without one (--no-pool) it runs right here, on the event-loop thread, and blocks it.
asio::awaitable<reply> route(std::string_view target, coproc::pool* pool) {
    std::string_view path = target.substr(0, target.find('?'));
    std::string_view query = target.substr(std::min(target.size(), path.size() + 1));
    std::optional<int> deadline = int_param(query, "deadline_ms", 1, 3'600'000);
    if (query.find("deadline_ms=") != std::string_view::npos && !deadline)
        co_return reply{400, "deadline_ms must be an integer from 1 to 3600000\n"};
    if (path == "/health") {
        if (pool)
            co_return reply{200, "ok, pool of " + std::to_string(pool->size()) + " workers\n"};
        co_return reply{200, "ok, no pool (work runs on the loop thread)\n"};
    }
    if (path == "/fib") {
        std::optional<int> n = int_param(query, "n", 0, 35);
        if (!n)
            co_return reply{400, "n must be an integer from 0 to 35, as in /fib?n=32\n"};
        int f = co_await compute(pool, fib, *n, deadline); // fib(35) fits an int
        co_return reply{200, std::to_string(f) + "\n"};
    }
    if (path == "/primes") {
        std::optional<int> limit = int_param(query, "limit", 0, 1'000'000);
        if (!limit)
            co_return reply{
                400, "limit must be an integer from 0 to 1000000, as in /primes?limit=1000\n"};
        int count = co_await compute(pool, count_primes, *limit, deadline);
        co_return reply{200, std::to_string(count) + "\n"};
    }
    if (path == "/spin") {
        std::optional<int> ms = int_param(query, "ms", 0, 10'000);
        if (!ms)
            co_return reply{400, "ms must be an integer from 0 to 10000, as in /spin?ms=500\n"};
        co_await compute(pool, spin, *ms, deadline);
        co_return reply{200, "spun " + std::to_string(*ms) + " ms\n"};
    }
    co_return reply{404, "no such path; try /fib?n=32, /primes?limit=100000, /spin?ms=500 or "
                         "/health\n"};
}

// route(), with its errors as replies: `||` below waits for a success, so nothing may throw.
asio::awaitable<reply> answer(std::string_view target, coproc::pool* pool) {
    try {
        co_return co_await route(target, pool);
    } catch (const deadline_passed& d) {
        co_return reply{504, "the deadline of " + std::to_string(d.ms) +
                                 " ms passed; the task was cancelled\n"};
    } catch (const std::exception& e) { // a worker died, the pool is closing...
        co_return reply{500, std::string(e.what()) + "\n"};
    }
}

const char* reason(int status) {
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 504:
        return "Gateway Timeout";
    default:
        return "Internal Server Error";
    }
}

// Completes when the client closes the connection (or resets it). Bytes of a next request
// already sent (pipelining) cannot tell a disconnect: then it waits until cancelled.
asio::awaitable<void> disconnected(tcp::socket& socket) {
    char byte;
    std::error_code ec;
    std::size_t n = co_await socket.async_receive(asio::buffer(&byte, 1),
                                                  tcp::socket::message_peek,
                                                  asio::redirect_error(asio::use_awaitable, ec));
    if (ec || n == 0)
        co_return;
    asio::steady_timer forever(socket.get_executor(), steady::time_point::max());
    co_await forever.async_wait(asio::use_awaitable);
}

// One connection: HTTP/1.1 requests, kept alive until the client closes it.
asio::awaitable<void> session(tcp::socket socket, coproc::pool* pool) {
    std::string in;
    for (;;) {
        std::error_code ec;
        std::size_t head_size =
            co_await asio::async_read_until(socket, asio::dynamic_buffer(in, 8192), "\r\n\r\n",
                                            asio::redirect_error(asio::use_awaitable, ec));
        if (ec && ec != asio::error::not_found)
            co_return;                                        // the client is gone
        std::string head = ec ? "" : in.substr(0, head_size); // not_found: over 8 KiB
        in.erase(0, head_size);

        // The request line: "GET /fib?n=32 HTTP/1.1".
        std::string_view line = std::string_view(head).substr(0, head.find("\r\n"));
        std::size_t sp1 = line.find(' '), sp2 = line.rfind(' ');
        bool keep_alive = head.find("Connection: close") == std::string::npos;
        reply r;
        if (ec) {
            r = {400, "request head over 8 KiB\n"};
            keep_alive = false;
        } else if (sp1 == std::string_view::npos || sp1 == sp2) {
            r = {400, "malformed request line\n"};
            keep_alive = false;
        } else if (line.substr(0, sp1) != "GET") {
            r = {405, "only GET is supported\n"};
            keep_alive = false; // we did not read its body
        } else {
            using namespace asio::experimental::awaitable_operators;
            std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
            // A client that leaves cancels its request, and with it the task.
            auto done = co_await (answer(target, pool) || disconnected(socket));
            if (done.index() == 1) {
                std::printf("server: the client of %.*s left; its task was cancelled\n",
                            static_cast<int>(target.size()), target.data());
                std::fflush(stdout);
                co_return;
            }
            r = std::get<0>(std::move(done));
        }

        std::string out =
            "HTTP/1.1 " + std::to_string(r.status) + " " + reason(r.status) +
            "\r\nContent-Type: text/plain\r\nContent-Length: " + std::to_string(r.body.size()) +
            "\r\n" + (keep_alive ? "" : "Connection: close\r\n") + "\r\n" + r.body;
        co_await asio::async_write(socket, asio::buffer(out),
                                   asio::redirect_error(asio::use_awaitable, ec));
        if (ec || !keep_alive)
            co_return;
    }
}

asio::awaitable<void> listen(tcp::acceptor& acceptor, coproc::pool* pool) {
    for (;;) {
        std::error_code ec;
        tcp::socket socket =
            co_await acceptor.async_accept(asio::redirect_error(asio::use_awaitable, ec));
        if (ec)
            co_return; // the acceptor was closed: shutting down
        socket.set_option(tcp::no_delay(true));
        asio::co_spawn(acceptor.get_executor(), session(std::move(socket), pool), asio::detached);
    }
}

// Serves until `done` completes, then stops accepting and lets the pool's workers exit.
asio::awaitable<void> serve_until(tcp::acceptor& acceptor, coproc::pool* pool,
                                  asio::awaitable<void> done) {
    asio::co_spawn(acceptor.get_executor(), listen(acceptor, pool), asio::detached);
    co_await std::move(done);
    acceptor.close();
    if (pool) {
        pool->close();
        co_await pool->async_join();
    }
}

// Runs the server on the calling thread: one io_context for the sockets and the pool.
void run_server(asio::io_context& io, tcp::acceptor& acceptor, coproc::pool* pool,
                asio::awaitable<void> done) {
    asio::co_spawn(io, serve_until(acceptor, pool, std::move(done)), [&](std::exception_ptr e) {
        io.stop(); // also ends idle keep-alive sessions
        if (e)
            std::rethrow_exception(e);
    });
    io.run();
}

asio::awaitable<void> ctrl_c() {
    asio::signal_set signals(co_await asio::this_coro::executor, SIGINT, SIGTERM);
    co_await signals.async_wait(asio::use_awaitable);
}

// The client.

// One keep-alive HTTP/1.1 connection.
struct http_client {
    tcp::socket socket;
    std::string in;

    asio::awaitable<reply> get(std::string target) {
        std::string request = "GET " + target + " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
        co_await asio::async_write(socket, asio::buffer(request), asio::use_awaitable);
        // "HTTP/1.1 200 OK\r\n...Content-Length: 8\r\n\r\n" and the body
        std::size_t head_size = co_await asio::async_read_until(socket, asio::dynamic_buffer(in),
                                                                "\r\n\r\n", asio::use_awaitable);
        std::string head = in.substr(0, head_size);
        in.erase(0, head_size);
        std::size_t length_at = head.find("Content-Length: ");
        if (!head.starts_with("HTTP/1.1 ") || length_at == std::string::npos)
            throw std::runtime_error("bad reply from the server: " + head);
        std::size_t length = std::strtoul(head.c_str() + length_at + 16, nullptr, 10);
        if (in.size() < length)
            co_await asio::async_read(socket, asio::dynamic_buffer(in),
                                      asio::transfer_exactly(length - in.size()),
                                      asio::use_awaitable);
        reply r{std::atoi(head.c_str() + 9), in.substr(0, length)};
        in.erase(0, length);
        co_return r;
    }
};

asio::awaitable<http_client> connect(unsigned short port) {
    tcp::socket socket(co_await asio::this_coro::executor);
    co_await socket.async_connect({asio::ip::address_v4::loopback(), port}, asio::use_awaitable);
    socket.set_option(tcp::no_delay(true));
    co_return http_client{std::move(socket), {}};
}

struct bench_options {
    int requests = 200;
    int concurrency = 16;
    int n = 32;
    std::size_t processes = 0; // the server's pool size (0: one per CPU)
};

struct bench_state {
    int to_send = 0;
    int loaders = 0; // connections still sending /fib requests
    int wrong = 0;   // replies that were not the right number
    std::vector<double> health_ms;
    steady::time_point start, end;
};

std::uint64_t fib_fast(int n) {
    std::uint64_t a = 0, b = 1;
    for (int i = 0; i < n; ++i)
        b = std::exchange(a, b) + b;
    return a;
}

// Sends /fib requests on one connection until the shared count runs out.
asio::awaitable<void> load(unsigned short port, int n, bench_state& s) {
    http_client c = co_await connect(port);
    const std::string want = std::to_string(fib_fast(n)) + "\n";
    while (s.to_send > 0) {
        --s.to_send;
        reply r = co_await c.get("/fib?n=" + std::to_string(n));
        s.wrong += r.status != 200 || r.body != want;
    }
}

// Asks /health every 2 ms while the load runs, timing each answer.
asio::awaitable<void> probe(unsigned short port, bench_state& s) {
    http_client c = co_await connect(port);
    asio::steady_timer pause(co_await asio::this_coro::executor);
    while (s.loaders > 0) {
        steady::time_point t0 = steady::now();
        co_await c.get("/health");
        s.health_ms.push_back(
            std::chrono::duration<double, std::milli>(steady::now() - t0).count());
        pause.expires_after(2ms);
        co_await pause.async_wait(asio::use_awaitable);
    }
}

double ms_since(steady::time_point t0) {
    return std::chrono::duration<double, std::milli>(steady::now() - t0).count();
}

// A 5 s task with a 200 ms deadline: 504 after about 200 ms; the worker is then free again.
asio::awaitable<void> deadline_demo(http_client& c, bench_state& s) {
    steady::time_point t0 = steady::now();
    reply r = co_await c.get("/spin?ms=5000&deadline_ms=200");
    double took = ms_since(t0);
    std::printf("  GET /spin?ms=5000&deadline_ms=200 -> %d after %.0f ms\n", r.status, took);
    s.wrong += r.status != 504 || took > 2000;
    t0 = steady::now();
    reply h = co_await c.get("/health");
    reply f = co_await c.get("/fib?n=20");
    std::printf("  then /health and /fib?n=20 -> %d, %d in %.1f ms\n", h.status, f.status,
                ms_since(t0));
    s.wrong += h.status != 200 || f.body != "6765\n";
}

// A client sends a 5 s request and leaves after 100 ms: the server cancels its task.
asio::awaitable<void> disconnect_demo(unsigned short port, bench_state& s) {
    {
        http_client gone = co_await connect(port);
        std::string request = "GET /spin?ms=5000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
        co_await asio::async_write(gone.socket, asio::buffer(request), asio::use_awaitable);
        asio::steady_timer wait(co_await asio::this_coro::executor, 100ms);
        co_await wait.async_wait(asio::use_awaitable);
    } // closed
    steady::time_point t0 = steady::now();
    http_client c = co_await connect(port);
    reply f = co_await c.get("/fib?n=20");
    std::printf("  a client left during /spin?ms=5000; then /fib?n=20 -> %d in %.1f ms\n",
                f.status, ms_since(t0));
    s.wrong += f.body != "6765\n";
}

asio::awaitable<void> bench_run(unsigned short port, bench_options o, bench_state& s) {
    http_client c = co_await connect(port);
    reply hello = co_await c.get("/health");
    std::printf("server: %s", hello.body.c_str());
    for (const char* bad : {"/fib?n=99", "/fib?n=abc", "/nope"}) {
        reply r = co_await c.get(bad);
        std::printf("  GET %-11s -> %d %s", bad, r.status, r.body.c_str());
        s.wrong += r.status != (std::strcmp(bad, "/nope") == 0 ? 404 : 400);
    }
    reply primes = co_await c.get("/primes?limit=100000");
    std::printf("  GET /primes?limit=100000 -> %d %s", primes.status, primes.body.c_str());
    s.wrong += primes.body != "9592\n";
    if (hello.body.starts_with("ok, pool")) {
        co_await deadline_demo(c, s);
        co_await disconnect_demo(port, s);
    }

    auto ex = co_await asio::this_coro::executor;
    s.to_send = o.requests;
    s.loaders = o.concurrency;
    s.start = steady::now();
    for (int i = 0; i < o.concurrency; ++i)
        asio::co_spawn(ex, load(port, o.n, s), [&s](std::exception_ptr e) {
            if (e)
                ++s.wrong;
            if (--s.loaders == 0)
                s.end = steady::now();
        });
    asio::co_spawn(ex, probe(port, s), asio::detached);
}

double percentile(std::vector<double> v, double p) {
    if (v.empty())
        return 0;
    std::sort(v.begin(), v.end());
    std::size_t rank = static_cast<std::size_t>(std::ceil(p * v.size())); // nearest rank
    return v[std::max<std::size_t>(rank, 1) - 1];
}

// The client process: checks the bad-request answers, then loads the server with `concurrency`
// connections sending /fib?n= requests while a probe times /health.
void bench(unsigned short port, bench_options o) {
    asio::io_context io;
    bench_state s;
    asio::co_spawn(io, bench_run(port, o, s), [](std::exception_ptr e) {
        if (e)
            std::rethrow_exception(e);
    });
    io.run();
    double seconds = std::chrono::duration<double>(s.end - s.start).count();
    std::printf("  %d x /fib?n=%d over %d connections: %.2f s, %.0f requests/s\n", o.requests, o.n,
                o.concurrency, seconds, o.requests / seconds);
    std::printf("  /health under that load: p50 %.2f ms, p99 %.2f ms (%zu probes)\n",
                percentile(s.health_ms, 0.50), percentile(s.health_ms, 0.99), s.health_ms.size());
    if (s.wrong != 0)
        throw std::runtime_error(std::to_string(s.wrong) + " wrong replies");
}

// Starts a server with the pool, then one without, each benchmarked by a client process.
int compare(bench_options o) {
    for (bool use_pool : {true, false}) {
        asio::io_context io;
        std::optional<coproc::pool> pool; // made before any socket, so its workers inherit none
        if (use_pool)
            pool.emplace(io.get_executor(), coproc::pool_options{.processes = o.processes,
                                                                 .cancel_grace = cancel_grace});
        tcp::acceptor acceptor(io, {asio::ip::address_v4::loopback(), 0}); // any free port
        coproc::process client(bench, acceptor.local_endpoint().port(), o);
        client.start();
        run_server(io, acceptor, pool ? &*pool : nullptr, client.async_join());
        if (client.exitcode() != 0)
            return 1;
    }
    return 0;
}

int main(int argc, char** argv) try {
    bench_options o;
    if (argc == 1) // the demo run by ./samples/run.sh: short
        o.requests = 80, o.concurrency = 8;
    std::optional<int> serve_port, bench_port;
    bool bench_mode = false, use_pool = true;
    for (int i = 1; i < argc; ++i) {
        std::string_view arg = argv[i];
        auto value = [&] { return i + 1 < argc ? std::atoi(argv[++i]) : -1; };
        if (arg == "--serve")
            serve_port = value();
        else if (arg == "--bench")
            bench_mode = true;
        else if (arg == "--port")
            bench_port = value();
        else if (arg == "--no-pool")
            use_pool = false;
        else if (arg == "--processes")
            o.processes = std::max(0, value());
        else if (arg == "--requests")
            o.requests = value();
        else if (arg == "--concurrency")
            o.concurrency = value();
        else if (arg == "--n")
            o.n = value();
        else {
            std::fprintf(stderr, "usage: 09_http_offload [--serve PORT [--no-pool] "
                                 "[--processes N]] [--bench [--requests R] [--concurrency C] "
                                 "[--n N] [--port PORT]]\n");
            return 2;
        }
    }
    auto is_port = [](std::optional<int> p) { return !p || (*p >= 0 && *p <= 65535); };
    if (o.requests < 1 || o.concurrency < 1 || o.n < 0 || o.n > 35 || !is_port(serve_port) ||
        !is_port(bench_port)) {
        std::fprintf(stderr, "09_http_offload: need --requests >= 1, --concurrency >= 1, "
                             "--n from 0 to 35, ports from 0 to 65535\n");
        return 2;
    }

    if (serve_port) {
        asio::io_context io;
        std::optional<coproc::pool> pool; // made before any socket, so its workers inherit none
        if (use_pool)
            pool.emplace(io.get_executor(), coproc::pool_options{.processes = o.processes,
                                                                 .cancel_grace = cancel_grace});
        tcp::acceptor acceptor(
            io, {asio::ip::address_v4::loopback(), static_cast<unsigned short>(*serve_port)});
        std::printf("serving http://127.0.0.1:%d (%s); Ctrl-C stops\n",
                    acceptor.local_endpoint().port(), use_pool ? "with a pool" : "no pool");
        std::fflush(stdout);
        run_server(io, acceptor, pool ? &*pool : nullptr, ctrl_c());
        return 0;
    }
    if (bench_mode && bench_port) {
        bench(static_cast<unsigned short>(*bench_port), o);
        return 0;
    }
    if (compare(o) != 0)
        return 1;
    std::puts("09_http_offload: ok");
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "09_http_offload: %s\n", e.what());
    return 1;
}
