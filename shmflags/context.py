"""Evaluation contexts with ldclient 9's public API, their JSON forms, and ``coerce()``.

Safe in any process: pure data, no I/O, nothing shared across fork. A :class:`Context` is
validated once when it is built and is immutable afterwards; the evaluator reads it through
:meth:`Context._eval_map`, which is built lazily once per context and cached on it.

Behaviour follows ``ldclient.Context`` (validation rules, error strings, ``to_dict`` layout,
fully-qualified key). The deliberate differences are listed in ``docs/compatibility.md``.
"""
from __future__ import annotations

import json
import re
from types import MappingProxyType
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

__all__ = ["Context", "ContextBuilder", "ContextMultiBuilder", "coerce"]

# Anything outside letters, digits, '.', '_' and '-' makes a kind invalid.
_KIND_BAD_CHAR = re.compile(r"[^-a-zA-Z0-9._]")

# Optional string attributes of the pre-context ("old user") JSON format; each becomes an
# ordinary attribute of the resulting user context.
_OLD_USER_STRING_ATTRS = ("firstName", "lastName", "email", "country", "avatar", "ip")
# Names a "custom" entry of the old user format may not use: they are built-ins or metadata.
_OLD_USER_RESERVED = frozenset(("kind", "key", "name", "anonymous", "_meta", ""))

_ERR_NONE = "Cannot use None as a context"
_ERR_EMPTY_KEY = "context key must not be None or empty"
_ERR_NO_KINDS = "multi-context must contain at least one kind"
_ERR_DUP_KIND = "multi-kind context cannot have same kind more than once"

def _type_error(prop: Any) -> str:
    return 'invalid data type for "%s"' % (prop,)


def _kind_error(kind: Any) -> Optional[str]:
    """Return why ``kind`` is not a valid single-context kind, or None when it is."""
    if kind == "user":
        return None
    if not isinstance(kind, str):
        return _type_error("kind")
    if kind == "":
        return "context kind must not be empty"
    if kind == "kind":
        return '"kind" is not a valid context kind'
    if kind == "multi":
        return 'context of kind "multi" must be created with create_multi or multi_builder'
    if _KIND_BAD_CHAR.search(kind):
        return "context kind contains disallowed characters"
    return None


def _escape_key(key: str) -> str:
    """Escape a key for the fully-qualified key: ``%`` first, then ``:``."""
    if "%" in key:
        key = key.replace("%", "%25")
    if ":" in key:
        key = key.replace(":", "%3A")
    return key


def _literal_ref(name: str) -> str:
    """Turn a literal attribute name into an attribute reference that names exactly it."""
    if not name.startswith("/"):
        return name
    return "/" + name.replace("~", "~0").replace("/", "~1")


_new = object.__new__


