// SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause
/* shape.tc: the classifier under weir's HTB qdisc.
 *
 * A cls_bpf filter in classic mode: the program returns the HTB class id a packet belongs to, or 0 when the
 * packet is none of weir's business (HTB then sends it unshaped, as its `default` names no class). The agent
 * fills the maps; a client (or mark) that has no class yet is recorded in weir_shape_misses for the agent
 * to create one, and meanwhile shares its stage's default class. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "weir_shape.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

const volatile struct weir_shape_config weir_shape_config = {};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct weir_shape_scope_key);
	__type(value, struct weir_shape_scope);
} weir_shape_scopes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct weir_shape_dynamic_key);
	__type(value, __u32);
} weir_shape_dynamic SEC(".maps");

/* Bounded and LRU: a flood of new sources cannot grow it, and the agent drains it several times a second. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct weir_shape_dynamic_key);
	__type(value, __u64);
} weir_shape_misses SEC(".maps");

struct packet {
	__u8 family;
	__u8 protocol;
	__u8 dscp;
	__u16 sport, dport; /* host order, 0 when unknown */
	__u8 saddr[16];
	__u8 daddr[16];
};

static __always_inline int parse(struct __sk_buff *skb, struct packet *p)
{
	__u32 l4 = 0;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr ip;
		if (bpf_skb_load_bytes_relative(skb, 0, &ip, sizeof(ip), BPF_HDR_START_NET))
			return -1;
		p->family = 4;
		p->protocol = ip.protocol;
		p->dscp = ip.tos >> 2;
		__builtin_memcpy(p->saddr, &ip.saddr, 4);
		__builtin_memcpy(p->daddr, &ip.daddr, 4);
		if (ip.frag_off & bpf_htons(0x1fff)) /* a later fragment: no ports */
			return 0;
		l4 = ip.ihl * 4;
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		if (bpf_skb_load_bytes_relative(skb, 0, &ip6, sizeof(ip6), BPF_HDR_START_NET))
			return -1;
		p->family = 6;
		p->protocol = ip6.nexthdr; /* extension headers are not walked */
		p->dscp = ((ip6.priority << 4) | (ip6.flow_lbl[0] >> 4)) >> 2;
		__builtin_memcpy(p->saddr, &ip6.saddr, 16);
		__builtin_memcpy(p->daddr, &ip6.daddr, 16);
		l4 = sizeof(ip6);
	} else {
		return -1;
	}
	if (p->protocol == IPPROTO_TCP || p->protocol == IPPROTO_UDP) {
		__u16 ports[2];
		if (bpf_skb_load_bytes_relative(skb, l4, ports, sizeof(ports), BPF_HDR_START_NET) == 0) {
			p->sport = bpf_ntohs(ports[0]);
			p->dport = bpf_ntohs(ports[1]);
		}
	}
	return 0;
}

static __always_inline int rule_matches(const struct weir_shape_rule *rule, const struct packet *p, __u32 mark)
{
	if (rule->mark_mask && (mark & rule->mark_mask) != rule->mark)
		return 0;
	if (rule->dscp_set && p->dscp != rule->dscp)
		return 0;
	if (rule->protocol && p->protocol != rule->protocol)
		return 0;
	if (rule->port_high && !((p->sport >= rule->port_low && p->sport <= rule->port_high) ||
	                         (p->dport >= rule->port_low && p->dport <= rule->port_high)))
		return 0;
	return 1;
}

SEC("tc")
int weir_shape_classify(struct __sk_buff *skb)
{
	struct packet p = {};
	if (parse(skb, &p))
		return 0;
	int from_clients = weir_shape_config.from_clients;

	/* The listener's port is the destination port of traffic from its clients, the source port towards them. */
	struct weir_shape_scope_key scope_key = {.protocol = p.protocol, .port = from_clients ? p.dport : p.sport};
	struct weir_shape_scope *scope = 0;
	if (scope_key.port)
		scope = bpf_map_lookup_elem(&weir_shape_scopes, &scope_key);
	if (!scope) {
		struct weir_shape_scope_key everything = {};
		scope = bpf_map_lookup_elem(&weir_shape_scopes, &everything);
	}
	if (!scope)
		return 0;

	for (int i = 0; i < WEIR_SHAPE_MAX_RULES; i++) {
		const struct weir_shape_rule *rule = &scope->rules[i];
		if (!rule->classid)
			break;
		if (rule_matches(rule, &p, skb->mark))
			return rule->classid;
	}

	if (scope->per == WEIR_SHAPE_PER_STAGE)
		return scope->default_classid;
	struct weir_shape_dynamic_key key = {.scope = scope->id};
	if (scope->per == WEIR_SHAPE_PER_CLIENT) {
		key.family = p.family;
		__builtin_memcpy(key.addr, from_clients ? p.saddr : p.daddr, 16);
		/* Multicast and broadcast are nobody's client: they stay in the default class. */
		if ((p.family == 4 && key.addr[0] >= 224) || (p.family == 6 && key.addr[0] == 0xff))
			return scope->default_classid;
	} else {
		__u32 mark = skb->mark;
		__builtin_memcpy(key.addr, &mark, 4);
	}
	__u32 *classid = bpf_map_lookup_elem(&weir_shape_dynamic, &key);
	if (classid)
		return *classid;
	__u64 now = bpf_ktime_get_ns();
	bpf_map_update_elem(&weir_shape_misses, &key, &now, BPF_NOEXIST);
	return scope->default_classid;
}
