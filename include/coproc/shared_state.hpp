// coproc/shared_state.hpp — state shared by processes: value<T> and array<T> (Python's
// multiprocessing.Value and Array) and shared_memory (multiprocessing.shared_memory's
// SharedMemory).
//
//   coproc::value<int> counter(0);               // create before the processes that use it
//   { auto g = counter.get_lock().scoped(); counter.store(counter.load() + 1); }
//   coproc::array<double> xs(1000);              // zero-filled
//   xs[7] = 1.5;  for (double& x : xs.span()) x *= 2;
//   coproc::shared_memory shm("my_block", true, 4096);   // named POSIX shared memory
//   coproc::shared_memory same("my_block", false, 0);    // attach (in any process)
//   std::memcpy(shm.buf().data(), "hi", 2);  shm.close();  shm.unlink();
//
// value and array hold a trivially copyable T in memory shared with every process forked after
// they were made (pass them to a process or, if made before the pool, to a pool task); copies
// share the memory. Their get_lock() is an rlock (as Python's), so load() and store(), which
// take it, also work while it is held. span() and operator[] do not lock.
//
// shared_memory is reached by name from any process, forked or not. A handle: copies share one
// mapping (close() unmaps it for all of them); it travels to a pool task as its name and is
// attached there.
#pragma once

#include <coproc/detail/handle.hpp>
#include <coproc/rlock.hpp>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <type_traits>

namespace coproc {

namespace detail {

/// `count` elements of `elem_size` bytes in shared memory, zeroed, with an rlock.
class shared_block_core final : public registered {
  public:
    shared_block_core(std::size_t elem_size, std::size_t count);
    ~shared_block_core();
    void* data() const noexcept { return data_; }
    std::size_t count() const noexcept { return count_; }
    rlock& lock() noexcept { return lock_; }
    /// Throws coproc::error unless the block holds elements of `elem_size` bytes.
    void check(std::size_t elem_size, const char* what) const;

  private:
    std::size_t elem_size_, count_, bytes_;
    void* data_;
    rlock lock_;
};

std::shared_ptr<shared_block_core> load_shared_block(std::uint64_t token, std::size_t elem_size,
                                                     const char* what);

} // namespace detail

namespace detail {

/// What value<T> and array<T> share: a block of Ts, travelling as its registry token.
template <class T> class block_handle {
    static_assert(std::is_trivially_copyable_v<T>,
                  "coproc::value<T> and coproc::array<T> need a trivially copyable T: it lives in "
                  "shared memory as bytes, which no constructor, destructor or pointer survives");

  public:
    /// An rlock that guards the contents (Python's get_lock()).
    rlock get_lock() const { return block().lock(); }

    /// cereal: travels to a pool worker as its registry token (see coproc/lock.hpp).
    template <class Archive> void save(Archive& ar) const { ar(block().token()); }
    template <class Archive> void load(Archive& ar) {
        std::uint64_t token = 0;
        ar(token);
        core_ = load_shared_block(token, sizeof(T), "value/array");
    }

  protected:
    block_handle() noexcept = default;
    explicit block_handle(std::size_t n)
        : core_(make_registered<shared_block_core>(handle_kind::shared_block, sizeof(T), n)) {}
    shared_block_core& block() const {
        if (!core_)
            throw_empty_handle(handle_kind::shared_block);
        return *core_;
    }
    T* data() const noexcept { return core_ ? static_cast<T*>(core_->data()) : nullptr; }
    std::shared_ptr<shared_block_core> core_;
};

} // namespace detail

/// A T in shared memory (Python's Value).
template <class T> class value : public detail::block_handle<T> {
  public:
    /// A value holding `init`.
    explicit value(T init = {}) : detail::block_handle<T>(1) {
        std::memcpy(this->data(), &init, sizeof(T));
    }

    /// The value, read under get_lock().
    T load() const {
        auto g = this->block().lock().scoped();
        T v;
        std::memcpy(&v, this->data(), sizeof(T));
        return v;
    }
    /// Replaces the value under get_lock() (hold that across a load() and store()).
    void store(const T& v) {
        auto g = this->block().lock().scoped();
        std::memcpy(this->data(), &v, sizeof(T));
    }
    /// The shared T itself, unlocked (Python's get_obj()).
    T* get() const noexcept { return this->data(); }

    using detail::block_handle<T>::load; // cereal's, beside load() of the value
};

/// `n` Ts in shared memory, zero-filled (Python's Array).
template <class T> class array : public detail::block_handle<T> {
  public:
    explicit array(std::size_t n) : detail::block_handle<T>(n) {}
    /// An empty handle, to be assigned or loaded (a task argument is decoded into one): no
    /// elements, and get_lock() throws coproc::error.
    array() noexcept = default;

    /// The elements, unlocked.
    std::span<T> span() const noexcept { return {this->data(), size()}; }
    T& operator[](std::size_t i) const noexcept { return span()[i]; }
    std::size_t size() const noexcept { return this->core_ ? this->core_->count() : 0; }
};

/// Named POSIX shared memory (Python's SharedMemory).
class shared_memory {
  public:
    /// With `create`, makes a new block of `size` bytes (more than 0), zero-filled, named
    /// `name` (an empty name: a fresh random one); throws coproc::error if the name exists.
    /// Without, attaches to the existing block `name` (its whole size; `size`, if not 0, must
    /// not exceed it); throws coproc::error if there is none. A name is 1 to 254 characters
    /// without '/' (one leading '/' is allowed and dropped), not "." or "..".
    shared_memory(std::string name, bool create = false, std::size_t size = 0);
    /// An empty handle, to be assigned or loaded (a task argument is decoded into one); every
    /// other use throws coproc::error.
    shared_memory() noexcept = default;

    /// The mapped bytes. Throws coproc::error after close().
    std::span<std::byte> buf() const;
    /// The name, without a leading '/'.
    std::string name() const;
    std::size_t size() const noexcept;
    /// Unmaps the block (every copy of this handle); the block itself stays until unlink().
    void close() noexcept;
    /// Removes the name; the memory goes when the last process unmaps it. Throws coproc::error
    /// if the name is gone already.
    void unlink();

    /// cereal: travels as its name, attached by the loading process.
    template <class Archive> void save(Archive& ar) const { ar(name()); }
    template <class Archive> void load(Archive& ar) {
        std::string n;
        ar(n);
        *this = shared_memory(std::move(n), false, 0);
    }

  private:
    struct impl;
    impl& get() const;
    std::shared_ptr<impl> impl_;
};

} // namespace coproc
