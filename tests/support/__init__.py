"""Helpers the tests share: test hosts, processes, servers, data; one of each."""
