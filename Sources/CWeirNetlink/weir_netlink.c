#include "weir_netlink.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/gen_stats.h>
#include <linux/if.h>
#include <linux/if_ether.h>
#include <linux/if_link.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/pkt_cls.h>
#include <linux/pkt_sched.h>
#include <linux/rtnetlink.h>
#include <linux/tc_act/tc_mirred.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <libmnl/libmnl.h>
#include <libnftnl/common.h>
#include <libnftnl/expr.h>
#include <libnftnl/set.h>

static __thread char last_error[512];

const char *weir_nft_last_error(void) { return last_error; }

static int fail(int err, const char *format, ...)
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

static struct mnl_socket *open_socket(int bus)
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
static int drain_errors(struct mnl_socket *nl)
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

/* ---- set elements ---- */

/* Elements per NEWSETELEM/DELSETELEM message; keeps each message well under the netlink size limits. */
enum { elements_per_message = 2048 };

static size_t message_bytes(size_t elements) { return 512 + elements * 64; }

static int add_element_messages(struct mnl_nlmsg_batch *batch, uint32_t *seq, uint16_t type, uint16_t family,
                                const char *table, const char *set, const struct weir_nft_key *keys, size_t count)
{
	for (size_t start = 0; start < count; start += elements_per_message) {
		size_t end = start + elements_per_message < count ? start + elements_per_message : count;
		struct nftnl_set *s = nftnl_set_alloc();
		if (!s)
			return -ENOMEM;
		nftnl_set_set_str(s, NFTNL_SET_TABLE, table);
		nftnl_set_set_str(s, NFTNL_SET_NAME, set);
		for (size_t i = start; i < end; i++) {
			struct nftnl_set_elem *e = nftnl_set_elem_alloc();
			if (!e) {
				nftnl_set_free(s);
				return -ENOMEM;
			}
			nftnl_set_elem_set(e, NFTNL_SET_ELEM_KEY, keys[i].bytes, keys[i].len);
			nftnl_set_elem_add(s, e);
		}
		struct nlmsghdr *nlh = nftnl_nlmsg_build_hdr(mnl_nlmsg_batch_current(batch), type, family,
		                                             type == NFT_MSG_NEWSETELEM ? NLM_F_CREATE : 0, (*seq)++);
		nftnl_set_elems_nlmsg_build_payload(nlh, s);
		nftnl_set_free(s);
		mnl_nlmsg_batch_next(batch);
	}
	return 0;
}

int weir_nft_change_elements(uint16_t family, const char *table, const struct weir_nft_set_change *changes,
                             size_t count)
{
	size_t elements = 0, messages = 2;
	for (size_t i = 0; i < count; i++) {
		elements += changes[i].add_count + changes[i].remove_count;
		messages += 2 + (changes[i].add_count + changes[i].remove_count) / elements_per_message;
	}
	if (elements == 0)
		return 0;
	size_t size = message_bytes(elements) + messages * 512;
	char *buffer = malloc(size);
	if (!buffer)
		return fail(ENOMEM, "allocating a batch of %zu elements", elements);
	struct mnl_nlmsg_batch *batch = mnl_nlmsg_batch_start(buffer, size);
	uint32_t seq = (uint32_t)time(NULL);
	nftnl_batch_begin(mnl_nlmsg_batch_current(batch), seq++);
	mnl_nlmsg_batch_next(batch);
	int err = 0;
	/* Removals first: an address that moves between sets is never in neither. */
	for (size_t i = 0; i < count && !err; i++)
		err = add_element_messages(batch, &seq, NFT_MSG_DELSETELEM, family, table, changes[i].set, changes[i].remove,
		                           changes[i].remove_count);
	for (size_t i = 0; i < count && !err; i++)
		err = add_element_messages(batch, &seq, NFT_MSG_NEWSETELEM, family, table, changes[i].set, changes[i].add,
		                           changes[i].add_count);
	if (err) {
		mnl_nlmsg_batch_stop(batch);
		free(buffer);
		return fail(err, "building the element batch");
	}
	nftnl_batch_end(mnl_nlmsg_batch_current(batch), seq++);
	mnl_nlmsg_batch_next(batch);

	struct mnl_socket *nl = open_socket(NETLINK_NETFILTER);
	if (!nl) {
		err = fail(errno, "opening a netfilter netlink socket");
	} else {
		/* The whole batch travels in one sendmsg; make room for it (root may exceed wmem_max). */
		int send_buffer = (int)mnl_nlmsg_batch_size(batch) + 65536;
		setsockopt(mnl_socket_get_fd(nl), SOL_SOCKET, SO_SNDBUFFORCE, &send_buffer, sizeof(send_buffer));
		if (mnl_socket_sendto(nl, mnl_nlmsg_batch_head(batch), mnl_nlmsg_batch_size(batch)) < 0)
			err = fail(errno, "sending %zu element changes", elements);
		else if ((err = drain_errors(nl)))
			err = fail(err, "the kernel refused the element batch (%zu changes to table %s)", elements, table);
		mnl_socket_close(nl);
	}
	mnl_nlmsg_batch_stop(batch);
	free(buffer);
	return err;
}

