/* Process-level system calls Swift cannot reach directly (variadic syscall(), _GNU_SOURCE-only calls). */
#ifndef WEIR_SYSTEM_H
#define WEIR_SYSTEM_H

/* Gives the calling thread a descriptor table of its own holding only descriptors 0, 1 and 2.
 *
 * Some C libraries wait on their sockets with select(), whose fd_set cannot hold a descriptor of 1024 or more
 * (glibc aborts the process: "bit out of range 0 - FD_SETSIZE on fd_set"). A busy agent has thousands of
 * descriptors, so any socket such a library opens on an ordinary thread may land above 1023. On a thread
 * whose table starts with three entries, every descriptor it opens is small, however many the process has.
 * The other threads' tables are untouched. Returns 0, or a negative errno. */
int weir_isolate_descriptor_table(void);

/* The number of open descriptors in the calling thread's table, or a negative errno. */
int weir_thread_descriptor_count(void);

/* Runs `path` with `argv` and `envp` and waits for it to exit; its standard input and output are /dev/null and
 * it inherits no other descriptor of the agent (listening sockets, netlink sockets), whatever their close-on-exec
 * flag — for helpers that leave a daemon behind (wireguard-go), which must not hold the agent's ports open.
 * Returns the exit status (128 + signal when killed), or a negative errno when it could not run. */
int weir_spawn_wait(const char *path, char *const argv[], char *const envp[]);

/* Names the calling thread for the kernel (top, /proc/<pid>/task/<tid>/comm): the first 15 bytes of `name`. */
void weir_name_thread(const char *name);

#endif
