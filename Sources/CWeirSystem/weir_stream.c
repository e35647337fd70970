#define _GNU_SOURCE
#include "weir_stream.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define WEIR_POLL_MAX_EVENTS 128

static void set_forwarding_options(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
}

int weir_stream_listen(const struct sockaddr *address, socklen_t length, int backlog) {
    int fd = socket(address->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0) goto failed;
    set_forwarding_options(fd);
    if (bind(fd, address, length) < 0 || listen(fd, backlog) < 0) goto failed;
    return fd;
failed:;
    int error = errno;
    close(fd);
    return -error;
}

int weir_stream_accept(int listening) {
    int fd;
    do {
        fd = accept4(listening, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    return fd < 0 ? -errno : fd;
}

int weir_stream_connect(const struct sockaddr *address, socklen_t length) {
    int fd = socket(address->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    set_forwarding_options(fd);
    if (connect(fd, address, length) < 0 && errno != EINPROGRESS) {
        int error = errno;
        close(fd);
        return -error;
    }
    return fd;
}

int weir_stream_connect_result(int fd) {
    int error = 0;
    socklen_t length = sizeof(error);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) < 0) return -errno;
    return -error;
}

ssize_t weir_splice(int from, int to, size_t length) {
    ssize_t moved;
    do {
        moved = splice(from, NULL, to, NULL, length, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    } while (moved < 0 && errno == EINTR);
    return moved < 0 ? -errno : moved;
}

int weir_pipe_open(int fds[2], int capacity) {
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) return -errno;
    /* Best effort: an unprivileged process may be held to pipe-max-size. */
    if (capacity > 0) fcntl(fds[1], F_SETPIPE_SZ, capacity);
    return 0;
}

int weir_poll_add_events(int epoll_fd, int fd, uint32_t events, uint64_t tag) {
    struct epoll_event event = {.events = events, .data.u64 = tag};
    return epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &event) < 0 ? -errno : 0;
}

int weir_poll_remove(int epoll_fd, int fd) {
    return epoll_ctl(epoll_fd, EPOLL_CTL_DEL, fd, NULL) < 0 ? -errno : 0;
}

int weir_poll_wait_events(int epoll_fd, uint64_t *tags, uint32_t *events, int count, int timeout_ms) {
    struct epoll_event ready_events[WEIR_POLL_MAX_EVENTS];
    if (count > WEIR_POLL_MAX_EVENTS) count = WEIR_POLL_MAX_EVENTS;
    int ready = epoll_wait(epoll_fd, ready_events, count, timeout_ms);
    if (ready < 0) return errno == EINTR ? 0 : -errno;
    for (int i = 0; i < ready; i++) {
        tags[i] = ready_events[i].data.u64;
        events[i] = ready_events[i].events;
    }
    return ready;
}
