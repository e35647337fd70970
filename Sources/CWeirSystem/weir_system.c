#define _GNU_SOURCE
#include "weir_system.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_UNSHARE
#define CLOSE_RANGE_UNSHARE (1U << 1)
#endif

/* Closes every descriptor from 3 on in the calling thread's (already private) table, by listing it. */
static int close_listed_descriptors(void)
{
	DIR *dir = opendir("/proc/thread-self/fd");
	if (!dir)
		return -errno;
	int own = dirfd(dir);
	int *doomed = NULL;
	size_t count = 0, capacity = 0;
	struct dirent *entry;
	while ((entry = readdir(dir))) {
		char *end;
		long fd = strtol(entry->d_name, &end, 10);
		if (*end || entry->d_name[0] == '.' || fd < 3 || fd == own)
			continue;
		if (count == capacity) {
			capacity = capacity ? capacity * 2 : 256;
			int *grown = realloc(doomed, capacity * sizeof(*doomed));
			if (!grown) {
				free(doomed);
				closedir(dir);
				return -ENOMEM;
			}
			doomed = grown;
		}
		doomed[count++] = (int)fd;
	}
	closedir(dir);
	for (size_t i = 0; i < count; i++)
		close(doomed[i]);
	free(doomed);
	return 0;
}

int weir_isolate_descriptor_table(void)
{
#ifdef SYS_close_range
	/* Linux 5.9+: unshare the table and close 3.. in one step. */
	if (syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_UNSHARE) == 0)
		return 0;
	if (errno != ENOSYS && errno != EINVAL)
		return -errno;
#endif
	if (unshare(CLONE_FILES) != 0)
		return -errno;
	return close_listed_descriptors();
}

int weir_thread_descriptor_count(void)
{
	DIR *dir = opendir("/proc/thread-self/fd");
	if (!dir)
		return -errno;
	int count = 0;
	struct dirent *entry;
	while ((entry = readdir(dir)))
		if (entry->d_name[0] != '.')
			count++;
	closedir(dir);
	/* The listing's own descriptor is not one of the thread's. */
	return count - 1;
}

int weir_spawn_wait(const char *path, char *const argv[], char *const envp[])
{
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		int null = open("/dev/null", O_RDWR);
		if (null >= 0) {
			dup2(null, 0);
			dup2(null, 1);
			dup2(null, 2);
		}
		/* Everything from 3 up: the agent's sockets stay the agent's. */
		if (syscall(SYS_close_range, 3, ~0U, 0) != 0) {
			for (int fd = 3; fd < 65536; fd++)
				close(fd);
		}
		execve(path, argv, envp);
		_exit(127);
	}
	int status = 0;
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR)
			return -errno;
	}
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	return 128 + WTERMSIG(status);
}

void weir_name_thread(const char *name)
{
	char truncated[16];
	strncpy(truncated, name, sizeof(truncated) - 1);
	truncated[sizeof(truncated) - 1] = '\0';
	pthread_setname_np(pthread_self(), truncated);
}