struct element_list {
	struct weir_nft_key *keys;
	struct weir_nft_counts *counts;
	size_t count, capacity;
	int error;
};

static int collect_element(struct nftnl_set_elem *e, void *data)
{
	struct element_list *list = data;
	if (list->count == list->capacity) {
		size_t capacity = list->capacity ? list->capacity * 2 : 1024;
		struct weir_nft_key *keys = realloc(list->keys, capacity * sizeof(*keys));
		if (keys)
			list->keys = keys;
		struct weir_nft_counts *counts = realloc(list->counts, capacity * sizeof(*counts));
		if (counts)
			list->counts = counts;
		if (!keys || !counts) {
			list->error = -ENOMEM;
			return -1;
		}
		list->capacity = capacity;
	}
	uint32_t length = 0;
	const void *key = nftnl_set_elem_get(e, NFTNL_SET_ELEM_KEY, &length);
	struct weir_nft_key *out = &list->keys[list->count];
	memset(out, 0, sizeof(*out));
	if (key && length <= sizeof(out->bytes)) {
		out->len = (uint8_t)length;
		memcpy(out->bytes, key, length);
	}
	struct weir_nft_counts *counts = &list->counts[list->count];
	memset(counts, 0, sizeof(*counts));
	struct nftnl_expr *expr = (struct nftnl_expr *)nftnl_set_elem_get(e, NFTNL_SET_ELEM_EXPR, NULL);
	if (expr) {
		const char *name = nftnl_expr_get_str(expr, NFTNL_EXPR_NAME);
		if (name && strcmp(name, "counter") == 0) {
			counts->packets = nftnl_expr_get_u64(expr, NFTNL_EXPR_CTR_PACKETS);
			counts->bytes = nftnl_expr_get_u64(expr, NFTNL_EXPR_CTR_BYTES);
		}
	}
	list->count++;
	return 0;
}

static int parse_elements(const struct nlmsghdr *nlh, void *data)
{
	struct element_list *list = data;
	struct nftnl_set *s = nftnl_set_alloc();
	if (!s)
		return MNL_CB_ERROR;
	if (nftnl_set_elems_nlmsg_parse(nlh, s) < 0) {
		nftnl_set_free(s);
		return MNL_CB_ERROR;
	}
	nftnl_set_elem_foreach(s, collect_element, list);
	nftnl_set_free(s);
	return list->error ? MNL_CB_ERROR : MNL_CB_OK;
}

