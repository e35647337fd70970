// libnftables from the system (Debian: libnftables-dev, pkg-config `libnftables`): the JSON API.
#include <nftables/libnftables.h>
