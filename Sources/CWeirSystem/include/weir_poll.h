/* epoll for threads that wait on raw descriptors (the UDP relay): Swift cannot rely on the layout of glibc's
 * packed struct epoll_event, so events cross as tags (the caller's 64-bit value per descriptor). */
#ifndef WEIR_POLL_H
#define WEIR_POLL_H

#include <stdint.h>

/* A new epoll instance (close-on-exec), or a negative errno. */
int weir_poll_create(void);

/* Watches `fd` for input (level-triggered); `tag` comes back when it is readable. 0, or a negative errno. */
int weir_poll_add(int epoll_fd, int fd, uint64_t tag);

/* Waits up to `timeout_ms` (-1: no limit) and writes the tags of up to `count` (at most 128) ready descriptors.
 * Returns how many, 0 on timeout or interruption, or a negative errno. */
int weir_poll_wait(int epoll_fd, uint64_t *tags, int count, int timeout_ms);

/* An eventfd (non-blocking, close-on-exec) to wake a waiting thread, or a negative errno. */
int weir_poll_wakeup_create(void);

/* Wakes whoever waits on `fd`'s input / takes the wakeups that came. */
void weir_poll_wakeup(int fd);
void weir_poll_wakeup_drain(int fd);

#endif
