"""Local stand-in for Cresta: OAuth token endpoint, strict stream receivers, injectable faults."""

from emulators.cresta.server import CallRecord, CrestaEmulator, CrestaFaults, parse_outage

__all__ = ["CallRecord", "CrestaEmulator", "CrestaFaults", "parse_outage"]
