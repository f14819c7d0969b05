"""Type stubs for the C extension ``shmflags._native`` (built from ``native/*.c``).

The backend contract is in docs/internals.md; ``shmflags._pure`` implements the same names.
"""
from typing import Any, Callable, Dict, List, Optional, Tuple

EvalTuple = Tuple[Any, Optional[int], dict, Optional[Tuple[int, int, Any, Optional[int]]], tuple]

__all__ = ["Snapshot"]

RECORD_FORMAT: int
FORMAT_WORD: int
MAX_DEPTH: int

class Snapshot:
    """A validated snapshot evaluated in C; holds a buffer export on ``buffer`` while alive."""

    def __init__(self, buffer: Any, big_segments: Any = ..., base: Any = ..., state: Any = ...,
                 base_state: Any = ...) -> None: ...
    @property
    def generation(self) -> int: ...
    @property
    def flag_count(self) -> int: ...
    @property
    def segment_count(self) -> int: ...
    @property
    def payload_version(self) -> int: ...
    def evaluate(self, key: str, context: Any) -> EvalTuple: ...
    def all_flags_state(self, context: Any, with_reasons: bool = ..., client_side_only: bool = ...,
                        details_only_for_tracked_flags: bool = ..., now_ms: int = ...) -> dict: ...
    def all_flags_lazy(self, context: Any, with_reasons: bool = ..., client_side_only: bool = ...,
                       details_only_for_tracked_flags: bool = ...,
                       now_ms: int = ...) -> "_FlagsState": ...
    def flag_keys(self) -> List[str]: ...
    def segment_keys(self) -> List[str]: ...
    def raw_flag(self, key: str) -> Optional[dict]: ...
    def raw_segment(self, key: str) -> Optional[dict]: ...

def fence() -> None: ...
def _bucket(prefix: str, value: str) -> float: ...
def _sha1_setup(allow_sha_extensions: bool) -> bool: ...
def _semver_compare(a: str, b: str) -> Optional[int]: ...
def _xxh64(data: bytes) -> int: ...
def _strerror(code: int) -> str: ...


# -- private: the worker client's hot path (native/fast.c) and event counting (native/events.c)

_SLOW: object

class _FlagsState:
    """``Snapshot.all_flags_lazy``'s result: every flag evaluated, its dicts not built yet."""
    def build(self) -> Tuple[Dict[str, Any], Dict[str, Any]]: ...
    def values(self) -> Dict[str, Any]: ...
    def __len__(self) -> int: ...


class _Watch:
    """``ShmSource.current()`` in C: one acquire load of the control block's generation."""

    words: Any
    snapshot: Any
    slow: Any
    generation: int
    bad_generation: int
    countdown: int
    @property
    def offset(self) -> int: ...
    def __init__(self, slow: Any = ..., offset: int = ...) -> None: ...
    def __call__(self) -> Any: ...
    def load(self) -> Optional[int]: ...

class _Fast:
    """``variation``/``variation_detail`` for the common case; ``_SLOW`` for anything else."""

    recorder: Optional[_RecorderCore]
    #: what ``variation`` / ``variation_detail`` call for everything ``value`` / ``detail``
    #: do not answer (``_SLOW``, keywords, another number of arguments)
    fallback_value: Optional[Callable[..., Any]]
    fallback_detail: Optional[Callable[..., Any]]
    def __init__(self, current: Any, context_type: type, detail_type: type) -> None: ...
    def value(self, key: str, context: Any, default: Any, kind: int = ...) -> Any: ...
    def detail(self, key: str, context: Any, default: Any, kind: int = ...) -> Any: ...
    def variation(self, key: str, context: Any, default: Any) -> Any: ...
    def variation_detail(self, key: str, context: Any, default: Any) -> Any: ...

class _ContextBuilder:
    """``Context.from_dict``'s common single-kind case in C; ``_SLOW`` for everything else."""

    def __init__(self, context_type: type) -> None: ...
    def from_dict(self, props: Any) -> Any: ...

class _RecorderCore:
    """C base class of ``EventRecorder``: the common case of ``record_evaluation``."""

    _deadline: float
    _end: float
    _last_ctx: Any
    _last_entry: Any
    _summary: Any
    _contexts: Any
    _context_type: Any
    _lock: Any
    _events: Any
    _unsent_events: int
    _capacity: int
    _start: Optional[float]
    _dropped: int
    _retry_at: Optional[float]
    _thread: Any
    stats: Any
    def record_evaluation(self, key: str, context: Any, eval_tuple: tuple, default: Any,
                          with_reason: bool) -> None: ...
    def _clear_caches(self) -> None: ...

def _pack_event(event: dict, context_bytes: bytes) -> Optional[bytes]:
    """Check and pack a feature or debug event whose last field is its context (given as
    its packed bytes), as ``sender._encode_event`` does; ``None`` when the schema refuses it.
    Raises ``TypeError`` for anything but a feature/debug event of 2 to 15 fields ending
    with ``context``."""
    ...
