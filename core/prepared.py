"""Lookups on the hottest paths, compiled to SQL once instead of on every call.

Django turns a queryset into SQL each time it is evaluated. For the reads that every /v1
call and every attempt makes (the API key with its project, account and plan; the
request a worker is about to run), that compilation cost more CPU than PostgreSQL spent
answering. A `PreparedGet` builds its queryset once, with placeholder values, and keeps
the compiled SQL; each call runs that SQL with the real values and builds the instances,
`select_related` objects included, the way Django's own `ModelIterable` does.

Only `.get()`-shaped lookups whose parameters are plain values (ids, prefixes) belong
here: the values are sent as given, without the field's own conversion. `insert` does the
same for a new row.
"""

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Generic, NamedTuple, TypeVar

from django.db import connections, router
from django.db.models import Field, Model, QuerySet
from django.db.models.query import get_related_populators

M = TypeVar("M", bound=Model)


class _Compiled(NamedTuple):
    model: type[Model]
    db: str
    sql: str
    params: list
    positions: dict[str, int]  # where each placeholder's value goes in `params`
    model_columns: slice  # the queried model's own columns within a row
    init_list: list[str]
    related_populators: list
    annotations: list[tuple[str, int]]  # each annotation's attribute and column
    # Django's per-row conversions (JSON decoding, timezone handling), found once: looking
    # them up for every row was a tenth of a lookup's CPU.
    converters: list


class PreparedGet(Generic[M]):
    """`PreparedGet(lambda pk: Request.objects.filter(pk=pk), pk=0)` then `.get(pk=42)`
    (or `.all(...)` for every match).

    `build` receives one placeholder per keyword; each placeholder's example value only
    fixes its type (an int for an id, a str for a prefix) and must not equal any other
    parameter of the query.
    """

    def __init__(self, build: Callable[..., QuerySet], **examples: object) -> None:
        self.build = build
        self.examples = examples
        # Compiled once per process and shared by its threads: nothing kept here holds a
        # connection (each call runs on its own thread's). Compiling per thread cost each
        # new worker thread its own copy, so memory grew with the thread pool.
        self.compiled: _Compiled | None = None
        self.lock = threading.Lock()

    def _compiled(self) -> _Compiled:
        if self.compiled is None:
            with self.lock:
                if self.compiled is None:
                    self.compiled = self._compile()
        return self.compiled

    def _compile(self) -> _Compiled:
        placeholders = {
            name: (-7_310_000 - index if isinstance(value, int) else f"\x00{name}-{index}")
            for index, (name, value) in enumerate(self.examples.items())
        }
        queryset = self.build(**placeholders)
        compiler = queryset.query.get_compiler(using=queryset.db)
        sql, params = compiler.as_sql()
        positions = {}
        for name, placeholder in placeholders.items():
            found = [index for index, param in enumerate(params) if param == placeholder]
            if len(found) != 1:
                raise ValueError(f"placeholder {name!r} appears {len(found)} times in the query")
            positions[name] = found[0]
        fields = [column[0] for column in compiler.select[: compiler.col_count]]
        if compiler.has_composite_fields(fields):
            raise ValueError("composite fields are not supported by PreparedGet")
        model_fields = compiler.klass_info["select_fields"]
        model_columns = slice(model_fields[0], model_fields[-1] + 1)
        return _Compiled(
            model=queryset.model,
            db=queryset.db,
            sql=sql,
            params=list(params),
            positions=positions,
            model_columns=model_columns,
            init_list=[column[0].target.attname for column in compiler.select[model_columns]],
            related_populators=get_related_populators(
                compiler.klass_info, compiler.select, queryset.db
            ),
            annotations=list(compiler.annotation_col_map.items()),
            converters=list(compiler.get_converters(fields).items()),
        )

    def get(self, **values: object) -> M:
        """The one matching instance; `DoesNotExist` / `MultipleObjectsReturned` as `.get()`."""
        model = self._compiled().model
        rows = self._fetch(values, limit=2)
        if not rows:
            raise model.DoesNotExist(f"{model._meta.object_name} matching query does not exist.")
        if len(rows) > 1:
            raise model.MultipleObjectsReturned(
                f"get() returned more than one {model._meta.object_name}."
            )
        return rows[0]

    def all(self, **values: object) -> list[M]:
        """Every matching instance, in the queryset's order (for small, bounded results)."""
        return self._fetch(values)

    def _fetch(self, values: dict, limit: int | None = None) -> list[M]:
        sql, params = self.statement(values)
        connection = connections[self._compiled().db]
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall() if limit is None else cursor.fetchmany(limit)
        return self.instances(rows)

    def statement(self, values: Mapping[str, object]) -> tuple[str, list]:
        """The compiled SQL and its parameters for these placeholder values."""
        compiled = self._compiled()
        params = compiled.params.copy()
        for name, position in compiled.positions.items():
            params[position] = values[name]
        return compiled.sql, params

    def instances(self, rows: Sequence[tuple]) -> list[M]:
        """The model instances for rows of this lookup's SQL."""
        if not rows:
            return []
        compiled = self._compiled()
        model, db = compiled.model, compiled.db
        connection = connections[db]
        instances = []
        for raw in rows:
            row = list(raw)
            for position, (functions, expression) in compiled.converters:
                value = row[position]
                for convert in functions:
                    value = convert(value, expression, connection)
                row[position] = value
            instance = model.from_db(db, compiled.init_list, row[compiled.model_columns])
            for populator in compiled.related_populators:
                populator.populate(row, instance)
            for name, position in compiled.annotations:
                setattr(instance, name, row[position])
            instances.append(instance)
        return instances