class Context:
    """A set of attributes, of one kind or several, that flags are evaluated against.

    Same public API and behaviour as ``ldclient.Context``. Build instances with
    :meth:`create`, :meth:`create_multi`, :meth:`builder`, :meth:`multi_builder` or
    :meth:`from_dict`; an invalid combination gives an invalid context (see :attr:`valid`
    and :attr:`error`) instead of an exception. Instances are immutable, safe to share
    between threads and valid in a forked child.
    """

    __slots__ = (
        "_kind", "_key", "_name", "_anon", "_attrs", "_private", "_multi", "_error",
        "_fqk", "_emap", "_secondary", "_ev",
    )

    DEFAULT_KIND = "user"
    """The default context kind, ``"user"``."""
    MULTI_KIND = "multi"
    """The kind of every multi-context."""

    _kind: str
    _key: str
    _name: Optional[str]
    _anon: bool
    _attrs: Optional[Dict[str, Any]]
    _private: Optional[Tuple[str, ...]]
    _multi: Optional[Tuple["Context", ...]]
    _error: Optional[str]
    _fqk: Optional[str]
    _emap: Optional[Dict[str, Dict[str, Any]]]
    # (to_dict(), kinds tuple) cached by the event recorder at its first sighting, so that
    # later windows (and native/events.c) sight the context without Python code; never
    # handed out: the recorder only reads the dict.
    _ev: Optional[Tuple[Dict[str, Any], Tuple[str, ...]]]
    _secondary: Optional[str]

    def __init__(
        self,
        kind: Optional[str],
        key: str,
        name: Optional[str] = None,
        anonymous: bool = False,
        attributes: Optional[dict] = None,
        private_attributes: Optional[List[str]] = None,
        multi_contexts: Optional[List["Context"]] = None,
        allow_empty_key: bool = False,
        error: Optional[str] = None,
    ) -> None:
        """Set every property; prefer the factory methods and builders.

        Kept for signature compatibility with ``ldclient.Context``. The ``attributes`` dict
        and ``private_attributes`` list are copied.
        """
        if error is not None:
            built = _invalid(error)
        elif multi_contexts is not None:
            built = _make_multi(list(multi_contexts))
        else:
            built = _make_single(
                kind, key, name, anonymous,
                None if attributes is None else dict(attributes),
                None if private_attributes is None else tuple(private_attributes),
                allow_empty_key,
            )
        for slot in Context.__slots__:
            setattr(self, slot, getattr(built, slot))

    # -- factories ---------------------------------------------------------------------

    @classmethod
    def create(cls, key: str, kind: Optional[str] = None) -> "Context":
        """Create a single-kind context with only a key and a kind.

        :param key: the context key
        :param kind: the context kind; ``None`` means :const:`DEFAULT_KIND` (``"user"``)
        :returns: a context, invalid if the key or kind is not acceptable
        """
        return _make_single(kind, key, None, False, None, None, False)

    @classmethod
    def create_multi(cls, *contexts: "Context") -> "Context":
        """Create a multi-context from single-kind contexts (multi-contexts are flattened).

        :param contexts: the individual contexts; exactly one gives that context back
        :returns: a context, invalid if empty, if a kind repeats or if a member is invalid
        """
        builder = ContextMultiBuilder()
        for c in contexts:
            builder.add(c)
        return builder.build()

    @classmethod
    def builder(cls, key: str) -> "ContextBuilder":
        """Return a :class:`ContextBuilder` for a single-kind context with this key.

        :param key: the context key
        :returns: a new builder (kind ``"user"``, not anonymous, no other attributes)
        """
        return ContextBuilder(key)

    @classmethod
    def builder_from_context(cls, context: "Context") -> "ContextBuilder":
        """Return a :class:`ContextBuilder` holding the properties of a single-kind context.

        :param context: the context to copy from
        :returns: a new builder; changing it does not affect ``context``
        """
        return ContextBuilder(context.key, context)

    @classmethod
    def multi_builder(cls) -> "ContextMultiBuilder":
        """Return a :class:`ContextMultiBuilder` for building a multi-context.

        :returns: a new, empty builder
        """
        return ContextMultiBuilder()

    @classmethod
    def from_dict(cls, props: Any) -> "Context":
        """Create a context from its JSON representation (a dict).

        Accepts the single-kind and multi-kind formats, and also (unlike ldclient) the old
        user format, a dict without ``"kind"``; see ``docs/compatibility.md``.

        :param props: the decoded JSON object
        :returns: a context, invalid if the data does not describe a valid context
        """
        build = _C_FROM_DICT
        if build is None:
            build = _resolve_c_from_dict()
        if build:
            # the C evaluator's builder answers the common single-kind case (as _from_dict
            # would build it); everything else, errors included, is _SLOW
            built = build(props)
            if built is not _C_SLOW:
                return built
        return _from_dict(props, False)

    # -- properties --------------------------------------------------------------------

    @property
    def valid(self) -> bool:
        """True unless the context was built from invalid input (then see :attr:`error`)."""
        return self._error is None

    @property
    def error(self) -> Optional[str]:
        """None for a valid context, otherwise a description of what is wrong."""
        return self._error

    @property
    def multiple(self) -> bool:
        """True for a multi-context."""
        return self._multi is not None

    @property
    def kind(self) -> str:
        """The kind; :const:`MULTI_KIND` for a multi-context, ``""`` when invalid."""
        return self._kind

    @property
    def key(self) -> str:
        """The key; ``""`` for a multi-context or an invalid context."""
        return self._key

    @property
    def name(self) -> Optional[str]:
        """The ``name`` attribute, or None if unset (always None for a multi-context)."""
        return self._name

    @property
    def anonymous(self) -> bool:
        """The ``anonymous`` attribute (False unless set; False for a multi-context)."""
        return self._anon

    @property
    def individual_context_count(self) -> int:
        """Number of kinds: 1 for a single context, 0 for an invalid one."""
        if self._error is not None:
            return 0
        if self._multi is None:
            return 1
        return len(self._multi)

    @property
    def custom_attributes(self) -> Iterable[str]:
        """Names of the non-built-in attributes (a read-only mapping of name to value)."""
        attrs = self._attrs
        return () if attrs is None else MappingProxyType(attrs)

    @property
    def _attributes(self) -> Optional[Dict[str, Any]]:
        """The custom attribute dict itself, or None; callers must not mutate it."""
        return self._attrs

    @property
    def private_attributes(self) -> Iterable[str]:
        """The attribute references marked private on this context (a new list)."""
        private = self._private
        return () if private is None else list(private)

    @property
    def _private_attributes(self) -> Optional[Tuple[str, ...]]:
        """The private attribute references as a tuple, or None."""
        return self._private

    @property
    def fully_qualified_key(self) -> str:
        """The key that identifies this context across kinds (``org:acme``, ``user-key``).

        A single ``user`` context gives its key; another kind gives ``kind:key``; a
        multi-context joins its members, ordered by kind, with ``:``. In keys, ``%`` becomes
        ``%25`` and ``:`` becomes ``%3A``. Computed once and cached.
        """
        fqk = self._fqk
        if fqk is None:
            fqk = self._fqk = _fully_qualified_key(self)
        return fqk

    # -- lookups -----------------------------------------------------------------------

    def get(self, attribute: str) -> Any:
        """Return the value of a top-level attribute by name, or None if absent.

        Works for the built-ins ``kind``, ``key``, ``name`` and ``anonymous`` as well as custom
        attributes; a multi-context only answers the built-ins.

        :param attribute: the attribute name (not a reference path)
        """
        if attribute == "key":
            return self._key
        if attribute == "kind":
            return self._kind
        if attribute == "name":
            return self._name
        if attribute == "anonymous":
            return self._anon
        attrs = self._attrs
        if attrs is None:
            return None
        return attrs.get(attribute)

    def __getitem__(self, attribute: Any) -> Any:
        return self.get(attribute) if isinstance(attribute, str) else None

    def get_individual_context(self, kind: Union[int, str]) -> Optional["Context"]:
        """Return the single-kind context for a kind name or a zero-based index.

        :param kind: a kind name, or an index below :attr:`individual_context_count`
        :returns: the context (``self`` for a single context), or None
        """
        if self._error is not None:
            return None
        multi = self._multi
        if isinstance(kind, str):
            if multi is None:
                return self if kind == self._kind else None
            for c in multi:
                if c._kind == kind:
                    return c
            return None
        if multi is None:
            return self if kind == 0 else None
        if kind < 0 or kind >= len(multi):
            return None
        return multi[kind]

    def without_anonymous_contexts(self) -> "Context":
        """Return this context minus its anonymous kinds.

        A single anonymous context, or a multi-context whose kinds are all anonymous, gives
        an invalid context.
        """
        members = self._multi if self._multi is not None else (self,)
        return Context.create_multi(*[c for c in members if not c._anon])

    def _eval_map(self) -> Dict[str, Dict[str, Any]]:
        """Return kind → attributes for the evaluator; built once, then cached.

        Each inner dict holds the custom attributes plus ``"kind"``, ``"key"``,
        ``"anonymous"`` and, when set, ``"name"``; never ``_meta``. An invalid context gives
        an empty dict. Callers must not mutate the result.
        """
        emap = self._emap
        if emap is not None:
            return emap
        multi = self._multi
        if self._error is not None:
            emap = {}
        elif multi is None:
            attrs = self._attrs
            single = {} if attrs is None else dict(attrs)
            single["kind"] = self._kind
            single["key"] = self._key
            single["anonymous"] = self._anon
            if self._name is not None:
                single["name"] = self._name
            else:
                single.pop("name", None)
            emap = {self._kind: single}
        else:
            emap = {}
            for c in multi:
                emap.update(c._eval_map())
        self._emap = emap
        return emap

    # -- serialisation -----------------------------------------------------------------

    def to_dict(self) -> Dict[str, Any]:
        """Return the standard JSON representation as a new dict (``{}`` when invalid)."""
        if self._error is not None:
            return {}
        multi = self._multi
        if multi is not None:
            out: Dict[str, Any] = {"kind": "multi"}
            for c in multi:
                out[c._kind] = c._to_dict_single(False)
            return out
        return self._to_dict_single(True)

    def _to_dict_single(self, with_kind: bool) -> Dict[str, Any]:
        out: Dict[str, Any] = {"key": self._key}
        if with_kind:
            out["kind"] = self._kind
        if self._name is not None:
            out["name"] = self._name
        if self._anon:
            out["anonymous"] = True
        if self._attrs is not None:
            out.update(self._attrs)
        if self._private is not None:
            out["_meta"] = {"privateAttributes": list(self._private)}
        return out

    def to_json_string(self) -> str:
        """Return :meth:`to_dict` as compact JSON text."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    def __repr__(self) -> str:
        if self._error is not None:
            return "[invalid context: %s]" % self._error
        return self.to_json_string()

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, Context):
            return False
        if (
            self._kind != other._kind
            or self._key != other._key
            or self._name != other._name
            or self._anon != other._anon
            or self._attrs != other._attrs
            or self._private != other._private
            or self._error != other._error
        ):
            return False
        if self._multi is None:
            return other._multi is None
        return self._multi == other._multi

    def __ne__(self, other: Any) -> bool:
        return not self.__eq__(other)

    __hash__ = None  # type: ignore[assignment]  # equal contexts may differ in mutable values

    def __reduce__(self) -> Tuple[Any, Tuple[Any, ...]]:
        # Explicit so every pickle protocol works with __slots__; caches are not pickled.
        return (_unpickle, tuple(getattr(self, s) for s in _STATE_SLOTS))


_STATE_SLOTS = ("_kind", "_key", "_name", "_anon", "_attrs", "_private", "_multi", "_error",
                "_secondary")


def _unpickle(*state: Any) -> Context:
    c = _new(Context)
    for slot, value in zip(_STATE_SLOTS, state):
        setattr(c, slot, value)
    c._fqk = None
    c._emap = None
    c._ev = None
    return c


def _invalid(error: str) -> Context:
    c = _new(Context)
    c._kind = ""
    c._key = ""
    c._name = None
    c._anon = False
    c._attrs = None
    c._private = None
    c._multi = None
    c._error = error
    c._fqk = ""
    c._emap = None
    c._ev = None
    c._secondary = None
    return c


def _make_single(
    kind: Any,
    key: Any,
    name: Any,
    anonymous: Any,
    attrs: Optional[Dict[str, Any]],
    private: Optional[Tuple[str, ...]],
    allow_empty_key: bool,
) -> Context:
    """Validate and build a single-kind context; ``attrs`` and ``private`` are taken as is."""
    if kind is None:
        kind = "user"
    else:
        err = _kind_error(kind)
        if err is not None:
            return _invalid(err)
    if key.__class__ is not str:
        if key is None:
            return _invalid(_ERR_EMPTY_KEY)
        if not isinstance(key, str):
            return _invalid(_type_error("key"))
    if key == "" and not allow_empty_key:
        return _invalid(_ERR_EMPTY_KEY)
    c = _new(Context)
    c._kind = kind
    c._key = key
    c._name = name
    c._anon = anonymous
    c._attrs = attrs
    c._private = private
    c._multi = None
    c._error = None
    c._fqk = None
    c._emap = None
    c._ev = None
    c._secondary = None
    return c


def _make_multi(members: List[Any]) -> Context:
    """Validate and build a multi-context from single contexts (not flattened here)."""
    if not members:
        return _invalid(_ERR_NO_KINDS)
    for i, m in enumerate(members):
        if not isinstance(m, Context):
            members[i] = _invalid("cannot use %s as a context" % type(m).__name__)
    # Invalid members have kind "" so a stable sort puts them first, in insertion order.
    ordered = sorted(members, key=lambda c: c._kind)
    errors: List[str] = []
    last: Optional[str] = None
    for m in ordered:
        if m._error is not None:
            errors.append(m._error)
            continue
        if m._kind == last:
            return _invalid(_ERR_DUP_KIND)
        last = m._kind
    if errors:
        return _invalid(", ".join(errors))
    c = _new(Context)
    c._kind = "multi"
    c._key = ""
    c._name = None
    c._anon = False
    c._attrs = None
    c._private = None
    c._multi = tuple(ordered)
    c._error = None
    c._fqk = None
    c._emap = None
    c._ev = None
    c._secondary = None
    return c


def _fully_qualified_key(c: Context) -> str:
    multi = c._multi
    if multi is None:
        if c._error is not None:
            return ""
        if c._kind == "user":
            return c._key
        return c._kind + ":" + _escape_key(c._key)
    return ":".join(m._kind + ":" + _escape_key(m._key) for m in multi)


# -- JSON ------------------------------------------------------------------------------


#: ``_native._ContextBuilder(Context).from_dict`` with the C evaluator, ``False`` without it,
#: ``None`` until the first ``from_dict`` (resolved then: this module imports before the
#: backend is chosen). ``_C_SLOW`` is what it returns for the cases it leaves to Python.
_C_FROM_DICT: Any = None
_C_SLOW: Any = object()


def _resolve_c_from_dict() -> Any:
    global _C_FROM_DICT, _C_SLOW
    build: Any = False
    try:
        from shmflags.backend import evaluator_backend
        if evaluator_backend() == "c":
            from shmflags._native import _SLOW, _ContextBuilder
            build, _C_SLOW = _ContextBuilder(Context).from_dict, _SLOW
    except (ImportError, AttributeError, TypeError):   # no C evaluator, or an older build
        build = False
    _C_FROM_DICT = build
    return build


def _from_dict(props: Any, allow_empty_key: bool) -> Context:
    if props is None:
        return _invalid(_ERR_NONE)
    if not isinstance(props, dict):
        return _invalid("cannot use %s as a context" % type(props).__name__)
    if "kind" not in props:
        return _from_old_user(props)
    kind = props["kind"]
    if not isinstance(kind, str):
        return _invalid(_type_error("kind"))
    if kind != "multi":
        return _from_dict_single(props, kind, allow_empty_key)
    members: List[Context] = []
    for k, v in props.items():
        if k == "kind":
            continue
        if not isinstance(v, dict):
            return _invalid(_type_error(k))
        members.append(_from_dict_single(v, k, allow_empty_key))
    if len(members) == 1:
        return members[0]
    return _make_multi(members)


def _from_dict_single(props: Dict[str, Any], kind: Any, allow_empty_key: bool) -> Context:
    """Parse one single-kind JSON object the way ldclient's builder applies each property."""
    key: Any = ""
    name: Optional[str] = None
    anon = False
    attrs: Optional[Dict[str, Any]] = None
    private: Optional[List[str]] = None
    for k, v in props.items():
        if k == "key":
            if not isinstance(v, str):
                return _invalid(_type_error(k))
            key = v
        elif k == "kind":
            if not isinstance(v, str):
                return _invalid(_type_error(k))
            kind = v
        elif k == "name":
            if v is not None and not isinstance(v, str):
                return _invalid(_type_error(k))
            name = v
        elif k == "anonymous":
            if not isinstance(v, bool):
                return _invalid(_type_error(k))
            anon = v
        elif k == "_meta":
            if v is None:
                continue
            if not isinstance(v, dict):
                return _invalid(_type_error(k))
            refs = v.get("privateAttributes")
            if refs is None:
                continue
            if not isinstance(refs, list):
                return _invalid(_type_error("privateAttributes"))
            for ref in refs:
                if not isinstance(ref, str):
                    return _invalid(_type_error("privateAttributes"))
            if refs:
                if private is None:
                    private = []
                private.extend(refs)
        elif k == "":
            return _invalid(_type_error(k))
        else:
            if attrs is None:
                attrs = {}
            if v is None:
                attrs.pop(k, None)
            else:
                attrs[k] = v
    return _make_single(
        kind, key, name, anon, attrs, None if private is None else tuple(private),
        allow_empty_key,
    )


