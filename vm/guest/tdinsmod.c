/*
 * tdinsmod: load one kernel module with a single finit_module() call.
 *
 * busybox insmod/modprobe (bb_init_module in modutils/modutils.c, 1.35 as in
 * Debian 12) retry a failing finit_module() with init_module(): a module whose
 * init fails then runs its init twice, and the trace shows two loads for one
 * exit code.  This loader tries once and says why it failed.
 *
 * usage: tdinsmod FILE [PARAM=VALUE ...]
 * exit:  0 loaded; else the errno of finit_module (1 if it does not fit)
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	size_t len = 1;
	char *params;
	int fd, i, err;

	if (argc < 2) {
		fprintf(stderr, "usage: tdinsmod FILE [PARAM=VALUE ...]\n");
		return 2;
	}
	for (i = 2; i < argc; i++)
		len += strlen(argv[i]) + 1;
	params = calloc(1, len);
	if (!params) {
		perror("tdinsmod");
		return ENOMEM;
	}
	/* the kernel parses the parameters as one space-separated string */
	for (i = 2; i < argc; i++) {
		if (i > 2)
			strcat(params, " ");
		strcat(params, argv[i]);
	}
	fd = open(argv[1], O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		err = errno;
		fprintf(stderr, "tdinsmod: %s: %s\n", argv[1], strerror(err));
		return err > 0 && err < 256 ? err : 1;
	}
	if (syscall(SYS_finit_module, fd, params, 0) != 0) {
		err = errno;
		fprintf(stderr, "tdinsmod: %s: finit_module: %s (errno %d)\n", argv[1],
			strerror(err), err);
		return err > 0 && err < 256 ? err : 1;
	}
	close(fd);
	return 0;
}
