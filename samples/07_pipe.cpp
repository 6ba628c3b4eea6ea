// Python:
//   def f(conn):
//       conn.send([42, None, 'hello'])
//       conn.close()
//
//   parent_conn, child_conn = Pipe()
//   p = Process(target=f, args=(child_conn,))
//   p.start()
//   print(parent_conn.recv())   # prints "[42, None, 'hello']"
//   p.join()
#include <coproc/coproc.hpp>

#include <cstdio>
#include <optional>
#include <string>
#include <tuple>

using item = std::tuple<int, std::optional<int>, std::string>;

void f(coproc::connection<item> conn) {
    conn.send({42, std::nullopt, "hello"});
    conn.close();
}

int main() {
    auto [parent_conn, child_conn] = coproc::pipe<item>();
    coproc::process p(f, child_conn);
    p.start();
    auto [n, none, text] = parent_conn.recv();
    std::printf("[%d, %s, '%s']\n", n, none ? "?" : "None", text.c_str());
    p.join();
    std::puts("07_pipe: ok");
}
