"""Run the retention purge by hand (beat runs it every few minutes)."""

from core.commands import DatabaseCommand
from requests_app.engine.retention import purge_expired_data


class Command(DatabaseCommand):
    help = "Drop response bodies older than 24 h and request records past the plan's retention."

    def handle(self, *args, **options):
        report = purge_expired_data()
        self.stdout.write(
            f"Dropped {report.response_bodies} response body(ies) and deleted "
            f"{report.records} request record(s) past their retention window."
        )
