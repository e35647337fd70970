/* Netlink paths that libnftables makes slow: set element deltas and dumps (nftables 1.0.x fetches and
 * scans every element of a set in user space for each element command, which turns a 1,000-element change
 * of a 100,000-element set into minutes), plus the routes of route.gateway. Built on libnftnl and libmnl.
 *
 * Functions return 0 on success and a negative errno on failure; weir_nft_last_error() then says what failed. */
#ifndef WEIR_NETLINK_H
#define WEIR_NETLINK_H

#include <stddef.h>
#include <stdint.h>

const char *weir_nft_last_error(void);

/* A set key: an IPv4 (len 4) or IPv6 (len 16) address, network byte order. */
struct weir_nft_key {
	uint8_t len;
	uint8_t bytes[16];
};

struct weir_nft_counts {
	uint64_t packets;
	uint64_t bytes;
};

/* Elements to add to and remove from one (non-interval) set. */
struct weir_nft_set_change {
	const char *set;
	const struct weir_nft_key *add;
	size_t add_count;
	const struct weir_nft_key *remove;
	size_t remove_count;
};

/* Applies every change in one netlink transaction: all of it or, on any error, none of it. */
int weir_nft_change_elements(uint16_t family, const char *table, const struct weir_nft_set_change *changes,
                             size_t count);

/* Lists a set's elements with their counters (zero when the set keeps none). Free both arrays with free(). */
int weir_nft_list_elements(uint16_t family, const char *table, const char *set, struct weir_nft_key **keys,
                           struct weir_nft_counts **counts, size_t *count);

/* ---- routes (rtnetlink) ---- */

struct weir_route {
	uint8_t family; /* AF_INET or AF_INET6 */
	uint8_t prefix_len;
	uint8_t destination[16];
	uint8_t gateway[16];
	uint32_t table;
	uint8_t protocol;
};

/* Adds (replacing an equal route) or deletes one route. */
int weir_route_add(const struct weir_route *route);
int weir_route_delete(const struct weir_route *route);
/* Lists the unicast routes of `family` installed with `protocol`, in every table. Free with free(). */
int weir_route_list(uint8_t family, uint8_t protocol, struct weir_route **routes, size_t *count);

#endif