def _from_old_user(props: Dict[str, Any]) -> Context:
    """Convert the pre-context user JSON format (no ``"kind"``) to a ``user`` context.

    The key is required but may be empty; ``custom`` entries become top-level attributes;
    ``privateAttributeNames`` are literal names; ``secondary`` is kept only as metadata.
    """
    key = props.get("key")
    if key is None:
        return _invalid('old-style user data must have a "key"')
    if not isinstance(key, str):
        return _invalid(_type_error("key"))
    name = props.get("name")
    if name is not None and not isinstance(name, str):
        return _invalid(_type_error("name"))
    anon = props.get("anonymous")
    if anon is None:
        anon = False
    elif not isinstance(anon, bool):
        return _invalid(_type_error("anonymous"))
    secondary = props.get("secondary")
    if secondary is not None and not isinstance(secondary, str):
        return _invalid(_type_error("secondary"))
    attrs: Optional[Dict[str, Any]] = None
    for k in _OLD_USER_STRING_ATTRS:
        v = props.get(k)
        if v is None:
            continue
        if not isinstance(v, str):
            return _invalid(_type_error(k))
        if attrs is None:
            attrs = {}
        attrs[k] = v
    custom = props.get("custom")
    if custom is not None:
        if not isinstance(custom, dict):
            return _invalid(_type_error("custom"))
        for k, v in custom.items():
            if v is None or not isinstance(k, str) or k in _OLD_USER_RESERVED:
                continue
            if attrs is None:
                attrs = {}
            attrs[k] = v
    private: Optional[Tuple[str, ...]] = None
    names = props.get("privateAttributeNames")
    if names is not None:
        if not isinstance(names, list):
            return _invalid(_type_error("privateAttributeNames"))
        for n in names:
            if not isinstance(n, str):
                return _invalid(_type_error("privateAttributeNames"))
        if names:
            private = tuple(_literal_ref(n) for n in names)
    c = _make_single("user", key, name, anon, attrs, private, True)
    c._secondary = secondary
    return c