int weir_nft_list_elements(uint16_t family, const char *table, const char *set, struct weir_nft_key **keys,
                           struct weir_nft_counts **counts, size_t *count)
{
	struct element_list list = {0};
	char buffer[MNL_SOCKET_BUFFER_SIZE];
	uint32_t seq = (uint32_t)time(NULL);
	struct nlmsghdr *nlh = nftnl_nlmsg_build_hdr(buffer, NFT_MSG_GETSETELEM, family, NLM_F_DUMP | NLM_F_ACK, seq);
	struct nftnl_set *s = nftnl_set_alloc();
	if (!s)
		return fail(ENOMEM, "allocating");
	nftnl_set_set_str(s, NFTNL_SET_TABLE, table);
	nftnl_set_set_str(s, NFTNL_SET_NAME, set);
	nftnl_set_elems_nlmsg_build_payload(nlh, s);
	nftnl_set_free(s);

	struct mnl_socket *nl = open_socket(NETLINK_NETFILTER);
	if (!nl)
		return fail(errno, "opening a netfilter netlink socket");
	int err = 0;
	if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0) {
		err = fail(errno, "asking for the elements of %s", set);
	} else {
		uint32_t portid = mnl_socket_get_portid(nl);
		ssize_t n;
		while ((n = mnl_socket_recvfrom(nl, buffer, sizeof(buffer))) > 0) {
			int result = mnl_cb_run(buffer, (size_t)n, seq, portid, parse_elements, &list);
			if (result < 0) {
				err = fail(list.error ? list.error : errno, "listing the elements of %s", set);
				break;
			}
			if (result == MNL_CB_STOP)
				break;
		}
		if (n < 0)
			err = fail(errno, "reading the elements of %s", set);
	}
	mnl_socket_close(nl);
	if (err) {
		free(list.keys);
		free(list.counts);
		return err;
	}
	*keys = list.keys;
	*counts = list.counts;
	*count = list.count;
	return 0;
}

/* ---- routes ---- */

static int route_message(const struct weir_route *route, uint16_t type, uint16_t flags)
{
	char buffer[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buffer);
	nlh->nlmsg_type = type;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | flags;
	nlh->nlmsg_seq = (uint32_t)time(NULL);
	struct rtmsg *rtm = mnl_nlmsg_put_extra_header(nlh, sizeof(*rtm));
	size_t length = route->family == AF_INET ? 4 : 16;
	rtm->rtm_family = route->family;
	rtm->rtm_dst_len = route->prefix_len;
	rtm->rtm_table = route->table < 256 ? (uint8_t)route->table : RT_TABLE_UNSPEC;
	rtm->rtm_protocol = route->protocol;
	rtm->rtm_scope = RT_SCOPE_UNIVERSE;
	rtm->rtm_type = RTN_UNICAST;
	mnl_attr_put(nlh, RTA_DST, length, route->destination);
	mnl_attr_put(nlh, RTA_GATEWAY, length, route->gateway);
	mnl_attr_put_u32(nlh, RTA_TABLE, route->table);

	struct mnl_socket *nl = open_socket(NETLINK_ROUTE);
	if (!nl)
		return -errno;
	int err = 0;
	if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0) {
		err = -errno;
	} else {
		ssize_t n = mnl_socket_recvfrom(nl, buffer, sizeof(buffer));
		if (n < 0)
			err = -errno;
		else if (mnl_cb_run(buffer, (size_t)n, nlh->nlmsg_seq, mnl_socket_get_portid(nl), NULL, NULL) < 0)
			err = -errno;
	}
	mnl_socket_close(nl);
	return err;
}

static const char *route_text(const struct weir_route *route, char *text, size_t size)
{
	char destination[64], gateway[64];
	inet_ntop(route->family, route->destination, destination, sizeof(destination));
	inet_ntop(route->family, route->gateway, gateway, sizeof(gateway));
	snprintf(text, size, "%s/%u via %s table %u", destination, route->prefix_len, gateway, route->table);
	return text;
}

