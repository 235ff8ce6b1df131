from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"
    verbose_name = "ReqRun infrastructure"

    def ready(self) -> None:
        from django.urls import register_converter

        from core import shutdown  # noqa: F401 - connects the worker's SIGTERM handling
        from core.client_address import trusted_proxy_networks
        from core.ids import PublicIdConverter

        register_converter(PublicIdConverter, "pid")
        trusted_proxy_networks()  # a mistyped proxy list stops the start, not a request
