// Test that header file is self-contained.
#include <coproc/error.hpp>

#include <doctest/doctest.h>

TEST_SUITE_BEGIN("error");

TEST_CASE("every coproc error is a coproc::error and a std::runtime_error") {
    CHECK_THROWS_AS(throw coproc::pool_closed("x"), coproc::error);
    CHECK_THROWS_AS(throw coproc::timeout_error("x"), std::runtime_error);
    coproc::worker_lost lost("gone", 42, 9, -1);
    CHECK(lost.pid() == 42);
    CHECK(lost.signal() == 9);
    CHECK(std::string(lost.what()) == "gone");
    coproc::remote_error r("my::thing", "boom");
    CHECK(r.type_name() == "my::thing");
    CHECK(std::string(r.what()) == "boom");
}

TEST_SUITE_END();