int weir_route_add(const struct weir_route *route)
{
	char text[160];
	int err = route_message(route, RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE);
	return err ? fail(err, "adding the route %s", route_text(route, text, sizeof(text))) : 0;
}

int weir_route_delete(const struct weir_route *route)
{
	char text[160];
	int err = route_message(route, RTM_DELROUTE, 0);
	if (err == -ESRCH)
		return 0; /* already gone */
	return err ? fail(err, "deleting the route %s", route_text(route, text, sizeof(text))) : 0;
}

/* Sends a dump request on a fresh route netlink socket and feeds every answer to `callback`. A callback that
 * fails leaves its error code in `*callback_error` (when given). */
static int route_dump(const struct nlmsghdr *nlh, mnl_cb_t callback, void *data, const int *callback_error, const char *what)
{
	char buffer[MNL_SOCKET_BUFFER_SIZE];
	struct mnl_socket *nl = open_socket(NETLINK_ROUTE);
	if (!nl)
		return fail(errno, "opening a route netlink socket");
	int err = 0;
	if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0) {
		err = fail(errno, "asking for %s", what);
	} else {
		ssize_t n;
		while ((n = mnl_socket_recvfrom(nl, buffer, sizeof(buffer))) > 0) {
			int result = mnl_cb_run(buffer, (size_t)n, nlh->nlmsg_seq, mnl_socket_get_portid(nl), callback, data);
			if (result < 0) {
				err = fail(callback_error && *callback_error ? *callback_error : errno, "listing %s", what);
				break;
			}
			if (result == MNL_CB_STOP)
				break;
		}
	}
	mnl_socket_close(nl);
	return err;
}

/* Room for one more item in a growing array; false (with -ENOMEM in *error) when memory ran out. */
static int reserve(void **items, size_t *capacity, size_t count, size_t item_size, size_t initial, int *error)
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

/* Parses a message's attributes into table[0...max], indexed by type. */
struct attribute_table {
	const struct nlattr **table;
	int max;
};

static int index_attribute(const struct nlattr *attr, void *data)
{
	const struct attribute_table *attributes = data;
	int type = mnl_attr_get_type(attr);
	if (type <= attributes->max)
		attributes->table[type] = attr;
	return MNL_CB_OK;
}

struct route_list {
	uint8_t protocol;
	struct weir_route *routes;
	size_t count, capacity;
	int error;
};

static int parse_route(const struct nlmsghdr *nlh, void *data)
{
	struct route_list *list = data;
	const struct rtmsg *rtm = mnl_nlmsg_get_payload(nlh);
	if (rtm->rtm_protocol != list->protocol || rtm->rtm_type != RTN_UNICAST)
		return MNL_CB_OK;
	const struct nlattr *attributes[RTA_MAX + 1] = {0};
	mnl_attr_parse(nlh, sizeof(*rtm), index_attribute, &(struct attribute_table){attributes, RTA_MAX});
	if (!reserve((void **)&list->routes, &list->capacity, list->count, sizeof(*list->routes), 64, &list->error))
		return MNL_CB_ERROR;
	struct weir_route *route = &list->routes[list->count++];
	memset(route, 0, sizeof(*route));
	size_t length = rtm->rtm_family == AF_INET ? 4 : 16;
	route->family = rtm->rtm_family;
	route->prefix_len = rtm->rtm_dst_len;
	route->protocol = rtm->rtm_protocol;
	route->table = attributes[RTA_TABLE] ? mnl_attr_get_u32(attributes[RTA_TABLE]) : rtm->rtm_table;
	if (attributes[RTA_DST] && mnl_attr_get_payload_len(attributes[RTA_DST]) == length)
		memcpy(route->destination, mnl_attr_get_payload(attributes[RTA_DST]), length);
	if (attributes[RTA_GATEWAY] && mnl_attr_get_payload_len(attributes[RTA_GATEWAY]) == length)
		memcpy(route->gateway, mnl_attr_get_payload(attributes[RTA_GATEWAY]), length);
	return MNL_CB_OK;
}

