// coproc/coproc.hpp — everything: Python's multiprocessing for C++, awaitable on Asio.
#pragma once

#include <coproc/async_generator.hpp>
#include <coproc/async_result.hpp>
#include <coproc/error.hpp>
#include <coproc/options.hpp>
#include <coproc/pool.hpp>
#include <coproc/serialize.hpp>
