// libnftnl and libmnl from the system (Debian: libnftnl-dev, libmnl-dev): the nf_tables netlink messages.
#include <libmnl/libmnl.h>
#include <libnftnl/common.h>
#include <libnftnl/set.h>
