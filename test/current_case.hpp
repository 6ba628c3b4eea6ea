// The name of the doctest case now running, for a watchdog's report (set by test_main.cpp).
#pragma once

#include <atomic>

namespace coproc::test {

inline std::atomic<const char*> current_test_case{"(none)"};

} // namespace coproc::test
