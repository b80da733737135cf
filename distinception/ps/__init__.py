"""The asynchronous parameter server: plain cores (layout, shard, replica, averager, policies),
the Ray shell around them (actors) and the control plane (coordinator)."""
