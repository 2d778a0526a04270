"""Build-side tools that need the ``train`` extra: the demo, the active-learning simulation, the speed benchmark.

They are ``edge-al`` verbs (``demo``, ``simulate``, ``bench``), registered through the
``edge_al.verbs`` entry point (:mod:`export.tools.verbs`), so the line-side ``edge_al`` package
never names this one.
"""
