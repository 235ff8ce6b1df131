"""Deleting a project: the owner's click answers at once and the project is gone for
everyone from then on (not listed, its pages 404, its keys refused, its place in the plan
free); a worker then deletes its requests in batches, and the privacy sweep finishes a
deletion whose task was lost."""

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts.models import AuditEvent
from privacy.tasks import sweep_privacy
from projects import services
from projects.models import ApiKey, Project, Upstream
from projects.selectors import unfinished_requests
from projects.tasks import purge_deleted_project
from requests_app.models import Attempt, DailyUsage, Request
from tests.factories import AttemptFactory, RequestFactory
from tests.projects.conftest import messages_of

pytestmark = pytest.mark.django_db


def finished_requests(project, count: int) -> list[Request]:
    requests = RequestFactory.create_batch(
        count, project=project, status="succeeded", attempt_count=1, finished_at=timezone.now()
    )
    for request in requests:
        AttemptFactory(request=request, number=1)
    return requests


def purge(project) -> bool:
    """The worker's purge, once the deletion's few seconds of grace are over."""
    later = timezone.now() + services.PURGE_GRACE + timedelta(seconds=1)
    return services.purge_deleted_project(project_pk=project.pk, now=later)


def delete_in_dashboard(client, project):
    return client.post(reverse("project-delete", args=[project.public_id]), follow=True)


def test_the_delete_answers_at_once_and_a_worker_deletes_the_requests_after(
    alice_client, alice_project, alice_key
):
    finished_requests(alice_project, 3)
    DailyUsage.objects.create(
        account=alice_project.account, project=alice_project, day=timezone.now().date()
    )

    response = delete_in_dashboard(alice_client, alice_project)

    assert response.redirect_chain[-1][0] == reverse("project-list")
    # The request answered without the cascade: the history is still there, for the worker.
    assert Request.objects.filter(project=alice_project).count() == 3
    assert Attempt.objects.filter(request__project=alice_project).count() == 3
    assert alice_project.public_id not in response.content.decode()  # not listed
    assert "Project “Chatbot” was deleted." in " ".join(messages_of(response))
    assert AuditEvent.objects.filter(action="project_deleted").count() == 1

    assert purge(alice_project) is True

    assert not Project.objects.filter(pk=alice_project.pk).exists()
    assert not Request.objects.exists() and not Attempt.objects.exists()
    assert not Upstream.objects.exists() and not ApiKey.objects.exists()
    assert not DailyUsage.objects.exists()
    assert AuditEvent.objects.filter(action="project_deleted").count() == 1


def test_a_deleted_project_frees_its_place_in_the_plan_and_its_name_at_once(
    alice_client, alice_account, alice_project
):
    finished_requests(alice_project, 1)
    delete_in_dashboard(alice_client, alice_project)

    response = alice_client.post(reverse("project-list"), {"name": "Chatbot"}, follow=True)

    assert "allows 1 project" not in response.content.decode()
    new = Project.objects.get(account=alice_account, deleted_at__isnull=True)
    assert new.name == "Chatbot" and new.pk != alice_project.pk
    assert list(alice_account.projects.filter(deleted_at__isnull=False)) == [alice_project]


def test_the_sweep_finishes_a_deletion_whose_task_was_lost(alice, alice_project):
    # The test's transaction never commits, so the task queued on commit is never sent:
    # the same as a message Redis lost, or a worker killed mid-purge.
    finished_requests(alice_project, 2)
    services.delete_project(project=alice_project, actor=alice)
    Project.objects.filter(pk=alice_project.pk).update(
        deleted_at=timezone.now() - timedelta(minutes=5)
    )
    assert alice_project.pk in services.project_deletions_due()

    sweep_privacy()  # queues the purge again, as beat does every minute
    ran = purge_deleted_project.apply((alice_project.pk,), {"follow_up": False})  # that task

    assert ran.successful(), ran.result

    assert not Project.objects.filter(pk=alice_project.pk).exists()
    assert not Request.objects.exists()
    assert services.project_deletions_due() == []


