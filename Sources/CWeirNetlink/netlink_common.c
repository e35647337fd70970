/* Shared netlink helpers: errors, sockets, request/answer, dumps. */
#include "netlink_common.h"
#include "weir_netlink.h"

#include <errno.h>
#include <linux/rtnetlink.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static __thread char last_error[512];

const char *weir_nft_last_error(void) { return last_error; }

int netlink_fail(int err, const char *format, ...)
{
	char what[256];
	va_list args;
	va_start(args, format);
	vsnprintf(what, sizeof(what), format, args);
	va_end(args);
	if (err > 0)
		err = -err;
	if (err == 0)
		err = -EIO;
	snprintf(last_error, sizeof(last_error), "%s: %s", what, strerror(-err));
	return err;
}

struct mnl_socket *netlink_open(int bus)
{
	struct mnl_socket *nl = mnl_socket_open(bus);
	if (!nl)
		return NULL;
	if (mnl_socket_bind(nl, 0, MNL_SOCKET_AUTOPID) < 0) {
		mnl_socket_close(nl);
		return NULL;
	}
	return nl;
}

/* Reads every message the kernel queued for us (it answers a batch while sendmsg runs) and returns the first
 * error it reports, or 0. */
int netlink_drain_errors(struct mnl_socket *nl)
{
	char buffer[MNL_SOCKET_BUFFER_SIZE];
	int first_error = 0;
	for (;;) {
		ssize_t n = recv(mnl_socket_get_fd(nl), buffer, sizeof(buffer), MSG_DONTWAIT);
		if (n < 0)
			return (errno == EAGAIN || errno == EWOULDBLOCK) ? first_error : -errno;
		for (struct nlmsghdr *nlh = (struct nlmsghdr *)buffer; mnl_nlmsg_ok(nlh, (int)n); nlh = mnl_nlmsg_next(nlh, (int *)&n)) {
			if (nlh->nlmsg_type == NLMSG_ERROR) {
				const struct nlmsgerr *error = mnl_nlmsg_get_payload(nlh);
				if (error->error && !first_error)
					first_error = error->error;
			}
		}
	}
}

/* Sends a dump request on a fresh route netlink socket and feeds every answer to `callback`. A callback that
 * fails leaves its error code in `*callback_error` (when given). */
int netlink_dump_bus(int bus, const struct nlmsghdr *nlh, mnl_cb_t callback, void *data, const int *callback_error,
                     const char *what)
{
	char buffer[MNL_SOCKET_BUFFER_SIZE];
	struct mnl_socket *nl = netlink_open(bus);
	if (!nl)
		return netlink_fail(errno, "opening a netlink socket to ask for %s", what);
	int err = 0;
	if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0) {
		err = netlink_fail(errno, "asking for %s", what);
	} else {
		ssize_t n;
		while ((n = mnl_socket_recvfrom(nl, buffer, sizeof(buffer))) > 0) {
			int result = mnl_cb_run(buffer, (size_t)n, nlh->nlmsg_seq, mnl_socket_get_portid(nl), callback, data);
			if (result < 0) {
				err = netlink_fail(callback_error && *callback_error ? *callback_error : errno, "listing %s", what);
				break;
			}
			if (result == MNL_CB_STOP)
				break;
		}
		/* A failed read is a failed dump, not a short list. */
		if (n < 0)
			err = netlink_fail(errno, "reading %s", what);
	}
	mnl_socket_close(nl);
	return err;
}

int netlink_dump(const struct nlmsghdr *nlh, mnl_cb_t callback, void *data, const int *callback_error, const char *what)
{
	return netlink_dump_bus(NETLINK_ROUTE, nlh, callback, data, callback_error, what);
}

/* Room for one more item in a growing array; false (with -ENOMEM in *error) when memory ran out. */
int netlink_reserve(void **items, size_t *capacity, size_t count, size_t item_size, size_t initial, int *error)
{
	if (count < *capacity)
		return 1;
	size_t grown = *capacity ? *capacity * 2 : initial;
	void *more = realloc(*items, grown * item_size);
	if (!more) {
		*error = -ENOMEM;
		return 0;
	}
	*items = more;
	*capacity = grown;
	return 1;
}

int netlink_index_attribute(const struct nlattr *attr, void *data)
{
	const struct attribute_table *attributes = data;
	int type = mnl_attr_get_type(attr);
	if (type <= attributes->max)
		attributes->table[type] = attr;
	return MNL_CB_OK;
}

int netlink_talk(struct nlmsghdr *nlh, char *buffer)
{
	struct mnl_socket *nl = netlink_open(NETLINK_ROUTE);
	if (!nl)
		return -errno;
	int err = 0;
	if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0) {
		err = -errno;
	} else {
		ssize_t n = mnl_socket_recvfrom(nl, buffer, MNL_SOCKET_BUFFER_SIZE);
		if (n < 0)
			err = -errno;
		else if (mnl_cb_run(buffer, (size_t)n, nlh->nlmsg_seq, mnl_socket_get_portid(nl), NULL, NULL) < 0)
			err = -errno;
	}
	mnl_socket_close(nl);
	return err;
}
