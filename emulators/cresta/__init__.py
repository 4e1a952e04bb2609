"""Local stand-in for Cresta: OAuth token endpoint and strict Media Streams receiver."""

from emulators.cresta.server import CallRecord, CrestaEmulator

__all__ = ["CallRecord", "CrestaEmulator"]
