/* WireGuard through the kernel module's "wireguard" generic netlink family (include/uapi/linux/wireguard.h):
 * the same device model the userspace backend reads over its UAPI socket. Encoding and decoding work on
 * buffers, so they are tested without the module; the socket paths need the module, which the project's CI
 * kernel does not have (see plugins/tunnels/wireguard/README.md). */
#include "netlink_common.h"
#include "weir_netlink.h"

#include <errno.h>
#include <linux/genetlink.h>
#include <linux/if_link.h>
#include <linux/rtnetlink.h>
#include <linux/wireguard.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

_Static_assert(WEIR_WG_PEER_REMOVE == WGPEER_F_REMOVE_ME && WEIR_WG_PEER_REPLACE_ALLOWED_IPS == WGPEER_F_REPLACE_ALLOWEDIPS &&
                   WEIR_WG_PEER_UPDATE_ONLY == WGPEER_F_UPDATE_ONLY,
               "weir's peer flags are the kernel's");

/* Large enough for hundreds of peers per message; the kernel takes messages up to its socket buffer. */
#define WG_MESSAGE_SIZE (64 * 1024)

/* ---- encoding ---- */

static int put_allowed_ip(struct nlmsghdr *nlh, size_t size, const struct weir_address *ip)
{
	struct nlattr *nest = mnl_attr_nest_start_check(nlh, size, 0);
	if (!nest)
		return 0;
	int ok = mnl_attr_put_u16_check(nlh, size, WGALLOWEDIP_A_FAMILY, ip->family) &&
	         mnl_attr_put_check(nlh, size, WGALLOWEDIP_A_IPADDR, ip->family == AF_INET ? 4 : 16, ip->address) &&
	         mnl_attr_put_u8_check(nlh, size, WGALLOWEDIP_A_CIDR_MASK, ip->prefix_len);
	if (!ok) {
		mnl_attr_nest_cancel(nlh, nest);
		return 0;
	}
	mnl_attr_nest_end(nlh, nest);
	return 1;
}

static int put_peer(struct nlmsghdr *nlh, size_t size, const struct weir_wg_peer *peer)
{
	if (!mnl_attr_put_check(nlh, size, WGPEER_A_PUBLIC_KEY, WG_KEY_LEN, peer->public_key))
		return 0;
	if (peer->flags && !mnl_attr_put_u32_check(nlh, size, WGPEER_A_FLAGS, peer->flags))
		return 0;
	if (peer->flags & WGPEER_F_REMOVE_ME)
		return 1;
	if (peer->has_preshared_key && !mnl_attr_put_check(nlh, size, WGPEER_A_PRESHARED_KEY, WG_KEY_LEN, peer->preshared_key))
		return 0;
	if (peer->endpoint_family == AF_INET) {
		struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(peer->endpoint_port)};
		memcpy(&address.sin_addr, peer->endpoint_address, 4);
		if (!mnl_attr_put_check(nlh, size, WGPEER_A_ENDPOINT, sizeof(address), &address))
			return 0;
	} else if (peer->endpoint_family == AF_INET6) {
		struct sockaddr_in6 address = {.sin6_family = AF_INET6, .sin6_port = htons(peer->endpoint_port)};
		memcpy(&address.sin6_addr, peer->endpoint_address, 16);
		if (!mnl_attr_put_check(nlh, size, WGPEER_A_ENDPOINT, sizeof(address), &address))
			return 0;
	}
	if (peer->has_persistent_keepalive &&
	    !mnl_attr_put_u16_check(nlh, size, WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, peer->persistent_keepalive))
		return 0;
	if (peer->allowed_ip_count) {
		struct nlattr *ips = mnl_attr_nest_start_check(nlh, size, WGPEER_A_ALLOWEDIPS);
		if (!ips)
			return 0;
		for (size_t i = 0; i < peer->allowed_ip_count; i++)
			if (!put_allowed_ip(nlh, size, &peer->allowed_ips[i]))
				return 0;
		mnl_attr_nest_end(nlh, ips);
	}
	return 1;
}

