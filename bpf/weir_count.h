/* Shared by the eBPF program (weir_count.bpf.c) and the agent's loader (Sources/CWeirBPF): the layout of
 * the pinned maps and of the program's load-time configuration. */
#ifndef WEIR_COUNT_H
#define WEIR_COUNT_H

#include <linux/types.h>

/* Part of every pin directory name. Bump it when struct weir_ip_key or struct weir_ip_counts change, so an
 * agent with the new layout creates fresh maps instead of failing to reuse the old pins. */
#define WEIR_COUNT_LAYOUT_VERSION 1

/* Key of weir_ip_counts: one entry per (interface, IP address or prefix). */
struct weir_ip_key {
	__u32 ifindex;
	__u8 family; /* 4 or 6 */
	__u8 pad[3];
	__u8 addr[16]; /* IPv4 uses the first 4 bytes; bits beyond the configured prefix are zero */
};

/* Value of weir_ip_counts, one copy per CPU. `in` is traffic arriving at this host, `out` leaving it.
 * Bytes are IP packet lengths (IP header included, link-layer header excluded) per GSO segment. */
struct weir_ip_counts {
	__u64 in_bytes;
	__u64 in_packets;
	__u64 out_bytes;
	__u64 out_packets;
};

/* Slots of weir_ebpf_stats (per-CPU array). Evictions = inserts - live entries. */
enum weir_ebpf_stat {
	WEIR_STAT_INSERTS = 0,
	WEIR_STAT_INSERT_ERRORS = 1,
	WEIR_STAT_COUNT = 2,
};

/* Set by the loader in .rodata before the program is loaded. */
struct weir_count_config {
	__u8 key_local;   /* 0: key by the remote address, 1: by the local one */
	__u8 ipv4_prefix; /* 1..32 */
	__u8 ipv6_prefix; /* 1..128 */
	__u8 protocol;    /* IPPROTO_TCP or IPPROTO_UDP when `port` is set */
	__u16 port;       /* host byte order; 0 counts every IP packet */
	__u8 local_family; /* 0: any local address; 4 or 6: only packets to/from local_addr */
	__u8 pad;
	__u8 local_addr[16];
};

#endif
