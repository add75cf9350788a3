/*
 * The held-lock replay's per-event loop (analysis/heldlocks.py, Replayer.feed) in C.
 *
 * analysis/replay_native.py encodes each chunk of events as arrays (strings become
 * small codes and property bits computed in Python with the same expressions the
 * Python loop uses) and calls td_rp_feed(); the state (held stacks per (task, IRQ
 * context), pending calls, open waits, last holders, IRQ-dirty tasks, and what the
 * replay reports) lives in a struct td_rp across calls and is read back with the
 * td_rp_get_* functions.  Every decision below is the Python loop's, statement for
 * statement, in the same order: the two must give identical results on every input
 * (tests/analysis/test_replay_native.py compares them field for field).
 *
 * The events come from the guest: every code read from an input array is checked
 * against its table, every array grows by a checked allocation, and nothing is a
 * fixed-size buffer that input could overflow.  Errors are returned as TD_E*
 * (negative); the caller raises.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TD_ENOMEM (-1)
#define TD_EINPUT (-2)		/* a code outside its table */
#define TD_ECALLBACK (-3)	/* holder_on_stack raised */
#define TD_ETYPES (-4)		/* over 127 lock types acquired (AcqTable's int8 codes) */
#define TD_EFLAGS (-5)		/* lock_flags not a string where it is read */
#define TD_EEVENT (-6)		/* event not a string where it is read */
#define TD_EOPEN (-7)		/* an open acquisition missing: a drain handed it out */

/* event kinds (replay_native.KIND_CODE) */
enum { K_GAP, K_ACQUIRE, K_RETURN, K_RELEASE, K_SWITCH, K_MARKER, K_SLEEP, K_N };
/* IRQ contexts: acquisitions.CTX_NAMES */
enum { C_PROCESS, C_SOFTIRQ, C_HARDIRQ, C_NMI };
/* lock type properties */
#define LT_SPIN 1		/* in SPIN_TYPES */
#define LT_SHARED 2		/* in SHARED_TYPES */
#define LT_RECREAD 4		/* in RECURSIVE_READ */
#define LT_SLEEPING 8		/* in SLEEPING_LOCK_TYPES */
#define LT_SEMAPHORE 16		/* == "semaphore" */
#define LT_FALSY 32		/* not lock_type: a release matching either family */
/* lock_flags words */
#define F_NESTED 1
#define F_IRQ 2
#define F_BH 4
#define F_TRYLOCK 8
#define F_BAD 128
/* event names: their LOCK_FUNCS entry */
#define E_SUCCESS 2		/* lf.success */
#define E_NONZERO 4		/* lf.success == "nonzero" */
#define E_TRYLOCK 8		/* "trylock" in lf.flags */
#define E_BAD 128
/* acquisitions.FORCED_CODE */
enum { R_PREEMPTED = 1, R_PREEMPT_COUNT, R_USER_SPACE, R_RELEASE_UNSEEN, R_REACQUIRED, R_GAP };
/* usage bits, in replay_native.USAGE_BITS order */
enum { U_IN_HARDIRQ, U_IN_HARDIRQ_READ, U_IN_SOFTIRQ, U_IN_SOFTIRQ_READ, U_ENABLED_HARDIRQ,
       U_ENABLED_HARDIRQ_READ, U_ENABLED_SOFTIRQ, U_ENABLED_SOFTIRQ_READ };
/* a sleep's reasons, bit order = list order (replay_native.SLEEP_REASONS) */
#define S_HARDIRQ 1
#define S_SOFTIRQ 2
#define S_SPINLOCK 4
#define S_IRQS_OFF 8
#define S_BH_OFF 16
#define S_PREEMPT 32

#define STATE_PREEMPTED 0x100
#define STATE_EXITED (0x10 | 0x20)

typedef int (*holder_cb)(int64_t acq_row, int64_t row);	/* 1 True, 0 not, -1 raised */

typedef struct {
	int64_t acq, cls, row;
	uint64_t addr;
	int32_t lt;
	uint8_t tryl, nested, suspect;
} held_t;

typedef struct {
	int64_t row, value, ts, cls;
	uint64_t addr;
	int32_t fn, lt;
	uint8_t irqs_off, bh_off, flags, suspect;
} pend_t;

#define VEC(T) struct { T *a; int64_t n, cap; }
typedef VEC(held_t) heldv_t;
typedef VEC(pend_t) pendv_t;
typedef VEC(int64_t) i64v_t;

static int grow(void **a, int64_t *cap, int64_t need, size_t size)
{
	int64_t c = *cap ? *cap : 4;
	void *p;

	if (need <= *cap)
		return 0;
	while (c < need) {
		if (c > INT64_MAX / 4 / (int64_t)size)
			return TD_ENOMEM;
		c += c / 2 + 4;
	}
	p = realloc(*a, (size_t)c * size);
	if (!p)
		return TD_ENOMEM;
	*a = p;
	*cap = c;
	return 0;
}

#define PUSH(v, x) (grow((void **)&(v)->a, &(v)->cap, (v)->n + 1, sizeof(*(v)->a)) ? TD_ENOMEM \
		    : ((v)->a[(v)->n++] = (x), 0))

/* one (task, IRQ context): its entry in the Python loop's stacks, pending, wait_open */
typedef struct {
	heldv_t stack;
	pendv_t pend;
	i64v_t wait;		/* acquisition indices */
	int64_t seq;		/* when it entered stacks (dict order) */
	uint8_t present;	/* a key of stacks (stack.n > 0 implies it) */
} ctxst_t;

typedef struct {
	int64_t task;
	ctxst_t cx[4];
	uint8_t irq_dirty;
} task_t;

/* open addressing, keys (k1, k2); an entry is live when gen == the map's gen */
typedef struct {
	uint64_t *k1, *k2;
	int64_t *v;
	uint32_t *gen;
	uint64_t cap, n;
	uint32_t g;
} map_t;

static uint64_t mix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
}

static uint64_t hash2(uint64_t a, uint64_t b) { return mix(a ^ mix(b + 0x9e3779b97f4a7c15ULL)); }

static int64_t map_get(const map_t *m, uint64_t a, uint64_t b)
{
	uint64_t h;

	if (!m->cap)
		return -1;
	for (h = hash2(a, b) & (m->cap - 1); m->gen[h] == m->g; h = (h + 1) & (m->cap - 1))
		if (m->k1[h] == a && m->k2[h] == b)
			return m->v[h];
	return -1;
}

static void map_free(map_t *m)
{
	free(m->k1);
	free(m->k2);
	free(m->v);
	free(m->gen);
	memset(m, 0, sizeof(*m));
}

static void map_set_slot(map_t *m, uint64_t a, uint64_t b, int64_t v)
{
	uint64_t h;

	for (h = hash2(a, b) & (m->cap - 1); m->gen[h] == m->g; h = (h + 1) & (m->cap - 1))
		if (m->k1[h] == a && m->k2[h] == b) {
			m->v[h] = v;
			return;
		}
	m->k1[h] = a;
	m->k2[h] = b;
	m->v[h] = v;
	m->gen[h] = m->g;
	m->n++;
}

