"""Confluent Schema Registry semantics over :class:`~k2_etl.registry.store.Store`.

Mirrors the behaviour confluent-kafka's clients rely on: ids shared by equal
schemas across subjects, versions never reused, soft delete before permanent
delete, per-subject and global compatibility, and Confluent's error codes
(see :class:`RegistryError`). Only Avro schemas without references are
accepted; the real registry in the production stack has the rest.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

import avro.errors
import avro.schema
import fastavro
from fastavro.schema import SchemaParseException
from sqlalchemy.exc import IntegrityError, OperationalError
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from k2_etl.errors import K2Error
from k2_etl.registry.store import GLOBAL, Store, SubjectVersion
from k2_etl.schemas.compatibility import MODES, incompatibilities, versions_to_check

DEFAULT_COMPATIBILITY = "BACKWARD"
MAX_VERSION = 2**31 - 1


class RegistryError(K2Error):
    """An error the REST API reports as ``{"error_code": code, "message": ...}`` with HTTP ``status``."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def subject_not_found(subject: str) -> RegistryError:
    return RegistryError(404, 40401, f"Subject '{subject}' not found.")


def version_not_found(subject: str, version: int | str) -> RegistryError:
    return RegistryError(404, 40402, f"Version {version} not found for subject '{subject}'.")


def schema_not_found(detail: str = "Schema not found") -> RegistryError:
    return RegistryError(404, 40403, detail)


def parse_version(raw: str) -> int | None:
    """A version path segment: a number, or ``latest``/``-1`` (returned as None)."""
    if raw in ("latest", "-1"):
        return None
    if re.fullmatch(r"[0-9]{1,10}", raw) and 1 <= int(raw) <= MAX_VERSION:
        return int(raw)
    raise RegistryError(
        422,
        42202,
        f"The specified version '{raw}' is not a valid version id. "
        'Allowed values are between [1, 2^31-1] and the string "latest"',
    )


@lru_cache(maxsize=1024)
def _parse(text: str) -> tuple[str, avro.schema.Schema]:
    """Canonical text and parsed form of an Avro schema (parsing dominates request time: cached)."""
    parsed = avro.schema.parse(text)
    # The avro package does not check defaults; fastavro does (as Confluent's parser does).
    fastavro.parse_schema(json.loads(text), _write_hint=False)
    # avro's JSON form is the Python counterpart of the Java Schema.toString()
    # Confluent stores: whitespace and key order no longer matter.
    return json.dumps(parsed.to_json(), separators=(",", ":")), parsed


def parse_schema(body: Any) -> tuple[str, avro.schema.Schema]:
    """Validate a request body's schema; return its canonical text and parsed form."""
    if not isinstance(body, dict) or not isinstance(body.get("schema"), str):
        raise RegistryError(422, 42201, 'Invalid schema: the request body must be a JSON object with a "schema" string')
    schema_type = body.get("schemaType") or "AVRO"
    if schema_type != "AVRO":
        raise RegistryError(422, 42201, f"Invalid schema: schemaType {schema_type!r} is not supported (AVRO only)")
    if body.get("references"):
        raise RegistryError(422, 42201, "Invalid schema: schema references are not supported by the K2 local registry")
    try:
        return _parse(body["schema"])
    except (avro.errors.AvroException, SchemaParseException, json.JSONDecodeError, TypeError, ValueError) as exc:
        raise RegistryError(422, 42201, f"Invalid schema: {exc}") from None


def _parsed(versions: list[SubjectVersion], mode: str) -> list[avro.schema.Schema]:
    """Parsed schemas of the versions ``mode`` checks against (only those: parsing is the cost)."""
    return [_parse(v.schema)[1] for v in versions_to_check(mode, versions)]


_retry_write = retry(
    retry=retry_if_exception_type((IntegrityError, OperationalError)),
    stop=stop_after_attempt(8),
    wait=wait_random_exponential(multiplier=0.01, max=0.5),
    reraise=True,
)


