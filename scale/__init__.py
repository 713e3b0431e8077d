"""edgevfm.scale: bundles beyond one process, on Ray (the ``[scale]`` extra).

:mod:`.batch` runs ``edgevfm batch``: one bundle over a collection of images as a Ray Data job,
with :mod:`.sources` (where the images come from), :mod:`.tasks` (what is computed for each) and
:mod:`.shipping` (the bundle sent to the cluster's nodes and checked there).
"""
