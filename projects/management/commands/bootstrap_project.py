"""`manage.py bootstrap_project`: one JSON line on stdout with the ids and a new API key."""

import json
from contextlib import redirect_stdout

from django.core.management.base import CommandError

from core.commands import DatabaseCommand
from projects.errors import InvalidModelMap, InvalidProviderKey, NameNotAvailable, UpstreamRefused
from projects.limits import LimitReached
from projects.models import Plan
from projects.onboarding import BootstrapError, bootstrap_project, upstream_specs
from projects.upstream_guard import UpstreamNotAllowed

PLAN_CODES = ["free", "pro", "team", "enterprise"]


class Command(DatabaseCommand):
    help = (
        "Create (or reuse) a verified user, their account on a plan, a project named "
        '"Default" with the given upstreams and provider keys, and a new API key. Prints '
        '{"account": …, "project": …, "api_key": …} as one JSON line on stdout.'
    )

    def add_arguments(self, parser):
        parser.add_argument("--email", required=True)
        parser.add_argument(
            "--upstream-url",
            required=True,
            action="append",
            help="Base URL as the OpenAI SDK takes it, e.g. https://api.openai.com/v1. "
            "Repeat for fallbacks: the first is the primary.",
        )
        parser.add_argument(
            "--upstream-key",
            required=True,
            action="append",
            help="The provider API key, once per --upstream-url, in the same order.",
        )
        parser.add_argument(
            "--upstream-name",
            action="append",
            help="Names of the upstreams, once per --upstream-url "
            "(default: primary, fallback-1, fallback-2, …).",
        )
        parser.add_argument(
            "--model-map",
            action="append",
            metavar="NAME=SRC:DST",
            help="On upstream NAME, send model SRC as DST. Repeatable.",
        )
        parser.add_argument(
            "--plan",
            choices=PLAN_CODES,
            help="Put the account on this plan (default: keep it; new: free).",
        )
        parser.add_argument("--password", help="Set this password so the user can sign in.")

    def handle(self, *args, **options):
        try:
            # stdout holds the JSON line alone: what the run prints on the way (in development
            # the console email backend prints the owners' emails there) goes to stderr.
            with redirect_stdout(self.stderr):
                result = bootstrap_project(
                    email=options["email"],
                    upstreams=upstream_specs(
                        urls=options["upstream_url"],
                        keys=options["upstream_key"],
                        names=options["upstream_name"],
                        model_maps=options["model_map"],
                    ),
                    plan_code=options["plan"],
                    password=options["password"],
                )
        except LimitReached as error:
            raise CommandError(f"{error} Or run again with a larger --plan.") from error
        except (
            BootstrapError,
            UpstreamNotAllowed,
            InvalidProviderKey,
            InvalidModelMap,
            NameNotAvailable,
            UpstreamRefused,
        ) as error:
            raise CommandError(str(error)) from error
        except Plan.DoesNotExist as error:
            raise CommandError(f"There is no {options['plan']!r} plan; run migrate.") from error
        self.stdout.write(
            json.dumps(
                {
                    "account": result.account.public_id,
                    "project": result.project.public_id,
                    "api_key": result.api_key,
                }
            )
        )