static int map_put(map_t *m, uint64_t a, uint64_t b, int64_t v)
{
	if ((m->n + 1) * 2 > m->cap) {
		map_t o = *m;
		uint64_t cap = o.cap ? o.cap * 2 : 64;

		if (cap > (UINT64_C(1) << 40))
			return TD_ENOMEM;
		m->k1 = malloc(cap * 8);
		m->k2 = malloc(cap * 8);
		m->v = malloc(cap * 8);
		m->gen = calloc(cap, 4);
		if (!m->k1 || !m->k2 || !m->v || !m->gen) {
			free(m->k1);
			free(m->k2);
			free(m->v);
			free(m->gen);
			*m = o;
			return TD_ENOMEM;
		}
		m->cap = cap;
		m->n = 0;
		m->g = 1;
		for (uint64_t i = 0; i < o.cap; i++)
			if (o.gen[i] == o.g)
				map_set_slot(m, o.k1[i], o.k2[i], o.v[i]);
		map_free(&o);
	}
	map_set_slot(m, a, b, v);
	return 0;
}

static void map_clear(map_t *m)
{
	m->n = 0;
	if (++m->g == 0) {	/* wrapped: no stale entry may look live */
		if (m->gen)
			memset(m->gen, 0, m->cap * 4);
		m->g = 1;
	}
}

/* one acquisition (AcqTable's columns).  A row, not columns: a row kept open past a
 * drain moves out of its block whole (td_rp_take), and every write goes through one
 * pointer (acq_at) wherever the row lives. */
typedef struct {
	int64_t row, cls, task, ts_acquire, ts_acquired, ts_release, release_row;
	uint64_t addr;
	int8_t lt, ctx, tryl, irqs_off, bh_off, handed, forced;
} acq_t;

/* the acquisitions, in blocks of 1 << ab_shift rows: no copy as they grow, and freed
 * whole once drained (a block is 288 KiB by default; tests make it a few rows, so that
 * small traces free blocks and move rows aside: td_rp_block_shift) */
#define AB_SHIFT 12
#define AB_SHIFT_MAX 20

typedef struct {
	uint64_t u, v;
	int64_t count[4], row[4], held_row[4];
	uint8_t hs[4], rr[4], ctx[4], nacc;
} edge_t;

typedef struct {
	int64_t cls, row[8];
	uint8_t order[8], n, has;
} usage_t;

typedef struct {
	int64_t row, held_row, cls, same;
} rec_t;

typedef struct {
	int64_t row, reasons, extra, n_held, n_all;
} sleep_t;

typedef struct {
	int64_t acq, row, reason;
} forced_t;

typedef struct {
	int64_t acq, row;
} pair_t;

struct td_rp {
	/* settings */
	int irqs_reliable, spin_in_preempt, depth_counts_spin;
	int64_t baseline;
	int64_t *untraced, n_untraced, *own, n_own;	/* sorted */
	/* state */
	task_t *tasks;
	int64_t n_tasks, cap_tasks, seq;
	map_t task_of;		/* task -> index in tasks */
	map_t last_holder;	/* lock address -> task index * 4 + context */
	/* outputs */
	acq_t **blocks;		/* blocks[k]: acquisitions from (block0 + k) << ab_shift */
	int ab_shift;
	int64_t block0, n_blocks, cap_blocks, n_acq;
	/* draining (td_rp_select, td_rp_take): acquisitions below mark were handed out but
	 * for kept, the ones open at the last drain (sorted).  The blocks before block0 are
	 * freed; the rows of kept below lo = block0 << ab_shift (a prefix of kept) live in
	 * spill, in kept's order. */
	int64_t mark, lo;
	i64v_t kept;
	acq_t *spill;
	int64_t n_spill;
	/* the selection td_rp_take copies out: sel_e, then [mark, n_acq) but sel_x (the
	 * open ones there); sel_kept: kept after it (a drain's); selected: 0 none, 1 a
	 * drain, 2 everything not handed out (finish) */
	i64v_t sel_e, sel_x, sel_kept;
	int selected;
	int32_t acq_type[128];	/* acquisition type code -> lock type code */
	int32_t *type_of_lt;	/* lock type code -> acquisition type code + 1 */
	int64_t n_type_of_lt, n_acq_types;
	VEC(edge_t) edges;
	map_t edge_of;
	VEC(usage_t) usage;
	map_t usage_of;
	VEC(rec_t) recs;
	VEC(sleep_t) sleeps;
	i64v_t sleep_ids;	/* per sleep: its held, then its all_held */
	VEC(forced_t) forced;
	VEC(pair_t) irq_ended;
	int64_t unmatched, leaked;
};

/* one chunk: per-row arrays and the tables their codes index */
struct td_chunk {
	int64_t n;
	const int64_t *row, *task, *cpu, *ts, *value, *target, *depth, *cls;
	const uint64_t *addr;
	const int8_t *kind;
	const uint8_t *irqs_off, *bh_off, *hard, *soft, *nmi, *flags, *suspect;
	const int32_t *lt, *ev;
	const uint8_t *lt_props;	/* per lock type code */
	int64_t n_lt;
	const uint8_t *ev_props;	/* per event code */
	const int32_t *ev_fn;		/* per event code: the function's code */
	int64_t n_ev;
	holder_cb holder;		/* NULL: holder_on_stack is None */
};

typedef struct td_rp rp_t;
typedef const struct td_chunk ch_t;

