"""The shared state store: the `Store` Protocol and its Redis implementation."""

from extproc.store.protocol import RequestState, Reservation, Store, StoreError
from extproc.store.redis_store import RedisStore

__all__ = ["RedisStore", "RequestState", "Reservation", "Store", "StoreError"]
