/* Links: IFB devices for ingress shaping, and the watch that tells the agent when interfaces come and go. */
#include "netlink_common.h"
#include "weir_netlink.h"

#include <errno.h>
#include <poll.h>
#include <linux/if.h>
#include <linux/if_addr.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

/* ---- links ---- */

int weir_link_ifb_create(const char *name)
{
	char buffer[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buffer);
	nlh->nlmsg_type = RTM_NEWLINK;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
	nlh->nlmsg_seq = (uint32_t)time(NULL);
	struct ifinfomsg *ifi = mnl_nlmsg_put_extra_header(nlh, sizeof(*ifi));
	ifi->ifi_family = AF_UNSPEC;
	ifi->ifi_flags = IFF_UP;
	ifi->ifi_change = IFF_UP;
	mnl_attr_put_strz(nlh, IFLA_IFNAME, name);
	/* IFB's own default queue length (32) is far below what a shaped link needs in flight. */
	mnl_attr_put_u32(nlh, IFLA_TXQLEN, 1000);
	struct nlattr *info = mnl_attr_nest_start(nlh, IFLA_LINKINFO);
	mnl_attr_put_strz(nlh, IFLA_INFO_KIND, "ifb");
	mnl_attr_nest_end(nlh, info);
	int err = netlink_talk(nlh, buffer);
	return err ? netlink_fail(err, "creating the IFB device %s", name) : 0;
}

int weir_link_delete(const char *name)
{
	char buffer[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buffer);
	nlh->nlmsg_type = RTM_DELLINK;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
	nlh->nlmsg_seq = (uint32_t)time(NULL);
	struct ifinfomsg *ifi = mnl_nlmsg_put_extra_header(nlh, sizeof(*ifi));
	ifi->ifi_family = AF_UNSPEC;
	mnl_attr_put_strz(nlh, IFLA_IFNAME, name);
	int err = netlink_talk(nlh, buffer);
	if (err == -ENODEV || err == -ENOENT)
		return 0;
	return err ? netlink_fail(err, "deleting the link %s", name) : 0;
}


/* ---- link watch ---- */

struct weir_link_watch {
	struct mnl_socket *nl;
};