int weir_route_list(uint8_t family, uint8_t protocol, struct weir_route **routes, size_t *count)
{
	char buffer[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buffer);
	nlh->nlmsg_type = RTM_GETROUTE;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	nlh->nlmsg_seq = (uint32_t)time(NULL);
	struct rtmsg *rtm = mnl_nlmsg_put_extra_header(nlh, sizeof(*rtm));
	rtm->rtm_family = family;

	struct route_list list = {.protocol = protocol};
	int err = route_dump(nlh, parse_route, &list, &list.error, "routes");
	if (err) {
		free(list.routes);
		return err;
	}
	*routes = list.routes;
	*count = list.count;
	return 0;
}

/* ---- tc ---- */

static int tc_talk(struct nlmsghdr *nlh, char *buffer)
{
	struct mnl_socket *nl = open_socket(NETLINK_ROUTE);
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

static struct nlmsghdr *tc_header(char *buffer, uint16_t type, uint16_t flags, int ifindex, uint32_t parent, uint32_t handle)
{
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buffer);
	nlh->nlmsg_type = type;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | flags;
	nlh->nlmsg_seq = (uint32_t)time(NULL);
	struct tcmsg *tcm = mnl_nlmsg_put_extra_header(nlh, sizeof(*tcm));
	tcm->tcm_family = AF_UNSPEC;
	tcm->tcm_ifindex = ifindex;
	tcm->tcm_parent = parent;
	tcm->tcm_handle = handle;
	return nlh;
}

