"""node-ping: find flaky Kubernetes nodes and links with fping and Prometheus."""

__version__ = "0.1.0"
