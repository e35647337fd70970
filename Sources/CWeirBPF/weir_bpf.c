#include "weir_bpf.h"

#include <errno.h>
#include <linux/magic.h>
#include <linux/pkt_cls.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

/* Attach types of tcx (Linux 6.6), spelled out because the uapi headers of older distributions lack them. */
#define WEIR_BPF_TCX_INGRESS 46
#define WEIR_BPF_TCX_EGRESS 47

static __thread char last_error[1024];
/* libbpf reports details (verifier output, pin mismatches) through its print callback, not its return
 * values; the last warning is kept so the agent's error message can carry it. */
static __thread char last_libbpf_message[768];

const char *weir_bpf_last_error(void) { return last_error; }

static int fail(int err, const char *format, ...)
{
	char what[256];
	va_list args;
	va_start(args, format);
	vsnprintf(what, sizeof(what), format, args);
	va_end(args);
	if (err > 0)
		err = -err;
	if (last_libbpf_message[0])
		snprintf(last_error, sizeof(last_error), "%s: %s (libbpf: %s)", what, strerror(-err), last_libbpf_message);
	else
		snprintf(last_error, sizeof(last_error), "%s: %s", what, strerror(-err));
	return err;
}

static int libbpf_print(enum libbpf_print_level level, const char *format, va_list args)
{
	if (level == LIBBPF_DEBUG)
		return 0;
	int n = vsnprintf(last_libbpf_message, sizeof(last_libbpf_message), format, args);
	/* drop the trailing newline */
	if (n > 0 && (size_t)n <= sizeof(last_libbpf_message) && last_libbpf_message[n - 1] == '\n')
		last_libbpf_message[n - 1] = 0;
	return 0;
}

static void begin(void)
{
	static int print_set;
	if (!__atomic_exchange_n(&print_set, 1, __ATOMIC_SEQ_CST))
		libbpf_set_print(libbpf_print);
	last_error[0] = 0;
	last_libbpf_message[0] = 0;
}

/* ---- count.ebpf object ---- */

struct weir_count_object {
	struct bpf_object *object;
	int program_fd[2]; /* [0] egress, [1] ingress */
	int counts_fd;
	int stats_fd;
};

struct weir_count_object *weir_count_load(const void *elf, size_t elf_len, const struct weir_count_config *config,
                                          uint32_t max_entries, const char *pin_dir, int *created)
{
	begin();
	struct weir_count_object *result = calloc(1, sizeof(*result));
	if (!result) {
		fail(ENOMEM, "allocating");
		return NULL;
	}
	LIBBPF_OPTS(bpf_object_open_opts, open_opts, .object_name = "weir_count");
	struct bpf_object *object = bpf_object__open_mem(elf, elf_len, &open_opts);
	int err = libbpf_get_error(object);
	if (err) {
		fail(err, "opening the eBPF object");
		free(result);
		return NULL;
	}
	result->object = object;

	struct bpf_map *counts = bpf_object__find_map_by_name(object, "weir_ip_counts");
	struct bpf_map *stats = bpf_object__find_map_by_name(object, "weir_ebpf_stats");
	struct bpf_map *rodata = bpf_object__find_map_by_name(object, ".rodata");
	if (!counts || !stats || !rodata) {
		fail(ENOENT, "the eBPF object lacks weir_ip_counts, weir_ebpf_stats or .rodata");
		goto error;
	}
	size_t rodata_size = 0;
	void *rodata_value = (void *)bpf_map__initial_value(rodata, &rodata_size);
	if (!rodata_value || rodata_size < sizeof(*config)) {
		fail(EINVAL, "the eBPF object's .rodata does not hold struct weir_count_config");
		goto error;
	}
	memcpy(rodata_value, config, sizeof(*config));

	if ((err = bpf_map__set_max_entries(counts, max_entries))) {
		fail(err, "setting max_entries of weir_ip_counts to %u", max_entries);
		goto error;
	}
	char path[4096];
	snprintf(path, sizeof(path), "%s/weir_ip_counts", pin_dir);
	*created = access(path, F_OK) != 0;
	if ((err = bpf_map__set_pin_path(counts, path))) {
		fail(err, "setting the pin path %s", path);
		goto error;
	}
	snprintf(path, sizeof(path), "%s/weir_ebpf_stats", pin_dir);
	if ((err = bpf_map__set_pin_path(stats, path))) {
		fail(err, "setting the pin path %s", path);
		goto error;
	}
	if ((err = bpf_object__load(object))) {
		fail(err, "loading the eBPF programs");
		goto error;
	}
	struct bpf_program *in = bpf_object__find_program_by_name(object, "weir_count_in");
	struct bpf_program *out = bpf_object__find_program_by_name(object, "weir_count_out");
	if (!in || !out) {
		fail(ENOENT, "the eBPF object lacks weir_count_in or weir_count_out");
		goto error;
	}
	result->program_fd[1] = bpf_program__fd(in);
	result->program_fd[0] = bpf_program__fd(out);
	result->counts_fd = bpf_map__fd(counts);
	result->stats_fd = bpf_map__fd(stats);
	return result;

error:
	bpf_object__close(object);
	free(result);
	return NULL;
}

