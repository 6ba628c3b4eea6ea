// Function identity in task frames (see include/coproc/detail/function_id.hpp).
#include <coproc/detail/function_id.hpp>
#include <coproc/detail/pool_core.hpp>
#include "task_key.hpp"

namespace coproc::detail {

// Task entries and functions are named by their offsets from this object.
const char function_anchor = 0;

// The pool replaces the entry digest by the frame's MAC when it first hands the frame to a
// worker (seal_task_frame): only the pool holds the key.
void append_task_prefix(std::vector<char>& out, const task_entry* entry, erased_fn fn) {
    const task_prefix p{offset_of(entry), offset_of(reinterpret_cast<const void*>(fn)),
                        entry_digest(*entry)};
    const auto* bytes = reinterpret_cast<const char*>(&p);
    out.insert(out.end(), bytes, bytes + sizeof p);
}

} // namespace coproc::detail
