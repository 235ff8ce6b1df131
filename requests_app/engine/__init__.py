"""The request's state machine: accept, claim, conclude, schedule a retry, cancel, recover,
expire. The only code that writes `Request.status` or `Attempt` rows (see
docs/request-states.md)."""