int weir_wg_encode_set(char *buffer, size_t size, uint16_t family, const char *ifname, const struct weir_wg_device *change,
                       size_t first, size_t *next)
{
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buffer);
	nlh->nlmsg_type = family;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
	nlh->nlmsg_seq = (uint32_t)time(NULL) + (uint32_t)first;
	struct genlmsghdr *genl = mnl_nlmsg_put_extra_header(nlh, sizeof(*genl));
	genl->cmd = WG_CMD_SET_DEVICE;
	genl->version = WG_GENL_VERSION;
	if (!mnl_attr_put_strz_check(nlh, size, WGDEVICE_A_IFNAME, ifname))
		return -EMSGSIZE;
	/* Device settings go with the first message only; peers are never replaced wholesale (the plan removes
	 * each peer it means to). */
	if (first == 0) {
		if (change->has_private_key && !mnl_attr_put_check(nlh, size, WGDEVICE_A_PRIVATE_KEY, WG_KEY_LEN, change->private_key))
			return -EMSGSIZE;
		if (change->has_listen_port && !mnl_attr_put_u16_check(nlh, size, WGDEVICE_A_LISTEN_PORT, change->listen_port))
			return -EMSGSIZE;
		if (change->has_fwmark && !mnl_attr_put_u32_check(nlh, size, WGDEVICE_A_FWMARK, change->fwmark))
			return -EMSGSIZE;
	}
	size_t index = first;
	if (first < change->peer_count) {
		struct nlattr *peers = mnl_attr_nest_start_check(nlh, size, WGDEVICE_A_PEERS);
		if (!peers)
			return -EMSGSIZE;
		for (; index < change->peer_count; index++) {
			struct nlattr *peer = mnl_attr_nest_start_check(nlh, size, 0);
			if (!peer)
				break;
			if (!put_peer(nlh, size, &change->peers[index])) {
				mnl_attr_nest_cancel(nlh, peer);
				break;
			}
			mnl_attr_nest_end(nlh, peer);
		}
		if (index == first)
			return -EMSGSIZE;
		mnl_attr_nest_end(nlh, peers);
	}
	*next = index;
	return (int)nlh->nlmsg_len;
}

/* ---- decoding ---- */

static int decode_allowed_ip(const struct nlattr *nest, struct weir_wg_peer *peer, int *error)
{
	const struct nlattr *table[WGALLOWEDIP_A_MAX + 1] = {0};
	struct attribute_table attributes = {table, WGALLOWEDIP_A_MAX};
	if (mnl_attr_parse_nested(nest, netlink_index_attribute, &attributes) < 0)
		return (*error = -EINVAL), 0;
	if (!table[WGALLOWEDIP_A_FAMILY] || !table[WGALLOWEDIP_A_IPADDR] || !table[WGALLOWEDIP_A_CIDR_MASK])
		return (*error = -EINVAL), 0;
	struct weir_address ip = {0};
	ip.family = (uint8_t)mnl_attr_get_u16(table[WGALLOWEDIP_A_FAMILY]);
	size_t length = mnl_attr_get_payload_len(table[WGALLOWEDIP_A_IPADDR]);
	if ((ip.family == AF_INET && length != 4) || (ip.family == AF_INET6 && length != 16) || (ip.family != AF_INET && ip.family != AF_INET6))
		return (*error = -EINVAL), 0;
	memcpy(ip.address, mnl_attr_get_payload(table[WGALLOWEDIP_A_IPADDR]), length);
	ip.prefix_len = mnl_attr_get_u8(table[WGALLOWEDIP_A_CIDR_MASK]);
	/* Capacity is implicit: the next power of two from 4 at or above the count. */
	size_t count = peer->allowed_ip_count;
	if (count == 0 || (count >= 4 && (count & (count - 1)) == 0)) {
		void *more = realloc(peer->allowed_ips, (count == 0 ? 4 : count * 2) * sizeof(ip));
		if (!more)
			return (*error = -ENOMEM), 0;
		peer->allowed_ips = more;
	}
	peer->allowed_ips[peer->allowed_ip_count++] = ip;
	return 1;
}