void weir_count_close(struct weir_count_object *object)
{
	if (!object)
		return;
	bpf_object__close(object->object);
	free(object);
}

int weir_count_program_fd(const struct weir_count_object *object, int ingress) { return object->program_fd[ingress ? 1 : 0]; }
int weir_count_counts_fd(const struct weir_count_object *object) { return object->counts_fd; }
int weir_count_stats_fd(const struct weir_count_object *object) { return object->stats_fd; }

/* ---- shape.tc classifier ---- */

struct weir_shape_object {
	struct bpf_object *object;
	int program_fd;
	int scopes_fd;
	int dynamic_fd;
	int misses_fd;
};

struct weir_shape_object *weir_shape_load(const void *elf, size_t elf_len, const struct weir_shape_config *config)
{
	begin();
	struct weir_shape_object *result = calloc(1, sizeof(*result));
	if (!result) {
		fail(ENOMEM, "allocating");
		return NULL;
	}
	LIBBPF_OPTS(bpf_object_open_opts, open_opts, .object_name = "weir_shape");
	struct bpf_object *object = bpf_object__open_mem(elf, elf_len, &open_opts);
	int err = libbpf_get_error(object);
	if (err) {
		fail(err, "opening the eBPF classifier");
		free(result);
		return NULL;
	}
	struct bpf_map *rodata = bpf_object__find_map_by_name(object, ".rodata");
	size_t rodata_size = 0;
	void *rodata_value = rodata ? (void *)bpf_map__initial_value(rodata, &rodata_size) : NULL;
	if (!rodata_value || rodata_size < sizeof(*config)) {
		fail(EINVAL, "the eBPF classifier's .rodata does not hold struct weir_shape_config");
		goto error;
	}
	memcpy(rodata_value, config, sizeof(*config));
	if ((err = bpf_object__load(object))) {
		fail(err, "loading the eBPF classifier");
		goto error;
	}
	struct bpf_program *program = bpf_object__find_program_by_name(object, "weir_shape_classify");
	struct bpf_map *scopes = bpf_object__find_map_by_name(object, "weir_shape_scopes");
	struct bpf_map *dynamic = bpf_object__find_map_by_name(object, "weir_shape_dynamic");
	struct bpf_map *misses = bpf_object__find_map_by_name(object, "weir_shape_misses");
	if (!program || !scopes || !dynamic || !misses) {
		fail(ENOENT, "the eBPF classifier lacks its program or one of its maps");
		goto error;
	}
	result->object = object;
	result->program_fd = bpf_program__fd(program);
	result->scopes_fd = bpf_map__fd(scopes);
	result->dynamic_fd = bpf_map__fd(dynamic);
	result->misses_fd = bpf_map__fd(misses);
	return result;

error:
	bpf_object__close(object);
	free(result);
	return NULL;
}

void weir_shape_close(struct weir_shape_object *object)
{
	if (!object)
		return;
	bpf_object__close(object->object);
	free(object);
}

int weir_shape_program_fd(const struct weir_shape_object *object) { return object->program_fd; }
int weir_shape_scopes_fd(const struct weir_shape_object *object) { return object->scopes_fd; }
int weir_shape_dynamic_fd(const struct weir_shape_object *object) { return object->dynamic_fd; }
int weir_shape_misses_fd(const struct weir_shape_object *object) { return object->misses_fd; }

/* ---- attaching at tc ---- */

int weir_tcx_attach(int program_fd, int ifindex, int ingress)
{
	begin();
	int fd = bpf_link_create(program_fd, ifindex, ingress ? WEIR_BPF_TCX_INGRESS : WEIR_BPF_TCX_EGRESS, NULL);
	if (fd < 0)
		return fail(fd, "attaching a tcx %s link to ifindex %d", ingress ? "ingress" : "egress", ifindex);
	return fd;
}