struct weir_link_watch *weir_link_watch_open(void)
{
	struct mnl_socket *nl = mnl_socket_open2(NETLINK_ROUTE, SOCK_CLOEXEC | SOCK_NONBLOCK);
	if (!nl) {
		netlink_fail(errno, "opening a route netlink socket for the link watch");
		return NULL;
	}
	/* Room for a burst (a script recreating many interfaces); an overflow is reported, not lost silently. */
	int size = 1 << 20;
	setsockopt(mnl_socket_get_fd(nl), SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
	unsigned groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR;
	if (mnl_socket_bind(nl, groups, MNL_SOCKET_AUTOPID) < 0) {
		netlink_fail(errno, "subscribing to link and address changes");
		mnl_socket_close(nl);
		return NULL;
	}
	struct weir_link_watch *watch = calloc(1, sizeof(*watch));
	if (!watch) {
		mnl_socket_close(nl);
		netlink_fail(ENOMEM, "allocating the link watch");
		return NULL;
	}
	watch->nl = nl;
	return watch;
}

void weir_link_watch_close(struct weir_link_watch *watch)
{
	if (!watch)
		return;
	mnl_socket_close(watch->nl);
	free(watch);
}

struct event_list {
	struct weir_link_event *events;
	size_t capacity, count;
};

static int parse_link_event(const struct nlmsghdr *nlh, void *data)
{
	struct event_list *list = data;
	if (list->count == list->capacity)
		return MNL_CB_OK; /* the caller treats a full array like an overflow: it re-checks everything */
	struct weir_link_event *event = &list->events[list->count];
	memset(event, 0, sizeof(*event));
	switch (nlh->nlmsg_type) {
	case RTM_NEWLINK:
	case RTM_DELLINK: {
		const struct ifinfomsg *ifi = mnl_nlmsg_get_payload(nlh);
		const struct nlattr *attributes[IFLA_MAX + 1] = {0};
		mnl_attr_parse(nlh, sizeof(*ifi), netlink_index_attribute, &(struct attribute_table){attributes, IFLA_MAX});
		event->kind = nlh->nlmsg_type == RTM_NEWLINK ? WEIR_LINK_ADDED : WEIR_LINK_REMOVED;
		event->ifindex = ifi->ifi_index;
		event->up = (ifi->ifi_flags & IFF_UP) != 0;
		if (attributes[IFLA_IFNAME] && mnl_attr_validate(attributes[IFLA_IFNAME], MNL_TYPE_STRING) >= 0) {
			strncpy(event->name, mnl_attr_get_str(attributes[IFLA_IFNAME]), sizeof(event->name) - 1);
		}
		break;
	}
	case RTM_NEWADDR:
	case RTM_DELADDR: {
		const struct ifaddrmsg *ifa = mnl_nlmsg_get_payload(nlh);
		event->kind = WEIR_ADDRESSES_CHANGED;
		event->ifindex = (int32_t)ifa->ifa_index;
		break;
	}
	default:
		return MNL_CB_OK;
	}
	list->count++;
	return MNL_CB_OK;
}

int weir_link_watch_read(struct weir_link_watch *watch, int timeout_ms, struct weir_link_event *events, size_t capacity,
                         size_t *count)
{
	*count = 0;
	/* poll, not select: the agent's descriptors go far beyond FD_SETSIZE. */
	struct pollfd pfd = {.fd = mnl_socket_get_fd(watch->nl), .events = POLLIN};
	int ready = poll(&pfd, 1, timeout_ms);
	if (ready < 0)
		return errno == EINTR ? 0 : netlink_fail(errno, "waiting for link changes");
	if (ready == 0)
		return 0;
	struct event_list list = {.events = events, .capacity = capacity};
	char buffer[MNL_SOCKET_BUFFER_SIZE];
	for (;;) {
		ssize_t n = recv(pfd.fd, buffer, sizeof(buffer), MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
				break;
			*count = list.count;
			/* ENOBUFS: the kernel dropped notifications; the caller must re-check everything. */
			return netlink_fail(errno, "reading link changes");
		}
		/* Notifications carry sequence number 0 and port id 0. */
		mnl_cb_run(buffer, (size_t)n, 0, 0, parse_link_event, &list);
		if (list.count == list.capacity)
			break;
	}
	*count = list.count;
	return 0;
}

/* ---- link settings and addresses (the wireguard stage's interface) ---- */

int weir_link_configure(int ifindex, int up, uint32_t mtu)
{
	char buffer[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buffer);
	nlh->nlmsg_type = RTM_NEWLINK;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
	nlh->nlmsg_seq = (uint32_t)time(NULL);
	struct ifinfomsg *ifi = mnl_nlmsg_put_extra_header(nlh, sizeof(*ifi));
	ifi->ifi_family = AF_UNSPEC;
	ifi->ifi_index = ifindex;
	ifi->ifi_flags = up ? IFF_UP : 0;
	ifi->ifi_change = IFF_UP;
	if (mtu)
		mnl_attr_put_u32(nlh, IFLA_MTU, mtu);
	int err = netlink_talk(nlh, buffer);
	return err ? netlink_fail(err, "configuring link %d (up %d, mtu %u)", ifindex, up, mtu) : 0;
}

static int address_message(int ifindex, const struct weir_address *address, uint16_t type, uint16_t flags)
{
	char buffer[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buffer);
	nlh->nlmsg_type = type;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | flags;
	nlh->nlmsg_seq = (uint32_t)time(NULL);
	struct ifaddrmsg *ifa = mnl_nlmsg_put_extra_header(nlh, sizeof(*ifa));
	size_t length = address->family == AF_INET ? 4 : 16;
	ifa->ifa_family = address->family;
	ifa->ifa_prefixlen = address->prefix_len;
	ifa->ifa_index = (uint32_t)ifindex;
	ifa->ifa_scope = RT_SCOPE_UNIVERSE;
	/* No duplicate address detection: the tunnel's addresses are assigned by its configuration. */
	ifa->ifa_flags = address->family == AF_INET6 ? IFA_F_NODAD : 0;
	mnl_attr_put(nlh, IFA_LOCAL, length, address->address);
	mnl_attr_put(nlh, IFA_ADDRESS, length, address->address);
	return netlink_talk(nlh, buffer);
}

int weir_address_add(int ifindex, const struct weir_address *address)
{
	int err = address_message(ifindex, address, RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE);
	return err ? netlink_fail(err, "adding an address to link %d", ifindex) : 0;
}

int weir_address_delete(int ifindex, const struct weir_address *address)
{
	int err = address_message(ifindex, address, RTM_DELADDR, 0);
	if (err == -EADDRNOTAVAIL || err == -ENODEV)
		return 0;
	return err ? netlink_fail(err, "deleting an address of link %d", ifindex) : 0;
}

struct address_list {
	int ifindex;
	struct weir_address *addresses;
	size_t count, capacity;
	int error;
};

static int parse_address(const struct nlmsghdr *nlh, void *data)
{
	struct address_list *list = data;
	const struct ifaddrmsg *ifa = mnl_nlmsg_get_payload(nlh);
	if ((int)ifa->ifa_index != list->ifindex || (ifa->ifa_family != AF_INET && ifa->ifa_family != AF_INET6))
		return MNL_CB_OK;
	const struct nlattr *attributes[IFA_MAX + 1] = {0};
	mnl_attr_parse(nlh, sizeof(*ifa), netlink_index_attribute, &(struct attribute_table){attributes, IFA_MAX});
	const struct nlattr *local = attributes[IFA_LOCAL] ? attributes[IFA_LOCAL] : attributes[IFA_ADDRESS];
	size_t length = ifa->ifa_family == AF_INET ? 4 : 16;
	if (!local || mnl_attr_get_payload_len(local) != length || ifa->ifa_scope == RT_SCOPE_LINK)
		return MNL_CB_OK; /* link-local addresses are the kernel's own */
	if (!netlink_reserve((void **)&list->addresses, &list->capacity, list->count, sizeof(*list->addresses), 8, &list->error))
		return MNL_CB_ERROR;
	struct weir_address *address = &list->addresses[list->count++];
	memset(address, 0, sizeof(*address));
	address->family = ifa->ifa_family;
	address->prefix_len = ifa->ifa_prefixlen;
	memcpy(address->address, mnl_attr_get_payload(local), length);
	return MNL_CB_OK;
}

int weir_address_list(int ifindex, struct weir_address **addresses, size_t *count)
{
	char buffer[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buffer);
	nlh->nlmsg_type = RTM_GETADDR;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	nlh->nlmsg_seq = (uint32_t)time(NULL);
	struct ifaddrmsg *ifa = mnl_nlmsg_put_extra_header(nlh, sizeof(*ifa));
	ifa->ifa_family = AF_UNSPEC;
	struct address_list list = {.ifindex = ifindex};
	int err = netlink_dump(nlh, parse_address, &list, &list.error, "addresses");
	if (err) {
		free(list.addresses);
		return err;
	}
	*addresses = list.addresses;
	*count = list.count;
	return 0;
}
