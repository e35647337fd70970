/* Netlink paths that libnftables makes slow: set element deltas and dumps (nftables 1.0.x fetches and
 * scans every element of a set in user space for each element command, which turns a 1,000-element change
 * of a 100,000-element set into minutes), plus the routes of route.gateway, tc for shape.tc and count.ebpf,
 * and the link watch. Built on libnftnl and libmnl; one C file per subsystem.
 *
 * Functions return 0 on success and a negative errno on failure; weir_nft_last_error() then says what failed. */
#ifndef WEIR_NETLINK_H
#define WEIR_NETLINK_H

#include <stddef.h>
#include <stdint.h>

const char *weir_nft_last_error(void);

/* A set key: an IPv4 (len 4) or IPv6 (len 16) address, or two of one family concatenated (len 8 or 32:
 * source . destination), network byte order. */
struct weir_nft_key {
	uint8_t len;
	uint8_t bytes[32];
};

struct weir_nft_counts {
	uint64_t packets;
	uint64_t bytes;
	/* Milliseconds until the element expires; 0 for an element without a timeout. */
	uint64_t expires_ms;
};

/* Elements to add to and remove from one (non-interval) set. */
struct weir_nft_set_change {
	const char *set;
	const struct weir_nft_key *add;
	size_t add_count;
	const struct weir_nft_key *remove;
	size_t remove_count;
	/* Per added element, its timeout in milliseconds (a set with the timeout flag), or NULL for none. */
	const uint64_t *add_timeouts_ms;
};

/* Applies every change in one netlink transaction: all of it or, on any error, none of it. */
int weir_nft_change_elements(uint16_t family, const char *table, const struct weir_nft_set_change *changes,
                             size_t count);

/* Lists a set's elements with their counters (zero when the set keeps none). Free both arrays with free(). */
int weir_nft_list_elements(uint16_t family, const char *table, const char *set, struct weir_nft_key **keys,
                           struct weir_nft_counts **counts, size_t *count);

/* ---- conntrack ---- */

/* One tracked connection's original direction: who opened it (src) towards what (dst). */
struct weir_ct_pair {
	uint8_t len; /* 4 or 16 */
	uint8_t src[16];
	uint8_t dst[16];
};

/* Lists the connections the kernel tracks (this network namespace), both families, leaving out closed TCP
 * connections (TIME_WAIT, CLOSE). Free with free(). A kernel without conntrack loaded has none: 0, *count 0. */
int weir_conntrack_pairs(struct weir_ct_pair **pairs, size_t *count);

/* ---- routes (rtnetlink) ---- */

struct weir_route {
	uint8_t family; /* AF_INET or AF_INET6 */
	uint8_t prefix_len;
	uint8_t destination[16];
	uint8_t gateway[16]; /* all zero: a device route through `oif` */
	uint32_t table;
	uint8_t protocol;
	int32_t oif; /* the outgoing interface, 0 for none */
};

/* Adds (replacing an equal route) or deletes one route. */
int weir_route_add(const struct weir_route *route);
int weir_route_delete(const struct weir_route *route);
/* Lists the unicast routes of `family` installed with `protocol`, in every table. Free with free(). */
int weir_route_list(uint8_t family, uint8_t protocol, struct weir_route **routes, size_t *count);

/* A policy routing rule (ip rule): look up `table` for packets that match (fwmark/fwmask, inverted with
 * `invert`); `suppress_prefixlen` >= 0 ignores that table's answers of that prefix length or shorter. */
struct weir_rule {
	uint8_t family;
	uint8_t protocol;
	uint8_t invert;
	uint32_t priority;
	uint32_t table;
	uint32_t fwmark;
	uint32_t fwmask;
	int32_t suppress_prefixlen; /* -1: none */
};

/* Adds (an equal rule present is not an error) or deletes (one that is gone is not an error) a rule. */
int weir_rule_add(const struct weir_rule *rule);
int weir_rule_delete(const struct weir_rule *rule);
/* The rules of `family` installed with `protocol`. Free with free(). */
int weir_rule_list(uint8_t family, uint8_t protocol, struct weir_rule **rules, size_t *count);