class RegistryService:
    """One method per REST operation; returns JSON-able values or raises :class:`RegistryError`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # --- helpers ----------------------------------------------------------------
    def _live_versions(self, conn: Any, subject: str) -> list[SubjectVersion]:
        return self.store.versions(conn, subject, include_deleted=False)

    def _find_version(self, conn: Any, subject: str, raw_version: str, *, include_deleted: bool) -> SubjectVersion:
        """A version by number, or ``latest`` (the newest live version, as Confluent resolves it)."""
        wanted = parse_version(raw_version)
        every = self.store.versions(conn, subject, include_deleted=True)
        live = [v for v in every if not v.deleted]
        if not every or (not include_deleted and not live):
            raise subject_not_found(subject)
        if wanted is None:
            return (live or every)[-1]
        for candidate in every if include_deleted else live:
            if candidate.version == wanted:
                return candidate
        raise version_not_found(subject, wanted)

    def _forget_config_if_no_live_versions(self, conn: Any, subject: str) -> None:
        # Confluent drops a subject's config with its last live version, so a
        # re-registered subject starts from the global level.
        if not self._live_versions(conn, subject):
            self.store.delete_config(conn, subject)

    def compatibility_level(self, conn: Any, subject: str) -> str:
        return self.store.get_config(conn, subject) or self.store.get_config(conn, GLOBAL) or DEFAULT_COMPATIBILITY

    @staticmethod
    def _version_json(v: SubjectVersion) -> dict[str, Any]:
        out: dict[str, Any] = {"subject": v.subject, "version": v.version, "id": v.schema_id, "schema": v.schema}
        if v.schema_type != "AVRO":
            out["schemaType"] = v.schema_type
        return out

    # --- schemas -----------------------------------------------------------------
    @_retry_write
    def register(self, subject: str, body: Any) -> dict[str, Any]:
        canonical, parsed = parse_schema(body)
        with self.store.read() as conn:  # the common case, re-registering, needs no write lock
            for existing in self._live_versions(conn, subject):
                if existing.schema == canonical:
                    return {"id": existing.schema_id, "version": existing.version}
        with self.store.write() as conn:
            live = self._live_versions(conn, subject)
            for existing in live:
                if existing.schema == canonical:
                    return {"id": existing.schema_id, "version": existing.version}
            level = self.compatibility_level(conn, subject)
            problems = incompatibilities(level, parsed, _parsed(live, level))
            if problems:
                raise RegistryError(
                    409,
                    409,
                    f"Schema being registered is incompatible with an earlier schema for subject '{subject}', "
                    f"details: {problems}",
                )
            schema_id = self.store.schema_id_for(conn, "AVRO", canonical)
            if schema_id is None:
                schema_id = self.store.insert_schema(conn, "AVRO", canonical)
            version = self.store.next_version(conn, subject)
            self.store.insert_version(conn, subject, version, schema_id)
            return {"id": schema_id, "version": version}

    def lookup(self, subject: str, body: Any, *, deleted: bool) -> dict[str, Any]:
        canonical, _ = parse_schema(body)
        with self.store.read() as conn:
            versions = self.store.versions(conn, subject, include_deleted=deleted)
            if not versions:
                raise subject_not_found(subject)
            for v in reversed(versions):
                if v.schema == canonical:
                    return self._version_json(v)
        raise schema_not_found()

    def schema_by_id(self, schema_id: int) -> dict[str, Any]:
        with self.store.read() as conn:
            found = self.store.schema_by_id(conn, schema_id)
        if found is None:
            raise schema_not_found(f"Schema {schema_id} not found")
        schema_type, text = found
        out: dict[str, Any] = {"schema": text}
        if schema_type != "AVRO":
            out["schemaType"] = schema_type
        return out

    def subjects_of_schema(self, schema_id: int, *, deleted: bool) -> list[str]:
        return sorted({s for s, _ in self.versions_of_schema_pairs(schema_id, deleted=deleted)})

    def versions_of_schema(self, schema_id: int, *, deleted: bool) -> list[dict[str, Any]]:
        return [{"subject": s, "version": v} for s, v in self.versions_of_schema_pairs(schema_id, deleted=deleted)]

    def versions_of_schema_pairs(self, schema_id: int, *, deleted: bool) -> list[tuple[str, int]]:
        self.schema_by_id(schema_id)  # 40403 when unknown
        with self.store.read() as conn:
            return self.store.versions_of_schema(conn, schema_id, include_deleted=deleted)

    # --- subjects ----------------------------------------------------------------
    def subjects(self, *, deleted: bool, deleted_only: bool, prefix: str) -> list[str]:
        with self.store.read() as conn:
            every = self.store.versions(conn, include_deleted=True)
        live = {v.subject for v in every if not v.deleted}
        if deleted_only:
            names = {v.subject for v in every} - live
        elif deleted:
            names = {v.subject for v in every}
        else:
            names = live
        return sorted(n for n in names if n.startswith(prefix))

    def list_versions(self, subject: str, *, deleted: bool) -> list[int]:
        with self.store.read() as conn:
            versions = self.store.versions(conn, subject, include_deleted=deleted)
        if not versions:
            raise subject_not_found(subject)
        return [v.version for v in versions]

    def get_version(self, subject: str, raw_version: str, *, deleted: bool) -> dict[str, Any]:
        with self.store.read() as conn:
            return self._version_json(self._find_version(conn, subject, raw_version, include_deleted=deleted))

    @_retry_write
    def delete_subject(self, subject: str, *, permanent: bool) -> list[int]:
        with self.store.write() as conn:
            every = self.store.versions(conn, subject, include_deleted=True)
            if not every:
                raise subject_not_found(subject)
            live = [v.version for v in every if not v.deleted]
            if permanent:
                if live:
                    raise RegistryError(
                        404, 40405, f"Subject '{subject}' was not deleted first before being permanently deleted"
                    )
                versions = [v.version for v in every]
                self.store.hard_delete(conn, subject, versions)
                self.store.delete_config(conn, subject)
                return versions
            if not live:
                raise RegistryError(
                    404, 40404, f"Subject '{subject}' was soft deleted. Set permanent=true to delete permanently"
                )
            self.store.soft_delete(conn, subject, live)
            self.store.delete_config(conn, subject)
            return live

    @_retry_write
    def delete_version(self, subject: str, raw_version: str, *, permanent: bool) -> int:
        with self.store.write() as conn:
            target = self._find_version(conn, subject, raw_version, include_deleted=True)
            if permanent:
                if not target.deleted:
                    raise RegistryError(
                        404,
                        40407,
                        f"Subject '{subject}' Version {target.version} was not deleted first "
                        "before being permanently deleted",
                    )
                self.store.hard_delete(conn, subject, [target.version])
            elif target.deleted:
                raise RegistryError(
                    404,
                    40406,
                    f"Subject '{subject}' Version {target.version} was soft deleted. "
                    "Set permanent=true to delete permanently",
                )
            else:
                self.store.soft_delete(conn, subject, [target.version])
                self._forget_config_if_no_live_versions(conn, subject)
            return target.version

    # --- compatibility --------------------------------------------------------------
    def check_compatibility(self, subject: str, raw_version: str | None, body: Any, *, verbose: bool) -> dict[str, Any]:
        """Would ``body`` be accepted? Against one version, or (``raw_version`` None) all live versions."""
        _, parsed = parse_schema(body)
        with self.store.read() as conn:
            level = self.compatibility_level(conn, subject)
            if raw_version is None:
                existing = self._live_versions(conn, subject)
            else:
                existing = [self._find_version(conn, subject, raw_version, include_deleted=False)]
        problems = incompatibilities(level, parsed, _parsed(existing, level))
        out: dict[str, Any] = {"is_compatible": not problems}
        if verbose:
            out["messages"] = problems
        return out

    def get_config(self, subject: str | None, *, default_to_global: bool) -> dict[str, str]:
        with self.store.read() as conn:
            if subject is None:
                return {"compatibilityLevel": self.compatibility_level(conn, GLOBAL)}
            level = self.store.get_config(conn, subject)
            if level is None:
                if not default_to_global:
                    raise RegistryError(
                        404, 40408, f"Subject '{subject}' does not have subject-level compatibility configured"
                    )
                level = self.compatibility_level(conn, GLOBAL)
        return {"compatibilityLevel": level}

    @_retry_write
    def set_config(self, subject: str | None, body: Any) -> dict[str, str]:
        level = body.get("compatibility") if isinstance(body, dict) else None
        if not isinstance(level, str) or level.upper() not in MODES:
            raise RegistryError(
                422,
                42203,
                "Invalid compatibility level. Valid values are none, backward, forward, full, "
                "backward_transitive, forward_transitive, and full_transitive",
            )
        with self.store.write() as conn:
            self.store.set_config(conn, subject or GLOBAL, level.upper())
        return {"compatibility": level.upper()}

    @_retry_write
    def delete_config(self, subject: str | None) -> dict[str, str]:
        with self.store.write() as conn:
            key = subject or GLOBAL
            old = self.store.get_config(conn, key)
            if old is None:
                if subject is not None:
                    raise RegistryError(
                        404, 40408, f"Subject '{subject}' does not have subject-level compatibility configured"
                    )
                old = DEFAULT_COMPATIBILITY
            self.store.delete_config(conn, key)
        return {"compatibilityLevel": old}
