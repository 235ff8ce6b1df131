"""Provider keys re-encrypted under a new primary key, so the old one can leave the ring."""

import pytest
from cryptography.fernet import Fernet

from projects.models import Project
from projects.upstreams import provider_key_of, rotate_provider_keys, set_provider_key
from tests.factories import ProjectFactory

pytestmark = pytest.mark.django_db


def test_rotation_lets_the_old_key_leave_the_ring(settings):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.REQRUN_ENCRYPTION_KEYS = [old]
    projects = [ProjectFactory() for _ in range(5)]
    for number, project in enumerate(projects):
        set_provider_key(project=project, provider_key=f"sk-provider-key-{number:04d}")
    ProjectFactory()  # one without a key is left alone

    settings.REQRUN_ENCRYPTION_KEYS = [new]
    # Before rotation, the new key alone cannot read them.
    assert provider_key_of(Project.objects.get(pk=projects[0].pk)) is None

    settings.REQRUN_ENCRYPTION_KEYS = [new, old]
    assert rotate_provider_keys(batch_size=2) == 5

    settings.REQRUN_ENCRYPTION_KEYS = [new]
    for number, project in enumerate(projects):
        assert (
            provider_key_of(Project.objects.get(pk=project.pk)) == f"sk-provider-key-{number:04d}"
        )