static int decode_peer(const struct nlattr *nest, struct weir_wg_device *device, size_t *capacity, int *error)
{
	const struct nlattr *table[WGPEER_A_MAX + 1] = {0};
	struct attribute_table attributes = {table, WGPEER_A_MAX};
	if (mnl_attr_parse_nested(nest, netlink_index_attribute, &attributes) < 0 || !table[WGPEER_A_PUBLIC_KEY] ||
	    mnl_attr_get_payload_len(table[WGPEER_A_PUBLIC_KEY]) != WG_KEY_LEN)
		return (*error = -EINVAL), 0;
	const uint8_t *key = mnl_attr_get_payload(table[WGPEER_A_PUBLIC_KEY]);
	struct weir_wg_peer *peer;
	/* A peer with many allowed IPs continues in the next message under the same key. */
	if (device->peer_count && memcmp(device->peers[device->peer_count - 1].public_key, key, WG_KEY_LEN) == 0) {
		peer = &device->peers[device->peer_count - 1];
	} else {
		if (!netlink_reserve((void **)&device->peers, capacity, device->peer_count, sizeof(*peer), 16, error))
			return 0;
		peer = &device->peers[device->peer_count++];
		memset(peer, 0, sizeof(*peer));
		memcpy(peer->public_key, key, WG_KEY_LEN);
	}
	if (table[WGPEER_A_PRESHARED_KEY] && mnl_attr_get_payload_len(table[WGPEER_A_PRESHARED_KEY]) == WG_KEY_LEN) {
		static const uint8_t zero[WG_KEY_LEN];
		const uint8_t *psk = mnl_attr_get_payload(table[WGPEER_A_PRESHARED_KEY]);
		peer->has_preshared_key = memcmp(psk, zero, WG_KEY_LEN) != 0;
		memcpy(peer->preshared_key, psk, WG_KEY_LEN);
	}
	if (table[WGPEER_A_ENDPOINT]) {
		size_t length = mnl_attr_get_payload_len(table[WGPEER_A_ENDPOINT]);
		const struct sockaddr *address = mnl_attr_get_payload(table[WGPEER_A_ENDPOINT]);
		if (length >= sizeof(struct sockaddr_in) && address->sa_family == AF_INET) {
			const struct sockaddr_in *in = (const struct sockaddr_in *)address;
			peer->endpoint_family = AF_INET;
			memcpy(peer->endpoint_address, &in->sin_addr, 4);
			peer->endpoint_port = ntohs(in->sin_port);
		} else if (length >= sizeof(struct sockaddr_in6) && address->sa_family == AF_INET6) {
			const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)address;
			peer->endpoint_family = AF_INET6;
			memcpy(peer->endpoint_address, &in6->sin6_addr, 16);
			peer->endpoint_port = ntohs(in6->sin6_port);
		}
	}
	if (table[WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL]) {
		peer->has_persistent_keepalive = 1;
		peer->persistent_keepalive = mnl_attr_get_u16(table[WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL]);
	}
	if (table[WGPEER_A_RX_BYTES])
		peer->rx_bytes = mnl_attr_get_u64(table[WGPEER_A_RX_BYTES]);
	if (table[WGPEER_A_TX_BYTES])
		peer->tx_bytes = mnl_attr_get_u64(table[WGPEER_A_TX_BYTES]);
	if (table[WGPEER_A_LAST_HANDSHAKE_TIME] && mnl_attr_get_payload_len(table[WGPEER_A_LAST_HANDSHAKE_TIME]) == 16) {
		int64_t time[2];
		memcpy(time, mnl_attr_get_payload(table[WGPEER_A_LAST_HANDSHAKE_TIME]), sizeof(time));
		peer->last_handshake_sec = time[0];
		peer->last_handshake_nsec = time[1];
	}
	if (table[WGPEER_A_ALLOWEDIPS]) {
		const struct nlattr *ip;
		mnl_attr_for_each_nested(ip, table[WGPEER_A_ALLOWEDIPS]) {
			if (!decode_allowed_ip(ip, peer, error))
				return 0;
		}
	}
	return 1;
}

struct decode_state {
	struct weir_wg_device *device;
	size_t capacity;
	int error;
};

static int decode_message(const struct nlmsghdr *nlh, void *data)
{
	struct decode_state *state = data;
	const struct nlattr *table[WGDEVICE_A_MAX + 1] = {0};
	struct attribute_table attributes = {table, WGDEVICE_A_MAX};
	if (mnl_attr_parse(nlh, sizeof(struct genlmsghdr), netlink_index_attribute, &attributes) < 0) {
		state->error = -EINVAL;
		return MNL_CB_ERROR;
	}
	struct weir_wg_device *device = state->device;
	if (table[WGDEVICE_A_PRIVATE_KEY] && mnl_attr_get_payload_len(table[WGDEVICE_A_PRIVATE_KEY]) == WG_KEY_LEN) {
		static const uint8_t zero[WG_KEY_LEN];
		memcpy(device->private_key, mnl_attr_get_payload(table[WGDEVICE_A_PRIVATE_KEY]), WG_KEY_LEN);
		device->has_private_key = memcmp(device->private_key, zero, WG_KEY_LEN) != 0;
	}
	if (table[WGDEVICE_A_LISTEN_PORT]) {
		device->has_listen_port = 1;
		device->listen_port = mnl_attr_get_u16(table[WGDEVICE_A_LISTEN_PORT]);
	}
	if (table[WGDEVICE_A_FWMARK]) {
		device->has_fwmark = 1;
		device->fwmark = mnl_attr_get_u32(table[WGDEVICE_A_FWMARK]);
	}
	if (table[WGDEVICE_A_PEERS]) {
		const struct nlattr *peer;
		mnl_attr_for_each_nested(peer, table[WGDEVICE_A_PEERS]) {
			if (!decode_peer(peer, device, &state->capacity, &state->error))
				return MNL_CB_ERROR;
		}
	}
	return MNL_CB_OK;
}

