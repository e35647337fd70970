/* Routes (route.gateway, wireguard) and policy routing rules (wireguard full tunnels) over rtnetlink. */
#include "netlink_common.h"
#include "weir_netlink.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/fib_rules.h>
#include <linux/rtnetlink.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

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
	static const uint8_t none[16];
	int via_gateway = memcmp(route->gateway, none, length) != 0;
	rtm->rtm_scope = via_gateway ? RT_SCOPE_UNIVERSE : RT_SCOPE_LINK;
	rtm->rtm_type = RTN_UNICAST;
	mnl_attr_put(nlh, RTA_DST, length, route->destination);
	if (via_gateway)
		mnl_attr_put(nlh, RTA_GATEWAY, length, route->gateway);
	if (route->oif)
		mnl_attr_put_u32(nlh, RTA_OIF, (uint32_t)route->oif);
	mnl_attr_put_u32(nlh, RTA_TABLE, route->table);

	return netlink_talk(nlh, buffer);
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
	return err ? netlink_fail(err, "adding the route %s", route_text(route, text, sizeof(text))) : 0;
}

int weir_route_delete(const struct weir_route *route)
{
	char text[160];
	int err = route_message(route, RTM_DELROUTE, 0);
	if (err == -ESRCH)
		return 0; /* already gone */
	return err ? netlink_fail(err, "deleting the route %s", route_text(route, text, sizeof(text))) : 0;
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
	mnl_attr_parse(nlh, sizeof(*rtm), netlink_index_attribute, &(struct attribute_table){attributes, RTA_MAX});
	if (!netlink_reserve((void **)&list->routes, &list->capacity, list->count, sizeof(*list->routes), 64, &list->error))
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
	if (attributes[RTA_OIF])
		route->oif = (int32_t)mnl_attr_get_u32(attributes[RTA_OIF]);
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
	int err = netlink_dump(nlh, parse_route, &list, &list.error, "routes");
	if (err) {
		free(list.routes);
		return err;
	}
	*routes = list.routes;
	*count = list.count;
	return 0;
}


/* ---- policy routing rules ---- */

static int rule_message(const struct weir_rule *rule, uint16_t type, uint16_t flags)
{
	char buffer[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buffer);
	nlh->nlmsg_type = type;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | flags;
	nlh->nlmsg_seq = (uint32_t)time(NULL);
	struct fib_rule_hdr *frh = mnl_nlmsg_put_extra_header(nlh, sizeof(*frh));
	frh->family = rule->family;
	frh->action = FR_ACT_TO_TBL;
	frh->table = rule->table < 256 ? (uint8_t)rule->table : RT_TABLE_UNSPEC;
	if (rule->invert)
		frh->flags |= FIB_RULE_INVERT;
	mnl_attr_put_u32(nlh, FRA_PRIORITY, rule->priority);
	mnl_attr_put_u32(nlh, FRA_TABLE, rule->table);
	if (rule->fwmark || rule->fwmask) {
		mnl_attr_put_u32(nlh, FRA_FWMARK, rule->fwmark);
		mnl_attr_put_u32(nlh, FRA_FWMASK, rule->fwmask ? rule->fwmask : 0xffffffff);
	}
	if (rule->suppress_prefixlen >= 0)
		mnl_attr_put_u32(nlh, FRA_SUPPRESS_PREFIXLEN, (uint32_t)rule->suppress_prefixlen);
	mnl_attr_put_u8(nlh, FRA_PROTOCOL, rule->protocol);
	return netlink_talk(nlh, buffer);
}

int weir_rule_add(const struct weir_rule *rule)
{
	int err = rule_message(rule, RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL);
	if (err == -EEXIST)
		return 0;
	return err ? netlink_fail(err, "adding the rule of priority %u (table %u)", rule->priority, rule->table) : 0;
}

int weir_rule_delete(const struct weir_rule *rule)
{
	int err = rule_message(rule, RTM_DELRULE, 0);
	if (err == -ENOENT || err == -ESRCH)
		return 0;
	return err ? netlink_fail(err, "deleting the rule of priority %u (table %u)", rule->priority, rule->table) : 0;
}

struct rule_list {
	uint8_t protocol;
	struct weir_rule *rules;
	size_t count, capacity;
	int error;
};

static int parse_rule(const struct nlmsghdr *nlh, void *data)
{
	struct rule_list *list = data;
	const struct fib_rule_hdr *frh = mnl_nlmsg_get_payload(nlh);
	const struct nlattr *attributes[FRA_MAX + 1] = {0};
	mnl_attr_parse(nlh, sizeof(*frh), netlink_index_attribute, &(struct attribute_table){attributes, FRA_MAX});
	if (!attributes[FRA_PROTOCOL] || mnl_attr_get_u8(attributes[FRA_PROTOCOL]) != list->protocol)
		return MNL_CB_OK;
	if (!netlink_reserve((void **)&list->rules, &list->capacity, list->count, sizeof(*list->rules), 16, &list->error))
		return MNL_CB_ERROR;
	struct weir_rule *rule = &list->rules[list->count++];
	memset(rule, 0, sizeof(*rule));
	rule->family = frh->family;
	rule->protocol = list->protocol;
	rule->invert = (frh->flags & FIB_RULE_INVERT) != 0;
	rule->table = attributes[FRA_TABLE] ? mnl_attr_get_u32(attributes[FRA_TABLE]) : frh->table;
	rule->priority = attributes[FRA_PRIORITY] ? mnl_attr_get_u32(attributes[FRA_PRIORITY]) : 0;
	rule->fwmark = attributes[FRA_FWMARK] ? mnl_attr_get_u32(attributes[FRA_FWMARK]) : 0;
	rule->fwmask = attributes[FRA_FWMASK] ? mnl_attr_get_u32(attributes[FRA_FWMASK]) : 0;
	rule->suppress_prefixlen = attributes[FRA_SUPPRESS_PREFIXLEN] ? (int32_t)mnl_attr_get_u32(attributes[FRA_SUPPRESS_PREFIXLEN]) : -1;
	return MNL_CB_OK;
}

int weir_rule_list(uint8_t family, uint8_t protocol, struct weir_rule **rules, size_t *count)
{
	char buffer[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buffer);
	nlh->nlmsg_type = RTM_GETRULE;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	nlh->nlmsg_seq = (uint32_t)time(NULL);
	struct fib_rule_hdr *frh = mnl_nlmsg_put_extra_header(nlh, sizeof(*frh));
	frh->family = family;

	struct rule_list list = {.protocol = protocol};
	int err = netlink_dump(nlh, parse_rule, &list, &list.error, "rules");
	if (err) {
		free(list.rules);
		return err;
	}
	*rules = list.rules;
	*count = list.count;
	return 0;
}
