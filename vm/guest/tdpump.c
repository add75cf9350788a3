/*
 * tdpump: move one CPU's binary ftrace ring buffer to a virtio-serial port.
 *
 * Runs in the guest, built static by tracedep's vm stage.  Reads
 * per_cpu/cpuN/trace_pipe_raw in non-blocking mode, woken by poll() when the
 * ring fills to buffer_percent or every 250 ms, whichever comes first: a
 * tight polling loop would itself fill the trace it is reading.  Writes whole
 * pages to the port, whose host end applies back-pressure.  On SIGUSR1 it
 * drains what is left and exits, so tracing must be off first.
 *
 * usage: tdpump SRC DST
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_usr1(int sig)
{
	(void)sig;
	stop = 1;
}

static int write_all(int fd, const char *buf, size_t len)
{
	while (len) {
		ssize_t n = write(fd, buf, len);

		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return -1;
		}
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

int main(int argc, char **argv)
{
	static char buf[1 << 16];
	unsigned long long total = 0;
	int src, dst, idle = 0;
	struct sigaction sa;

	if (argc != 3) {
		fprintf(stderr, "usage: tdpump SRC DST\n");
		return 2;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	src = open(argv[1], O_RDONLY | O_NONBLOCK);
	if (src < 0) {
		perror(argv[1]);
		return 1;
	}
	dst = open(argv[2], O_WRONLY);
	if (dst < 0) {
		perror(argv[2]);
		return 1;
	}
	for (;;) {
		ssize_t n = read(src, buf, sizeof(buf));

		if (n > 0) {
			idle = 0;
			if (write_all(dst, buf, (size_t)n) < 0) {
				perror(argv[2]);
				return 1;
			}
			total += (unsigned long long)n;
			continue;
		}
		if (n < 0 && errno != EAGAIN && errno != EINTR) {
			perror(argv[1]);
			return 1;
		}
		/* empty: after a stop request, two empty reads in a row mean drained */
		if (stop && ++idle >= 2)
			break;
		if (!stop) {
			struct pollfd pfd = { .fd = src, .events = POLLIN };

			poll(&pfd, 1, 250);
		}
	}
	fprintf(stderr, "tdpump %s: %llu bytes\n", argv[1], total);
	close(dst);
	return 0;
}
