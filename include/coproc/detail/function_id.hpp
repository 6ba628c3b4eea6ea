// coproc/detail/function_id.hpp — how a task function travels to a worker.
//
// A worker is a fork of the parent, so code addresses are the same on both sides. A task is
// sent as two offsets from a fixed anchor: its `task_entry` (a constant made per function
// signature, holding a magic number, the signature's hash and the invoker that decodes the
// arguments, calls the function and encodes the result) and the function itself, followed by
// a MAC: SipHash-2-4, under a random key each pool draws before it forks anything, of both
// offsets and the entry's digest (signature hash and invoker offset, see entry_digest). Before
// calling anything the worker checks that the entry lies in read-only data of the program (a
// PT_LOAD segment without write permission, or a PT_GNU_RELRO range: with PIE the entry,
// holding a pointer, lives in .data.rel.ro), that its magic matches, that its invoker and the
// function lie in executable code, and that the MAC it computes from the entry it found equals
// the frame's. A stray, forged or other pool's frame is an error, not a jump into the unknown.
#pragma once

#include <coproc/serialize.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace coproc::detail {

template <class> inline constexpr bool dependent_false = false;

/// The compiler's spelling of `T`, e.g. "int (*)(int, int)".
template <class T> constexpr std::string_view type_name() {
    std::string_view p = __PRETTY_FUNCTION__;
    auto b = p.find("T = ") + 4;
    auto e = p.find_first_of(";]", b);
    return p.substr(b, e - b);
}

constexpr std::uint64_t fnv1a(std::string_view s) {
    std::uint64_t h = 14695981039346656037ull;
    for (char c : s) {
        h ^= static_cast<unsigned char>(c);
        h *= 1099511628211ull;
    }
    return h;
}

template <class F>
concept function_pointer = std::is_pointer_v<F> && std::is_function_v<std::remove_pointer_t<F>>;

template <class F>
concept converts_to_function_pointer = requires(F f) {
    { +f } -> function_pointer;
};

/// `f` as a plain function pointer; anything else fails to compile with a reason.
template <class F> constexpr auto to_function_pointer(F f) {
    if constexpr (function_pointer<F>) {
        return f;
    } else if constexpr (std::is_class_v<F> && converts_to_function_pointer<F>) {
        return +f;
    } else if constexpr (std::is_class_v<F> && !std::is_empty_v<F>) {
        static_assert(dependent_false<F>,
                      "task function must be a plain function or captureless lambda; got a "
                      "lambda with captures or a function object with state (pass the state "
                      "as an argument instead)");
    } else if constexpr (std::is_class_v<F>) {
        static_assert(dependent_false<F>,
                      "task function must be a plain function or captureless lambda; got a "
                      "generic lambda or a function object without a function-pointer "
                      "conversion (give the lambda's parameters concrete types)");
    } else {
        static_assert(dependent_false<F>,
                      "task function must be a plain function or captureless lambda");
    }
}

template <class F> using function_pointer_t = decltype(to_function_pointer(std::declval<F>()));

/// What travels back for a function returning void.
template <class R> using wire_result_t = std::conditional_t<std::is_void_v<R>, std::monostate, R>;

template <class Fp> struct fn_traits;
template <class R, class... A> struct fn_traits<R (*)(A...)> {
    using result = std::decay_t<R>;
    using args = std::tuple<std::decay_t<A>...>;
    using params = std::tuple<A...>;
    static constexpr std::size_t arity = sizeof...(A);
};
template <class R, class... A> struct fn_traits<R (*)(A...) noexcept> : fn_traits<R (*)(A...)> {};

/// The result type of task function `F`.
template <class F> using task_result_t = typename fn_traits<function_pointer_t<F>>::result;
/// The decayed argument tuple of task function `F`.
template <class F> using task_args_t = typename fn_traits<function_pointer_t<F>>::args;

using erased_fn = void (*)();
/// Decodes `count` argument tuples from `in`, calls `fn` on each and encodes each result to
/// `out`; `done` counts the items finished (so an error can name the item that threw).
using invoke_fn = void (*)(erased_fn fn, reader& in, writer& out, std::uint64_t count,
                           std::uint64_t& done);

inline constexpr std::uint64_t entry_magic = 0x636f70726f632131ull; // "coproc!1"

struct task_entry {
    std::uint64_t magic;
    std::uint64_t signature;
    invoke_fn invoke;
    std::string_view name; // the function's type, for error messages
};

template <class Param, class T> decltype(auto) pass_arg(T& v) {
    if constexpr (std::is_lvalue_reference_v<Param>)
        return (v);
    else
        return std::move(v);
}

