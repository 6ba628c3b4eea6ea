// What an mpi_pool and its agents say to each other (see protocol.hpp, code_address.hpp).
#include "protocol.hpp"

#include <coproc/detail/wire.hpp>
#include <coproc/error.hpp>
#include <coproc/serialize.hpp>
#include "../transport.hpp"
#include "code_address.hpp"

#include <cstdio>
#include <cstring>
#include <elf.h>
#include <fstream>
#include <link.h>

namespace coproc::detail {

namespace {

// Which of coproc's own exceptions an error frame carries (its `aux`).
enum class carried : std::uint64_t { transported = 0, worker_lost, pool_closed, timeout_error };

// The GNU build-id note of the main executable, as hex; empty if it has none.
std::string build_id_note() {
    std::string out;
    dl_iterate_phdr(
        [](dl_phdr_info* info, std::size_t, void* data) -> int {
            auto& hex = *static_cast<std::string*>(data);
            for (int i = 0; i < info->dlpi_phnum; ++i) {
                const auto& ph = info->dlpi_phdr[i];
                if (ph.p_type != PT_NOTE)
                    continue;
                const char* p = reinterpret_cast<const char*>(info->dlpi_addr + ph.p_vaddr);
                const char* end = p + ph.p_memsz;
                while (p + sizeof(ElfW(Nhdr)) <= end) {
                    ElfW(Nhdr) n;
                    std::memcpy(&n, p, sizeof n);
                    const char* name = p + sizeof n;
                    const char* desc = name + ((n.n_namesz + 3) & ~3u);
                    if (n.n_type == NT_GNU_BUILD_ID && n.n_namesz == 4 &&
                        std::memcmp(name, "GNU", 4) == 0 && desc + n.n_descsz <= end) {
                        static constexpr char digits[] = "0123456789abcdef";
                        for (std::size_t k = 0; k < n.n_descsz; ++k) {
                            const auto b = static_cast<unsigned char>(desc[k]);
                            hex += digits[b >> 4];
                            hex += digits[b & 15];
                        }
                        return 1;
                    }
                    p = desc + ((n.n_descsz + 3) & ~3u);
                }
            }
            return 1; // the first object is the main executable: look no further
        },
        &out);
    return out;
}

std::string file_hash(const char* path) {
    std::ifstream in(path, std::ios::binary);
    std::uint64_t h = 14695981039346656037ull;
    char buf[65536];
    while (in.read(buf, sizeof buf) || in.gcount() > 0) {
        for (std::streamsize i = 0; i < in.gcount(); ++i) {
            h ^= static_cast<unsigned char>(buf[i]);
            h *= 1099511628211ull;
        }
    }
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(h));
    return std::string("fnv:") + hex;
}

// `what` with the agent's "task N (@)" replaced by `context`, prefixed by `where`.
std::string reworded(std::string what, std::string_view where, std::string_view context) {
    const std::string mark = " (" + std::string(task_placeholder) + ")";
    const auto end = what.find(mark);
    const auto begin = end == std::string::npos ? end : what.rfind("task ", end);
    if (begin != std::string::npos)
        what.replace(begin, end + mark.size() - begin, context);
    return std::string(where) + ": " + what;
}

} // namespace

const std::string& build_id() {
    static const std::string id = [] {
        auto note = build_id_note();
        return note.empty() ? file_hash("/proc/self/exe") : note;
    }();
    return id;
}

std::vector<char> encode(const start_request& r) {
    std::vector<char> out;
    const auto& o = r.options;
    const bool has_init = o.initializer != nullptr;
    const code_address init =
        has_init ? locate(reinterpret_cast<const void*>(o.initializer)) : code_address{};
    serialize_into(out, r.build_id, static_cast<std::uint64_t>(o.processes), has_init, init.object,
                   init.offset, static_cast<std::uint64_t>(o.maxtasksperchild),
                   static_cast<std::int64_t>(o.task_timeout.count()));
    return out;
}

start_request decode_start(std::span<const char> bytes) {
    start_request r;
    std::uint64_t processes = 0, maxtasks = 0;
    bool has_init = false;
    code_address init;
    std::int64_t timeout = 0;
    deserialize_from(bytes, r.build_id, processes, has_init, init.object, init.offset, maxtasks,
                     timeout);
    r.options.processes = processes;
    r.options.maxtasksperchild = maxtasks;
    r.options.task_timeout = std::chrono::milliseconds(timeout);
    // Same build (checked by the agent before it uses this): the same function.
    if (has_init)
        r.options.initializer = reinterpret_cast<void (*)()>(const_cast<void*>(resolve(init)));
    return r;
}

std::vector<char> encode(const start_reply& r) {
    std::vector<char> out;
    serialize_into(out, r.ok, r.workers, r.host, r.error);
    return out;
}

start_reply decode_started(std::span<const char> bytes) {
    start_reply r;
    deserialize_from(bytes, r.ok, r.workers, r.host, r.error);
    return r;
}

std::vector<char> error_frame(std::uint64_t id, const std::exception_ptr& e) {
    std::vector<char> out;
    const auto at = begin_frame(out, frame_kind::error, id, 0);
    carried c = carried::transported;
    try {
        std::rethrow_exception(e);
    } catch (const worker_lost& x) {
        c = carried::worker_lost;
        serialize_into(out, std::string(x.what()), static_cast<std::int64_t>(x.pid()), x.signal(),
                       x.exit_status());
    } catch (const pool_closed& x) {
        c = carried::pool_closed;
        serialize_into(out, std::string(x.what()));
    } catch (const timeout_error& x) {
        c = carried::timeout_error;
        serialize_into(out, std::string(x.what()));
    } catch (...) {
        encode_current_exception(out);
    }
    end_frame(out, at, static_cast<std::uint64_t>(c));
    return out;
}

std::exception_ptr decode_error(std::uint64_t aux, std::span<const char> payload,
                                std::string_view where, std::string_view context) {
    try {
        std::string what;
        switch (static_cast<carried>(aux)) {
        case carried::transported:
            return decode_exception(payload, context);
        case carried::worker_lost: {
            std::int64_t pid = 0;
            int sig = 0, status = 0;
            deserialize_from(payload, what, pid, sig, status);
            return std::make_exception_ptr(
                worker_lost(reworded(what, where, context), static_cast<pid_t>(pid), sig, status));
        }
        case carried::pool_closed:
            deserialize_from(payload, what);
            return std::make_exception_ptr(pool_closed(reworded(what, where, context)));
        case carried::timeout_error:
            deserialize_from(payload, what);
            return std::make_exception_ptr(timeout_error(reworded(what, where, context)));
        }
        throw error("unknown kind of error " + std::to_string(aux));
    } catch (const std::exception& e) {
        return std::make_exception_ptr(error("cannot decode the error of " + std::string(context) +
                                             " from " + std::string(where) + ": " + e.what()));
    }
}

} // namespace coproc::detail
