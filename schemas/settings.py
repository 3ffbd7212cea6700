"""One settings object for every yrdbus process.

Values come, highest first, from: keyword arguments, the environment
(``YRDBUS_*``), a TOML file (``YRDBUS_CONFIG``, default ``./yrdbus.toml`` when
it exists), and the defaults written here. README.md lists them all.
"""
from __future__ import annotations

import os
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def _config_file() -> Path:
    return Path(os.environ.get("YRDBUS_CONFIG", "yrdbus.toml"))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="YRDBUS_", extra="ignore")

    # --- local state -------------------------------------------------------
    var_dir: Path = Field(Path("var"), description="Folder for broker data, the embedded ClickHouse store and logs (git-ignored).")

    # --- Kafka -------------------------------------------------------------
    kafka_bootstrap: Optional[str] = Field(
        None, description="Bootstrap servers of an external Kafka cluster. Unset: the project runs its own broker.")
    kafka_port: int = Field(9092, description="Client port of the embedded broker (the first one when there are several).")
    kafka_controller_port: int = Field(29093, description="KRaft controller port of the embedded broker (the first one).")
    kafka_brokers: int = Field(1, ge=1, le=5, description="Number of brokers of the embedded cluster.")
    kafka_heap: str = Field("768m", description="Java heap (-Xmx) of each embedded broker.")
    kafka_jvm_options: str = Field(
        "-XX:TieredStopAtLevel=1",
        description="More JVM options of each embedded broker. The default compiles with the client JIT only: an "
                    "embedded broker's traffic is small, and its start-up and a 60,000-record round trip took about "
                    "40 % less CPU (docs/benchmarks.md); empty for the JVM's defaults.")
    kafka_lib_dir: Optional[Path] = Field(
        None, description="Folder of the pinned Kafka jars (`yrdbus stack jars` fills it with Maven). Unset: a "
                          "per-user cache folder named by the pin, $XDG_CACHE_HOME/yrdbus or ~/.cache/yrdbus.")
    kafka_start_timeout_s: float = Field(90.0, description="How long `stack up` waits for the broker to answer a metadata request.")

    # --- Kafka security (docs/security.md; every client reads these through schemas.kafka_config) ---------
    kafka_security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="How clients talk to Kafka: PLAINTEXT, SASL_PLAINTEXT or SASL_SSL (SCRAM over TLS).")
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism of the client's principal.")
    kafka_username: Optional[str] = Field(None, description="The process's Kafka principal (station-SH-PVG, svc-sink ...).")
    kafka_password: Optional[SecretStr] = Field(None, description="Its SCRAM password. Never logged; prefer the file.")
    kafka_password_file: Optional[Path] = Field(None, description="File holding the SCRAM password (first line).")
    kafka_ssl_ca_location: Optional[Path] = Field(
        None, description="PEM file of the CA that signed the brokers' certificates (SASL_SSL); unset: the system's CAs.")

    # --- ClickHouse --------------------------------------------------------
    clickhouse_url: str = Field(
        "",
        description="chdb://<folder> runs the ClickHouse engine in-process; http(s)://host:8123 points at a server. "
                    "Unset: chdb://<var_dir>/clickhouse, so that the var folder holds everything.")
    clickhouse_ttl_days: int = Field(
        0, ge=0, description="Days the event tables keep rows (TTL on event time); 0 keeps them for ever.")
    query_host: str = Field("127.0.0.1", description="Address of the live query endpoint (ClickHouse HTTP interface).")
    query_port: int = Field(8124, description="Port of the live query endpoint served by the process owning the store.")
    query_users: dict[str, str | dict] = Field(
        default_factory=dict,
        description="Users of the query endpoint: name -> password hash (`yrdbus db hash-password`), or "
                    "{hash, max_execution_time_s, max_result_rows, regions} for a user with limits of their own. "
                    "Empty: only `default` with an empty password, as a fresh ClickHouse.")
    query_max_execution_time_s: float = Field(30.0, gt=0, description="Time limit of one query on the endpoint.")
    query_max_memory_bytes: int = Field(
        1 << 30, gt=0, description="Memory one query on the endpoint may use (ClickHouse's max_memory_usage); a user's "
                                   "max_memory_usage_bytes may lower it.")
    query_max_result_bytes: int = Field(
        512 << 20, gt=0, description="Size of one answer of the endpoint (uncompressed); a larger result is refused.")
    query_max_concurrent_per_user: int = Field(
        2, ge=1, description="Queries one endpoint user may run at once (HTTP 429, code 202, beyond); a user's "
                             "max_concurrent_queries may change it.")
    sink_group: str = Field("yrdbus-sink", description="Consumer group of the ClickHouse sink.")
    sink_batch_rows: int = Field(50_000, ge=1, description="The sink inserts a table's batch when it holds this many rows ...")
    sink_batch_age_s: float = Field(1.0, gt=0, description="... or when its oldest row waited this long (seconds).")
    sink_rejoin_s: float = Field(60.0, ge=0, description="A sink out of its consumer group this long (seconds) while "
                                 "the broker answers replaces its consumer (librdkafka can stay without a group "
                                 "coordinator after an outage); 0: never.")

    # --- schemas -----------------------------------------------------------
    schema_registry_port: int = Field(
        8081, ge=0, description="Port of the read-only schema registry (the Confluent API over schemas/ids.json) "
                                "that the sink serves beside its query endpoint, on the query endpoint's address, "
                                "when schema_registry_url is unset; 0: not served.")
    schema_registry_url: Optional[str] = Field(
        None, description="Confluent-compatible schema registry. Unset: ids come from schemas/ids.json.")

    # --- event time (docs/security.md: a station that writes past the contract) ------------------------------
    event_time_floor: datetime = Field(
        datetime(2000, 1, 1, tzinfo=timezone.utc),
        description="Earliest event time the worker and the sink accept (ISO 8601); earlier records are dead-lettered.")
    event_time_future_skew_s: float = Field(
        300.0, gt=0, description="How far ahead of the reading process's clock an event time may be (seconds).")

    # --- station imports (`yrdbus publish`) ----------------------------------
    import_max_line_bytes: int = Field(
        1_048_576, ge=1024, le=64 * 1_048_576,
        description="Longest line (JSONL) or row (CSV) `yrdbus publish` reads, in bytes; a longer one is "
                    "skipped without being held and dead-lettered as a rejection (its first 4 KiB kept).")

    # --- privacy -----------------------------------------------------------
    subject_key: Optional[SecretStr] = Field(None, description="HMAC key for subject tokens. Never logged.")
    subject_key_file: Optional[Path] = Field(None, description="File holding the HMAC key for subject tokens.")
    demo: bool = Field(False, description="Demo mode: a fixed, public subject key is used when none is configured.")

    # --- process metrics ---------------------------------------------------
    metrics_host: str = Field(
        "127.0.0.1", description="Address the stream workers' and the station publishers' /metrics listen on "
                                 "(0.0.0.0: every interface, for a Prometheus on another host).")
    worker_metrics_port: int = Field(9402, description="Prometheus /metrics of the first stream worker (the next ones take the next ports).")
    station_metrics_port: int = Field(9401, description="Prometheus /metrics of a station publisher or the simulator run by `yrdbus run`.")
    kafka_exporter_port: int = Field(9400, description="Prometheus /metrics of the Kafka exporter (consumer lag, topic offsets) of `stack up --with-prometheus`.")
    prometheus_port: int = Field(9090, description="Port of the Prometheus started by `yrdbus stack up --with-prometheus`.")

    # --- alert gateway -----------------------------------------------------
    gateway_host: str = Field("127.0.0.1", description="Address the alert gateway listens on.")
    gateway_port: int = Field(8090, description="Port of the alert gateway (SSE, WebSocket, the wall, /metrics).")
    gateway_tokens_file: Path = Field(
        Path("gateway.toml"), description="The gateway's access file: hashed bearer tokens with scopes, and webhooks.")
    gateway_url: Optional[str] = Field(
        None, description="Where `yrdbus alerts tail` finds the gateway. Unset: http://<gateway_host>:<gateway_port>.")
    gateway_token: Optional[SecretStr] = Field(None, description="Bearer token of `yrdbus alerts tail`. Never logged.")
    gateway_queue_size: int = Field(
        256, ge=1, description="Alerts buffered per subscriber; a subscriber that falls further behind is sent `lagged`.")
    gateway_webhook_attempts: int = Field(5, ge=1, description="POST attempts per alert before it is dead-lettered.")
    gateway_webhook_backoff_s: float = Field(0.5, ge=0, description="First retry delay of a webhook; doubles each attempt.")
    gateway_subscriber_write_timeout_s: float = Field(
        30.0, gt=0, description="A stream subscriber (SSE, WebSocket) whose connection takes no bytes for this long "
        "(an event or keep-alive cannot be written) is disconnected and its buffers released; it resumes from its "
        "cursor. A subscriber that is idle because no alerts come is never closed.")

    @model_validator(mode="after")
    def _store_in_var_dir(self) -> "Settings":
        if not self.clickhouse_url:
            self.clickhouse_url = f"chdb://{self.var_dir / 'clickhouse'}"
        return self

    @property
    def embedded_kafka(self) -> bool:
        return not self.kafka_bootstrap

    @property
    def bootstrap(self) -> str:
        if self.kafka_bootstrap:
            return self.kafka_bootstrap
        return ",".join(f"127.0.0.1:{self.kafka_port + i}" for i in range(self.kafka_brokers))

    @property
    def log_dir(self) -> Path:
        return self.var_dir / "log"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file()
        if path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
