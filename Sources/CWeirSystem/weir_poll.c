#include "weir_poll.h"

#include <errno.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define WEIR_POLL_MAX_EVENTS 128

int weir_poll_create(void) {
    int fd = epoll_create1(EPOLL_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int weir_poll_add(int epoll_fd, int fd, uint64_t tag) {
    struct epoll_event event = {.events = EPOLLIN, .data.u64 = tag};
    return epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &event) < 0 ? -errno : 0;
}

int weir_poll_wait(int epoll_fd, uint64_t *tags, int count, int timeout_ms) {
    struct epoll_event events[WEIR_POLL_MAX_EVENTS];
    if (count > WEIR_POLL_MAX_EVENTS) count = WEIR_POLL_MAX_EVENTS;
    int ready = epoll_wait(epoll_fd, events, count, timeout_ms);
    if (ready < 0) return errno == EINTR ? 0 : -errno;
    for (int i = 0; i < ready; i++) tags[i] = events[i].data.u64;
    return ready;
}

int weir_poll_wakeup_create(void) {
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

void weir_poll_wakeup(int fd) {
    uint64_t one = 1;
    ssize_t written;
    do {
        written = write(fd, &one, sizeof(one));
    } while (written < 0 && errno == EINTR);
}

void weir_poll_wakeup_drain(int fd) {
    uint64_t count;
    ssize_t got;
    do {
        got = read(fd, &count, sizeof(count));
    } while (got < 0 && errno == EINTR);
}
