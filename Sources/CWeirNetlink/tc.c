/* tc over rtnetlink: HTB qdiscs and classes, leaf queues, cls_bpf and redirect filters (shape.tc, count.ebpf). */
#include "netlink_common.h"
#include "weir_netlink.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/gen_stats.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <linux/pkt_sched.h>
#include <linux/rtnetlink.h>
#include <linux/tc_act/tc_mirred.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

/* ---- tc ---- */

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
	int err = netlink_talk(nlh, buffer);
	return err ? netlink_fail(err, "adding an HTB qdisc to ifindex %d", ifindex) : 0;
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
	int err = netlink_talk(nlh, buffer);
	return err ? netlink_fail(err, "%s the HTB class %x:%x on ifindex %d", create ? "adding" : "changing", classid >> 16, classid & 0xffff, ifindex) : 0;
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
	int err = netlink_talk(nlh, buffer);
	return err ? netlink_fail(err, "adding a %s qdisc under %x:%x on ifindex %d", kind, parent >> 16, parent & 0xffff, ifindex) : 0;
}

int weir_tc_delete(int ifindex, int is_class, uint32_t parent, uint32_t handle)
{
	char buffer[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = tc_header(buffer, is_class ? RTM_DELTCLASS : RTM_DELQDISC, 0, ifindex, parent, handle);
	int err = netlink_talk(nlh, buffer);
	if (err == -ENOENT || err == -EINVAL || err == -ENODEV)
		return 0;
	return err ? netlink_fail(err, "deleting the %s %x:%x on ifindex %d", is_class ? "class" : "qdisc", handle >> 16, handle & 0xffff, ifindex) : 0;
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
	mnl_attr_parse(nlh, sizeof(*tcm), netlink_index_attribute, &(struct attribute_table){attributes, TCA_MAX});
	if (!netlink_reserve((void **)&list->objects, &list->capacity, list->count, sizeof(*list->objects), 32, &list->error))
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
	if (attributes[TCA_OPTIONS] && (strcmp(object->kind, "bfifo") == 0 || strcmp(object->kind, "pfifo") == 0) &&
	    mnl_attr_get_payload_len(attributes[TCA_OPTIONS]) >= sizeof(struct tc_fifo_qopt)) {
		struct tc_fifo_qopt fifo;
		memcpy(&fifo, mnl_attr_get_payload(attributes[TCA_OPTIONS]), sizeof(fifo));
		object->limit = fifo.limit;
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
	int err = netlink_dump(nlh, parse_tc, &list, &list.error, classes ? "tc classes" : "qdiscs");
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
	int err = netlink_talk(nlh, buffer);
	return err ? netlink_fail(err, "adding a %s qdisc to ifindex %d", kind, ifindex) : 0;
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
	int err = netlink_talk(nlh, buffer);
	return err ? netlink_fail(err, "attaching the classifier %s at %x:%x on ifindex %d", name, parent >> 16, parent & 0xffff, ifindex) : 0;
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
	int err = netlink_talk(nlh, buffer);
	return err ? netlink_fail(err, "redirecting the ingress of ifindex %d to ifindex %d", ifindex, target_ifindex) : 0;
}

int weir_tc_filter_delete(int ifindex, uint32_t parent, uint16_t prio)
{
	char buffer[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = tc_header(buffer, RTM_DELTFILTER, 0, ifindex, parent, 0);
	struct tcmsg *tcm = mnl_nlmsg_get_payload(nlh);
	tcm->tcm_info = TC_H_MAKE((uint32_t)prio << 16, 0);
	int err = netlink_talk(nlh, buffer);
	if (err == -ENOENT || err == -EINVAL || err == -ENODEV)
		return 0;
	return err ? netlink_fail(err, "deleting the filters of priority %u at %x:%x on ifindex %d", prio, parent >> 16, parent & 0xffff, ifindex) : 0;
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
	return netlink_dump(nlh, count_filter, count, NULL, "tc filters");
}

