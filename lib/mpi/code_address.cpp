// Code addresses across ranks (see code_address.hpp).
#include "code_address.hpp"

#include <coproc/detail/function_id.hpp>
#include <coproc/detail/wire.hpp>
#include <coproc/error.hpp>
#include <coproc/serialize.hpp>
#include "../task_key.hpp"

#include <cstring>
#include <link.h>
#include <mutex>
#include <optional>

namespace coproc::detail {

namespace {

struct loaded_object {
    std::string name;
    std::uintptr_t base;   // dlpi_addr
    std::uintptr_t lo, hi; // the span of its PT_LOAD segments
};

std::string file_name(const char* path) {
    std::string p = path ? path : "";
    const auto slash = p.rfind('/');
    return slash == std::string::npos ? p : p.substr(slash + 1);
}

std::vector<loaded_object> scan() {
    std::vector<loaded_object> out;
    dl_iterate_phdr(
        [](dl_phdr_info* info, std::size_t, void* data) -> int {
            auto& v = *static_cast<std::vector<loaded_object>*>(data);
            std::uintptr_t lo = UINTPTR_MAX, hi = 0;
            for (int i = 0; i < info->dlpi_phnum; ++i) {
                const auto& ph = info->dlpi_phdr[i];
                if (ph.p_type != PT_LOAD)
                    continue;
                lo = std::min<std::uintptr_t>(lo, info->dlpi_addr + ph.p_vaddr);
                hi = std::max<std::uintptr_t>(hi, info->dlpi_addr + ph.p_vaddr + ph.p_memsz);
            }
            // The executable comes first, with an empty name.
            v.push_back(
                {v.empty() ? std::string() : file_name(info->dlpi_name), info->dlpi_addr, lo, hi});
            return 0;
        },
        &out);
    return out;
}

// The loaded objects, scanned again when an address or a name is not found (after a dlopen).
class object_table {
  public:
    template <class Match> std::optional<loaded_object> find(Match match) {
        std::lock_guard lk(mu_);
        for (int pass = 0; pass < 2; ++pass) {
            for (const auto& o : objects_)
                if (match(o))
                    return o;
            if (pass == 0)
                objects_ = scan();
        }
        return std::nullopt;
    }

  private:
    std::mutex mu_;
    std::vector<loaded_object> objects_;
};

object_table& objects() {
    static object_table t;
    return t;
}

} // namespace

code_address locate(const void* p) {
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    const auto o = objects().find([&](const loaded_object& o) { return o.lo <= a && a < o.hi; });
    if (!o)
        throw coproc::error("mpi_pool: a task function lies in no loaded object");
    return {o->name, static_cast<std::int64_t>(a - o->base)};
}

const void* resolve(const code_address& c) {
    const auto o = objects().find([&](const loaded_object& o) { return o.name == c.object; });
    if (!o)
        throw coproc::error("mpi_pool: this rank has not loaded " +
                            (c.object.empty() ? std::string("the executable") : c.object) +
                            ", which holds a task function");
    return reinterpret_cast<const void*>(o->base + static_cast<std::uintptr_t>(c.offset));
}

std::vector<char> task_message(std::uint64_t id, const std::vector<char>& frame) {
    task_prefix p;
    if (frame.size() < sizeof(frame_header) + sizeof p)
        throw coproc::error("mpi_pool: not a task frame");
    std::memcpy(&p, frame.data() + sizeof(frame_header), sizeof p);
    const auto anchor = reinterpret_cast<std::uintptr_t>(&function_anchor);
    const auto* entry =
        reinterpret_cast<const task_entry*>(anchor + static_cast<std::uintptr_t>(p.entry));
    const auto e = locate(entry);
    const auto f =
        locate(reinterpret_cast<const void*>(anchor + static_cast<std::uintptr_t>(p.fn)));
    const auto inv = locate(reinterpret_cast<const void*>(entry->invoke));
    std::vector<char> out(12); // the id and the addresses' length, set below
    serialize_into(out, e.object, e.offset, f.object, f.offset, inv.object, inv.offset,
                   entry->signature);
    const auto n = static_cast<std::uint32_t>(out.size() - 12);
    std::memcpy(out.data(), &id, 8);
    std::memcpy(out.data() + 8, &n, 4);
    out.insert(out.end(), frame.begin(), frame.end());
    return out;
}

std::uint64_t task_message_id(std::span<const char> message) noexcept {
    std::uint64_t id = 0;
    if (message.size() >= 8)
        std::memcpy(&id, message.data(), 8);
    return id;
}

std::vector<char> task_frame(std::span<const char> message) {
    std::uint32_t n = 0;
    if (message.size() < 12)
        throw coproc::error("malformed task message: too short");
    std::memcpy(&n, message.data() + 8, 4);
    if (message.size() - 12 < std::size_t{n} + sizeof(frame_header) + sizeof(task_prefix))
        throw coproc::error("malformed task message: too short for its frame");
    code_address e, f, inv;
    std::uint64_t signature = 0;
    deserialize_from(message.subspan(12, n), e.object, e.offset, f.object, f.offset, inv.object,
                     inv.offset, signature);
    auto rest = message.subspan(12 + n);
    std::vector<char> frame(rest.begin(), rest.end());
    const auto h = read_header(frame.data());
    if (h.kind != static_cast<std::uint16_t>(frame_kind::task) ||
        h.size != frame.size() - sizeof(frame_header))
        throw coproc::error("malformed task message: not a task frame");
    const task_prefix p{offset_of(resolve(e)), offset_of(resolve(f)),
                        signature ^ static_cast<std::uint64_t>(offset_of(resolve(inv)))};
    std::memcpy(frame.data() + sizeof(frame_header), &p, sizeof p);
    return frame;
}

} // namespace coproc::detail
