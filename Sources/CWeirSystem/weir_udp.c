#define _GNU_SOURCE
#include "weir_udp.h"

#include <errno.h>
#include <string.h>
#include <sys/uio.h>

#define WEIR_UDP_MAX_BATCH 64

/* One header per datagram, pointing at its buffer and peer: the whole buffer and room for any peer to receive
 * into, the bytes to send and the peer's address to send to. */
static void describe(struct mmsghdr *headers, struct iovec *vectors, struct weir_datagram *datagrams, unsigned count, int receiving) {
    memset(headers, 0, sizeof(struct mmsghdr) * count);
    for (unsigned i = 0; i < count; i++) {
        vectors[i].iov_base = datagrams[i].buffer;
        vectors[i].iov_len = receiving ? datagrams[i].capacity : datagrams[i].length;
        headers[i].msg_hdr.msg_iov = &vectors[i];
        headers[i].msg_hdr.msg_iovlen = 1;
        headers[i].msg_hdr.msg_name = &datagrams[i].address;
        headers[i].msg_hdr.msg_namelen = receiving ? sizeof(struct sockaddr_storage) : datagrams[i].address_length;
    }
}

/* One recvmmsg with `flags`, retried on EINTR; the lengths and peers read written back. */
static int receive(int fd, struct weir_datagram *datagrams, unsigned count, int flags) {
    struct mmsghdr headers[WEIR_UDP_MAX_BATCH];
    struct iovec vectors[WEIR_UDP_MAX_BATCH];
    if (count > WEIR_UDP_MAX_BATCH) count = WEIR_UDP_MAX_BATCH;
    describe(headers, vectors, datagrams, count, 1);
    int received;
    do {
        received = recvmmsg(fd, headers, count, flags, NULL);
    } while (received < 0 && errno == EINTR);
    if (received < 0) return -errno;
    for (int i = 0; i < received; i++) {
        datagrams[i].length = headers[i].msg_len;
        datagrams[i].address_length = headers[i].msg_hdr.msg_namelen;
    }
    return received;
}

int weir_udp_receive(int fd, struct weir_datagram *datagrams, unsigned count) {
    return receive(fd, datagrams, count, MSG_WAITFORONE);
}

int weir_udp_receive_now(int fd, struct weir_datagram *datagrams, unsigned count) {
    int received = receive(fd, datagrams, count, MSG_DONTWAIT);
    return (received == -EAGAIN || received == -EWOULDBLOCK) ? 0 : received;
}

int weir_udp_send(int fd, struct weir_datagram *datagrams, unsigned count) {
    struct mmsghdr headers[WEIR_UDP_MAX_BATCH];
    struct iovec vectors[WEIR_UDP_MAX_BATCH];
    if (count > WEIR_UDP_MAX_BATCH) count = WEIR_UDP_MAX_BATCH;
    describe(headers, vectors, datagrams, count, 0);
    unsigned done = 0;
    int sent = 0;
    while (done < count) {
        int result = sendmmsg(fd, headers + done, count - done, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (result > 0) {
            done += (unsigned)result;
            sent += result;
        } else if (result < 0 && errno == EINTR) {
            continue;
        } else {
            done += 1; /* the first of the rest failed: skip it */
        }
    }
    return sent;
}
