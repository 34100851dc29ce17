"""The trainer: pairs local bone MR with CT, retrains on external + local data, evaluates."""
