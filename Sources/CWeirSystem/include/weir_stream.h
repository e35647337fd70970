/* TCP forwarding on raw descriptors (the stream relay): listening, accepting and connecting sockets set up the
 * way the relay needs them, splice(2) between a socket and a pipe, and epoll with event masks. Every call
 * returns a negative errno on failure. */
#ifndef WEIR_STREAM_H
#define WEIR_STREAM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

/* epoll event bits, as <sys/epoll.h> defines them (Swift does not import that enum's values as constants). */
#define WEIR_POLL_IN 0x001u
#define WEIR_POLL_OUT 0x004u
#define WEIR_POLL_ERR 0x008u
#define WEIR_POLL_HUP 0x010u
#define WEIR_POLL_RDHUP 0x2000u
#define WEIR_POLL_EXCLUSIVE (1u << 28)
#define WEIR_POLL_EDGE (1u << 31)

/* A listening TCP socket on `address` (non-blocking, close-on-exec, SO_REUSEADDR; accepted sockets inherit
 * TCP_NODELAY and SO_KEEPALIVE from it), or a negative errno. */
int weir_stream_listen(const struct sockaddr *address, socklen_t length, int backlog);

/* One waiting connection (non-blocking, close-on-exec), or a negative errno (-EAGAIN: none waiting). */
int weir_stream_accept(int listening);

/* A non-blocking TCP socket (TCP_NODELAY, SO_KEEPALIVE) connecting to `address`: its connect has started
 * (it is complete when the socket reports writable; weir_stream_connect_result says how it ended), or a
 * negative errno when it could not even start. */
int weir_stream_connect(const struct sockaddr *address, socklen_t length);

/* Why a connect failed (SO_ERROR, as a negative errno), or 0 when the socket has no error. */
int weir_stream_connect_result(int fd);

/* Moves up to `length` bytes from `from` to `to` (one of them a pipe) without blocking: the count, 0 at the
 * end of input, or a negative errno (-EAGAIN: nothing to move now). */
ssize_t weir_splice(int from, int to, size_t length);

/* A pipe (non-blocking, close-on-exec) of `capacity` bytes where the kernel allows it: fds[0] reads, fds[1]
 * writes. 0, or a negative errno. */
int weir_pipe_open(int fds[2], int capacity);

/* Watches `fd` for `events` (WEIR_POLL_* bits); `tag` comes back with them. 0, or a negative errno. */
int weir_poll_add_events(int epoll_fd, int fd, uint32_t events, uint64_t tag);

/* Stops watching `fd`. 0, or a negative errno. */
int weir_poll_remove(int epoll_fd, int fd);

/* Like weir_poll_wait, with each ready descriptor's events in `events`. */
int weir_poll_wait_events(int epoll_fd, uint64_t *tags, uint32_t *events, int count, int timeout_ms);

#endif
