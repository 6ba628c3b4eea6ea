// Python:
//   pool.apply_async(square, (7,), callback=print_result, error_callback=print_error)
//   pool.apply_async(divide, (1, 0), callback=print_result, error_callback=print_error)
#include <coproc/coproc.hpp>

#include <cstdio>
#include <exception>
#include <stdexcept>

int square(int x) { return x * x; }

int divide(int a, int b) {
    if (b == 0)
        throw std::domain_error("division by zero");
    return a / b;
}

void print_result(int r) { std::printf("result: %d\n", r); }

void print_error(std::exception_ptr e) {
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& x) {
        std::printf("error: %s\n", x.what());
    }
}

int main() {
    coproc::pool pool(2);
    auto ok = pool.apply_async(square, {7}, print_result, print_error);
    auto bad = pool.apply_async(divide, {1, 0}, print_result, print_error);
    ok.wait();
    bad.wait();
    std::printf("successful: %s, %s\n", ok.successful() ? "yes" : "no",
                bad.successful() ? "yes" : "no");
    std::puts("02_apply_async: ok");
}
