// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* count.ebpf: per-IP byte and packet counters at tc ingress and egress.
 *
 * Attached as tcx links where the kernel has them, else as direct-action clsact filters. Both programs
 * return TC_ACT_UNSPEC (== TCX_NEXT): they only count, and whatever runs after them decides the packet's fate. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "weir_count.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

const volatile struct weir_count_config weir_count_config = {
	.ipv4_prefix = 32,
	.ipv6_prefix = 128,
};

/* Feeds weir_ip_bytes_total and weir_ip_packets_total. LRU: a flood of new addresses evicts the least
 * recently seen ones instead of exhausting memory. Userspace sets max_entries before load. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct weir_ip_key);
	__type(value, struct weir_ip_counts);
} weir_ip_counts SEC(".maps");

/* Feeds weir_ebpf_map_evictions_total (inserts minus live entries). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WEIR_STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} weir_ebpf_stats SEC(".maps");

struct packet {
	__u8 family;
	__u8 protocol;
	__u8 later_fragment; /* no L4 header in this packet */
	__u32 l3_len;        /* IP total length, headers included */
	__u32 header_len;    /* IP header plus L4 header: repeated in every GSO segment */
	__u16 sport, dport;  /* host order; 0 when unknown */
	__u8 saddr[16];
	__u8 daddr[16];
};

static __always_inline void bump_stat(__u32 slot)
{
	__u64 *value = bpf_map_lookup_elem(&weir_ebpf_stats, &slot);
	if (value)
		*value += 1;
}

static __always_inline int parse_l4(struct __sk_buff *skb, struct packet *p, __u32 offset)
{
	__u16 ports[2];

	if (p->later_fragment || (p->protocol != IPPROTO_TCP && p->protocol != IPPROTO_UDP))
		return 0;
	if (bpf_skb_load_bytes_relative(skb, offset, ports, sizeof(ports), BPF_HDR_START_NET))
		return -1;
	p->sport = bpf_ntohs(ports[0]);
	p->dport = bpf_ntohs(ports[1]);
	if (p->protocol == IPPROTO_TCP) {
		__u8 data_offset;
		if (bpf_skb_load_bytes_relative(skb, offset + 12, &data_offset, 1, BPF_HDR_START_NET))
			return -1;
		p->header_len += (data_offset >> 4) * 4;
	} else {
		p->header_len += 8;
	}
	return 0;
}

static __always_inline int parse(struct __sk_buff *skb, struct packet *p)
{
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		if (bpf_skb_load_bytes_relative(skb, 0, &ip, sizeof(ip), BPF_HDR_START_NET) || ip.version != 4)
			return -1;
		p->family = 4;
		p->protocol = ip.protocol;
		p->l3_len = bpf_ntohs(ip.tot_len);
		p->header_len = ip.ihl * 4;
		p->later_fragment = (ip.frag_off & bpf_htons(0x1fff)) != 0;
		__builtin_memcpy(p->saddr, &ip.saddr, 4);
		__builtin_memcpy(p->daddr, &ip.daddr, 4);
		return parse_l4(skb, p, (__u32)ip.ihl * 4);
	}
	if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes_relative(skb, 0, &ip6, sizeof(ip6), BPF_HDR_START_NET) || ip6.version != 6)
			return -1;
		p->family = 6;
		/* Extension headers are not walked: ports are known only when TCP or UDP follows directly. */
		p->protocol = ip6.nexthdr;
		p->l3_len = bpf_ntohs(ip6.payload_len) + sizeof(ip6);
		p->header_len = sizeof(ip6);
		__builtin_memcpy(p->saddr, &ip6.saddr, 16);
		__builtin_memcpy(p->daddr, &ip6.daddr, 16);
		return parse_l4(skb, p, sizeof(ip6));
	}
	return -1;
}

/* Zeroes the bits after `prefix`. IPv4 bytes beyond the fourth are zero already. */
static __always_inline void mask_prefix(__u8 *addr, __u32 prefix, __u32 width)
{
	if (prefix >= width)
		return;
#pragma unroll
	for (int i = 0; i < 16; i++) {
		__u32 bit = i * 8;
		if (bit >= prefix)
			addr[i] = 0;
		else if (bit + 8 > prefix)
			addr[i] &= (__u8)(0xff << (8 - (prefix - bit)));
	}
}

/* IPv4 addresses use the first 4 bytes and leave the rest zero, so 16 bytes compare both families. */
static __always_inline int same_address(const __u8 *a, const volatile __u8 *b)
{
	__u8 diff = 0;
#pragma unroll
	for (int i = 0; i < 16; i++)
		diff |= a[i] ^ b[i];
	return diff == 0;
}

static __always_inline int weir_count(struct __sk_buff *skb, int ingress)
{
	struct packet p = {};
	if (parse(skb, &p))
		return TC_ACT_UNSPEC;

	/* Local side of the packet: destination when arriving, source when leaving. */
	__u8 *local = ingress ? p.daddr : p.saddr;
	__u8 *remote = ingress ? p.saddr : p.daddr;
	__u16 local_port = ingress ? p.dport : p.sport;

	if (weir_count_config.port) {
		if (p.protocol != weir_count_config.protocol || local_port != weir_count_config.port)
			return TC_ACT_UNSPEC;
	}
	if (weir_count_config.local_family) {
		if (p.family != weir_count_config.local_family)
			return TC_ACT_UNSPEC;
		if (!same_address(local, weir_count_config.local_addr))
			return TC_ACT_UNSPEC;
	}

	struct weir_ip_key key = {};
	key.ifindex = skb->ifindex;
	key.family = p.family;
	__builtin_memcpy(key.addr, weir_count_config.key_local ? local : remote, 16);
	if (p.family == 4)
		mask_prefix(key.addr, weir_count_config.ipv4_prefix, 32);
	else
		mask_prefix(key.addr, weir_count_config.ipv6_prefix, 128);

	/* A GSO packet stands for gso_segs packets on the wire, each with its own IP and L4 header. BIG TCP
	 * packets carry no length in the IP header; their skb length (which may include a link-layer header)
	 * is used instead. */
	__u32 segments = skb->gso_segs ? skb->gso_segs : 1;
	__u64 length = p.l3_len ? p.l3_len : skb->len;
	__u64 bytes = length + (__u64)(segments - 1) * p.header_len;

	struct weir_ip_counts *counts = bpf_map_lookup_elem(&weir_ip_counts, &key);
	if (!counts) {
		struct weir_ip_counts initial = {};
		if (bpf_map_update_elem(&weir_ip_counts, &key, &initial, BPF_NOEXIST) == 0)
			bump_stat(WEIR_STAT_INSERTS);
		/* else another CPU inserted the key first: add to its entry */
		counts = bpf_map_lookup_elem(&weir_ip_counts, &key);
		if (!counts) {
			bump_stat(WEIR_STAT_INSERT_ERRORS);
			return TC_ACT_UNSPEC;
		}
	}
	/* Per-CPU values: no other CPU writes this copy, so plain adds suffice. */
	if (ingress) {
		counts->in_bytes += bytes;
		counts->in_packets += segments;
	} else {
		counts->out_bytes += bytes;
		counts->out_packets += segments;
	}
	return TC_ACT_UNSPEC;
}

SEC("tc")
int weir_count_in(struct __sk_buff *skb)
{
	return weir_count(skb, 1);
}

SEC("tc")
int weir_count_out(struct __sk_buff *skb)
{
	return weir_count(skb, 0);
}
