// A mutex that spins briefly before it sleeps (glibc's PTHREAD_MUTEX_ADAPTIVE_NP), for locks
// held for short, frequent sections by two busy threads, such as a pool's submitter and its
// event loop: a wait of a few hundred nanoseconds then costs no futex sleep and wake-up.
#pragma once

#include <pthread.h>

namespace coproc::detail {

class adaptive_mutex {
  public:
    adaptive_mutex() noexcept {
        pthread_mutexattr_t a;
        pthread_mutexattr_init(&a);
        pthread_mutexattr_settype(&a, PTHREAD_MUTEX_ADAPTIVE_NP);
        pthread_mutex_init(&m_, &a);
        pthread_mutexattr_destroy(&a);
    }
    ~adaptive_mutex() { pthread_mutex_destroy(&m_); }
    adaptive_mutex(const adaptive_mutex&) = delete;
    adaptive_mutex& operator=(const adaptive_mutex&) = delete;

    void lock() noexcept { pthread_mutex_lock(&m_); }
    bool try_lock() noexcept { return pthread_mutex_trylock(&m_) == 0; }
    void unlock() noexcept { pthread_mutex_unlock(&m_); }

  private:
    pthread_mutex_t m_;
};

} // namespace coproc::detail
