"""What the project services refuse, each with a message that says why (shown as is)."""


class InvalidProviderKey(ValueError):
    pass


class InvalidModelMap(ValueError):
    """A model map that is not pairs of non-empty model names; the message says why."""


class UpstreamRefused(ValueError):
    """A change that would leave the project's upstreams unusable; the message says why."""


class InvalidFailoverPolicy(ValueError):
    """A failover policy the engine cannot follow; the message says why."""


class NameNotAvailable(ValueError):
    """A project or key name is empty or already taken; the message says which."""


class ProjectBusy(ValueError):
    """A project with requests still queued, retrying or running; the message says what to do."""


class Gone(LookupError):
    """What a change was about (a project, one of its upstreams) was deleted while the change
    waited for the project's row lock; the page answers 404, as it would a moment later."""
