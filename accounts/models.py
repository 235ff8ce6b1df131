"""Users (email login), accounts (the tenant) and memberships, plus the audit trail."""

from datetime import timedelta
from functools import partial

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.db import models
from django.utils import timezone

from core.ids import new_public_id

# How long an owner's deletion may spend at Paddle (a call times out after seconds).
CLOSING_HOLDS_FOR = timedelta(minutes=5)


class UserManager(BaseUserManager):
    use_in_migrations = True

    def _create_user(self, email: str, password: str | None, **fields):
        if not email:
            raise ValueError("An email address is required.")
        user = self.model(email=self.normalize_email(email).lower(), **fields)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **fields):
        fields.setdefault("is_staff", False)
        fields.setdefault("is_superuser", False)
        return self._create_user(email, password, **fields)

    def create_superuser(self, email: str, password: str | None = None, **fields):
        fields.update(is_staff=True, is_superuser=True)
        return self._create_user(email, password, **fields)


class User(AbstractBaseUser, PermissionsMixin):
    email = models.EmailField("email address", unique=True)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False)
    date_joined = models.DateTimeField(default=timezone.now)
    welcomed_at = models.DateTimeField(null=True, blank=True)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    def __str__(self) -> str:
        return self.email


class Account(models.Model):
    """The tenant: projects, keys, usage and billing belong to an account, not a user."""

    public_id = models.CharField(
        max_length=40, unique=True, editable=False, default=partial(new_public_id, "acc")
    )
    name = models.CharField(max_length=100)
    created_at = models.DateTimeField(auto_now_add=True)
    suspended_at = models.DateTimeField(null=True, blank=True)
    suspension_reason = models.TextField(blank=True)
    closing_since = models.DateTimeField(
        null=True,
        blank=True,
        help_text="An owner's deletion is at Paddle: membership changes wait until it ends.",
    )

    def __str__(self) -> str:
        return f"{self.name} ({self.public_id})"

    @property
    def is_suspended(self) -> bool:
        return self.suspended_at is not None

    @property
    def is_closing(self) -> bool:
        """Its deletion is under way. A mark older than CLOSING_HOLDS_FOR was left by a
        process that died mid-way (Paddle answers within seconds) and holds nothing."""
        return (
            self.closing_since is not None
            and self.closing_since > timezone.now() - CLOSING_HOLDS_FOR
        )


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        ADMIN = "admin", "Admin"
        MEMBER = "member", "Member"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "account"], name="one_membership_per_user"),
        ]

    def __str__(self) -> str:
        return f"{self.user} is {self.role} of {self.account}"

    @property
    def can_manage(self) -> bool:
        """Admins and owners manage projects and keys."""
        return self.role in (self.Role.OWNER, self.Role.ADMIN)

    @property
    def is_owner(self) -> bool:
        return self.role == self.Role.OWNER


class AuditEvent(models.Model):
    """Who did what, when, from where: visible to the account's owners."""

    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="audit_events")
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    action = models.CharField(max_length=64)
    target = models.CharField(max_length=200, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["account", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.action} {self.target}"