def together(*lookups: tuple[PreparedGet, Mapping[str, object]]) -> list[list]:
    """Several prepared lookups in one round trip: each one's instances, in order.

    The statements go out together in psycopg's pipeline mode and their results come back
    together, so N independent reads cost one wait for the database instead of N. For
    reads whose parameters are all known beforehand (a worker's request and its
    upstreams, by the request's id).
    """
    connection = connections[lookups[0][0]._compiled().db]
    with connection.cursor() as first:
        cursors = [first] + [connection.cursor() for _ in lookups[1:]]
        try:
            with connection.connection.pipeline():
                for cursor, (lookup, values) in zip(cursors, lookups, strict=True):
                    cursor.execute(*lookup.statement(values))
            rows = [cursor.fetchall() for cursor in cursors]
        finally:
            for cursor in cursors[1:]:
                cursor.close()
    return [lookup.instances(found) for (lookup, _), found in zip(lookups, rows, strict=True)]


_INSERT_SQL: dict[tuple, tuple[str, list[Field]]] = {}


def insert(
    instance: Model,
    *,
    prefix: str = "",
    prefix_params: Sequence[object] = (),
    computed: Mapping[str, str] | None = None,
) -> None:
    """Save a new row with one `INSERT … RETURNING` of its primary key.

    What `Model.objects.create()` does for models without save signals or overridden
    `save()`, minus the per-call SQL compilation: `pre_save` still fills `auto_now_add`
    fields and each value is prepared by its field.

    `prefix` is a `WITH …` clause run in the same statement (its values in
    `prefix_params`) and `computed` maps columns to SQL that stands in for the instance's
    value (a subquery on that clause): other writes that must succeed or fail with the
    insert, in the insert's own round trip. The instance's value of a computed column is
    not sent.
    """
    model = type(instance)
    connection = connections[router.db_for_write(model)]
    computed = computed or {}
    key = (model, prefix, tuple(sorted(computed.items())))
    if key not in _INSERT_SQL:
        quote = connection.ops.quote_name
        columns = [field for field in model._meta.concrete_fields if not field.primary_key]
        _INSERT_SQL[key] = (
            f"{prefix} INSERT INTO {quote(model._meta.db_table)} "  # noqa: S608 - names from _meta
            f"({', '.join(quote(field.column) for field in columns)}) "
            f"VALUES ({', '.join(computed.get(field.column, '%s') for field in columns)}) "
            f"RETURNING {quote(model._meta.pk.column)}",
            [field for field in columns if field.column not in computed],
        )
    sql, fields = _INSERT_SQL[key]
    values = [
        field.get_db_prep_save(field.pre_save(instance, True), connection) for field in fields
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, [*prefix_params, *values])
        instance.pk = cursor.fetchone()[0]
    instance._state.adding = False
    instance._state.db = connection.alias
