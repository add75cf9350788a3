"""analysis.trace.place_fixed_locks: the lock events of functions that take one known
lock (cpus_read_lock(): cpu_hotplug_lock) get its address, whatever the column's dtype."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pandas as pd
import pytest

from tracedep.analysis.trace import place_fixed_locks
from tracedep.tracer.probes import GROUP

EVENTS = [f"{GROUP}/lk_cpus_read_lock", "sched/sched_switch", f"{GROUP}/ul_cpus_read_unlock",
          f"{GROUP}/lk_mutex_lock", f"{GROUP}/lr_cpus_read_trylock", f"{GROUP}/lk_cpus_read_lock"]
PLACED = [True, False, True, False, True, True]


def _symbols(addresses: dict[str, list[int]]) -> Any:
    return SimpleNamespace(kernel=SimpleNamespace(addresses_of=lambda s: addresses.get(s, [])))


@pytest.mark.parametrize("categorical", [True, False])
def test_the_known_lock_is_placed_on_its_functions_rows_only(categorical: bool) -> None:
    ev = pd.DataFrame({"event": pd.Categorical(EVENTS) if categorical else EVENTS,
                       "lock_addr": np.arange(1, len(EVENTS) + 1, dtype=np.uint64)})
    notes = place_fixed_locks(ev, cast(Any, _symbols({"cpu_hotplug_lock": [0xffff1000]})))
    assert notes == []
    want = [0xffff1000 if p else i + 1 for i, p in enumerate(PLACED)]
    assert ev["lock_addr"].tolist() == want
    assert ev["lock_addr"].dtype == np.uint64


def test_a_lock_not_once_in_kallsyms_leaves_the_rows_and_says_so() -> None:
    ev = pd.DataFrame({"event": pd.Categorical(EVENTS),
                       "lock_addr": np.arange(1, len(EVENTS) + 1, dtype=np.uint64)})
    notes = place_fixed_locks(ev, cast(Any, _symbols({"cpu_hotplug_lock": [1, 2]})))
    assert ev["lock_addr"].tolist() == list(range(1, len(EVENTS) + 1))
    assert notes and "cpu_hotplug_lock" in notes[0]