/* ---- tc: HTB over rtnetlink (shape.tc) ---- */

struct weir_tc_object {
	uint32_t handle;
	uint32_t parent;
	char kind[16];
	uint64_t bytes;
	uint64_t packets;
	uint32_t drops;
	uint32_t overlimits;
	/* HTB classes: configured rate and ceiling, bytes per second */
	uint64_t rate;
	uint64_t ceil;
	/* bfifo and pfifo qdiscs: their limit (bytes or packets) */
	uint32_t limit;
};

/* An HTB qdisc at the root of the interface, unclassified traffic to `default_class` (minor). */
int weir_tc_htb_root(int ifindex, uint32_t handle, uint32_t default_class);
/* Creates or changes an HTB class. Rates in bytes per second. */
int weir_tc_htb_class(int ifindex, uint32_t parent, uint32_t classid, uint64_t rate, uint64_t ceil, uint32_t prio, int create);
/* A FIFO leaf qdisc ("pfifo" or "bfifo") under a class, or "fq_codel" where the kernel has it. */
int weir_tc_leaf(int ifindex, uint32_t parent, uint32_t handle, const char *kind, uint32_t limit);
/* Deletes a qdisc (is_class 0) or class (1). Already gone is not an error. */
int weir_tc_delete(int ifindex, int is_class, uint32_t parent, uint32_t handle);
/* Lists the interface's qdiscs (classes 0) or classes (1) with their counters. Free with free(). */
int weir_tc_list(int ifindex, int classes, struct weir_tc_object **objects, size_t *count);

/* A qdisc of any kind without options (e.g. "clsact" at TC_H_CLSACT). Fails with -EEXIST if one is there. */
int weir_tc_qdisc_add(int ifindex, uint32_t parent, uint32_t handle, const char *kind);
/* A cls_bpf filter (classic, not direct-action: the program returns the class id, 0 for no match) for all
 * protocols at `parent`, priority `prio`, handle 1. Replaces the program of an existing filter there. */
int weir_tc_bpf_filter(int ifindex, uint32_t parent, uint16_t prio, int program_fd, const char *name);
/* A u32 filter matching every packet at `parent` (an ingress hook) with a mirred action that redirects it
 * to the egress of `target_ifindex` (an IFB device). */
int weir_tc_redirect_filter(int ifindex, uint32_t parent, uint16_t prio, int target_ifindex);
/* Deletes every filter at `parent` with priority `prio`. Already gone is not an error. */
int weir_tc_filter_delete(int ifindex, uint32_t parent, uint16_t prio);
/* How many filters sit at `parent`. */
int weir_tc_filter_count(int ifindex, uint32_t parent, size_t *count);

/* ---- links ---- */

/* Creates an IFB device named `name` and sets it up. */
int weir_link_ifb_create(const char *name);
/* Deletes the link named `name`. Already gone is not an error. */
int weir_link_delete(const char *name);

/* Sets a link up or down and, unless 0, its MTU. */
int weir_link_configure(int ifindex, int up, uint32_t mtu);

/* An interface address: address and prefix length (10.8.0.1/24). */
struct weir_address {
	uint8_t family; /* AF_INET or AF_INET6 */
	uint8_t prefix_len;
	uint8_t address[16];
};

/* Adds (or replaces) and deletes an address of a link; deleting one that is gone is not an error. */
int weir_address_add(int ifindex, const struct weir_address *address);
int weir_address_delete(int ifindex, const struct weir_address *address);
/* The link's IPv4 and IPv6 addresses, link-local ones left out. Free with free(). */
int weir_address_list(int ifindex, struct weir_address **addresses, size_t *count);

/* ---- link watch: interfaces and addresses that come and go ---- */

struct weir_link_watch;

