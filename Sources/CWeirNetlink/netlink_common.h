/* What the netlink files share: error reporting, sockets, request/answer and dump helpers. Internal to
 * CWeirNetlink (not in include/, so Swift never sees it). */
#ifndef WEIR_NETLINK_COMMON_H
#define WEIR_NETLINK_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include <libmnl/libmnl.h>

/* Records "what: strerror(err)" for weir_nft_last_error() and returns -err (-EIO for 0). */
int netlink_fail(int err, const char *format, ...) __attribute__((format(printf, 2, 3)));

/* A netlink socket of `bus` bound to an automatic port id, or NULL with errno set. */
struct mnl_socket *netlink_open(int bus);

/* Reads every message the kernel queued for us and returns the first error it reports, or 0. */
int netlink_drain_errors(struct mnl_socket *nl);

/* Sends one request that asks for an ACK on a fresh route netlink socket; 0 or the kernel's -errno.
 * `buffer` (MNL_SOCKET_BUFFER_SIZE bytes) receives the answer. */
int netlink_talk(struct nlmsghdr *nlh, char *buffer);

/* Sends a dump request on a fresh route netlink socket and feeds every answer to `callback`. A callback that
 * fails leaves its error code in `*callback_error` (when given). */
int netlink_dump(const struct nlmsghdr *nlh, mnl_cb_t callback, void *data, const int *callback_error, const char *what);

/* The same on a fresh socket of another netlink bus (NETLINK_NETFILTER for nf_tables and conntrack). */
int netlink_dump_bus(int bus, const struct nlmsghdr *nlh, mnl_cb_t callback, void *data, const int *callback_error,
                     const char *what);

/* Room for one more item in a growing array; 0 (with -ENOMEM in *error) when memory ran out. */
int netlink_reserve(void **items, size_t *capacity, size_t count, size_t item_size, size_t initial, int *error);

/* Parses a message's attributes into table[0...max], indexed by type (mnl_attr_parse callback). */
struct attribute_table {
	const struct nlattr **table;
	int max;
};
int netlink_index_attribute(const struct nlattr *attr, void *data);

#endif
