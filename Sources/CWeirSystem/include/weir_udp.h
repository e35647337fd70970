/* Batched datagram I/O (recvmmsg/sendmmsg are _GNU_SOURCE-only, which Swift's Glibc module does not expose). */
#ifndef WEIR_UDP_H
#define WEIR_UDP_H

#include <stddef.h>
#include <sys/socket.h>

/* One datagram: where its bytes go (or come from), and its peer. */
struct weir_datagram {
    void *buffer;
    size_t capacity;
    /* Received: the bytes read (cut at capacity). To send: the bytes to send. */
    size_t length;
    struct sockaddr_storage address;
    socklen_t address_length;
};

/* Waits for at least one datagram on a blocking socket and reads as many as are queued, up to `count` (at most
 * 64), with one recvmmsg. Returns how many were read, 0 when the socket was shut down, or a negative errno. */
int weir_udp_receive(int fd, struct weir_datagram *datagrams, unsigned count);

/* Reads as many datagrams as are queued, up to `count` (at most 64), without waiting. Returns how many were
 * read (0: none queued), or a negative errno (a connected socket reports an ICMP unreachable as -ECONNREFUSED). */
int weir_udp_receive_now(int fd, struct weir_datagram *datagrams, unsigned count);

/* Sends `count` datagrams (at most 64) with as few sendmmsg calls as the kernel allows; one the kernel refuses
 * (its peer unreachable a moment ago) is skipped. Returns how many were sent. */
int weir_udp_send(int fd, struct weir_datagram *datagrams, unsigned count);

#endif
