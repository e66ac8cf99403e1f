"""The node-discovery controller: `node-ping discover`."""
