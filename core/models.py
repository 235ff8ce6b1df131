from django.db import models


class BeatLease(models.Model):
    """Which beat leads: the one whose lease has not run out (core.beat.Leadership)."""

    name = models.CharField(max_length=50, primary_key=True)
    holder = models.CharField(max_length=200)  # host:pid:random of the beat holding it
    expires_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.name} held by {self.holder} until {self.expires_at:%Y-%m-%d %H:%M:%S}"
