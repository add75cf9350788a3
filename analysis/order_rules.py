"""``lock-order-inversion``: cycles in the class dependency graph that lockdep would call a
deadlock, grouped where they share a class (analysis.rules has the shared context)."""

from __future__ import annotations

from collections import deque

from tracedep.analysis.findings import Finding, Frame, Site, WitnessKind
from tracedep.analysis.heldlocks import EdgeAcc
from tracedep.analysis.rules import Ctx, driver_of
from tracedep.analysis.waits import WaitEdge, wait_sites
from tracedep.common.jsonvalue import JSON


def _sccs(nodes: list[int], adj: dict[int, list[int]]) -> list[list[int]]:
    """Tarjan, iteratively (kernel graphs are deep)."""
    index: dict[int, int] = {}
    low: dict[int, int] = {}
    on: set[int] = set()
    stack: list[int] = []
    out: list[list[int]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            v, pi = work.pop()
            if pi == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on.add(v)
            succ = adj.get(v, [])
            for j in range(pi, len(succ)):
                w = succ[j]
                if w not in index:
                    work.append((v, j + 1))
                    work.append((w, 0))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    out.append(comp)
                if work:
                    u = work[-1][0]
                    low[u] = min(low[u], low[v])
    return out


def order_findings(cx: Ctx, max_cycles: int = 500) -> list[Finding]:
    edges = cx.all_edges()
    # expanded node = class*2 + (1 if it was acquired as a recursive reader)
    adj: dict[int, list[int]] = {}
    label: dict[tuple[int, int], tuple[int, int, int]] = {}  # (xu, xv) → (u, v, variant)
    for (u, v), accs in edges.items():
        for vi, acc in enumerate(accs):
            for arrived_rr in (0, 1):
                if arrived_rr and acc.before_shared:
                    continue  # -(*R)-> then -(S*)->: not a deadlock
                xu, xv = u * 2 + arrived_rr, v * 2 + int(acc.after_recursive_read)
                adj.setdefault(xu, []).append(xv)
                label.setdefault((xu, xv), (u, v, vi))
    nodes = sorted(adj)
    cycles: dict[tuple[int, ...], list[tuple[int, int, int]]] = {}
    for comp in _sccs(nodes, adj):
        if len(comp) < 2:
            continue
        members = set(comp)
        for xu in comp:
            for xv in adj.get(xu, []):
                if xv not in members:
                    continue
                path = _bfs(adj, xv, xu, members)
                if path is None:
                    continue
                xcycle = [xu, *path]  # xu → xv … → xu
                cls_seq = tuple(x // 2 for x in xcycle[:-1])
                if len(set(cls_seq)) != len(cls_seq):
                    continue  # not elementary at class level
                canon = _canonical(cls_seq, cx)
                if canon in cycles:
                    continue
                cycles[canon] = [label[(a, b)] for a, b in zip(xcycle, xcycle[1:], strict=False)]
                if len(cycles) >= max_cycles:
                    break
    out = []
    for hub, canons in group_cycles(list(cycles), cx):
        if len(canons) == 1:
            out.append(_cycle_finding(cx, edges, cycles[canons[0]], canons[0]))
        else:
            out.append(_grouped_finding(cx, edges, hub, [(c, cycles[c]) for c in canons]))
    return out


def group_cycles(canons: list[tuple[int, ...]], cx: Ctx
                 ) -> list[tuple[int, list[tuple[int, ...]]]]:
    """One root cause, one finding: cycles grouped by the class they pass through.

    The rule (greedy set cover, deterministic): the class that the most remaining
    cycles pass through (ties: the smallest class signature) takes all of them as
    one group; repeat with the rest.  A class that many cycles share is the one to
    fix (an ordering around it, or a class that merges locks lockdep would key
    apart: every inode's ``i_rwsem`` as one heap class made 18 cycles); lockdep
    itself reports only the first cycle each new dependency closes.  A group of
    one cycle is the plain cycle, with the cycle's own signature.
    """
    def sigs(c: tuple[int, ...]) -> list[str]:
        return [cx.cls(x).sig for x in c]

    left = sorted(canons, key=sigs)
    out: list[tuple[int, list[tuple[int, ...]]]] = []
    while left:
        count: dict[int, int] = {}
        for c in left:
            for x in set(c):
                count[x] = count.get(x, 0) + 1
        hub = min(count, key=lambda x: (-count[x], cx.cls(x).sig, x))
        out.append((hub, [c for c in left if hub in c]))
        left = [c for c in left if hub not in c]
    return out


def _bfs(adj: dict[int, list[int]], src: int, dst: int, members: set[int]) -> list[int] | None:
    prev: dict[int, int] = {src: src}
    q = deque([src])
    while q:
        v = q.popleft()
        if v == dst:
            path = [v]
            while path[-1] != src:
                path.append(prev[path[-1]])
            return path[::-1]
        for w in adj.get(v, []):
            if w in members and w not in prev:
                prev[w] = v
                q.append(w)
    return None


def _canonical(seq: tuple[int, ...], cx: Ctx) -> tuple[int, ...]:
    sigs = [cx.cls(c).sig for c in seq]
    k = min(range(len(seq)), key=lambda i: sigs[i:] + sigs[:i])
    return seq[k:] + seq[:k]


def _grouped_finding(cx: Ctx, edges: dict[tuple[int, int], list[EdgeAcc]], hub: int,
                     group: list[tuple[tuple[int, ...], list[tuple[int, int, int]]]]
                     ) -> Finding:
    """Cycles that share the class ``hub``: one finding listing each path, keyed by
    ``hub`` alone so that the cycles a later run adds or loses keep its signature."""
    parts = [_cycle_finding(cx, edges, labs, canon) for canon, labs in group]
    hub_name = cx.cls(hub).name
    sites: list[Site] = []
    seen: set[tuple[str, int | None, str | None]] = set()
    for f in parts:  # each dependency's witnesses once, in the paths' order
        for st in f.sites:
            k = (st.role, st.ts_ns, st.lock)
            if k not in seen:
                seen.add(k)
                sites.append(st)
    locks = list(dict.fromkeys([hub_name, *(x for f in parts for x in f.locks)]))
    paths = [_texts(f.details.get("cycle")) for f in parts]
    chains = [" -> ".join([*p, p[0]]) for p in paths]
    shown = "; ".join(chains[:3]) + (f"; … (+{len(chains) - 3} more)" if len(chains) > 3
                                     else "")
    msg = (f"possible circular locking dependency: {len(paths)} cycles, all through "
           f"{hub_name}: {shown}")
    frames = [fr for st in sites for fr in st.frames]
    mods = [cx.cls(hub).module, *(m for canon, _ in group for m in (cx.cls(c).module
                                                                     for c in canon))]
    named = list(dict.fromkeys(tuple(_texts(e)) for f in parts
                               for e in _items(f.details.get("edges"))))
    waits = list(dict.fromkeys(w for f in parts for w in _texts(f.details.get("waits"))))
    if waits:
        msg += f"; waits that close them: {'; '.join(waits)}"
    return Finding(kind="lock-order-inversion", driver=driver_of(frames, mods), locks=locks,
                   sites=sites, message=msg, first_ts_ns=min(f.first_ts_ns for f in parts),
                   count=max(f.count for f in parts), key=("through", cx.cls(hub).sig),
                   details={"through": hub_name, "cycle": list(paths[0]),
                            "paths": [list(p) for p in paths],
                            "edges": [list(e) for e in named],
                            "cycle_signatures": [f.signature for f in parts],
                            **({"waits": list(waits)} if waits else {})})


def _items(v: JSON) -> list[JSON]:
    return v if isinstance(v, list) else []


def _texts(v: JSON) -> list[str]:
    """A list of names the rules wrote into ``details`` (read back, it is only JSON)."""
    return [str(x) for x in _items(v)]


def _cycle_finding(cx: Ctx, edges: dict[tuple[int, int], list[EdgeAcc]],
                   labs: list[tuple[int, int, int]], canon: tuple[int, ...]) -> Finding:
    # witnesses in the order the message names the cycle, whichever edge was found
    # first: two runs (two architectures) then show the same page
    k = next((i for i, lab in enumerate(labs) if lab[0] == canon[0]), 0)
    labs = labs[k:] + labs[:k]
    sites: list[Site] = []
    first_ts = None
    frames_all: list[Frame] = []
    closing: list[str] = []
    for u, v, vi in labs:
        acc = edges[(u, v)][vi]
        a, b = cx.cls(u).name, cx.cls(v).name
        if isinstance(acc, WaitEdge):
            s_b, s_a = wait_sites(cx, acc, a, b)
            if acc.how == "wait":
                closing.append(f"{acc.api}() on {b} while holding {a}")
        else:
            s_b = cx.site(acc.row, WitnessKind.ACQUIRE, f"{b} acquired while holding {a}", b,
                          with_stack=False, holding=a)
            s_a = cx.site(acc.held_row, WitnessKind.HELD, f"{a} acquired earlier", a,
                          with_stack=False)
        sites += [s_b, s_a]
        frames_all += list(s_b.frames) + list(s_a.frames)
        t = s_b.ts_ns or 0
        first_ts = t if first_ts is None else min(first_ts, t)
    names = [cx.cls(c).name for c in canon]
    driver = driver_of(frames_all, [cx.cls(c).module for c in canon])
    chain = " -> ".join(names + [names[0]])
    count = min(edges[(u, v)][vi].count for u, v, vi in labs)
    n = len(canon)
    what = "AB-BA" if n == 2 else f"{n}-lock cycle"
    instance = [cx.cls(c).name for c in canon if cx.cls(c).origin == "instance"]
    msg = f"possible circular locking dependency ({what}): {chain}"
    details: dict[str, JSON] = {
        "cycle": list(names), "edges": [[cx.cls(u).name, cx.cls(v).name] for u, v, _ in labs]}
    if closing:
        # a cycle through a wait: lockdep's pseudo-lock reading (analysis.waits)
        msg = (f"possible circular locking dependency through a wait ({what}): {chain}; "
               f"the wait that closes it: {'; '.join(closing)}")
        details["waits"] = list(closing)
    if instance:
        msg += ("; " + ", ".join(instance) + " identified by instance only (no allocation "
                "or symbol known)")
    return Finding(kind="lock-order-inversion", driver=driver, locks=names, sites=sites,
                   message=msg, first_ts_ns=first_ts or 0, count=count,
                   key=tuple(cx.cls(c).sig for c in canon), details=details)


# -- IRQ safety ------------------------------------------------------------------
