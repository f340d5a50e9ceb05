"""The pipeline: the stages (rgb, instance, mapping), the queries and the rendering of what they made.

Imported first by every entry point, before torch: OpenMP threads that wait for work sleep instead of
spinning (``OMP_WAIT_POLICY=PASSIVE``), so two jobs on one machine do not starve each other (a
spinning runtime slowed a paired run ~10x). A value set by the user is kept.
"""
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