static int in_sorted(const int64_t *a, int64_t n, int64_t x)
{
	int64_t lo = 0, hi = n;

	while (lo < hi) {
		int64_t mid = lo + (hi - lo) / 2;

		if (a[mid] < x)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < n && a[lo] == x;
}

static int64_t task_index(rp_t *s, int64_t task)
{
	int64_t ti = map_get(&s->task_of, (uint64_t)task, 0);

	if (ti >= 0)
		return ti;
	if (grow((void **)&s->tasks, &s->cap_tasks, s->n_tasks + 1, sizeof(task_t)))
		return TD_ENOMEM;
	ti = s->n_tasks;
	if (map_put(&s->task_of, (uint64_t)task, 0, ti))
		return TD_ENOMEM;
	memset(&s->tasks[ti], 0, sizeof(task_t));
	s->tasks[ti].task = task;
	s->n_tasks++;
	return ti;
}

#define CS(s, ti, c) (&(s)->tasks[ti].cx[c])

static void touch(rp_t *s, ctxst_t *cs)	/* stacks.setdefault(key, []) */
{
	if (!cs->present) {
		cs->present = 1;
		cs->seq = s->seq++;
	}
}

static int is_spin(ch_t *ch, int32_t lt) { return (ch->lt_props[lt] & LT_SPIN) != 0; }

/* Acquisition i wherever it lives: its block, or spill (binary search over kept's
 * prefix) once its block was freed; NULL if it was handed out and its block freed.
 * Only acquisitions on a held stack or a wait list are written, and a drain never hands
 * those out (td_rp_select), so a write never meets NULL but by a bug (TD_EOPEN).  A
 * spilled row is found in O(log open), but only long-held locks are ever spilled. */
static acq_t *acq_at(rp_t *s, int64_t i)
{
	int64_t lo = 0, hi = s->n_spill, mask = (INT64_C(1) << s->ab_shift) - 1;

	if (i < 0 || i >= s->n_acq)
		return NULL;
	if (i >= s->lo)
		return &s->blocks[(i >> s->ab_shift) - s->block0][i & mask];
	while (lo < hi) {
		int64_t mid = lo + (hi - lo) / 2;

		if (s->kept.a[mid] < i)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < s->n_spill && s->kept.a[lo] == i ? &s->spill[lo] : NULL;
}

/* st.pop(j): the lock ended unreleased */
static int end(rp_t *s, heldv_t *st, int64_t j, int64_t r, int why)
{
	int64_t acq = st->a[j].acq;
	forced_t f = { acq, r, why };
	acq_t *x = acq_at(s, acq);

	if (!x)
		return TD_EOPEN;
	memmove(st->a + j, st->a + j + 1, (size_t)(st->n - j - 1) * sizeof(held_t));
	st->n--;
	x->forced = (int8_t)why;
	return PUSH(&s->forced, f);
}

static int acq_append(rp_t *s, ch_t *ch, int64_t r, int64_t cls, uint64_t addr, int32_t lt,
		      int ctx, int64_t task, int64_t ts, int tryl, int irqs_off, int bh_off,
		      int64_t *out)
{
	int64_t i = s->n_acq, t;
	acq_t *b;

	if (lt >= s->n_type_of_lt) {
		int64_t old = s->n_type_of_lt;

		if (grow((void **)&s->type_of_lt, &s->n_type_of_lt, ch->n_lt, sizeof(int32_t)))
			return TD_ENOMEM;
		memset(s->type_of_lt + old, 0, (size_t)(s->n_type_of_lt - old) * sizeof(int32_t));
	}
	t = s->type_of_lt[lt] - 1;
	if (t < 0) {
		if (s->n_acq_types >= 128)
			return TD_ETYPES;
		t = s->n_acq_types++;
		s->acq_type[t] = lt;
		s->type_of_lt[lt] = (int32_t)t + 1;
	}
	if ((i >> s->ab_shift) - s->block0 >= s->n_blocks) {
		if (grow((void **)&s->blocks, &s->cap_blocks, s->n_blocks + 1, sizeof(acq_t *)))
			return TD_ENOMEM;
		b = malloc(sizeof(acq_t) << s->ab_shift);
		if (!b)
			return TD_ENOMEM;
		s->blocks[s->n_blocks++] = b;
	}
	b = s->blocks[(i >> s->ab_shift) - s->block0];
	b[i & ((INT64_C(1) << s->ab_shift) - 1)] = (acq_t){
		.row = r, .cls = cls, .task = task, .ts_acquire = ts, .ts_acquired = ts,
		.ts_release = -1, .release_row = -1, .addr = addr, .lt = (int8_t)t,
		.ctx = (int8_t)ctx, .tryl = (int8_t)(tryl != 0), .irqs_off = (int8_t)(irqs_off != 0),
		.bh_off = (int8_t)(bh_off != 0), .handed = 0, .forced = 0,
	};
	*out = s->n_acq++;
	return 0;
}

static int mark(rp_t *s, int64_t cls, int bit, int64_t r)
{
	int64_t ui = map_get(&s->usage_of, (uint64_t)cls, 0);
	usage_t *u;

	if (ui < 0) {
		usage_t z;

		memset(&z, 0, sizeof(z));
		z.cls = cls;
		ui = s->usage.n;
		if (PUSH(&s->usage, z) || map_put(&s->usage_of, (uint64_t)cls, 0, ui))
			return TD_ENOMEM;
	}
	u = &s->usage.a[ui];
	if (!(u->has & (1u << bit))) {
		u->has |= (uint8_t)(1u << bit);
		u->row[bit] = r;
		u->order[u->n++] = (uint8_t)bit;
	}
	return 0;
}

static int edge(rp_t *s, int64_t u, int64_t v, int hs, int rr, int64_t r, int64_t held_row,
		int ctx)
{
	int64_t ei = map_get(&s->edge_of, (uint64_t)u, (uint64_t)v);
	edge_t *e;

	if (ei < 0) {
		edge_t z;

		memset(&z, 0, sizeof(z));
		z.u = (uint64_t)u;
		z.v = (uint64_t)v;
		ei = s->edges.n;
		if (PUSH(&s->edges, z) || map_put(&s->edge_of, (uint64_t)u, (uint64_t)v, ei))
			return TD_ENOMEM;
	}
	e = &s->edges.a[ei];
	for (int k = 0; k < e->nacc; k++)
		if (e->hs[k] == hs && e->rr[k] == rr) {
			e->count[k]++;
			return 0;
		}
	if (e->nacc >= 4)	/* (hs, rr) has four values: cannot happen */
		return TD_EINPUT;
	e->count[e->nacc] = 1;
	e->row[e->nacc] = r;
	e->held_row[e->nacc] = held_row;
	e->hs[e->nacc] = (uint8_t)hs;
	e->rr[e->nacc] = (uint8_t)rr;
	e->ctx[e->nacc] = (uint8_t)ctx;
	e->nacc++;
	return 0;
}

/* Replayer.feed's acquire() */
static int acquire(rp_t *s, ch_t *ch, int64_t ti, int ctx, int64_t r, uint64_t a, int32_t lt,
		   int64_t value, int irqs_off, int bh_off, int64_t ts, int tryl, uint8_t flags,
		   int64_t cls, int suspect)
{
	uint8_t lp = ch->lt_props[lt];
	ctxst_t *cs;
	heldv_t *st;
	int shared, rec_read, nested, spin, eff_irqs_off, eff_bh_off, rc;
	int64_t j, acq;
	held_t nh;

	if (lp & LT_SEMAPHORE)
		return 0;
	if (flags & F_BAD)
		return TD_EFLAGS;
	cs = CS(s, ti, ctx);
	touch(s, cs);
	st = &cs->stack;
	shared = (lp & LT_SHARED) != 0;
	rec_read = (lp & LT_RECREAD) && ctx != C_PROCESS;
	nested = (flags & F_NESTED) && value != 0;
	spin = (lp & LT_SPIN) != 0;
	if (!tryl) {
		for (j = st->n - 1; j >= 0; j--)
			if (st->a[j].addr == a && st->a[j].suspect && spin && !rec_read &&
			    (rc = end(s, st, j, r, R_RELEASE_UNSEEN)))
				return rc;
		for (j = 0; j < st->n; j++) {
			held_t *h = &st->a[j];

			if (h->addr == a && is_spin(ch, h->lt) == spin) {
				if (!(rec_read && (ch->lt_props[h->lt] & LT_SHARED))) {
					rec_t x = { r, h->row, cls, 1 };

					if (PUSH(&s->recs, x))
						return TD_ENOMEM;
				}
			} else if (h->cls == cls && !nested && !h->nested) {
				rec_t x = { r, h->row, cls, 0 };

				if (PUSH(&s->recs, x))
					return TD_ENOMEM;
			}
		}
		if (spin && !rec_read)
			for (j = st->n - 1; j >= 0; j--)
				if (st->a[j].addr == a && is_spin(ch, st->a[j].lt) &&
				    (rc = end(s, st, j, r, R_REACQUIRED)))
					return rc;
		for (j = 0; j < st->n; j++) {
			held_t *h = &st->a[j];

			if ((h->addr == a && is_spin(ch, h->lt) == spin) || h->cls == cls)
				continue;
			rc = edge(s, h->cls, cls, (ch->lt_props[h->lt] & LT_SHARED) != 0, rec_read,
				  r, h->row, ctx);
			if (rc)
				return rc;
		}
	}
	eff_irqs_off = irqs_off || (flags & F_IRQ);
	eff_bh_off = bh_off || (flags & F_BH) || ctx != C_PROCESS;
	if (!tryl) {
		if (ctx == C_HARDIRQ)
			rc = mark(s, cls, shared ? U_IN_HARDIRQ_READ : U_IN_HARDIRQ, r);
		else if (ctx == C_SOFTIRQ)
			rc = mark(s, cls, shared ? U_IN_SOFTIRQ_READ : U_IN_SOFTIRQ, r);
		else
			rc = 0;
		if (rc)
			return rc;
	}
	if (s->irqs_reliable && !eff_irqs_off && (ctx == C_PROCESS || ctx == C_SOFTIRQ)) {
		if ((rc = mark(s, cls, shared ? U_ENABLED_HARDIRQ_READ : U_ENABLED_HARDIRQ, r)))
			return rc;
		if (!eff_bh_off &&
		    (rc = mark(s, cls, shared ? U_ENABLED_SOFTIRQ_READ : U_ENABLED_SOFTIRQ, r)))
			return rc;
	}
	rc = acq_append(s, ch, r, cls, a, lt, ctx, s->tasks[ti].task, ts, tryl, irqs_off, bh_off,
			&acq);
	if (rc)
		return rc;
	nh.acq = acq;
	nh.addr = a;
	nh.cls = cls;
	nh.lt = lt;
	nh.row = r;
	nh.tryl = (uint8_t)(tryl != 0);
	nh.nested = (uint8_t)(nested != 0);
	nh.suspect = (uint8_t)(suspect != 0);
	if (PUSH(st, nh) || map_put(&s->last_holder, a, 0, ti * 4 + ctx))
		return TD_ENOMEM;
	if ((lp & LT_SLEEPING) && PUSH(&cs->wait, acq))
		return TD_ENOMEM;
	return 0;
}

/* drop_unconfirmed() */
static int drop_unconfirmed(rp_t *s, ch_t *ch, int64_t ti, int64_t r)
{
	heldv_t *st = &CS(s, ti, C_PROCESS)->stack;
	int rc;

	if (s->depth_counts_spin || !st->n)
		return 0;
	for (int64_t j = st->n - 1; j >= 0; j--) {
		held_t *h = &st->a[j];

		if (h->suspect && is_spin(ch, h->lt)) {
			int on = 0;

			if (ch->holder) {
				on = ch->holder(h->row, r);
				if (on < 0)
					return TD_ECALLBACK;
			}
			if (on != 1 && (rc = end(s, st, j, r, R_RELEASE_UNSEEN)))
				return rc;
		}
	}
	return 0;
}

/* depth_bound(): fewer preempt levels than spinning locks held */
static int depth_bound(rp_t *s, ch_t *ch, int64_t ti, int64_t r, int64_t depth)
{
	heldv_t *st = &CS(s, ti, C_PROCESS)->stack;
	int64_t spins = 0, susp = 0, excess, take_s, take_n, j;
	int rc;

	if (!st->n)
		return 0;
	for (j = 0; j < st->n; j++)
		if (is_spin(ch, st->a[j].lt)) {
			spins++;
			susp += st->a[j].suspect != 0;
		}
	excess = spins - depth;
	if (excess <= 0)
		return 0;
	/* sorted by (not suspect, -j), the first ``excess``; ended innermost first */
	take_s = excess < susp ? excess : susp;
	take_n = excess - take_s;
	for (j = st->n - 1; j >= 0; j--) {
		held_t *h = &st->a[j];
		int go = 0;

		if (!is_spin(ch, h->lt))
			continue;
		if (h->suspect && take_s > 0) {
			take_s--;
			go = 1;
		} else if (!h->suspect && take_n > 0) {
			take_n--;
			go = 1;
		}
		if (go && (rc = end(s, st, j, r, R_PREEMPT_COUNT)))
			return rc;
	}
	return 0;
}

static int push_sleep(rp_t *s, ch_t *ch, int64_t r, int64_t reasons, int64_t extra,
		      const heldv_t *first, const heldv_t *second)
{
	sleep_t x = { r, reasons, extra, 0, 0 };
	const heldv_t *parts[2] = { first, second };

	for (int p = 0; p < 2; p++)
		for (int64_t j = 0; parts[p] && j < parts[p]->n; j++)
			if (is_spin(ch, parts[p]->a[j].lt)) {
				if (PUSH(&s->sleep_ids, parts[p]->a[j].acq))
					return TD_ENOMEM;
				x.n_held++;
			}
	for (int p = 0; p < 2; p++)
		for (int64_t j = 0; parts[p] && j < parts[p]->n; j++) {
			if (PUSH(&s->sleep_ids, parts[p]->a[j].acq))
				return TD_ENOMEM;
			x.n_all++;
		}
	return PUSH(&s->sleeps, x);
}

static int64_t count_spin(ch_t *ch, const heldv_t *st)
{
	int64_t n = 0;

	for (int64_t j = 0; j < st->n; j++)
		n += is_spin(ch, st->a[j].lt);
	return n;
}

/* _check_sleep() */
static int check_sleep(rp_t *s, ch_t *ch, int64_t i, int64_t ti, int ctx, int64_t r)
{
	const heldv_t *own = &CS(s, ti, ctx)->stack, *proc = &CS(s, ti, C_PROCESS)->stack;
	int64_t depth = ch->depth[i], reasons = 0, n_spin, extra;
	int hard = ch->hard[i] != 0, soft = ch->soft[i] != 0, bh = ch->bh_off[i] != 0;
	int irqs = s->irqs_reliable && ch->irqs_off[i];

	if (!(depth || hard || soft || bh || irqs ||
	      (!s->spin_in_preempt && (count_spin(ch, own) || count_spin(ch, proc)))))
		return 0;
	n_spin = count_spin(ch, own) + (ctx != C_PROCESS ? count_spin(ch, proc) : 0);
	if (hard)
		reasons |= S_HARDIRQ;
	else if (soft)
		reasons |= S_SOFTIRQ;
	if (n_spin)
		reasons |= S_SPINLOCK;
	if (irqs)
		reasons |= S_IRQS_OFF;
	if (bh && !soft && !hard)
		reasons |= S_BH_OFF;
	extra = depth - (s->spin_in_preempt ? count_spin(ch, own) : 0);
	if (extra > 0 && ctx == C_PROCESS)
		reasons |= S_PREEMPT;
	if (!reasons)
		return 0;
	return push_sleep(s, ch, r, reasons, extra > 0 ? extra : 0,
			  ctx != C_PROCESS ? proc : own, ctx != C_PROCESS ? own : NULL);
}

/* release_in(): 1 released, 0 none held here, TD_EOPEN */
static int release_in(rp_t *s, ch_t *ch, heldv_t *st, uint64_t a, uint8_t rel_props, int64_t t,
		      int64_t r, int handed)
{
	for (int64_t j = st->n - 1; j >= 0; j--) {
		held_t *h = &st->a[j];

		if (h->addr == a && ((rel_props & LT_FALSY) ||
				     is_spin(ch, h->lt) == ((rel_props & LT_SPIN) != 0))) {
			acq_t *x = acq_at(s, h->acq);

			if (!x)
				return TD_EOPEN;
			memmove(st->a + j, st->a + j + 1, (size_t)(st->n - j - 1) * sizeof(held_t));
			st->n--;
			x->ts_release = t;
			x->release_row = r;
			if (handed)
				x->handed = 1;
			return 1;
		}
	}
	return 0;
}

static int cmp_seq(const void *x, const void *y)
{
	int64_t a = ((const int64_t *)x)[0], b = ((const int64_t *)y)[0];

	return (a > b) - (a < b);
}

/* a gap row: every hold of every task ends, in stacks' dict order */
static int gap(rp_t *s, int64_t r)
{
	int64_t n = 0, k = 0, *order;
	int rc = 0;

	for (int64_t ti = 0; ti < s->n_tasks; ti++)
		for (int c = 0; c < 4; c++)
			n += s->tasks[ti].cx[c].present;
	order = malloc((size_t)(n ? n : 1) * 2 * sizeof(int64_t));
	if (!order)
		return TD_ENOMEM;
	for (int64_t ti = 0; ti < s->n_tasks; ti++)
		for (int c = 0; c < 4; c++)
			if (s->tasks[ti].cx[c].present) {
				order[2 * k] = s->tasks[ti].cx[c].seq;
				order[2 * k + 1] = ti * 4 + c;
				k++;
			}
	qsort(order, (size_t)n, 2 * sizeof(int64_t), cmp_seq);
	for (k = 0; k < n && !rc; k++) {
		heldv_t *st = &CS(s, order[2 * k + 1] / 4, (int)(order[2 * k + 1] % 4))->stack;

		for (int64_t j = st->n - 1; j >= 0 && !rc; j--)
			rc = end(s, st, j, r, R_GAP);
	}
	free(order);
	if (rc)
		return rc;
	for (int64_t ti = 0; ti < s->n_tasks; ti++)
		for (int c = 0; c < 4; c++) {
			ctxst_t *cs = &s->tasks[ti].cx[c];

			cs->present = 0;
			cs->stack.n = cs->pend.n = cs->wait.n = 0;
		}
	map_clear(&s->last_holder);
	return 0;
}

static int ev_check(ch_t *ch, int64_t i)
{
	if (ch->ev[i] < 0 || ch->ev[i] >= ch->n_ev)
		return TD_EINPUT;
	return (ch->ev_props[ch->ev[i]] & E_BAD) ? TD_EEVENT : 0;
}

static int on_acquire(rp_t *s, ch_t *ch, int64_t i, int64_t ti, int ctx, int64_t r)
{
	uint8_t ep, flags = ch->flags[i];
	int rc = ev_check(ch, i);

	if (rc)
		return rc;
	ep = ch->ev_props[ch->ev[i]];
	if (ep & E_SUCCESS) {
		pend_t p;

		p.row = r;
		p.value = ch->value[i];
		p.ts = ch->ts[i];
		p.cls = ch->cls[i];
		p.addr = ch->addr[i];
		p.fn = ch->ev_fn[ch->ev[i]];
		p.lt = ch->lt[i];
		p.irqs_off = ch->irqs_off[i] != 0;
		p.bh_off = ch->bh_off[i] != 0;
		p.flags = flags;
		p.suspect = ch->suspect[i] != 0;
		if (PUSH(&CS(s, ti, ctx)->pend, p))
			return TD_ENOMEM;
	} else {
		if (flags & F_BAD)
			return TD_EFLAGS;
		rc = acquire(s, ch, ti, ctx, r, ch->addr[i], ch->lt[i], ch->value[i],
			     ch->irqs_off[i], ch->bh_off[i], ch->ts[i], flags & F_TRYLOCK, flags,
			     ch->cls[i], ch->suspect[i]);
		if (rc)
			return rc;
	}
	if (ch->lt_props[ch->lt[i]] & LT_SLEEPING) {
		if (flags & F_BAD)
			return TD_EFLAGS;
		if (!(flags & F_TRYLOCK)) {
			if ((rc = drop_unconfirmed(s, ch, ti, r)))
				return rc;
			return check_sleep(s, ch, i, ti, ctx, r);
		}
	}
	return 0;
}

static int on_return(rp_t *s, ch_t *ch, int64_t i, int64_t ti, int ctx)
{
	ctxst_t *cs = CS(s, ti, ctx);
	int rc = ev_check(ch, i);
	uint8_t ep;

	if (rc)
		return rc;
	ep = ch->ev_props[ch->ev[i]];
	if (cs->pend.n && cs->pend.a[cs->pend.n - 1].fn == ch->ev_fn[ch->ev[i]]) {
		pend_t p = cs->pend.a[--cs->pend.n];
		int ok = (ep & E_NONZERO) ? ch->value[i] != 0 : ch->value[i] == 0;

		if (p.lt < 0 || p.lt >= ch->n_lt)
			return TD_EINPUT;
		if (ok) {
			rc = acquire(s, ch, ti, ctx, p.row, p.addr, p.lt, p.value, p.irqs_off,
				     p.bh_off, p.ts, (ep & E_TRYLOCK) != 0, p.flags, p.cls, p.suspect);
			if (rc)
				return rc;
			/* a sleeping lock's wait ends when the call returns (the newest
			 * acquisition's block is never freed: drain_commit) */
			acq_t *x = s->n_acq ? acq_at(s, s->n_acq - 1) : NULL;

			if (s->n_acq && !x)
				return TD_EOPEN;
			if (x && x->row == p.row)
				x->ts_acquired = ch->ts[i];
			/* and it leaves the wait list */
			cs = CS(s, ti, ctx);
			if (cs->wait.n) {
				acq_t *w = acq_at(s, cs->wait.a[cs->wait.n - 1]);

				if (!w)
					return TD_EOPEN;
				if (w->row == p.row)
					cs->wait.n--;
			}
		}
	} else if (cs->wait.n) {
		acq_t *x = acq_at(s, cs->wait.a[--cs->wait.n]);

		if (!x)
			return TD_EOPEN;
		x->ts_acquired = ch->ts[i];
	}
	return 0;
}

static int on_release(rp_t *s, ch_t *ch, int64_t i, int64_t ti, int ctx, int64_t r)
{
	static const int order[3] = { C_PROCESS, C_SOFTIRQ, C_HARDIRQ };
	uint64_t a = ch->addr[i];
	uint8_t rp = ch->lt_props[ch->lt[i]];
	int64_t hk;
	int rc = release_in(s, ch, &CS(s, ti, ctx)->stack, a, rp, ch->ts[i], r, 0);

	for (int k = 0; k < 3 && !rc; k++)
		rc = release_in(s, ch, &CS(s, ti, order[k])->stack, a, rp, ch->ts[i], r, 0);
	if (rc)
		return rc < 0 ? rc : 0;
	/* released by another task: whoever took this instance last */
	hk = map_get(&s->last_holder, a, 0);
	if (hk >= 0 && hk / 4 < s->n_tasks && CS(s, hk / 4, (int)(hk % 4))->present)
		rc = release_in(s, ch, &CS(s, hk / 4, (int)(hk % 4))->stack, a, rp, ch->ts[i], r, 1);
	if (rc)
		return rc < 0 ? rc : 0;
	s->unmatched++;
	return 0;
}

static int on_switch(rp_t *s, ch_t *ch, int64_t i, int64_t ti, int64_t r)
{
	heldv_t *st = &CS(s, ti, C_PROCESS)->stack;
	int64_t top = -1, v = ch->value[i], j;
	int rc;

	for (j = st->n - 1; j >= 0; j--)
		if (is_spin(ch, st->a[j].lt)) {
			top = j;
			break;
		}
	if (top >= 0 && in_sorted(s->own, s->n_own, st->a[top].cls))
		top = -1;	/* slept holding its driver's lock: it keeps it (a finding) */
	if (top >= 0) {
		held_t h = st->a[top];
		int64_t tp = ch->target[i];

		memmove(st->a + top, st->a + top + 1, (size_t)(st->n - top - 1) * sizeof(held_t));
		st->n--;
		if (in_sorted(s->untraced, s->n_untraced, tp)) {
			acq_t *x = acq_at(s, h.acq);

			if (!x)
				return TD_EOPEN;
			x->ts_release = ch->ts[i];
			x->handed = 1;
		} else {
			int64_t nti = task_index(s, tp > 0 ? tp : -1 - ch->cpu[i]);
			ctxst_t *ncs;

			if (nti < 0)
				return (int)nti;
			ncs = CS(s, nti, C_PROCESS);
			touch(s, ncs);
			if (PUSH(&ncs->stack, h) || map_put(&s->last_holder, h.addr, 0, nti * 4))
				return TD_ENOMEM;
		}
		st = &CS(s, ti, C_PROCESS)->stack;	/* tasks may have moved */
	}
	if (v & (STATE_PREEMPTED | STATE_EXITED)) {
		/* preempted: no spinning lock held; exited: no lock at all */
		int why = (v & STATE_EXITED) ? R_USER_SPACE : R_PREEMPTED;

		for (j = st->n - 1; j >= 0; j--)
			if ((why == R_USER_SPACE || is_spin(ch, st->a[j].lt)) &&
			    (rc = end(s, st, j, r, why)))
				return rc;
	} else if (v != 0) {	/* a voluntary switch: the task sleeps */
		int64_t extra = ch->depth[i] - s->baseline;

		if ((rc = drop_unconfirmed(s, ch, ti, r)))
			return rc;
		if (count_spin(ch, st))
			return push_sleep(s, ch, r, S_SPINLOCK, extra > 0 ? extra : 0, st, NULL);
	}
	return 0;
}

static int feed_one(rp_t *s, ch_t *ch, int64_t i)
{
	int64_t r = ch->row[i], ti;
	int k = ch->kind[i], ctx, rc;
	task_t *t;

	if (k < 0 || k >= K_N || ch->lt[i] < 0 || ch->lt[i] >= ch->n_lt)
		return TD_EINPUT;
	if (k == K_GAP)
		return gap(s, r);
	ti = task_index(s, ch->task[i]);
	if (ti < 0)
		return (int)ti;
	ctx = ch->nmi[i] ? C_NMI : ch->hard[i] ? C_HARDIRQ : ch->soft[i] ? C_SOFTIRQ : C_PROCESS;
	t = &s->tasks[ti];
	if (ctx != C_PROCESS) {
		t->irq_dirty = 1;
	} else if (t->irq_dirty) {
		/* back in process context: what interrupt contexts still hold is a missed
		 * unlock */
		static const int irqc[3] = { C_HARDIRQ, C_SOFTIRQ, C_NMI };

		t->irq_dirty = 0;
		for (int c = 0; c < 3; c++) {
			ctxst_t *cs = &t->cx[irqc[c]];

			if (!cs->present)
				continue;
			s->leaked += cs->stack.n;
			for (int64_t j = 0; j < cs->stack.n; j++) {
				pair_t p = { cs->stack.a[j].acq, r };

				if (PUSH(&s->irq_ended, p))
					return TD_ENOMEM;
			}
			cs->stack.n = 0;
			cs->present = 0;
		}
	}
	if (s->depth_counts_spin && ctx == C_PROCESS && (k == K_ACQUIRE || k == K_SLEEP) &&
	    (rc = depth_bound(s, ch, ti, r, ch->depth[i])))
		return rc;
	switch (k) {
	case K_ACQUIRE:
		return on_acquire(s, ch, i, ti, ctx, r);
	case K_RETURN:
		return on_return(s, ch, i, ti, ctx);
	case K_RELEASE:
		return on_release(s, ch, i, ti, ctx, r);
	case K_SWITCH:
		return on_switch(s, ch, i, ti, r);
	case K_MARKER: {
		heldv_t *st = &CS(s, ti, C_PROCESS)->stack;

		for (int64_t j = st->n - 1; j >= 0; j--)
			if ((rc = end(s, st, j, r, R_USER_SPACE)))
				return rc;
		return 0;
	}
	default:		/* sleep_call, or an allocation that may reclaim */
		if ((rc = drop_unconfirmed(s, ch, ti, r)))
			return rc;
		return check_sleep(s, ch, i, ti, ctx, r);
	}
}

/* ------------------------------------------------------------------ the interface */

void td_rp_free(rp_t *s)
{
	if (!s)
		return;
	for (int64_t ti = 0; ti < s->n_tasks; ti++)
		for (int c = 0; c < 4; c++) {
			free(s->tasks[ti].cx[c].stack.a);
			free(s->tasks[ti].cx[c].pend.a);
			free(s->tasks[ti].cx[c].wait.a);
		}
	free(s->tasks);
	for (int64_t b = 0; b < s->n_blocks; b++)
		free(s->blocks[b]);
	free(s->blocks);
	free(s->spill);
	free(s->kept.a);
	free(s->sel_e.a);
	free(s->sel_x.a);
	free(s->sel_kept.a);
	free(s->type_of_lt);
	map_free(&s->task_of);
	map_free(&s->last_holder);
	map_free(&s->edge_of);
	map_free(&s->usage_of);
	free(s->edges.a);
	free(s->usage.a);
	free(s->recs.a);
	free(s->sleeps.a);
	free(s->sleep_ids.a);
	free(s->forced.a);
	free(s->irq_ended.a);
	free(s->untraced);
	free(s->own);
	free(s);
}

static int64_t *copy_sorted(const int64_t *a, int64_t n)
{
	int64_t *c = malloc((size_t)(n ? n : 1) * sizeof(int64_t));

	if (!c)
		return NULL;
	if (n)
		memcpy(c, a, (size_t)n * sizeof(int64_t));
	qsort(c, (size_t)n, sizeof(int64_t), cmp_seq);
	return c;
}

rp_t *td_rp_new(int irqs_reliable, int spin_in_preempt, int depth_counts_spin,
		int64_t baseline, const int64_t *untraced, int64_t n_untraced,
		const int64_t *own, int64_t n_own)
{
	rp_t *s;

	if (n_untraced < 0 || n_own < 0)
		return NULL;
	s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->irqs_reliable = irqs_reliable;
	s->spin_in_preempt = spin_in_preempt;
	s->depth_counts_spin = depth_counts_spin;
	s->baseline = baseline;
	s->ab_shift = AB_SHIFT;
	s->untraced = copy_sorted(untraced, n_untraced);
	s->n_untraced = n_untraced;
	s->own = copy_sorted(own, n_own);
	s->n_own = n_own;
	if (!s->untraced || !s->own) {
		td_rp_free(s);
		return NULL;
	}
	return s;
}

int td_rp_feed(rp_t *s, const struct td_chunk *ch)
{
	if (!s || !ch || ch->n < 0 || ch->n_lt < 0 || ch->n_ev < 0)
		return TD_EINPUT;
	s->selected = 0;	/* a selection is for the state it was made in */
	for (int64_t i = 0; i < ch->n; i++) {
		int rc = feed_one(s, ch, i);

		if (rc)
			return rc;
	}
	return 0;
}

/* sizes of what td_rp_get copies out */
void td_rp_counts(const rp_t *s, int64_t *out)
{
	int64_t accs = 0, pend = 0;

	for (int64_t e = 0; e < s->edges.n; e++)
		accs += s->edges.a[e].nacc;
	for (int64_t u = 0; u < s->usage.n; u++)
		pend += s->usage.a[u].n;
	out[0] = s->n_acq;
	out[1] = accs;
	out[2] = pend;		/* usage bits */
	out[3] = s->recs.n;
	out[4] = s->sleeps.n;
	out[5] = s->sleep_ids.n;
	out[6] = s->forced.n;
	out[7] = s->irq_ended.n;
	out[8] = s->unmatched;
	out[9] = s->leaked;
	out[10] = s->n_acq_types;
	pend = 0;
	for (int64_t ti = 0; ti < s->n_tasks; ti++)
		for (int c = 0; c < 4; c++)
			pend += s->tasks[ti].cx[c].pend.n;
	out[11] = pend;
}

/* ------------------------------------------------------------------ acquisitions out */

/* The acquisitions still open, sorted and distinct: on a held stack (a release, a forced
 * end or a hand-off may still write them) or on a wait list (a lock_return may still set
 * their ts_acquired, even after their release).  Every other acquisition can no longer
 * change: nothing puts one back on a stack or a wait list once it left (a switch moves a
 * hold from one stack to another within one event). */
static int open_acqs(const rp_t *s, i64v_t *o)
{
	int64_t k = 0;

	o->n = 0;
	for (int64_t ti = 0; ti < s->n_tasks; ti++)
		for (int c = 0; c < 4; c++) {
			const ctxst_t *cs = &s->tasks[ti].cx[c];

			for (int64_t j = 0; j < cs->stack.n; j++)
				if (PUSH(o, cs->stack.a[j].acq))
					return TD_ENOMEM;
			for (int64_t j = 0; j < cs->wait.n; j++)
				if (PUSH(o, cs->wait.a[j]))
					return TD_ENOMEM;
		}
	if (o->n)
		qsort(o->a, (size_t)o->n, sizeof(int64_t), cmp_seq);
	for (int64_t j = 0; j < o->n; j++)
		if (!k || o->a[k - 1] != o->a[j])
			o->a[k++] = o->a[j];
	o->n = k;
	return 0;
}

static void vec_free(i64v_t *v)
{
	free(v->a);
	memset(v, 0, sizeof(*v));
}

/* Choose what td_rp_take copies out, and give its count (or TD_E*).  all: every
 * acquisition not handed out yet (finish()).  Else a drain: those of them no longer
 * open (open_acqs); the open ones stay for a later drain. */
int64_t td_rp_select(rp_t *s, int all)
{
	i64v_t o = { 0 };
	int64_t k = 0, n;
	int rc = 0;

	s->selected = 0;
	s->sel_e.n = s->sel_x.n = s->sel_kept.n = 0;
	if (all) {
		for (int64_t j = 0; j < s->kept.n && !rc; j++)
			rc = PUSH(&s->sel_e, s->kept.a[j]);
	} else if (!(rc = open_acqs(s, &o))) {
		/* the candidates: kept, then [mark, n_acq); every open one must be one */
		for (int64_t j = 0; j < s->kept.n && !rc; j++) {
			int64_t c = s->kept.a[j];

			if (k < o.n && o.a[k] < c)
				rc = TD_EOPEN;
			else if (k < o.n && o.a[k] == c)
				rc = PUSH(&s->sel_kept, o.a[k++]);
			else
				rc = PUSH(&s->sel_e, c);
		}
		if (!rc && k < o.n && o.a[k] < s->mark)
			rc = TD_EOPEN;
		for (; k < o.n && !rc; k++)	/* open, appended since: kept, skipped */
			if (o.a[k] >= s->n_acq)
				rc = TD_EOPEN;
			else if (!(rc = PUSH(&s->sel_kept, o.a[k])))
				rc = PUSH(&s->sel_x, o.a[k]);
	}
	vec_free(&o);
	if (rc)
		return rc;
	n = s->sel_e.n + (s->n_acq - s->mark) - s->sel_x.n;
	s->selected = all ? 2 : 1;
	return n;
}

/* the output columns of td_rp_take, heldlocks.ACQ_COLUMNS order, then the index */
typedef struct {
	int64_t *row, *cls;
	uint64_t *addr;
	int8_t *lt, *ctx;
	int64_t *task, *ts_acquire, *ts_acquired, *ts_release, *release_row;
	int8_t *tryl, *irqs_off, *bh_off, *handed, *forced;
	int64_t *acq;	/* NULL: not wanted */
} cols_t;

static void put(const cols_t *c, int64_t k, const acq_t *x, int64_t i)
{
	c->row[k] = x->row;
	c->cls[k] = x->cls;
	c->addr[k] = x->addr;
	c->lt[k] = x->lt;
	c->ctx[k] = x->ctx;
	c->task[k] = x->task;
	c->ts_acquire[k] = x->ts_acquire;
	c->ts_acquired[k] = x->ts_acquired;
	c->ts_release[k] = x->ts_release;
	c->release_row[k] = x->release_row;
	c->tryl[k] = x->tryl;
	c->irqs_off[k] = x->irqs_off;
	c->bh_off[k] = x->bh_off;
	c->handed[k] = x->handed;
	c->forced[k] = x->forced;
	if (c->acq)
		c->acq[k] = i;
}

/* A drain's end: kept becomes sel_kept, mark n_acq; the blocks below the newest
 * acquisition's go (on_return reads that one's row), their kept rows moved to spill. */
static int drain_commit(rp_t *s)
{
	int64_t lo = s->n_acq ? ((s->n_acq - 1) >> s->ab_shift) << s->ab_shift : 0, m = 0, gone;
	acq_t *sp = NULL;
	i64v_t old;

	while (m < s->sel_kept.n && s->sel_kept.a[m] < lo)
		m++;
	if (m) {
		sp = malloc((size_t)m * sizeof(acq_t));
		if (!sp)
			return TD_ENOMEM;
	}
	for (int64_t j = 0; j < m; j++) {
		const acq_t *x = acq_at(s, s->sel_kept.a[j]);

		if (!x) {
			free(sp);
			return TD_EOPEN;
		}
		sp[j] = *x;
	}
	gone = (lo >> s->ab_shift) - s->block0;
	if (gone > 0) {		/* (then blocks is not NULL) */
		for (int64_t b = 0; b < gone; b++)
			free(s->blocks[b]);
		memmove(s->blocks, s->blocks + gone,
			(size_t)(s->n_blocks - gone) * sizeof(acq_t *));
		s->n_blocks -= gone;
		s->block0 += gone;
	}
	free(s->spill);
	s->spill = sp;
	s->n_spill = m;
	old = s->kept;
	s->kept = s->sel_kept;
	s->sel_kept = old;
	s->mark = s->n_acq;
	s->lo = lo;
	return 0;
}

/* Copy what td_rp_select chose into cols (16 pointers: the 15 columns of
 * heldlocks.ACQ_COLUMNS as COLUMN_DTYPES stores them, then the global index or NULL),
 * in index order; a drain's are then handed out and no longer kept. */
int td_rp_take(rp_t *s, void *const *cols)
{
	cols_t c = { cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], cols[6], cols[7],
		     cols[8], cols[9], cols[10], cols[11], cols[12], cols[13], cols[14],
		     cols[15] };
	int64_t k = 0, x = 0;
	int rc = 0;

	if (!s->selected)
		return TD_EINPUT;
	for (int64_t j = 0; j < s->sel_e.n; j++, k++) {
		const acq_t *a = acq_at(s, s->sel_e.a[j]);

		if (!a)
			return TD_EOPEN;
		put(&c, k, a, s->sel_e.a[j]);
	}
	for (int64_t i = s->mark; i < s->n_acq; i++) {
		const acq_t *a;

		if (x < s->sel_x.n && s->sel_x.a[x] == i) {
			x++;
			continue;
		}
		if (!(a = acq_at(s, i)))
			return TD_EOPEN;
		put(&c, k++, a, i);
	}
	if (s->selected == 1)
		rc = drain_commit(s);
	s->selected = 0;
	/* a drain's scratch can be as long as a chunk's acquisitions: not kept between */
	vec_free(&s->sel_e);
	vec_free(&s->sel_x);
	vec_free(&s->sel_kept);
	return rc;
}

/* the acquisition type code -> lock type code table (td_rp_counts()[10] long) */
void td_rp_types(const rp_t *s, int64_t *types)
{
	for (int64_t t = 0; t < s->n_acq_types; t++)
		types[t] = s->acq_type[t];
}

/* bytes held for acquisitions: blocks, spilled rows, the index of both */
int64_t td_rp_acq_bytes(const rp_t *s)
{
	return (s->n_blocks << s->ab_shift) * (int64_t)sizeof(acq_t)
		+ s->n_spill * (int64_t)sizeof(acq_t) + s->cap_blocks * (int64_t)sizeof(acq_t *)
		+ s->kept.cap * (int64_t)sizeof(int64_t);
}

/* rows per block, 1 << shift (0 <= shift <= AB_SHIFT_MAX), before the first acquisition */
int td_rp_block_shift(rp_t *s, int shift)
{
	if (shift < 0 || shift > AB_SHIFT_MAX || s->n_acq || s->n_blocks)
		return TD_EINPUT;
	s->ab_shift = shift;
	return 0;
}

/* Entries from .. n-1 of a table of n (0 <= from <= n) into dst: none when there are none,
 * for an empty table's array is NULL (no arithmetic on it, no memcpy from it). */
static void copy_tail(void *dst, const void *src, int64_t n, int64_t from, size_t size)
{
	if (n > from)
		memcpy(dst, (const char *)src + (size_t)from * size, (size_t)(n - from) * size);
}

/* the tables, as rows of int64 (replay_native reads them) */
void td_rp_get(const rp_t *s, int64_t *types, int64_t *edges, int64_t *usage, int64_t *recs,
	       int64_t *sleeps, int64_t *sleep_ids, int64_t *forced, int64_t *irq_ended)
{
	int64_t k = 0;

	for (int64_t t = 0; t < s->n_acq_types; t++)
		types[t] = s->acq_type[t];
	for (int64_t e = 0; e < s->edges.n; e++) {
		const edge_t *x = &s->edges.a[e];

		for (int a = 0; a < x->nacc; a++, k += 8) {
			edges[k] = (int64_t)x->u;
			edges[k + 1] = (int64_t)x->v;
			edges[k + 2] = x->count[a];
			edges[k + 3] = x->row[a];
			edges[k + 4] = x->held_row[a];
			edges[k + 5] = x->hs[a];
			edges[k + 6] = x->rr[a];
			edges[k + 7] = x->ctx[a];
		}
	}
	k = 0;
	for (int64_t u = 0; u < s->usage.n; u++) {
		const usage_t *x = &s->usage.a[u];

		for (int b = 0; b < x->n; b++, k += 3) {
			usage[k] = x->cls;
			usage[k + 1] = x->order[b];
			usage[k + 2] = x->row[x->order[b]];
		}
	}
	copy_tail(recs, s->recs.a, s->recs.n, 0, sizeof(rec_t));
	copy_tail(sleeps, s->sleeps.a, s->sleeps.n, 0, sizeof(sleep_t));
	copy_tail(sleep_ids, s->sleep_ids.a, s->sleep_ids.n, 0, sizeof(int64_t));
	copy_tail(forced, s->forced.a, s->forced.n, 0, sizeof(forced_t));
	copy_tail(irq_ended, s->irq_ended.a, s->irq_ended.n, 0, sizeof(pair_t));
}

/* What the replay added since a stream last read it: the sleeps (and their acquisition
 * ids), forced releases and IRQ-ended pairs from the offsets in from[0..3] on, into the
 * arrays (td_rp_counts gives the ends).  TD_EINPUT for an offset outside 0..count. */
int td_rp_get_from(const rp_t *s, const int64_t *from, int64_t *sleeps, int64_t *sleep_ids,
		   int64_t *forced, int64_t *irq_ended)
{
	if (from[0] < 0 || from[0] > s->sleeps.n || from[1] < 0 || from[1] > s->sleep_ids.n
	    || from[2] < 0 || from[2] > s->forced.n || from[3] < 0 || from[3] > s->irq_ended.n)
		return TD_EINPUT;
	copy_tail(sleeps, s->sleeps.a, s->sleeps.n, from[0], sizeof(sleep_t));
	copy_tail(sleep_ids, s->sleep_ids.a, s->sleep_ids.n, from[1], sizeof(int64_t));
	copy_tail(forced, s->forced.a, s->forced.n, from[2], sizeof(forced_t));
	copy_tail(irq_ended, s->irq_ended.a, s->irq_ended.n, from[3], sizeof(pair_t));
	return 0;
}

/* the pending calls' acquire rows (tasks in first-seen order, contexts, call order), and
 * their suspect flag set again (a feed with other suspect_rows).  Their class is never
 * set again: a pending call keeps the class it had at the call (heldlocks.Replayer). */
void td_rp_pending_rows(const rp_t *s, int64_t *rows)
{
	int64_t k = 0;

	for (int64_t ti = 0; ti < s->n_tasks; ti++)
		for (int c = 0; c < 4; c++)
			for (int64_t j = 0; j < s->tasks[ti].cx[c].pend.n; j++)
				rows[k++] = s->tasks[ti].cx[c].pend.a[j].row;
}

void td_rp_pending_suspect(rp_t *s, const uint8_t *suspect)
{
	int64_t k = 0;

	for (int64_t ti = 0; ti < s->n_tasks; ti++)
		for (int c = 0; c < 4; c++)
			for (int64_t j = 0; j < s->tasks[ti].cx[c].pend.n; j++, k++)
				s->tasks[ti].cx[c].pend.a[j].suspect = suspect[k] != 0;
}

/* Forget the first n_sleeps sleeps and their first n_ids acquisition ids, which a stream
 * has read (td_rp_get_from) and keeps in its own way (analysis.sleep_fold): the replay's
 * sleeps must not grow with a driver that sleeps in atomic context all run long.
 * TD_EINPUT when the counts are not a prefix that ends on a sleep's boundary. */
int td_rp_forget_sleeps(rp_t *s, int64_t n_sleeps, int64_t n_ids)
{
	int64_t ids = 0;

	if (n_sleeps < 0 || n_sleeps > s->sleeps.n)
		return TD_EINPUT;
	for (int64_t i = 0; i < n_sleeps; i++)
		ids += s->sleeps.a[i].n_held + s->sleeps.a[i].n_all;
	if (ids != n_ids || n_ids > s->sleep_ids.n)
		return TD_EINPUT;
	if (n_sleeps) {
		memmove(s->sleeps.a, s->sleeps.a + n_sleeps,
			(size_t)(s->sleeps.n - n_sleeps) * sizeof(sleep_t));
		s->sleeps.n -= n_sleeps;
	}
	if (n_ids) {
		memmove(s->sleep_ids.a, s->sleep_ids.a + n_ids,
			(size_t)(s->sleep_ids.n - n_ids) * sizeof(int64_t));
		s->sleep_ids.n -= n_ids;
	}
	return 0;
}
