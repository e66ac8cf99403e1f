"""`node-ping diagnose`: read node-ping data from Prometheus and name the faulty node, link or cluster."""