int weir_clsact_attach(int program_fd, int ifindex, int ingress, uint32_t handle, uint32_t priority)
{
	begin();
	LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = ingress ? BPF_TC_INGRESS : BPF_TC_EGRESS);
	int err = bpf_tc_hook_create(&hook);
	if (err && err != -EEXIST)
		return fail(err, "creating the clsact qdisc on ifindex %d", ifindex);
	LIBBPF_OPTS(bpf_tc_opts, opts, .prog_fd = program_fd, .handle = handle, .priority = priority,
	            .flags = BPF_TC_F_REPLACE);
	if ((err = bpf_tc_attach(&hook, &opts)))
		return fail(err, "attaching a clsact %s filter to ifindex %d", ingress ? "ingress" : "egress", ifindex);
	return 0;
}

int weir_clsact_detach(int ifindex, int ingress, uint32_t handle, uint32_t priority)
{
	begin();
	LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = ifindex, .attach_point = ingress ? BPF_TC_INGRESS : BPF_TC_EGRESS);
	LIBBPF_OPTS(bpf_tc_opts, opts, .handle = handle, .priority = priority);
	int err = bpf_tc_detach(&hook, &opts);
	if (err == -ENOENT || err == -ENODEV || err == -EINVAL)
		return 0; /* gone with its interface or qdisc */
	if (err)
		return fail(err, "detaching the clsact %s filter from ifindex %d", ingress ? "ingress" : "egress", ifindex);
	return 0;
}

/* ---- maps ---- */

static size_t percpu_stride(size_t value_size) { return (value_size + 7) & ~(size_t)7; }

static void sum_counts(const unsigned char *percpu, int cpus, struct weir_ip_counts *out)
{
	size_t stride = percpu_stride(sizeof(struct weir_ip_counts));
	memset(out, 0, sizeof(*out));
	for (int cpu = 0; cpu < cpus; cpu++) {
		const struct weir_ip_counts *v = (const void *)(percpu + (size_t)cpu * stride);
		out->in_bytes += v->in_bytes;
		out->in_packets += v->in_packets;
		out->out_bytes += v->out_bytes;
		out->out_packets += v->out_packets;
	}
}

/* Key by key, for kernels without batch operations (before 5.6). */
static int read_one_by_one(int fd, struct weir_ip_key *keys, struct weir_ip_counts *values, uint32_t capacity,
                           uint32_t *count, unsigned char *percpu, int cpus)
{
	struct weir_ip_key key, next;
	const void *previous = NULL;
	uint32_t n = 0;
	while (n < capacity && bpf_map_get_next_key(fd, previous, &next) == 0) {
		key = next;
		previous = &key;
		if (bpf_map_lookup_elem(fd, &key, percpu) != 0)
			continue; /* evicted in between */
		keys[n] = key;
		sum_counts(percpu, cpus, &values[n]);
		n++;
	}
	*count = n;
	return 0;
}

int weir_counts_read(int counts_fd, struct weir_ip_key *keys, struct weir_ip_counts *values, uint32_t capacity,
                     uint32_t *count)
{
	begin();
	int cpus = libbpf_num_possible_cpus();
	if (cpus <= 0)
		return fail(cpus, "counting CPUs");
	enum { chunk = 4096 };
	size_t stride = percpu_stride(sizeof(struct weir_ip_counts)) * (size_t)cpus;
	unsigned char *percpu = malloc(stride * chunk);
	struct weir_ip_key *chunk_keys = malloc(sizeof(*chunk_keys) * chunk);
	if (!percpu || !chunk_keys) {
		free(percpu);
		free(chunk_keys);
		return fail(ENOMEM, "allocating read buffers");
	}
	uint64_t token = 0; /* a bucket index for hash maps */
	int first = 1, err = 0;
	uint32_t n = 0;
	while (n < capacity) {
		__u32 got = chunk;
		if (got > capacity - n)
			got = capacity - n;
		err = bpf_map_lookup_batch(counts_fd, first ? NULL : &token, &token, chunk_keys, percpu, &got, NULL);
		if (err && errno == EINVAL && first) {
			err = read_one_by_one(counts_fd, keys, values, capacity, count, percpu, cpus);
			free(percpu);
			free(chunk_keys);
			return err;
		}
		if (err && errno == ENOSPC && n > 0) { /* capacity reached mid-bucket */
			err = 0;
			break;
		}
		if (err && errno != ENOENT) {
			err = fail(errno, "reading weir_ip_counts");
			break;
		}
		for (__u32 i = 0; i < got; i++) {
			keys[n] = chunk_keys[i];
			sum_counts(percpu + (size_t)i * stride, cpus, &values[n]);
			n++;
		}
		first = 0;
		if (err) { /* ENOENT: that was the last batch */
			err = 0;
			break;
		}
	}
	free(percpu);
	free(chunk_keys);
	*count = n;
	return err;
}