template <class Fp, std::size_t... I>
decltype(auto) call_with(Fp fn, typename fn_traits<Fp>::args& a, std::index_sequence<I...>) {
    using params = typename fn_traits<Fp>::params;
    return fn(pass_arg<std::tuple_element_t<I, params>>(std::get<I>(a))...);
}

/// A number type other than bool: its binary form (cereal's) is its own bytes.
template <class T>
inline constexpr bool is_number = std::is_arithmetic_v<T> && !std::is_same_v<T, bool>;

/// Whether every element of the argument tuple `Args` is a number (and there is one at least).
template <class Args> struct all_numbers : std::false_type {};
template <class... A>
struct all_numbers<std::tuple<A...>>
    : std::bool_constant<(sizeof...(A) > 0) && (is_number<A> && ...)> {};

/// The bytes of one item of arguments `Args` that are all numbers: their binary forms one after
/// the other, as cereal writes a tuple.
template <class Args> inline constexpr std::size_t numbers_bytes = 0;
template <class... A>
inline constexpr std::size_t numbers_bytes<std::tuple<A...>> = (sizeof(A) + ... + 0);

/// Whether `Fp` takes numbers only and returns one.
template <class Fp>
inline constexpr bool numbers_to_numbers =
    (all_numbers<typename fn_traits<Fp>::args>::value) && is_number<typename fn_traits<Fp>::result>;

/// Copies the numbers of `args` out of `from`, which holds their binary forms one after the
/// other (numbers_bytes of them).
template <class... A> void read_numbers_of(std::tuple<A...>& args, const char* from) noexcept {
    std::apply([&](A&... a) { ((std::memcpy(&a, from, sizeof a), from += sizeof a), ...); }, args);
}

/// invoke_task() for a function of numbers returning one: the arguments are read in place and
/// the results written in one pass, the same bytes as item by item.
template <class Fp>
void invoke_on_numbers(Fp fn, reader& in, writer& out, std::uint64_t count, std::uint64_t& done) {
    using traits = fn_traits<Fp>;
    using R = typename traits::result;
    constexpr std::size_t item_bytes = numbers_bytes<typename traits::args>;
    if (count > in.remaining() / item_bytes)
        throw_malformed("task arguments", "fewer bytes than its numbers take");
    const char* args = in.take(count * item_bytes);
    std::vector<char>& results = out.buffer();
    const std::size_t at = results.size();
    results.resize(at + count * sizeof(R));
    for (done = 0; done < count; ++done) {
        typename traits::args a;
        read_numbers_of(a, args + done * item_bytes);
        const R r = call_with(fn, a, std::make_index_sequence<traits::arity>{});
        std::memcpy(results.data() + at + done * sizeof r, &r, sizeof r);
    }
}

template <class Fp>
void invoke_task(erased_fn raw, reader& in, writer& out, std::uint64_t count, std::uint64_t& done) {
    using traits = fn_traits<Fp>;
    auto fn = reinterpret_cast<Fp>(raw);
    if constexpr (numbers_to_numbers<Fp>)
        return invoke_on_numbers(fn, in, out, count, done);
    constexpr auto seq = std::make_index_sequence<traits::arity>{};
    for (done = 0; done < count; ++done) {
        typename traits::args a;
        try {
            in(a);
        } catch (const cereal::Exception& e) {
            throw_malformed("task arguments", e.what());
        }
        if constexpr (std::is_void_v<typename traits::result>) {
            call_with(fn, a, seq);
            out(std::monostate{});
        } else {
            const typename traits::result r = call_with(fn, a, seq);
            out(r);
        }
    }
}

template <class Fp>
inline constexpr task_entry task_entry_for{entry_magic, fnv1a(type_name<Fp>()), &invoke_task<Fp>,
                                           type_name<Fp>()};

/// The fixed point offsets are measured from (defined in the library).
extern const char function_anchor;

inline std::int64_t offset_of(const void* p) noexcept {
    return static_cast<std::int64_t>(reinterpret_cast<std::uintptr_t>(p) -
                                     reinterpret_cast<std::uintptr_t>(&function_anchor));
}

/// What a task frame's MAC says about its entry: the signature hash and the invoker's offset.
/// The worker recomputes it from the entry it finds, never takes it from the frame.
inline std::uint64_t entry_digest(const task_entry& e) noexcept {
    const auto invoker = offset_of(reinterpret_cast<const void*>(e.invoke));
    return e.signature ^ static_cast<std::uint64_t>(invoker);
}

} // namespace coproc::detail
