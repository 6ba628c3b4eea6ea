#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include "current_case.hpp"

#include <doctest/doctest.h>

namespace {

/// Records the running test case's name for a watchdog's report.
struct current_case_listener : doctest::IReporter {
    explicit current_case_listener(const doctest::ContextOptions&) {}
    void test_case_start(const doctest::TestCaseData& tc) override {
        coproc::test::current_test_case.store(tc.m_name);
    }
    void test_case_end(const doctest::CurrentTestCaseStats&) override {
        coproc::test::current_test_case.store("(between cases)");
    }

    void report_query(const doctest::QueryData&) override {}
    void test_run_start() override {}
    void test_run_end(const doctest::TestRunStats&) override {}
    void test_case_reenter(const doctest::TestCaseData&) override {}
    void test_case_exception(const doctest::TestCaseException&) override {}
    void subcase_start(const doctest::SubcaseSignature&) override {}
    void subcase_end() override {}
    void log_assert(const doctest::AssertData&) override {}
    void log_message(const doctest::MessageData&) override {}
    void test_case_skipped(const doctest::TestCaseData&) override {}
};

} // namespace

REGISTER_LISTENER("current_case", 0, current_case_listener);
