// libbpf from the system (Debian: libbpf-dev, pkg-config `libbpf`).
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
