#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include "current_case.hpp"
#include "listener.hpp"

#include <doctest/doctest.h>

namespace {

/// Records the running test case's name for a watchdog's report.
struct current_case_listener : coproc::test::quiet_listener {
    explicit current_case_listener(const doctest::ContextOptions&) {}
    void test_case_start(const doctest::TestCaseData& tc) override {
        coproc::test::current_test_case.store(tc.m_name);
    }
    void test_case_end(const doctest::CurrentTestCaseStats&) override {
        coproc::test::current_test_case.store("(between cases)");
    }
};

} // namespace

REGISTER_LISTENER("current_case", 0, current_case_listener);
