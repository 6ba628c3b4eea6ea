// coproc/coproc.hpp — everything: Python's multiprocessing for C++, awaitable on Asio.
#pragma once

#include <coproc/async_generator.hpp>
#include <coproc/async_result.hpp>
#include <coproc/barrier.hpp>
#include <coproc/condition.hpp>
#include <coproc/error.hpp>
#include <coproc/event.hpp>
#include <coproc/lock.hpp>
#include <coproc/options.hpp>
#include <coproc/pipe.hpp>
#include <coproc/pool.hpp>
#include <coproc/process.hpp>
#include <coproc/queue.hpp>
#include <coproc/rlock.hpp>
#include <coproc/semaphore.hpp>
#include <coproc/serialize.hpp>
#include <coproc/shared_state.hpp>
#include <coproc/this_task.hpp>
#include <coproc/version.hpp>
