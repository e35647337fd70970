/* nf_tables set elements: deltas in one transaction, and dumps with counters (libnftnl + libmnl). */
#include "netlink_common.h"
#include "weir_netlink.h"

#include <errno.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <libnftnl/common.h>
#include <libnftnl/expr.h>
#include <libnftnl/set.h>

/* ---- set elements ---- */

/* Elements per NEWSETELEM/DELSETELEM message; keeps each message well under the netlink size limits. */
enum { elements_per_message = 2048 };

static size_t message_bytes(size_t elements) { return 512 + elements * 64; }

static int add_element_messages(struct mnl_nlmsg_batch *batch, uint32_t *seq, uint16_t type, uint16_t family,
                                const char *table, const char *set, const struct weir_nft_key *keys,
                                const uint64_t *timeouts_ms, size_t count)
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
			if (timeouts_ms)
				nftnl_set_elem_set_u64(e, NFTNL_SET_ELEM_TIMEOUT, timeouts_ms[i]);
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
		return netlink_fail(ENOMEM, "allocating a batch of %zu elements", elements);
	struct mnl_nlmsg_batch *batch = mnl_nlmsg_batch_start(buffer, size);
	uint32_t seq = (uint32_t)time(NULL);
	nftnl_batch_begin(mnl_nlmsg_batch_current(batch), seq++);
	mnl_nlmsg_batch_next(batch);
	int err = 0;
	/* Removals first: an address that moves between sets is never in neither. */
	for (size_t i = 0; i < count && !err; i++)
		err = add_element_messages(batch, &seq, NFT_MSG_DELSETELEM, family, table, changes[i].set, changes[i].remove, NULL,
		                           changes[i].remove_count);
	for (size_t i = 0; i < count && !err; i++)
		err = add_element_messages(batch, &seq, NFT_MSG_NEWSETELEM, family, table, changes[i].set, changes[i].add,
		                           changes[i].add_timeouts_ms, changes[i].add_count);
	if (err) {
		mnl_nlmsg_batch_stop(batch);
		free(buffer);
		return netlink_fail(err, "building the element batch");
	}
	nftnl_batch_end(mnl_nlmsg_batch_current(batch), seq++);
	mnl_nlmsg_batch_next(batch);

	struct mnl_socket *nl = netlink_open(NETLINK_NETFILTER);
	if (!nl) {
		err = netlink_fail(errno, "opening a netfilter netlink socket");
	} else {
		/* The whole batch travels in one sendmsg; make room for it (root may exceed wmem_max). */
		int send_buffer = (int)mnl_nlmsg_batch_size(batch) + 65536;
		setsockopt(mnl_socket_get_fd(nl), SOL_SOCKET, SO_SNDBUFFORCE, &send_buffer, sizeof(send_buffer));
		if (mnl_socket_sendto(nl, mnl_nlmsg_batch_head(batch), mnl_nlmsg_batch_size(batch)) < 0)
			err = netlink_fail(errno, "sending %zu element changes", elements);
		else if ((err = netlink_drain_errors(nl)))
			err = netlink_fail(err, "the kernel refused the element batch (%zu changes to table %s)", elements, table);
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
	if (nftnl_set_elem_is_set(e, NFTNL_SET_ELEM_EXPIRATION))
		counts->expires_ms = nftnl_set_elem_get_u64(e, NFTNL_SET_ELEM_EXPIRATION);
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
		return netlink_fail(ENOMEM, "allocating");
	nftnl_set_set_str(s, NFTNL_SET_TABLE, table);
	nftnl_set_set_str(s, NFTNL_SET_NAME, set);
	nftnl_set_elems_nlmsg_build_payload(nlh, s);
	nftnl_set_free(s);

	char what[160];
	snprintf(what, sizeof(what), "the elements of %s", set);
	int err = netlink_dump_bus(NETLINK_NETFILTER, nlh, parse_elements, &list, &list.error, what);
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