# -- builders --------------------------------------------------------------------------


class ContextBuilder:
    """Mutable builder for a single-kind :class:`Context` (ldclient's ``ContextBuilder``).

    Setters return the builder so calls chain; :meth:`build` never raises and the built
    context is unaffected by later changes to the builder.

    :param key: the context key
    :param copy_from: a context whose properties to start from
    """

    __slots__ = ("_key", "_kind", "_name", "_anon", "_attrs", "_private",
                 "_cow_attrs", "_cow_private", "_allow_empty")

    def __init__(self, key: str, copy_from: Optional[Context] = None) -> None:
        self._key: Any = key
        self._allow_empty = False
        if copy_from is None:
            self._kind: Any = "user"
            self._name: Any = None
            self._anon: Any = False
            self._attrs: Optional[Dict[str, Any]] = None
            self._private: Optional[List[str]] = None
            self._cow_attrs = False
            self._cow_private = False
        else:
            self._kind = copy_from._kind
            self._name = copy_from._name
            self._anon = copy_from._anon
            self._attrs = copy_from._attrs
            priv = copy_from._private
            self._private = None if priv is None else list(priv)
            self._cow_attrs = self._attrs is not None
            self._cow_private = False

    def build(self) -> Context:
        """Create a :class:`Context` from the current properties (invalid, never raising,
        if they are not acceptable)."""
        self._cow_attrs = self._attrs is not None
        private = self._private
        return _make_single(self._kind, self._key, self._name, self._anon, self._attrs,
                            None if private is None else tuple(private), self._allow_empty)

    def key(self, key: str) -> "ContextBuilder":
        """Set the key (a non-empty string).

        :returns: the builder
        """
        self._key = key
        return self

    def kind(self, kind: str) -> "ContextBuilder":
        """Set the kind: letters, digits, ``.``, ``_``, ``-``; not ``kind`` or ``multi``;
        None means ``user``.

        :returns: the builder
        """
        self._kind = kind
        return self

    def name(self, name: Optional[str]) -> "ContextBuilder":
        """Set the ``name`` attribute (None unsets it).

        :returns: the builder
        """
        self._name = name
        return self

    def anonymous(self, anonymous: bool) -> "ContextBuilder":
        """Set the ``anonymous`` attribute.

        :returns: the builder
        """
        self._anon = anonymous
        return self

    def set(self, attribute: str, value: Any) -> "ContextBuilder":
        """Set any attribute; a value of the wrong type for a built-in is ignored.

        See :meth:`try_set` for the rules.

        :returns: the builder
        """
        self.try_set(attribute, value)
        return self

    def try_set(self, attribute: str, value: Any) -> bool:
        """Set any attribute and say whether it was set.

        ``kind`` and ``key`` take strings, ``name`` a string or None, ``anonymous`` a bool;
        ``""`` and ``_meta`` are refused. For other names None removes the attribute.

        :param attribute: the attribute name
        :param value: a JSON-compatible value
        :returns: False if the name is refused or the value has the wrong type
        """
        if attribute == "key":
            if isinstance(value, str):
                self._key = value
                return True
            return False
        if attribute == "kind":
            if isinstance(value, str):
                self._kind = value
                return True
            return False
        if attribute == "name":
            if value is None or isinstance(value, str):
                self._name = value
                return True
            return False
        if attribute == "anonymous":
            if isinstance(value, bool):
                self._anon = value
                return True
            return False
        if attribute == "" or attribute == "_meta":
            return False
        attrs = self._attrs
        if self._cow_attrs:
            self._cow_attrs = False
            attrs = self._attrs = None if attrs is None else dict(attrs)
        if attrs is None:
            attrs = self._attrs = {}
        if value is None:
            attrs.pop(attribute, None)
        else:
            attrs[attribute] = value
        return True

    def private(self, *attributes: str) -> "ContextBuilder":
        """Mark attributes private: plain names, or ``/``-paths into object values.

        :param attributes: attribute references
        :returns: the builder
        """
        if attributes:
            if self._private is None:
                self._private = []
            self._private.extend(attributes)
        return self

    def _allow_empty_key(self, allow: bool) -> None:
        self._allow_empty = allow


