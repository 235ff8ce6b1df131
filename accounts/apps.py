from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts"

    def ready(self) -> None:
        from accounts import signals  # noqa: F401
        from accounts.access import trusted_proxy_networks

        trusted_proxy_networks()  # a mistyped proxy list stops the start, not a request
