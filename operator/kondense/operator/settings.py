"""Operator settings from the environment (KONDENSE_*)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from kondense.operator.outbound import UrlPolicy, check_prefixes

VERSION = "0.1.0"


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KONDENSE_", extra="ignore")

    # NoDecode: a comma list, not JSON (pydantic-settings would JSON-decode a list field first)
    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Namespaces to watch; empty = all."
    )
    compression_image: str = f"kondense/compression:{VERSION}"
    serving_image: str = f"kondense/serving:{VERSION}"
    triton_image: str = "nvcr.io/nvidia/tritonserver:24.08-py3"
    image_pull_policy: str = "IfNotPresent"
    prometheus_url: str = "http://prometheus.monitoring:9090"
    pvc_root: str = "/mnt/pvc"
    tick_seconds: float = Field(2.0, gt=0, description="How often each CompressedModel is reconciled.")
    idle_resync_seconds: float = Field(30.0, gt=0, description="Reconcile settled objects this often.")
    metrics_port: int = 8000
    health_port: int = 8080
    log_level: str = "INFO"
    prometheus_timeout_seconds: float = Field(5.0, gt=0)
    service_domain: str = Field("svc.cluster.local", description="DNS suffix of Services (shadow URLs).")

    # -- what a CompressedModel may choose (pods it gets the operator to run) --------------------
    allowed_images: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Images a CompressedModel may name in spec.compression.image / spec.serving.image "
        "(exact references, comma list); empty = no overrides, the images above only.",
    )
    job_tmp_size_limit: str = Field(
        "8Gi", description="sizeLimit of a compression Job's /tmp emptyDir (downloads, scratch)."
    )
    pod_tmp_size_limit: str = Field("1Gi", description="sizeLimit of a serving pod's /tmp emptyDir.")

    @field_validator("namespaces", "allowed_images", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [ns.strip() for ns in value.split(",") if ns.strip()]
        return value

    # -- analysis providers (issue 11 §8): which metric endpoints a CompressedModel may name -------
    # NoDecode: a comma list, not JSON
    prometheus_allowed_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Prometheus URLs a CompressedModel may name in spec.rollout.analysis.prometheus.url "
        "(comma list; KONDENSE_PROMETHEUS_ALLOWED_URLS). The operator's own prometheus_url is always "
        "allowed; empty = only that one.",
    )
    provider_cache_size: int = Field(8, ge=1, le=256, description="Metric providers kept open at most.")

    @field_validator("prometheus_allowed_urls", mode="before")
    @classmethod
    def _url_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [url.strip() for url in value.split(",") if url.strip()]
        return value

    @field_validator("prometheus_allowed_urls")
    @classmethod
    def _http_urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http(s) URL")
        return urls

    def allowed_prometheus_urls(self) -> list[str]:
        return [self.prometheus_url, *(u for u in self.prometheus_allowed_urls if u != self.prometheus_url)]

    # -- webhooks and notifications (issue 14): where the operator may POST for a CompressedModel ----
    webhook_allowed_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="URL prefixes webhooks (spec.rollout.webhooks[].url) and notifications (the URL in "
        "their Secret) may use (comma list; KONDENSE_WEBHOOK_ALLOWED_URLS): same scheme, host and port, "
        "a path at or below the prefix's. Empty = only Services of the CR's own namespace.",
    )
    webhook_own_namespace_services: bool = Field(
        True,
        description="Also allow http(s)://<service>.<namespace>.svc[.<service_domain>] URLs of the CR's "
        "own namespace (KONDENSE_WEBHOOK_OWN_NAMESPACE_SERVICES; ExternalName Services are refused).",
    )

    @field_validator("webhook_allowed_urls", mode="before")
    @classmethod
    def _webhook_url_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [url.strip() for url in value.split(",") if url.strip()]
        return value

    @field_validator("webhook_allowed_urls")
    @classmethod
    def _webhook_prefixes(cls, urls: list[str]) -> list[str]:
        return check_prefixes(urls)

    def url_policy(self) -> UrlPolicy:
        return UrlPolicy(
            tuple(self.webhook_allowed_urls), self.service_domain, self.webhook_own_namespace_services
        )
