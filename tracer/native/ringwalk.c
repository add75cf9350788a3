/*
 * Walk binary ftrace ring-buffer pages and list where each data record is.
 * The Python decoder (tracer/ftrace_binary.py) does the same in pure Python
 * when this cannot be compiled; both must agree (tests/test_ftrace_binary.py).
 *
 * Returns the number of records written, or -1 when `cap` was too small.
 */
#include <stdint.h>
#include <string.h>

static uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

long td_walk(const uint8_t *buf, long len, long base, long psize, long commit_off,
	     long commit_size, long data_off, long data_size,
	     int64_t *out_ts, int64_t *out_off, int32_t *out_len, long cap,
	     long *torn, uint64_t *missed, long *missed_unknown)
{
	long n = 0;
	uint64_t prev_ts = 0;

	for (long page = 0; page + psize <= len; page += psize) {
		uint64_t ts = rd64(buf + page);
		uint64_t commit = commit_size == 8 ? rd64(buf + page + commit_off)
						   : rd32(buf + page + commit_off);
		uint64_t length = commit & 0x3FFFFFFFu;
		long pos, end;

		if ((long)length > data_size || (prev_ts && ts < prev_ts)) {
			(*torn)++;
			continue;
		}
		prev_ts = ts;
		pos = page + data_off;
		end = pos + (long)length;
		if (commit & (1ull << 31)) {
			if ((commit & (1ull << 30)) && end + 8 <= page + psize)
				*missed += rd64(buf + end);
			else
				(*missed_unknown)++;
		}
		while (pos < end) {
			uint32_t hdr = rd32(buf + pos);
			uint32_t tl = hdr & 31, delta = hdr >> 5;

			if (tl == 0 || tl <= 28) {
				long dpos, dlen, adv;

				if (tl == 0) {
					uint32_t rlen = rd32(buf + pos + 4);
					dpos = pos + 8; dlen = (long)rlen - 4; adv = 4 + rlen;
				} else {
					dpos = pos + 4; dlen = tl * 4; adv = 4 + tl * 4;
				}
				ts += delta;
				if (n >= cap)
					return -1;
				out_ts[n] = (int64_t)ts;
				out_off[n] = base + dpos;
				out_len[n] = (int32_t)dlen;
				n++;
				pos += adv;
			} else if (tl == 29) {
				if (delta == 0)
					break;
				pos += 4 + rd32(buf + pos + 4);
			} else if (tl == 30) {
				ts += ((uint64_t)rd32(buf + pos + 4) << 27) | delta;
				pos += 8;
			} else {
				uint64_t abs_ts = ((uint64_t)rd32(buf + pos + 4) << 27) | delta;
				ts = (ts & ~((1ull << 59) - 1)) | abs_ts;
				pos += 8;
			}
			if (pos > page + psize) {
				(*torn)++;
				break;
			}
		}
	}
	return n;
}
