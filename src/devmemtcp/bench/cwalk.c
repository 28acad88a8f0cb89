// SPDX-License-Identifier: Apache-2.0
/*
 * cwalk: the C baselines of `devmemtcp bench frags`.
 *
 * Walks recorded devmem RX control buffers (kernel cmsg layout, one
 * SCM_DEVMEM_DMABUF cmsg per fragment, as tcp_recvmsg_dmabuf() writes them)
 * and gives every fragment back with setsockopt(SO_DEVMEM_DONTNEED) on a real
 * connected loopback TCP socket of the running kernel.
 *
 * Modes:
 *   perfrag  one SO_DEVMEM_DONTNEED per fragment ({token, 1}), the way the
 *            kernel's ncdevmem selftest tool does it.
 *   batched  hand-batched: consecutive tokens coalesced into ranges; one call
 *            per 128 ranges or 1024 frags (the kernel's limits in
 *            sock_devmem_dontneed(), net/core/sock.c). A partial chunk is
 *            carried into the next control buffer and the rest given back at
 *            the end, the policy of devmemtcp's Receiver (at most one call
 *            per 1024 frags in steady state), so both issue the same calls.
 *   parse    the walk and accounting alone, no syscalls (cost breakdown).
 *
 * Input file: records of [u32 controllen][u32 nbytes][controllen bytes],
 * each record padded to 8 bytes. The walk cycles over the records until
 * NFRAGS fragments have been walked (at least one full buffer).
 *
 * Output: one JSON object on stdout.
 *
 * usage: cwalk MODE FILE NFRAGS
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef SO_DEVMEM_LINEAR
#define SO_DEVMEM_LINEAR 78
#define SCM_DEVMEM_LINEAR SO_DEVMEM_LINEAR
#define SO_DEVMEM_DMABUF 79
#define SCM_DEVMEM_DMABUF SO_DEVMEM_DMABUF
#define SO_DEVMEM_DONTNEED 80
#endif

#define MAX_RANGES 128  /* MAX_DONTNEED_TOKENS */
#define MAX_FRAGS 1024  /* MAX_DONTNEED_FRAGS */

struct dmabuf_cmsg_c { /* struct dmabuf_cmsg, include/uapi/linux/uio.h */
	uint64_t frag_offset;
	uint32_t frag_size;
	uint32_t frag_token;
	uint32_t dmabuf_id;
	uint32_t flags;
};

struct dmabuf_token_c { /* struct dmabuf_token */
	uint32_t token_start;
	uint32_t token_count;
};

static double now(clockid_t clk)
{
	struct timespec ts;

	clock_gettime(clk, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int die(const char *what)
{
	fprintf(stderr, "cwalk: %s: %s\n", what, strerror(errno));
	exit(2);
}

/* A connected loopback TCP socket: SO_DEVMEM_DONTNEED needs a TCP socket. */
static int tcp_pair(int *peer, int *lsn)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t alen = sizeof(a);
	int l, c, s;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	l = socket(AF_INET, SOCK_STREAM, 0);
	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) || listen(l, 1) ||
	    getsockname(l, (struct sockaddr *)&a, &alen))
		die("listen on 127.0.0.1");
	c = socket(AF_INET, SOCK_STREAM, 0);
	if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof(a)))
		die("connect to 127.0.0.1");
	s = accept(l, NULL, NULL);
	if (s < 0)
		die("accept");
	*peer = s;
	*lsn = l;
	return c;
}

struct stats {
	uint64_t frags, bytes, syscalls, freed, linear_bytes;
	int64_t errors;
	int last_errno;
};

static inline void dontneed(int fd, struct dmabuf_token_c *t, unsigned int n, struct stats *st)
{
	int ret = setsockopt(fd, SOL_SOCKET, SO_DEVMEM_DONTNEED, t, n * sizeof(*t));

	st->syscalls++;
	if (ret < 0) {
		st->errors++;
		st->last_errno = errno;
	} else {
		st->freed += (uint64_t)ret;
	}
}

/* the batched walk's pending chunk, carried from one control buffer to the next */
static struct dmabuf_token_c ranges[MAX_RANGES];
static unsigned int nr, nfr;