int weir_wg_decode_device(const char *message, size_t length, struct weir_wg_device *device)
{
	const struct nlmsghdr *nlh = (const struct nlmsghdr *)message;
	if (!mnl_nlmsg_ok(nlh, (int)length))
		return -EINVAL;
	/* The array grows in the capacity decode_peer keeps; here it may only grow from its current count. */
	struct decode_state state = {device, device->peer_count, 0};
	if (device->peer_count) {
		size_t capacity = 16;
		while (capacity < device->peer_count)
			capacity *= 2;
		void *more = realloc(device->peers, capacity * sizeof(*device->peers));
		if (!more)
			return -ENOMEM;
		device->peers = more;
		state.capacity = capacity;
	}
	return decode_message(nlh, &state) == MNL_CB_OK ? 0 : (state.error ? state.error : -EINVAL);
}

void weir_wg_device_free(struct weir_wg_device *device)
{
	for (size_t i = 0; i < device->peer_count; i++)
		free(device->peers[i].allowed_ips);
	free(device->peers);
	device->peers = NULL;
	device->peer_count = 0;
}

/* ---- the kernel ---- */

static int family_id_callback(const struct nlmsghdr *nlh, void *data)
{
	const struct nlattr *table[CTRL_ATTR_MAX + 1] = {0};
	struct attribute_table attributes = {table, CTRL_ATTR_MAX};
	if (mnl_attr_parse(nlh, sizeof(struct genlmsghdr), netlink_index_attribute, &attributes) < 0)
		return MNL_CB_ERROR;
	if (table[CTRL_ATTR_FAMILY_ID])
		*(uint16_t *)data = mnl_attr_get_u16(table[CTRL_ATTR_FAMILY_ID]);
	return MNL_CB_OK;
}

/* The family's id on an open generic netlink socket, or -errno (-ENOENT: no module). */
static int resolve_family(struct mnl_socket *nl)
{
	char buffer[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buffer);
	nlh->nlmsg_type = GENL_ID_CTRL;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
	nlh->nlmsg_seq = (uint32_t)time(NULL);
	struct genlmsghdr *genl = mnl_nlmsg_put_extra_header(nlh, sizeof(*genl));
	genl->cmd = CTRL_CMD_GETFAMILY;
	genl->version = 1;
	mnl_attr_put_strz(nlh, CTRL_ATTR_FAMILY_NAME, WG_GENL_NAME);
	if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0)
		return -errno;
	uint16_t id = 0;
	for (;;) {
		ssize_t n = mnl_socket_recvfrom(nl, buffer, sizeof(buffer));
		if (n < 0)
			return -errno;
		int result = mnl_cb_run(buffer, (size_t)n, nlh->nlmsg_seq, mnl_socket_get_portid(nl), family_id_callback, &id);
		if (result < 0)
			return -errno;
		if (result == MNL_CB_STOP)
			break;
	}
	return id ? id : -ENOENT;
}

int weir_wg_available(void)
{
	struct mnl_socket *nl = netlink_open(NETLINK_GENERIC);
	if (!nl)
		return -errno;
	int family = resolve_family(nl);
	mnl_socket_close(nl);
	return family > 0 ? 1 : (family == -ENOENT ? 0 : family);
}

