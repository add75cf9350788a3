/*
 * Walk binary ftrace ring-buffer pages and list where each data record is.
 * The Python walker (tracer/ring_pages.py) does the same in pure Python
 * when this cannot be compiled; both must agree (tests/test_ftrace_binary.py).
 *
 * Everything in `buf` comes from the guest: every offset and length read from
 * it is checked against the page it lies in before it is used.  A page that
 * fails a check is counted in `*torn` and its remaining records are dropped;
 * `*backwards` counts pages whose time stamp does not fit between their
 * neighbours' (dropped too: one page claiming the far future must not make
 * every later page look old).  The layout arguments are checked by the caller
 * (ftrace_formats.parse_header_page) and again here.
 *
 * `status` has one byte per page: on entry, PAGE_DAMAGED marks a page the caller
 * knows was changed since it was recorded (skipped unread); on return each page
 * holds its verdict (0 read whole, else PAGE_* bits below), from which the
 * caller places the gaps of the trace.
 *
 * A stream of batches (tracer/decode_stream.py) walks a CPU's pages a batch at a
 * time: `walk_len` bytes are walked, the page after them (up to `len`) is only
 * looked at for the backwards check, and `*prev_io` carries the last accepted
 * page's time stamp from one batch to the next (0 at the start), so that the
 * batches give the verdicts the whole walk would.
 *
 * Returns the number of records written, -1 when `cap` was too small, -2 when
 * the layout arguments are impossible.
 */
#include <stdint.h>
#include <string.h>

static uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

#define TS_MAX ((uint64_t)INT64_MAX)
/* page verdict bits (tracer/ring_pages.py PAGE_*) */
#define PAGE_TORN 1
#define PAGE_BACKWARDS 2
#define PAGE_MISSED_BEFORE 4
#define PAGE_DAMAGED 8

long td_walk(const uint8_t *buf, long len, long base, long psize, long commit_off,
	     long commit_size, long data_off, long data_size,
	     int64_t *out_ts, int64_t *out_off, int32_t *out_len, long cap,
	     long *torn, uint64_t *missed, long *missed_unknown, long *backwards,
	     int8_t *status, long walk_len, uint64_t *prev_io)
{
	long n = 0;
	uint64_t prev_ts = *prev_io;

	if (len < 0 || base < 0 || psize < 16 || psize > (1L << 16) ||
	    commit_off < 8 || (commit_size != 4 && commit_size != 8) ||
	    commit_off + commit_size > data_off || data_off <= 0 || data_size <= 0 ||
	    data_off + data_size != psize || walk_len < 0 || walk_len > len)
		return -2;

	for (long page = 0; page + psize <= walk_len; page += psize) {
		const long page_end = page + psize;
		int8_t *st = status + page / psize;
		uint64_t ts;
		uint64_t commit;
		uint64_t length;
		long pos, end;

		if (*st & PAGE_DAMAGED)
			continue;
		ts = rd64(buf + page);
		commit = commit_size == 8 ? rd64(buf + page + commit_off)
					  : rd32(buf + page + commit_off);
		length = commit & 0x3FFFFFFFu;
		*st = 0;
		if ((long)length > data_size || ts > TS_MAX) {
			(*torn)++;
			*st = PAGE_TORN;
			continue;
		}
		if (prev_ts && ts < prev_ts) {
			(*backwards)++;
			*st = PAGE_BACKWARDS;
			continue;
		}
		if (page_end + psize <= len) {
			/* higher than the next page, which itself follows the previous one */
			uint64_t next = rd64(buf + page_end);

			if (next < ts && next >= prev_ts && next > 0) {
				(*backwards)++;
				*st = PAGE_BACKWARDS;
				continue;
			}
		}
		prev_ts = ts;
		pos = page + data_off;
		end = pos + (long)length;
		if (commit & (1ull << 31)) {
			if ((commit & (1ull << 30)) && end + 8 <= page_end)
				*missed += rd64(buf + end);
			else
				(*missed_unknown)++;
			*st |= PAGE_MISSED_BEFORE;
		}
		while (pos < end) {
			uint32_t hdr, tl, delta;

			if (pos + 4 > end)
				goto torn_page;
			hdr = rd32(buf + pos);
			tl = hdr & 31;
			delta = hdr >> 5;
			if (tl <= 28) {
				long dpos, dlen, adv;

				if (tl == 0) {
					uint32_t rlen;

					if (pos + 8 > end)
						goto torn_page;
					rlen = rd32(buf + pos + 4);
					if (rlen < 4 || rlen > (uint32_t)(end - pos - 4))
						goto torn_page;
					dpos = pos + 8; dlen = (long)rlen - 4; adv = 4 + (long)rlen;
				} else {
					dpos = pos + 4; dlen = (long)tl * 4; adv = 4 + (long)tl * 4;
				}
				if (dpos + dlen > end)
					goto torn_page;
				ts += delta;
				if (ts > TS_MAX)
					goto torn_page;
				if (n >= cap)
					return -1;
				out_ts[n] = (int64_t)ts;
				out_off[n] = base + dpos;
				out_len[n] = (int32_t)dlen;
				n++;
				pos += adv;
			} else if (tl == 29) {
				uint32_t plen;

				if (delta == 0)
					break;
				if (pos + 8 > page_end)
					goto torn_page;
				plen = rd32(buf + pos + 4);
				/* the tail's padding may run to the page's end, past the commit */
				if (plen > (uint32_t)(page_end - pos - 4))
					goto torn_page;
				pos += 4 + (long)plen;
			} else {
				uint64_t ext;

				if (pos + 8 > end)
					goto torn_page;
				ext = ((uint64_t)rd32(buf + pos + 4) << 27) | delta;
				if (tl == 30)
					ts += ext;
				else
					ts = (ts & ~((1ull << 59) - 1)) | ext;
				pos += 8;
			}
		}
		continue;
torn_page:
		(*torn)++;
		*st |= PAGE_TORN;
	}
	*prev_io = prev_ts;
	return n;
}

/*
 * The `size`-byte integers (1, 2, 4 or 8) at byte offsets `offs[0..n)` of `buf`,
 * copied into `out` (n of them, host order: the caller checks the host is little-endian
 * like the trace).  The record fields of a decode are read this way: one pass where
 * numpy needs a pass per byte phase of the offsets.  Every field is checked to lie inside
 * `buf` (the offsets come from records the guest wrote): returns n when all did, else
 * the index of the first that did not (nothing is written from there), -2 for a size
 * no integer has.
 */
long td_gather(const uint8_t *buf, long len, const int64_t *offs, long n, long size,
	       uint8_t *out)
{
	if (size != 1 && size != 2 && size != 4 && size != 8)
		return -2;
	for (long i = 0; i < n; i++) {
		int64_t o = offs[i];

		if (o < 0 || o > (int64_t)len - size)
			return i;
		switch (size) {
		case 1: out[i] = buf[o]; break;
		case 2: memcpy(out + 2 * i, buf + o, 2); break;
		case 4: memcpy(out + 4 * i, buf + o, 4); break;
		default: memcpy(out + 8 * i, buf + o, 8); break;
		}
	}
	return n;
}
