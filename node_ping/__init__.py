"""node-ping: find flaky Kubernetes nodes and links with fping and Prometheus."""

__version__ = "0.2.0"
