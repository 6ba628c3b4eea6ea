// Exceptions across the process boundary, and error helpers.
#include "transport.hpp"

#include <coproc/error.hpp>
#include <coproc/serialize.hpp>

#include <cstdlib>
#include <cxxabi.h>
#include <memory>
#include <stdexcept>
#include <system_error>
#include <typeinfo>

namespace coproc::detail {

namespace {

// The exception types rebuilt as themselves in the parent.
enum class code : std::uint32_t {
    remote = 0,
    logic_error,
    invalid_argument,
    domain_error,
    length_error,
    out_of_range,
    runtime_error,
    range_error,
    overflow_error,
    underflow_error,
    system_error,
    coproc_error,
    broken_barrier,
};

std::string demangle(const char* name) {
    int status = 0;
    std::unique_ptr<char, decltype(&std::free)> d(abi::__cxa_demangle(name, nullptr, nullptr, &status),
                                                  &std::free);
    return status == 0 && d ? std::string(d.get()) : std::string(name);
}

code classify(const std::exception& e) {
    const std::type_info& t = typeid(e);
    if (t == typeid(std::logic_error)) return code::logic_error;
    if (t == typeid(std::invalid_argument)) return code::invalid_argument;
    if (t == typeid(std::domain_error)) return code::domain_error;
    if (t == typeid(std::length_error)) return code::length_error;
    if (t == typeid(std::out_of_range)) return code::out_of_range;
    if (t == typeid(std::runtime_error)) return code::runtime_error;
    if (t == typeid(std::range_error)) return code::range_error;
    if (t == typeid(std::overflow_error)) return code::overflow_error;
    if (t == typeid(std::underflow_error)) return code::underflow_error;
    if (t == typeid(std::system_error)) return code::system_error;
    if (t == typeid(coproc::error)) return code::coproc_error;
    if (t == typeid(coproc::broken_barrier)) return code::broken_barrier;
    return code::remote;
}

template <class E> std::exception_ptr make(const std::string& what) {
    return std::make_exception_ptr(E(what));
}

} // namespace

std::string current_exception_type_name() {
    const std::type_info* t = abi::__cxa_current_exception_type();
    return t ? demangle(t->name()) : std::string("unknown");
}

void encode_current_exception(std::vector<char>& out) {
    code c = code::remote;
    std::string what;
    int value = 0;
    bool generic = false;
    try {
        throw;
    } catch (const std::system_error& e) {
        c = classify(e);
        what = e.what();
        value = e.code().value();
        generic = e.code().category() == std::generic_category();
    } catch (const std::exception& e) {
        c = classify(e);
        what = e.what();
    } catch (...) {
        what = "(a non-standard exception)";
    }
    serialize_into(out, static_cast<std::uint32_t>(c), current_exception_type_name(), what,
                   value, generic);
}

std::exception_ptr decode_exception(std::span<const char> payload, std::string_view context) {
    std::uint32_t raw = 0;
    std::string type, what;
    int value = 0;
    bool generic = false;
    try {
        deserialize_from(payload, raw, type, what, value, generic);
    } catch (const coproc::error& e) {
        return std::make_exception_ptr(coproc::error("cannot decode the exception of " +
                                                     std::string(context) + ": " + e.what()));
    }
    switch (static_cast<code>(raw)) {
    case code::logic_error: return make<std::logic_error>(what);
    case code::invalid_argument: return make<std::invalid_argument>(what);
    case code::domain_error: return make<std::domain_error>(what);
    case code::length_error: return make<std::length_error>(what);
    case code::out_of_range: return make<std::out_of_range>(what);
    case code::runtime_error: return make<std::runtime_error>(what);
    case code::range_error: return make<std::range_error>(what);
    case code::overflow_error: return make<std::overflow_error>(what);
    case code::underflow_error: return make<std::underflow_error>(what);
    case code::system_error: {
        // what() of a system_error already ends with the code's message; keep it verbatim.
        auto ec = std::error_code(value, generic ? std::generic_category() : std::system_category());
        struct rebuilt : std::system_error {
            rebuilt(std::error_code ec, std::string w) : std::system_error(ec), w_(std::move(w)) {}
            const char* what() const noexcept override { return w_.c_str(); }
            std::string w_;
        };
        return std::make_exception_ptr(rebuilt(ec, what));
    }
    case code::coproc_error: return make<coproc::error>(what);
    case code::broken_barrier: return make<coproc::broken_barrier>(what);
    case code::remote: return std::make_exception_ptr(remote_error(type, what));
    }
    return std::make_exception_ptr(remote_error(type, what));
}

void throw_malformed(std::string_view what, const char* why) {
    throw coproc::error("malformed " + std::string(what) + ": " + why);
}

} // namespace coproc::detail