def test_the_purge_deletes_in_batches_and_runs_again_harmlessly(alice, alice_project, monkeypatch):
    monkeypatch.setattr(services, "PURGE_BATCH_SIZE", 2)
    finished_requests(alice_project, 5)
    services.delete_project(project=alice_project, actor=alice)

    with CaptureQueriesContext(connection) as captured:
        assert purge(alice_project) is True
    deletes = [
        query["sql"]
        for query in captured
        if query["sql"].startswith(f'DELETE FROM "{Request._meta.db_table}"')
    ]

    assert len(deletes) == 3  # 2 + 2 + 1
    assert not Request.objects.exists() and not Project.objects.exists()
    assert purge(alice_project) is True  # nothing left


def test_the_purge_waits_for_a_request_accepted_as_the_project_was_deleted(alice, alice_project):
    # Its key was read just before the delete; its insert committed just after.
    services.delete_project(project=alice_project, actor=alice)
    late = RequestFactory(project=alice_project, status="running")

    assert purge(alice_project) is False
    assert Request.objects.filter(pk=late.pk).exists()

    Request.objects.filter(pk=late.pk).update(status="succeeded", finished_at=timezone.now())
    assert purge(alice_project) is True
    assert not Project.objects.filter(pk=alice_project.pk).exists()


def test_a_project_being_deleted_is_not_deleted_twice(alice_client, alice_project):
    url = reverse("project-delete", args=[alice_project.public_id])
    alice_client.post(url)

    assert alice_client.post(url).status_code == 404
    assert AuditEvent.objects.filter(action="project_deleted").count() == 1


def test_a_deleted_projects_requests_are_404_and_gone_from_the_usage_page(
    alice_client, alice, alice_project
):
    [request] = finished_requests(alice_project, 1)
    pages = {
        "list": reverse("request-list", args=[alice_project.public_id]),
        "detail": reverse("request-detail", args=[request.public_id]),
    }
    assert {name: alice_client.get(url).status_code for name, url in pages.items()} == {
        "list": 200,
        "detail": 200,
    }
    assert alice_project.public_id in alice_client.get(reverse("usage")).content.decode()

    services.delete_project(project=alice_project, actor=alice)

    assert {name: alice_client.get(url).status_code for name, url in pages.items()} == {
        "list": 404,
        "detail": 404,
    }
    cancel = alice_client.post(reverse("request-cancel", args=[request.public_id]))
    assert cancel.status_code == 404
    assert alice_project.public_id not in alice_client.get(reverse("usage")).content.decode()
    assert alice_client.get(reverse("requests-home"))["Location"] == reverse("project-list")


def test_the_purge_waits_out_the_grace_and_another_purges_lease(alice, alice_project):
    finished_requests(alice_project, 2)
    services.delete_project(project=alice_project, actor=alice)

    # An accept that read a key just before the deletion may still be inserting.
    assert services.purge_deleted_project(project_pk=alice_project.pk) is False
    # Another purge of it is running (the sweep queues one every minute).
    Project.objects.filter(pk=alice_project.pk).update(
        purging_until=timezone.now() + timedelta(minutes=1)
    )
    assert purge(alice_project) is False
    assert Request.objects.filter(project=alice_project).count() == 2

    # That purge died: its lease runs out, and the next one takes over.
    Project.objects.filter(pk=alice_project.pk).update(
        purging_until=timezone.now() - timedelta(seconds=1)
    )
    assert purge(alice_project) is True
    assert not Project.objects.filter(pk=alice_project.pk).exists()


def test_counting_a_projects_unfinished_requests_reads_no_finished_one(alice_project):
    """The delete page and the admin count them: the count is an index's read of the
    project's unfinished requests, not of its (maybe millions of) finished ones."""
    Request.objects.bulk_create(
        RequestFactory.build_batch(
            2000, project=alice_project, status="succeeded", finished_at=timezone.now()
        ),
        batch_size=500,
    )
    RequestFactory(project=alice_project, status="queued")
    RequestFactory(project=alice_project, status="running")
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {Request._meta.db_table}")  # as autovacuum would

    with CaptureQueriesContext(connection) as captured:
        assert unfinished_requests(alice_project) == 2
    [count] = captured.captured_queries
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (ANALYZE, TIMING OFF, SUMMARY OFF) {count['sql']}")
        plan = "\n".join(line for (line,) in cursor.fetchall())

    assert "Index" in plan and "Seq Scan" not in plan, plan
    # Nothing read only to be thrown away: the index holds none of the finished ones.
    assert re.findall(r"Rows Removed by \w+: [1-9]", plan) == [], plan