int weir_counts_write(int counts_fd, const struct weir_ip_key *keys, const struct weir_ip_counts *values,
                      uint32_t count)
{
	begin();
	int cpus = libbpf_num_possible_cpus();
	if (cpus <= 0)
		return fail(cpus, "counting CPUs");
	size_t stride = percpu_stride(sizeof(struct weir_ip_counts));
	unsigned char *percpu = calloc((size_t)cpus, stride);
	if (!percpu)
		return fail(ENOMEM, "allocating");
	int err = 0;
	for (uint32_t i = 0; i < count; i++) {
		memcpy(percpu, &values[i], sizeof(values[i]));
		if (bpf_map_update_elem(counts_fd, &keys[i], percpu, BPF_ANY)) {
			err = fail(errno, "writing weir_ip_counts");
			break;
		}
	}
	free(percpu);
	return err;
}

/* A zeroed buffer for one per-CPU u64 value; returns the CPU count or a negative errno. */
static int percpu_u64(uint64_t **buffer)
{
	int cpus = libbpf_num_possible_cpus();
	if (cpus <= 0)
		return fail(cpus, "counting CPUs");
	*buffer = calloc((size_t)cpus, sizeof(uint64_t));
	return *buffer ? cpus : fail(ENOMEM, "allocating");
}

int weir_stats_read(int stats_fd, uint64_t totals[WEIR_STAT_COUNT])
{
	begin();
	uint64_t *percpu = NULL;
	int cpus = percpu_u64(&percpu);
	if (cpus < 0)
		return cpus;
	int err = 0;
	for (__u32 slot = 0; slot < WEIR_STAT_COUNT; slot++) {
		totals[slot] = 0;
		if (bpf_map_lookup_elem(stats_fd, &slot, percpu)) {
			err = fail(errno, "reading weir_ebpf_stats");
			break;
		}
		for (int cpu = 0; cpu < cpus; cpu++)
			totals[slot] += percpu[cpu];
	}
	free(percpu);
	return err;
}

int weir_stats_write(int stats_fd, uint32_t slot, uint64_t value)
{
	begin();
	uint64_t *percpu = NULL;
	int err = percpu_u64(&percpu);
	if (err < 0)
		return err;
	percpu[0] = value;
	err = bpf_map_update_elem(stats_fd, &slot, percpu, BPF_ANY) ? fail(errno, "writing weir_ebpf_stats") : 0;
	free(percpu);
	return err;
}

int weir_map_update(int map_fd, const void *key, const void *value, uint64_t flags)
{
	begin();
	int err = bpf_map_update_elem(map_fd, key, value, flags);
	return err ? fail(err, "updating a map entry") : 0;
}

int weir_map_delete(int map_fd, const void *key)
{
	begin();
	int err = bpf_map_delete_elem(map_fd, key);
	if (err == -ENOENT)
		return 0;
	return err ? fail(err, "deleting a map entry") : 0;
}

int weir_map_next_key(int map_fd, const void *key, void *next)
{
	int err = bpf_map_get_next_key(map_fd, key, next);
	return err ? -errno : 0;
}

int weir_pinned_open(const char *path)
{
	begin();
	int fd = bpf_obj_get(path);
	return fd < 0 ? fail(errno, "opening %s", path) : fd;
}

int weir_map_max_entries(int map_fd)
{
	begin();
	struct bpf_map_info info;
	__u32 length = sizeof(info);
	memset(&info, 0, sizeof(info));
	if (bpf_obj_get_info_by_fd(map_fd, &info, &length))
		return fail(errno, "reading map information");
	return (int)info.max_entries;
}

/* ---- bpffs ---- */

int weir_bpffs_check(const char *path)
{
	begin();
	struct statfs info;
	if (statfs(path, &info))
		return fail(errno, "examining %s", path);
	return info.f_type == BPF_FS_MAGIC;
}

int weir_bpffs_mount(const char *path)
{
	begin();
	if (mount("bpf", path, "bpf", 0, "mode=0700"))
		return fail(errno, "mounting a bpf filesystem at %s", path);
	return 0;
}
