"""How long ReqRun keeps the Paddle events it received, as the privacy policy states it."""

PADDLE_EVENT_RETENTION_DAYS = 90
