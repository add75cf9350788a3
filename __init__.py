"""tracedep: sleep-in-atomic and lock-order verification from QEMU traces of real kernels.

The stage packages (``tracedep.vm``, ``tracedep.tracer``, ``tracedep.analysis``,
``tracedep.reports``) live in the repository's top-level folders of the same
names; data flows one way between them.
"""

__version__ = "0.1.0"
