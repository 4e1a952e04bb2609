"""KVS media data plane emulator (PutMedia + GetMedia); see ``server``."""

from emulators.kvs.server import ApiError, KvsMediaEmulator, StoredFragment, stream_name_of

__all__ = ["ApiError", "KvsMediaEmulator", "StoredFragment", "stream_name_of"]