class ContextMultiBuilder:
    """Mutable builder for a multi-context (ldclient's ``ContextMultiBuilder``).

    Errors (no members, a repeated kind, an invalid member) show up in the built context.
    """

    __slots__ = ("_members",)

    def __init__(self) -> None:
        self._members: List[Any] = []

    def add(self, context: Context) -> "ContextMultiBuilder":
        """Add a context; a multi-context adds each of its kinds.

        :returns: the builder
        """
        multi = context._multi if isinstance(context, Context) else None
        if multi is not None:
            self._members.extend(multi)
        else:
            self._members.append(context)
        return self

    def build(self) -> Context:
        """Create the context; with exactly one member, that member is returned."""
        members = self._members
        if len(members) == 1 and isinstance(members[0], Context):
            return members[0]
        return _make_multi(list(members))


# -- coercion --------------------------------------------------------------------------


def coerce(obj: Any) -> Context:
    """Turn whatever an application passed as a context into a :class:`Context`.

    Accepts a :class:`Context` (returned as is), an ``ldclient.Context`` (converted through
    its ``to_dict()``; ldclient is never imported here) or a context JSON dict, including the
    old user format. Anything else gives an invalid context. Never raises.

    :param obj: the application's context object
    :returns: a context, possibly invalid
    """
    if obj.__class__ is Context:
        return obj
    try:
        if isinstance(obj, Context):
            return obj
        if isinstance(obj, dict):
            return Context.from_dict(obj)
        if obj is None:
            return _invalid(_ERR_NONE)
        cls = type(obj)
        if cls.__module__.startswith("ldclient") and hasattr(obj, "to_dict"):
            return _from_ldclient(obj)
        return _invalid(
            "cannot use %s as a context (expected shmflags.Context, ldclient.Context or dict)"
            % cls.__name__
        )
    except Exception as exc:  # a hostile object must not break variation()
        return _invalid("cannot convert context: %s" % (exc,))


def _from_ldclient(obj: Any) -> Context:
    """Convert an ``ldclient.Context``; an invalid one stays invalid with its error."""
    if getattr(obj, "valid", True) is False:
        error = getattr(obj, "error", None)
        return _invalid(error if isinstance(error, str) else "invalid ldclient context")
    # ldclient can hold a valid empty-key context (ContextBuilder._allow_empty_key).
    return _from_dict(obj.to_dict(), True)
