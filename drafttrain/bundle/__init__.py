"""Cascade bundles: what a user takes home, checked so that it cannot run against the wrong model.

`export_bundle` writes one (atomically); `load_bundle` verifies one against a target and builds
its scheduler. See `manifest` for the layout.
"""

from drafttrain.bundle.export import BundleParts, export_bundle
from drafttrain.bundle.load import Bundle, BundleWarning, load_bundle
from drafttrain.bundle.scheduler import Scheduler, SchedulerSpec

__all__ = ["Bundle", "BundleParts", "BundleWarning", "Scheduler", "SchedulerSpec", "export_bundle", "load_bundle"]
