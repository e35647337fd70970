/* Shared by the classifier (weir_shape.bpf.c) and the agent's loader (Sources/CWeirBPF): the layout of the
 * maps through which shape.tc tells the classifier which HTB class a packet belongs to. */
#ifndef WEIR_SHAPE_H
#define WEIR_SHAPE_H

#include <linux/types.h>

#define WEIR_SHAPE_MAX_RULES 16

/* Which traffic a stage shapes: the packets of one listener (protocol + port), or with protocol and port 0
 * everything on the device that no listener-scoped stage claims. */
struct weir_shape_scope_key {
	__u8 protocol; /* IPPROTO_TCP / IPPROTO_UDP, or 0 */
	__u8 pad;
	__u16 port; /* host order: the listener's port */
};

/* A named class's match. Fields that are zero (mark_mask, dscp_set, port_high) do not take part. */
struct weir_shape_rule {
	__u32 classid;   /* 0 ends the list */
	__u32 mark;      /* matched as (skb->mark & mark_mask) == mark */
	__u32 mark_mask;
	__u8 dscp;
	__u8 dscp_set;
	__u8 protocol;   /* 0: any */
	__u8 pad;
	__u16 port_low;  /* either port of the packet within [port_low, port_high] */
	__u16 port_high;
};

enum weir_shape_per {
	WEIR_SHAPE_PER_STAGE = 0,  /* one class for all the stage's traffic */
	WEIR_SHAPE_PER_CLIENT = 1, /* one class per client address, created by the agent on demand */
	WEIR_SHAPE_PER_MARK = 2,   /* one class per packet mark */
};

struct weir_shape_scope {
	__u32 id;              /* the stage's number on this device, part of every dynamic key */
	__u32 default_classid; /* traffic no rule or dynamic class takes */
	__u32 per;             /* enum weir_shape_per */
	__u32 pad;
	struct weir_shape_rule rules[WEIR_SHAPE_MAX_RULES];
};

/* A client's (or mark's) class, and a packet the classifier could not place yet. */
struct weir_shape_dynamic_key {
	__u32 scope;
	__u8 family;   /* 4 or 6 for a client address, 0 for a mark (its value in the first 4 bytes) */
	__u8 pad[3];
	__u8 addr[16];
};

/* Set by the loader in .rodata: which side of the packet is the client. */
struct weir_shape_config {
	/* 0: the device's egress, towards clients (the client is the destination, a listener's port the
	 * source port); 1: traffic from clients, seen on an IFB device fed by the interface's ingress. */
	__u8 from_clients;
	__u8 pad[3];
};

#endif