enum weir_link_event_kind {
	WEIR_LINK_ADDED = 1, /* a link appeared or changed (RTM_NEWLINK) */
	WEIR_LINK_REMOVED = 2, /* RTM_DELLINK */
	WEIR_ADDRESSES_CHANGED = 3, /* an address was added or removed (RTM_NEWADDR, RTM_DELADDR) */
};

struct weir_link_event {
	uint8_t kind; /* enum weir_link_event_kind */
	uint8_t up; /* links: IFF_UP is set */
	int32_t ifindex;
	char name[16]; /* links: the interface's name */
};

/* A route netlink socket subscribed to link and address notifications, or NULL (weir_nft_last_error says why). */
struct weir_link_watch *weir_link_watch_open(void);
void weir_link_watch_close(struct weir_link_watch *watch);
/* Waits up to `timeout_ms` (poll) for notifications and returns up to `capacity` of them (0 on timeout).
 * Fails with -ENOBUFS when the kernel dropped notifications: the caller must assume anything changed, as it
 * must when `*count == capacity`. */
int weir_link_watch_read(struct weir_link_watch *watch, int timeout_ms, struct weir_link_event *events, size_t capacity,
                         size_t *count);

/* ---- WireGuard (the kernel module's "wireguard" generic netlink family; wireguard.c) ---- */

/* Peer flags of a change: the kernel's WGPEER_F_REMOVE_ME, _REPLACE_ALLOWEDIPS, _UPDATE_ONLY. */
#define WEIR_WG_PEER_REMOVE 1u
#define WEIR_WG_PEER_REPLACE_ALLOWED_IPS 2u
#define WEIR_WG_PEER_UPDATE_ONLY 4u

/* A peer as the kernel reports it (get) or as it should change (set). */
struct weir_wg_peer {
	uint8_t public_key[32];
	uint32_t flags; /* set only: WEIR_WG_PEER_* */
	int has_preshared_key;
	uint8_t preshared_key[32];
	/* AF_INET or AF_INET6; 0: none (get) or leave alone (set). Port in host order. */
	uint8_t endpoint_family;
	uint8_t endpoint_address[16];
	uint16_t endpoint_port;
	int has_persistent_keepalive;
	uint16_t persistent_keepalive;
	/* get only. */
	uint64_t rx_bytes;
	uint64_t tx_bytes;
	int64_t last_handshake_sec;
	int64_t last_handshake_nsec;
	struct weir_address *allowed_ips; /* family, prefix_len, address */
	size_t allowed_ip_count;
};

struct weir_wg_device {
	int has_private_key;
	uint8_t private_key[32];
	int has_listen_port;
	uint16_t listen_port;
	int has_fwmark;
	uint32_t fwmark;
	struct weir_wg_peer *peers;
	size_t peer_count;
};

/* Whether the kernel has the wireguard family (the module is loaded or loadable): 1, 0, or -errno. */
int weir_wg_available(void);
/* Creates a WireGuard link (ip link add NAME type wireguard). */
int weir_wg_link_create(const char *name);
/* Reads the device (every message of the dump, a peer split across messages joined again). Free with
 * weir_wg_device_free. */
int weir_wg_get(const char *ifname, struct weir_wg_device *device);
void weir_wg_device_free(struct weir_wg_device *device);
/* Applies a change: device settings and peers, in as many messages as it takes (peers never split). */
int weir_wg_set(const char *ifname, const struct weir_wg_device *change);

/* Without a kernel, for tests: the WG_CMD_SET_DEVICE message for peers [first, *next) of `change` in
 * `buffer` (its length returned, or -EMSGSIZE when not even one peer fits), and the parser of
 * WG_CMD_GET_DEVICE answers (whose attributes are the same), which adds what a message holds to `device`. */
int weir_wg_encode_set(char *buffer, size_t size, uint16_t family, const char *ifname, const struct weir_wg_device *change,
                       size_t first, size_t *next);
int weir_wg_decode_device(const char *message, size_t length, struct weir_wg_device *device);

#endif
