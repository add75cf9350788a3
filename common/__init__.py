"""Layer 0: what every stage shares (docs/DESIGN.md, "Layers").

``cache``: the one cache root; ``files``: the one atomic write; ``machines``: the
facts of each guest architecture.  Nothing here imports another tracedep layer.
"""
