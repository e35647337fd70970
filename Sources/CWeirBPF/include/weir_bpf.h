/* The agent's side of bpf/weir_count.bpf.c: load with pinned maps, attach at tc (tcx or clsact), read and
 * migrate the counters. A thin layer over libbpf for what Swift cannot call directly (LIBBPF_OPTS structs,
 * per-CPU value buffers, batch map reads).
 *
 * Functions return 0 (or a file descriptor) on success and a negative errno on failure;
 * weir_bpf_last_error() then describes the failure, with libbpf's own message when it printed one. */
#ifndef WEIR_BPF_H
#define WEIR_BPF_H

#include <stddef.h>
#include <stdint.h>

#include "../../../bpf/weir_count.h"
#include "../../../bpf/weir_shape.h"

const char *weir_bpf_last_error(void);

/* ---- count.ebpf object ---- */

struct weir_count_object;

/* Opens the compiled object from memory, applies `config` and `max_entries`, and loads it with its two maps
 * pinned under `pin_dir` (an existing bpffs directory): pins already there are reused, so counting resumes
 * where it stopped. `*created` is set to 1 when the counters map was created rather than reused. */
struct weir_count_object *weir_count_load(const void *elf, size_t elf_len, const struct weir_count_config *config,
                                          uint32_t max_entries, const char *pin_dir, int *created);
void weir_count_close(struct weir_count_object *object);
int weir_count_program_fd(const struct weir_count_object *object, int ingress);
int weir_count_counts_fd(const struct weir_count_object *object);
int weir_count_stats_fd(const struct weir_count_object *object);

/* ---- shape.tc classifier ---- */

struct weir_shape_object;

/* Opens the compiled classifier from memory and loads it, unpinned: the cls_bpf filter that runs it keeps
 * the program and its maps alive, and the agent refills the maps when it loads a new copy. */
struct weir_shape_object *weir_shape_load(const void *elf, size_t elf_len, const struct weir_shape_config *config);
void weir_shape_close(struct weir_shape_object *object);
int weir_shape_program_fd(const struct weir_shape_object *object);
int weir_shape_scopes_fd(const struct weir_shape_object *object);
int weir_shape_dynamic_fd(const struct weir_shape_object *object);
int weir_shape_misses_fd(const struct weir_shape_object *object);

/* ---- attaching at tc ---- */

/* A tcx link (Linux 6.6+). Returns the link fd; closing it detaches. -EINVAL or -EOPNOTSUPP mean no tcx. */
int weir_tcx_attach(int program_fd, int ifindex, int ingress);
/* A direct-action filter on the interface's clsact qdisc (created when missing, never removed), at our own
 * handle and priority; replaces an earlier filter of ours there. */
int weir_clsact_attach(int program_fd, int ifindex, int ingress, uint32_t handle, uint32_t priority);
/* Removes only the filter at `handle`/`priority`. A filter that is already gone is not an error. */
int weir_clsact_detach(int ifindex, int ingress, uint32_t handle, uint32_t priority);

/* ---- maps ---- */

/* Reads up to `capacity` entries of a weir_ip_counts map, per-CPU values summed. */
int weir_counts_read(int counts_fd, struct weir_ip_key *keys, struct weir_ip_counts *values, uint32_t capacity,
                     uint32_t *count);
/* Writes entries (CPU 0 holds the value, other CPUs zero); used to migrate counters into a new map. */
int weir_counts_write(int counts_fd, const struct weir_ip_key *keys, const struct weir_ip_counts *values,
                      uint32_t count);
/* Sums every slot of weir_ebpf_stats over all CPUs. */
int weir_stats_read(int stats_fd, uint64_t totals[WEIR_STAT_COUNT]);
/* Sets a slot to `value` (on CPU 0; other CPUs zero). */
int weir_stats_write(int stats_fd, uint32_t slot, uint64_t value);
/* Plain map operations (bpf(2) wrappers) for callers that do not see libbpf. */
int weir_map_update(int map_fd, const void *key, const void *value, uint64_t flags);
/* A missing key is not an error. */
int weir_map_delete(int map_fd, const void *key);
/* 0 with `next` set, -ENOENT after the last key; `key` NULL starts from the first. */
int weir_map_next_key(int map_fd, const void *key, void *next);
/* Opens a pinned map read-write. */
int weir_pinned_open(const char *path);
/* The map's max_entries, or a negative errno. */
int weir_map_max_entries(int map_fd);

/* ---- bpffs ---- */

/* 1 if `path` is on a bpf filesystem, 0 if not, negative errno if it cannot be examined. */
int weir_bpffs_check(const char *path);
/* Mounts a bpf filesystem at `path`. */
int weir_bpffs_mount(const char *path);

#endif
