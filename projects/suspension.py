"""How long a suspended account's or project's held requests wait before they are canceled."""

SUSPENSION_CANCEL_AFTER_DAYS = 14