static void walk(int mode, int fd, struct msghdr *msg, struct stats *st)
{
	struct cmsghdr *cm;

	for (cm = CMSG_FIRSTHDR(msg); cm; cm = CMSG_NXTHDR(msg, cm)) {
		struct dmabuf_cmsg_c *d;

		if (cm->cmsg_level != SOL_SOCKET)
			continue;
		d = (struct dmabuf_cmsg_c *)CMSG_DATA(cm);
		if (cm->cmsg_type == SCM_DEVMEM_LINEAR) {
			st->linear_bytes += d->frag_size;
			continue;
		}
		if (cm->cmsg_type != SCM_DEVMEM_DMABUF)
			continue;
		st->frags++;
		st->bytes += d->frag_size;
		if (mode == 0) { /* perfrag */
			struct dmabuf_token_c t = { d->frag_token, 1 };

			dontneed(fd, &t, 1, st);
		} else if (mode == 1) { /* batched */
			if (nr && ranges[nr - 1].token_start + ranges[nr - 1].token_count == d->frag_token) {
				ranges[nr - 1].token_count++;
			} else {
				ranges[nr].token_start = d->frag_token;
				ranges[nr].token_count = 1;
				nr++;
			}
			if (++nfr == MAX_FRAGS || nr == MAX_RANGES) {
				dontneed(fd, ranges, nr, st);
				nr = nfr = 0;
			}
		}
	}
}

int main(int argc, char **argv)
{
	int mode, fd, peer, lsn, nrec = 0, cap = 64;
	struct msghdr *recs;
	uint64_t want, fsize;
	double t0, c0, t1, c1;
	struct stats st = { 0 };
	unsigned char *data;
	size_t off = 0;
	FILE *f;
	long i;

	if (argc != 4) {
		fprintf(stderr, "usage: cwalk perfrag|batched|parse FILE NFRAGS\n");
		return 2;
	}
	if (!strcmp(argv[1], "perfrag"))
		mode = 0;
	else if (!strcmp(argv[1], "batched"))
		mode = 1;
	else if (!strcmp(argv[1], "parse"))
		mode = 2;
	else {
		fprintf(stderr, "cwalk: unknown mode %s\n", argv[1]);
		return 2;
	}
	want = strtoull(argv[3], NULL, 0);
	f = fopen(argv[2], "rb");
	if (!f)
		die(argv[2]);
	fseek(f, 0, SEEK_END);
	fsize = ftell(f);
	fseek(f, 0, SEEK_SET);
	data = aligned_alloc(64, (fsize + 63) & ~63ULL);
	if (!data || fread(data, 1, fsize, f) != fsize)
		die("read input");
	fclose(f);

	recs = calloc(cap, sizeof(*recs));
	while (off + 8 <= fsize) {
		uint32_t clen, nbytes;

		memcpy(&clen, data + off, 4);
		memcpy(&nbytes, data + off + 4, 4);
		off += 8;
		if (off + clen > fsize) {
			fprintf(stderr, "cwalk: truncated record %d\n", nrec);
			return 2;
		}
		if (nrec == cap) {
			cap *= 2;
			recs = realloc(recs, cap * sizeof(*recs));
		}
		memset(&recs[nrec], 0, sizeof(*recs));
		recs[nrec].msg_control = data + off;
		recs[nrec].msg_controllen = clen;
		nrec++;
		off += (clen + 7) & ~7U;
	}
	if (!nrec) {
		fprintf(stderr, "cwalk: no control buffers in %s\n", argv[2]);
		return 2;
	}
	fd = tcp_pair(&peer, &lsn);

	t0 = now(CLOCK_MONOTONIC);
	c0 = now(CLOCK_PROCESS_CPUTIME_ID);
	for (i = 0; st.frags < want || i < nrec; i++)
		walk(mode, fd, &recs[i % nrec], &st);
	if (nr) /* give back what is still pending, as at EOF */
		dontneed(fd, ranges, nr, &st);
	c1 = now(CLOCK_PROCESS_CPUTIME_ID);
	t1 = now(CLOCK_MONOTONIC);

	printf("{\"mode\": \"%s\", \"buffers\": %ld, \"frags\": %llu, \"bytes\": %llu, "
	       "\"linear_bytes\": %llu, \"release_syscalls\": %llu, \"frags_freed\": %llu, "
	       "\"release_errors\": %lld, \"last_errno\": %d, \"seconds\": %.9f, \"cpu_seconds\": %.9f}\n",
	       argv[1], i, (unsigned long long)st.frags, (unsigned long long)st.bytes,
	       (unsigned long long)st.linear_bytes, (unsigned long long)st.syscalls,
	       (unsigned long long)st.freed, (long long)st.errors, st.last_errno, t1 - t0, c1 - c0);
	close(fd);
	close(peer);
	close(lsn);
	return 0;
}
