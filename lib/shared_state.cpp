// value/array blocks (anonymous shared mappings, like lock's) and named POSIX shared memory.
#include <coproc/error.hpp>
#include <coproc/shared_state.hpp>
#include "io.hpp"

#include <cerrno>
#include <cstdio>
#include <fcntl.h>
#include <random>
#include <string_view>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace coproc {

namespace detail {

shared_block_core::shared_block_core(std::size_t elem_size, std::size_t count)
    : elem_size_(elem_size), count_(count), bytes_(elem_size * count) {
    if (count != 0 && bytes_ / count != elem_size)
        throw coproc::error("array: " + std::to_string(count) + " elements do not fit in memory");
    data_ = map_shared(bytes_ == 0 ? 1 : bytes_, "value/array: mmap failed");
}

shared_block_core::~shared_block_core() { ::munmap(data_, bytes_ == 0 ? 1 : bytes_); }

void shared_block_core::check(std::size_t elem_size, const char* what) const {
    if (elem_size != elem_size_)
        throw coproc::error(std::string(what) + ": loaded as elements of " +
                            std::to_string(elem_size) + " bytes, but it holds elements of " +
                            std::to_string(elem_size_) + " bytes");
}

void throw_empty_handle(const char* what) {
    throw coproc::error(std::string("coproc::") + what +
                        ": an empty handle (default-constructed): assign one made with "
                        "arguments first");
}

void throw_empty_handle(handle_kind kind) {
    switch (kind) {
    case handle_kind::barrier:
        throw_empty_handle("barrier");
    case handle_kind::shared_block:
        throw_empty_handle("array");
    default:
        throw_empty_handle("handle");
    }
}

std::shared_ptr<shared_block_core> load_shared_block(std::uint64_t token, std::size_t elem_size,
                                                     const char* what) {
    auto core = load_registered<shared_block_core>(token, handle_kind::shared_block);
    core->check(elem_size, what);
    return core;
}

} // namespace detail

struct shared_memory::impl {
    std::string name;
    std::byte* data = nullptr;
    std::size_t size = 0;
    ~impl() {
        if (data)
            ::munmap(data, size);
    }
};

namespace {

std::string checked_name(std::string_view name) {
    if (name.starts_with('/'))
        name.remove_prefix(1);
    if (name.empty() || name.size() > 254 || name.find('/') != name.npos || name == "." ||
        name == ".." || name.find('\0') != name.npos)
        throw coproc::error("shared_memory: invalid name '" + std::string(name) +
                            "': use 1 to 254 characters without '/'");
    return std::string(name);
}

std::string random_name() {
    std::random_device rd;
    char buf[32];
    std::snprintf(buf, sizeof buf, "coproc_%08x%08x", rd(), rd());
    return buf;
}

} // namespace

shared_memory::shared_memory(std::string name, bool create, std::size_t size)
    : impl_(std::make_shared<impl>()) {
    if (name.empty() && create)
        name = random_name();
    impl_->name = checked_name(name);
    const std::string path = "/" + impl_->name;
    if (create && size == 0)
        throw coproc::error("shared_memory: creating '" + impl_->name +
                            "' needs a size of at least one byte");
    // shm_open sets FD_CLOEXEC; the descriptor is closed once the block is mapped.
    const int fd = ::shm_open(path.c_str(), create ? O_RDWR | O_CREAT | O_EXCL : O_RDWR, 0600);
    if (fd < 0) {
        if (create && errno == EEXIST)
            throw coproc::error("shared_memory: '" + impl_->name +
                                "' exists already (create = false attaches to it)");
        if (!create && errno == ENOENT)
            throw coproc::error("shared_memory: no shared memory named '" + impl_->name +
                                "' (create = true makes one)");
        throw detail::os_error(("shared_memory: shm_open of '" + impl_->name + "' failed").c_str());
    }
    detail::unique_fd owned(fd);
    if (create) {
        if (::ftruncate(fd, static_cast<off_t>(size)) != 0) {
            const int err = errno;
            ::shm_unlink(path.c_str());
            throw detail::os_error(err, "shared_memory: ftruncate failed");
        }
    } else {
        struct stat st {};
        if (::fstat(fd, &st) != 0)
            throw detail::os_error("shared_memory: fstat failed");
        const auto actual = static_cast<std::size_t>(st.st_size);
        if (size > actual)
            throw coproc::error("shared_memory: '" + impl_->name + "' holds " +
                                std::to_string(actual) + " bytes, fewer than the " +
                                std::to_string(size) + " asked for");
        if (actual == 0)
            throw coproc::error("shared_memory: '" + impl_->name + "' is empty");
        size = actual;
    }
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        const int err = errno;
        if (create)
            ::shm_unlink(path.c_str());
        throw detail::os_error(err, "shared_memory: mmap failed");
    }
    impl_->data = static_cast<std::byte*>(p);
    impl_->size = size;
}

shared_memory::impl& shared_memory::get() const {
    if (!impl_)
        detail::throw_empty_handle("shared_memory");
    return *impl_;
}

std::span<std::byte> shared_memory::buf() const {
    if (!get().data)
        throw coproc::error("shared_memory: buf() of '" + impl_->name + "' after close()");
    return {impl_->data, impl_->size};
}

std::string shared_memory::name() const { return get().name; }

std::size_t shared_memory::size() const noexcept { return impl_ ? impl_->size : 0; }

void shared_memory::close() noexcept {
    if (impl_ && impl_->data)
        ::munmap(impl_->data, impl_->size);
    impl_->data = nullptr;
}

void shared_memory::unlink() {
    const std::string path = "/" + get().name;
    if (::shm_unlink(path.c_str()) != 0) {
        if (errno == ENOENT)
            throw coproc::error("shared_memory: unlink() of '" + impl_->name +
                                "', which no longer exists");
        throw detail::os_error("shared_memory: shm_unlink failed");
    }
}

} // namespace coproc
