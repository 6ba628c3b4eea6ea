#pragma once
// COPROC_ASAN and COPROC_TSAN are 1 in a translation unit built with AddressSanitizer or
// ThreadSanitizer: g++ says so with __SANITIZE_ADDRESS__ / __SANITIZE_THREAD__, clang with
// __has_feature.

#if defined(__SANITIZE_ADDRESS__)
#define COPROC_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define COPROC_ASAN 1
#endif
#endif

#if defined(__SANITIZE_THREAD__)
#define COPROC_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define COPROC_TSAN 1
#endif
#endif

#ifndef COPROC_ASAN
#define COPROC_ASAN 0
#endif
#ifndef COPROC_TSAN
#define COPROC_TSAN 0
#endif
