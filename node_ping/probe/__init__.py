"""The DaemonSet prober: `node-ping run | once | health`."""