int weir_wg_link_create(const char *name)
{
	char buffer[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buffer);
	nlh->nlmsg_type = RTM_NEWLINK;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
	nlh->nlmsg_seq = (uint32_t)time(NULL);
	struct ifinfomsg *ifi = mnl_nlmsg_put_extra_header(nlh, sizeof(*ifi));
	ifi->ifi_family = AF_UNSPEC;
	mnl_attr_put_strz(nlh, IFLA_IFNAME, name);
	struct nlattr *info = mnl_attr_nest_start(nlh, IFLA_LINKINFO);
	mnl_attr_put_strz(nlh, IFLA_INFO_KIND, "wireguard");
	mnl_attr_nest_end(nlh, info);
	int err = netlink_talk(nlh, buffer);
	return err ? netlink_fail(err, "creating the WireGuard link %s", name) : 0;
}

/* A generic netlink socket, the wireguard family's id and a message buffer for talking to `ifname`; the
 * family id, or a negative errno (recorded) with nothing left open. */
static int open_wireguard(const char *ifname, struct mnl_socket **nl, char **buffer)
{
	*nl = netlink_open(NETLINK_GENERIC);
	if (!*nl)
		return netlink_fail(errno, "opening a generic netlink socket");
	int family = resolve_family(*nl);
	if (family < 0) {
		mnl_socket_close(*nl);
		return netlink_fail(family, "the kernel's wireguard family");
	}
	*buffer = malloc(WG_MESSAGE_SIZE);
	if (!*buffer) {
		mnl_socket_close(*nl);
		return netlink_fail(ENOMEM, "talking to %s", ifname);
	}
	return family;
}

int weir_wg_get(const char *ifname, struct weir_wg_device *device)
{
	memset(device, 0, sizeof(*device));
	struct mnl_socket *nl;
	char *buffer;
	int family = open_wireguard(ifname, &nl, &buffer);
	if (family < 0)
		return family;
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buffer);
	nlh->nlmsg_type = (uint16_t)family;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_DUMP;
	nlh->nlmsg_seq = (uint32_t)time(NULL);
	struct genlmsghdr *genl = mnl_nlmsg_put_extra_header(nlh, sizeof(*genl));
	genl->cmd = WG_CMD_GET_DEVICE;
	genl->version = WG_GENL_VERSION;
	mnl_attr_put_strz(nlh, WGDEVICE_A_IFNAME, ifname);
	uint32_t seq = nlh->nlmsg_seq;
	int err = 0;
	struct decode_state state = {device, 0, 0};
	if (mnl_socket_sendto(nl, nlh, nlh->nlmsg_len) < 0) {
		err = netlink_fail(errno, "asking for %s", ifname);
	} else {
		for (;;) {
			ssize_t n = mnl_socket_recvfrom(nl, buffer, WG_MESSAGE_SIZE);
			if (n < 0) {
				err = netlink_fail(errno, "reading %s", ifname);
				break;
			}
			int result = mnl_cb_run(buffer, (size_t)n, seq, mnl_socket_get_portid(nl), decode_message, &state);
			if (result < 0) {
				err = netlink_fail(state.error ? state.error : errno, "reading %s", ifname);
				break;
			}
			if (result == MNL_CB_STOP)
				break;
		}
	}
	free(buffer);
	mnl_socket_close(nl);
	if (err)
		weir_wg_device_free(device);
	return err;
}

int weir_wg_set(const char *ifname, const struct weir_wg_device *change)
{
	struct mnl_socket *nl;
	char *buffer;
	int family = open_wireguard(ifname, &nl, &buffer);
	if (family < 0)
		return family;
	int err = 0;
	size_t first = 0;
	do {
		size_t next = first;
		int length = weir_wg_encode_set(buffer, WG_MESSAGE_SIZE, (uint16_t)family, ifname, change, first, &next);
		if (length < 0) {
			err = netlink_fail(length, "peer %zu of the change to %s", first, ifname);
			break;
		}
		struct nlmsghdr *nlh = (struct nlmsghdr *)buffer;
		uint32_t seq = nlh->nlmsg_seq;
		if (mnl_socket_sendto(nl, buffer, (size_t)length) < 0) {
			err = netlink_fail(errno, "changing %s", ifname);
			break;
		}
		ssize_t n = mnl_socket_recvfrom(nl, buffer, WG_MESSAGE_SIZE);
		if (n < 0 || mnl_cb_run(buffer, (size_t)n, seq, mnl_socket_get_portid(nl), NULL, NULL) < 0) {
			err = netlink_fail(errno, "changing %s", ifname);
			break;
		}
		first = next;
	} while (first < change->peer_count);
	free(buffer);
	mnl_socket_close(nl);
	return err;
}
