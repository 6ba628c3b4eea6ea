// Python:
//   def f(q):
//       q.put([42, None, 'hello'])
//
//   q = Queue()
//   p = Process(target=f, args=(q,))
//   p.start()
//   print(q.get())    # prints "[42, None, 'hello']"
//   p.join()
#include <coproc/coproc.hpp>

#include <cstdio>
#include <optional>
#include <string>
#include <tuple>

using item = std::tuple<int, std::optional<int>, std::string>;

void f(coproc::queue<item> q) { q.put({42, std::nullopt, "hello"}); }

int main() {
    coproc::queue<item> q;
    coproc::process p(f, q);
    p.start();
    auto [n, none, text] = q.get();
    std::printf("[%d, %s, '%s']\n", n, none ? "?" : "None", text.c_str());
    p.join();
    std::puts("06_queue: ok");
}