int weir_tc_htb_root(int ifindex, uint32_t handle, uint32_t default_class)
{
	char buffer[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = tc_header(buffer, RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL, ifindex, TC_H_ROOT, handle);
	mnl_attr_put_strz(nlh, TCA_KIND, "htb");
	struct nlattr *options = mnl_attr_nest_start(nlh, TCA_OPTIONS);
	struct tc_htb_glob glob = {.version = 3, .rate2quantum = 10, .defcls = default_class};
	mnl_attr_put(nlh, TCA_HTB_INIT, sizeof(glob), &glob);
	mnl_attr_nest_end(nlh, options);
	int err = tc_talk(nlh, buffer);
	return err ? fail(err, "adding an HTB qdisc to ifindex %d", ifindex) : 0;
}

int weir_tc_htb_class(int ifindex, uint32_t parent, uint32_t classid, uint64_t rate, uint64_t ceil, uint32_t prio, int create)
{
	char buffer[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = tc_header(buffer, RTM_NEWTCLASS, create ? NLM_F_CREATE | NLM_F_EXCL : 0, ifindex, parent, classid);
	mnl_attr_put_strz(nlh, TCA_KIND, "htb");
	struct nlattr *options = mnl_attr_nest_start(nlh, TCA_OPTIONS);
	struct tc_htb_opt opt;
	memset(&opt, 0, sizeof(opt));
	opt.rate.rate = rate >= 0xFFFFFFFFull ? 0xFFFFFFFFu : (uint32_t)rate;
	opt.ceil.rate = ceil >= 0xFFFFFFFFull ? 0xFFFFFFFFu : (uint32_t)ceil;
	opt.rate.linklayer = opt.ceil.linklayer = TC_LINKLAYER_ETHERNET;
	/* Bursts of 10 ms at the rate (at least two full frames), as time in 64 ns ticks. */
	uint64_t burst = rate / 100 > 3200 ? rate / 100 : 3200;
	uint64_t cburst = ceil / 100 > 3200 ? ceil / 100 : 3200;
	opt.buffer = (uint32_t)((burst * 1000000000ull / (rate ? rate : 1)) >> 6);
	opt.cbuffer = (uint32_t)((cburst * 1000000000ull / (ceil ? ceil : 1)) >> 6);
	uint64_t quantum = rate / 10;
	opt.quantum = (uint32_t)(quantum < 1600 ? 1600 : quantum > 200000 ? 200000 : quantum);
	opt.prio = prio;
	mnl_attr_put(nlh, TCA_HTB_PARMS, sizeof(opt), &opt);
	if (rate >= 0xFFFFFFFFull)
		mnl_attr_put_u64(nlh, TCA_HTB_RATE64, rate);
	if (ceil >= 0xFFFFFFFFull)
		mnl_attr_put_u64(nlh, TCA_HTB_CEIL64, ceil);
	mnl_attr_nest_end(nlh, options);
	int err = tc_talk(nlh, buffer);
	return err ? fail(err, "%s the HTB class %x:%x on ifindex %d", create ? "adding" : "changing", classid >> 16, classid & 0xffff, ifindex) : 0;
}

int weir_tc_leaf(int ifindex, uint32_t parent, uint32_t handle, const char *kind, uint32_t limit)
{
	char buffer[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = tc_header(buffer, RTM_NEWQDISC, NLM_F_CREATE | NLM_F_REPLACE, ifindex, parent, handle);
	mnl_attr_put_strz(nlh, TCA_KIND, kind);
	if (strcmp(kind, "pfifo") == 0 || strcmp(kind, "bfifo") == 0) {
		struct tc_fifo_qopt fifo = {.limit = limit};
		mnl_attr_put(nlh, TCA_OPTIONS, sizeof(fifo), &fifo);
	}
	int err = tc_talk(nlh, buffer);
	return err ? fail(err, "adding a %s qdisc under %x:%x on ifindex %d", kind, parent >> 16, parent & 0xffff, ifindex) : 0;
}

int weir_tc_delete(int ifindex, int is_class, uint32_t parent, uint32_t handle)
{
	char buffer[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = tc_header(buffer, is_class ? RTM_DELTCLASS : RTM_DELQDISC, 0, ifindex, parent, handle);
	int err = tc_talk(nlh, buffer);
	if (err == -ENOENT || err == -EINVAL || err == -ENODEV)
		return 0;
	return err ? fail(err, "deleting the %s %x:%x on ifindex %d", is_class ? "class" : "qdisc", handle >> 16, handle & 0xffff, ifindex) : 0;
}

struct tc_list {
	int ifindex;
	struct weir_tc_object *objects;
	size_t count, capacity;
	int error;
};

static int parse_tc(const struct nlmsghdr *nlh, void *data)
{
	struct tc_list *list = data;
	const struct tcmsg *tcm = mnl_nlmsg_get_payload(nlh);
	if (tcm->tcm_ifindex != list->ifindex)
		return MNL_CB_OK;
	const struct nlattr *attributes[TCA_MAX + 1] = {0};
	mnl_attr_parse(nlh, sizeof(*tcm), index_attribute, &(struct attribute_table){attributes, TCA_MAX});
	if (!reserve((void **)&list->objects, &list->capacity, list->count, sizeof(*list->objects), 32, &list->error))
		return MNL_CB_ERROR;
	struct weir_tc_object *object = &list->objects[list->count++];
	memset(object, 0, sizeof(*object));
	object->handle = tcm->tcm_handle;
	object->parent = tcm->tcm_parent;
	if (attributes[TCA_KIND])
		snprintf(object->kind, sizeof(object->kind), "%s", mnl_attr_get_str(attributes[TCA_KIND]));
	if (attributes[TCA_STATS2]) {
		const struct nlattr *stat;
		mnl_attr_for_each_nested(stat, attributes[TCA_STATS2]) {
			if (mnl_attr_get_type(stat) == TCA_STATS_BASIC && mnl_attr_get_payload_len(stat) >= sizeof(struct gnet_stats_basic)) {
				struct gnet_stats_basic basic;
				memcpy(&basic, mnl_attr_get_payload(stat), sizeof(basic));
				object->bytes = basic.bytes;
				object->packets = basic.packets;
			} else if (mnl_attr_get_type(stat) == TCA_STATS_QUEUE && mnl_attr_get_payload_len(stat) >= sizeof(struct gnet_stats_queue)) {
				struct gnet_stats_queue queue;
				memcpy(&queue, mnl_attr_get_payload(stat), sizeof(queue));
				object->drops = queue.drops;
				object->overlimits = queue.overlimits;
			}
		}
	}
	if (attributes[TCA_OPTIONS] && strcmp(object->kind, "htb") == 0) {
		const struct nlattr *option;
		mnl_attr_for_each_nested(option, attributes[TCA_OPTIONS]) {
			if (mnl_attr_get_type(option) == TCA_HTB_PARMS && mnl_attr_get_payload_len(option) >= sizeof(struct tc_htb_opt)) {
				struct tc_htb_opt opt;
				memcpy(&opt, mnl_attr_get_payload(option), sizeof(opt));
				object->rate = opt.rate.rate;
				object->ceil = opt.ceil.rate;
			} else if (mnl_attr_get_type(option) == TCA_HTB_RATE64) {
				object->rate = mnl_attr_get_u64(option);
			} else if (mnl_attr_get_type(option) == TCA_HTB_CEIL64) {
				object->ceil = mnl_attr_get_u64(option);
			}
		}
	}
	return MNL_CB_OK;
}

int weir_tc_list(int ifindex, int classes, struct weir_tc_object **objects, size_t *count)
{
	char buffer[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buffer);
	nlh->nlmsg_type = classes ? RTM_GETTCLASS : RTM_GETQDISC;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	nlh->nlmsg_seq = (uint32_t)time(NULL);
	struct tcmsg *tcm = mnl_nlmsg_put_extra_header(nlh, sizeof(*tcm));
	tcm->tcm_family = AF_UNSPEC;
	tcm->tcm_ifindex = ifindex;

	struct tc_list list = {.ifindex = ifindex};
	int err = route_dump(nlh, parse_tc, &list, &list.error, classes ? "tc classes" : "qdiscs");
	if (err) {
		free(list.objects);
		return err;
	}
	*objects = list.objects;
	*count = list.count;
	return 0;
}

int weir_tc_qdisc_add(int ifindex, uint32_t parent, uint32_t handle, const char *kind)
{
	char buffer[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = tc_header(buffer, RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL, ifindex, parent, handle);
	mnl_attr_put_strz(nlh, TCA_KIND, kind);
	int err = tc_talk(nlh, buffer);
	return err ? fail(err, "adding a %s qdisc to ifindex %d", kind, ifindex) : 0;
}

int weir_tc_bpf_filter(int ifindex, uint32_t parent, uint16_t prio, int program_fd, const char *name)
{
	char buffer[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = tc_header(buffer, RTM_NEWTFILTER, NLM_F_CREATE | NLM_F_REPLACE, ifindex, parent, 1);
	struct tcmsg *tcm = mnl_nlmsg_get_payload(nlh);
	tcm->tcm_info = TC_H_MAKE((uint32_t)prio << 16, htons(ETH_P_ALL));
	mnl_attr_put_strz(nlh, TCA_KIND, "bpf");
	struct nlattr *options = mnl_attr_nest_start(nlh, TCA_OPTIONS);
	mnl_attr_put_u32(nlh, TCA_BPF_FD, (uint32_t)program_fd);
	mnl_attr_put_strz(nlh, TCA_BPF_NAME, name);
	mnl_attr_nest_end(nlh, options);
	int err = tc_talk(nlh, buffer);
	return err ? fail(err, "attaching the classifier %s at %x:%x on ifindex %d", name, parent >> 16, parent & 0xffff, ifindex) : 0;
}

int weir_tc_redirect_filter(int ifindex, uint32_t parent, uint16_t prio, int target_ifindex)
{
	char buffer[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = tc_header(buffer, RTM_NEWTFILTER, NLM_F_CREATE | NLM_F_EXCL, ifindex, parent, 0);
	struct tcmsg *tcm = mnl_nlmsg_get_payload(nlh);
	tcm->tcm_info = TC_H_MAKE((uint32_t)prio << 16, htons(ETH_P_ALL));
	mnl_attr_put_strz(nlh, TCA_KIND, "u32");
	struct nlattr *options = mnl_attr_nest_start(nlh, TCA_OPTIONS);
	/* One key with mask 0: matches every packet. */
	char selector[sizeof(struct tc_u32_sel) + sizeof(struct tc_u32_key)];
	memset(selector, 0, sizeof(selector));
	struct tc_u32_sel *sel = (struct tc_u32_sel *)selector;
	sel->flags = TC_U32_TERMINAL;
	sel->nkeys = 1;
	mnl_attr_put(nlh, TCA_U32_SEL, sizeof(selector), selector);
	struct nlattr *actions = mnl_attr_nest_start(nlh, TCA_U32_ACT);
	struct nlattr *first = mnl_attr_nest_start(nlh, 1);
	mnl_attr_put_strz(nlh, TCA_ACT_KIND, "mirred");
	struct nlattr *action_options = mnl_attr_nest_start(nlh, TCA_ACT_OPTIONS);
	struct tc_mirred mirred;
	memset(&mirred, 0, sizeof(mirred));
	mirred.action = TC_ACT_STOLEN;
	mirred.eaction = TCA_EGRESS_REDIR;
	mirred.ifindex = (uint32_t)target_ifindex;
	mnl_attr_put(nlh, TCA_MIRRED_PARMS, sizeof(mirred), &mirred);
	mnl_attr_nest_end(nlh, action_options);
	mnl_attr_nest_end(nlh, first);
	mnl_attr_nest_end(nlh, actions);
	mnl_attr_nest_end(nlh, options);
	int err = tc_talk(nlh, buffer);
	return err ? fail(err, "redirecting the ingress of ifindex %d to ifindex %d", ifindex, target_ifindex) : 0;
}

int weir_tc_filter_delete(int ifindex, uint32_t parent, uint16_t prio)
{
	char buffer[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = tc_header(buffer, RTM_DELTFILTER, 0, ifindex, parent, 0);
	struct tcmsg *tcm = mnl_nlmsg_get_payload(nlh);
	tcm->tcm_info = TC_H_MAKE((uint32_t)prio << 16, 0);
	int err = tc_talk(nlh, buffer);
	if (err == -ENOENT || err == -EINVAL || err == -ENODEV)
		return 0;
	return err ? fail(err, "deleting the filters of priority %u at %x:%x on ifindex %d", prio, parent >> 16, parent & 0xffff, ifindex) : 0;
}

static int count_filter(const struct nlmsghdr *nlh, void *data)
{
	(void)nlh;
	*(size_t *)data += 1;
	return MNL_CB_OK;
}

int weir_tc_filter_count(int ifindex, uint32_t parent, size_t *count)
{
	char buffer[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buffer);
	nlh->nlmsg_type = RTM_GETTFILTER;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	nlh->nlmsg_seq = (uint32_t)time(NULL);
	struct tcmsg *tcm = mnl_nlmsg_put_extra_header(nlh, sizeof(*tcm));
	tcm->tcm_family = AF_UNSPEC;
	tcm->tcm_ifindex = ifindex;
	tcm->tcm_parent = parent;
	*count = 0;
	return route_dump(nlh, count_filter, count, NULL, "tc filters");
}

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
	int err = tc_talk(nlh, buffer);
	return err ? fail(err, "creating the IFB device %s", name) : 0;
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
	int err = tc_talk(nlh, buffer);
	if (err == -ENODEV || err == -ENOENT)
		return 0;
	return err ? fail(err, "deleting the link %s", name) : 0;
}
