/* conntrack: which connections live, for allowlists that keep an address while a connection to it lives
 * (enforce.nftables `domains_from`). A dump of ctnetlink read with libmnl. */
#include "netlink_common.h"
#include "weir_netlink.h"

#include <errno.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nf_conntrack_tcp.h>
#include <linux/netfilter/nfnetlink_conntrack.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

struct pair_list {
	struct weir_ct_pair *pairs;
	size_t count, capacity;
	int error;
};

/* The source and destination of a CTA_TUPLE_ORIG; 0 when it holds neither family's pair. */
static int read_tuple(const struct nlattr *tuple, struct weir_ct_pair *out)
{
	const struct nlattr *inner[CTA_TUPLE_MAX + 1] = {0};
	struct attribute_table table = {inner, CTA_TUPLE_MAX};
	if (mnl_attr_parse_nested(tuple, netlink_index_attribute, &table) < 0 || !inner[CTA_TUPLE_IP])
		return 0;
	const struct nlattr *ip[CTA_IP_MAX + 1] = {0};
	struct attribute_table ip_table = {ip, CTA_IP_MAX};
	if (mnl_attr_parse_nested(inner[CTA_TUPLE_IP], netlink_index_attribute, &ip_table) < 0)
		return 0;
	int src = ip[CTA_IP_V4_SRC] ? CTA_IP_V4_SRC : CTA_IP_V6_SRC;
	int dst = ip[CTA_IP_V4_SRC] ? CTA_IP_V4_DST : CTA_IP_V6_DST;
	size_t len = ip[CTA_IP_V4_SRC] ? 4 : 16;
	if (!ip[src] || !ip[dst] || mnl_attr_get_payload_len(ip[src]) != len || mnl_attr_get_payload_len(ip[dst]) != len)
		return 0;
	memset(out, 0, sizeof(*out));
	out->len = (uint8_t)len;
	memcpy(out->src, mnl_attr_get_payload(ip[src]), len);
	memcpy(out->dst, mnl_attr_get_payload(ip[dst]), len);
	return 1;
}

/* A TCP connection counts until it is closed: TIME_WAIT and CLOSE entries linger for minutes after the last
 * byte, and would keep an address allowed that nothing uses. */
static int tcp_is_live(const struct nlattr *protoinfo)
{
	const struct nlattr *info[CTA_PROTOINFO_MAX + 1] = {0};
	struct attribute_table table = {info, CTA_PROTOINFO_MAX};
	if (mnl_attr_parse_nested(protoinfo, netlink_index_attribute, &table) < 0 || !info[CTA_PROTOINFO_TCP])
		return 1;
	const struct nlattr *tcp[CTA_PROTOINFO_TCP_MAX + 1] = {0};
	struct attribute_table tcp_table = {tcp, CTA_PROTOINFO_TCP_MAX};
	if (mnl_attr_parse_nested(info[CTA_PROTOINFO_TCP], netlink_index_attribute, &tcp_table) < 0 ||
	    !tcp[CTA_PROTOINFO_TCP_STATE])
		return 1;
	uint8_t state = mnl_attr_get_u8(tcp[CTA_PROTOINFO_TCP_STATE]);
	return state != TCP_CONNTRACK_TIME_WAIT && state != TCP_CONNTRACK_CLOSE;
}

static int collect_connection(const struct nlmsghdr *nlh, void *data)
{
	struct pair_list *list = data;
	const struct nlattr *attributes[CTA_MAX + 1] = {0};
	struct attribute_table table = {attributes, CTA_MAX};
	if (mnl_attr_parse(nlh, sizeof(struct nfgenmsg), netlink_index_attribute, &table) < 0 || !attributes[CTA_TUPLE_ORIG])
		return MNL_CB_OK;
	struct weir_ct_pair pair;
	if (!read_tuple(attributes[CTA_TUPLE_ORIG], &pair))
		return MNL_CB_OK;
	if (attributes[CTA_PROTOINFO] && !tcp_is_live(attributes[CTA_PROTOINFO]))
		return MNL_CB_OK;
	if (!netlink_reserve((void **)&list->pairs, &list->capacity, list->count, sizeof(pair), 256, &list->error))
		return MNL_CB_ERROR;
	list->pairs[list->count++] = pair;
	return MNL_CB_OK;
}

int weir_conntrack_pairs(struct weir_ct_pair **pairs, size_t *count)
{
	char buffer[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buffer);
	nlh->nlmsg_type = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	nlh->nlmsg_seq = (uint32_t)time(NULL);
	struct nfgenmsg *header = mnl_nlmsg_put_extra_header(nlh, sizeof(*header));
	header->nfgen_family = AF_UNSPEC; /* both families */
	header->version = NFNETLINK_V0;
	header->res_id = 0;

	struct pair_list list = {0};
	int err = netlink_dump_bus(NETLINK_NETFILTER, nlh, collect_connection, &list, &list.error, "the tracked connections");
	/* No conntrack in this kernel or namespace: nothing is tracked. */
	if (err == -EOPNOTSUPP || err == -ENOENT)
		err = 0;
	if (err) {
		free(list.pairs);
		return err;
	}
	*pairs = list.pairs;
	*count = list.count;
	return 0;
}
